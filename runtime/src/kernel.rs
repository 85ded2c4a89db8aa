//! The kernel contract shared by the runtime (which runs kernels) and the compiler (which asks the
//! same kernels for output types and shapes, symbolically, and runs them to fold constants).

use crate::error::KernelError;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::program::{AttrKind, Attribute, TensorValue};
use kiln_formats::{DType, Dim};

/// What shape inference knows about one input.
#[derive(Clone, Copy, Debug)]
pub struct ShapeInput<'a> {
    pub dtype: DType,
    pub shape: &'a [Dim],
    /// The elements, for integer inputs listed in [`Kernel::value_inputs`], when known: always at
    /// run time; at compile time for constants and shape arithmetic the compiler could follow.
    pub value: Option<&'a [Dim]>,
    /// The raw bytes, when known (always at run time; at compile time only for constants).
    pub data: Option<&'a [u8]>,
}

/// An output's type and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputInfo {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl OutputInfo {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Self {
        OutputInfo { dtype, shape }
    }
}

/// Context for shape inference.
pub trait InferCx {
    /// A new symbolic dim for a size that depends on data unknown at compile time (TopK's `k` fed
    /// by a graph input, say). At run time every value is known, so this is an error there.
    fn fresh(&mut self, hint: &str) -> Result<Dim, KernelError>;
}

/// Run-time inference context: data is always known, so no fresh symbol is ever needed.
pub struct RunCx;

impl InferCx for RunCx {
    fn fresh(&mut self, hint: &str) -> Result<Dim, KernelError> {
        Err(KernelError::invalid(format!("size '{hint}' depends on a value that is not available")))
    }
}

/// One op, prepared from its attributes.
pub trait Kernel: Send + Sync {
    /// Inputs whose integer values shape inference needs (Reshape's shape, Slice's starts, ...).
    fn value_inputs(&self) -> &[usize] {
        &[]
    }

    /// Output types and shapes for these inputs, checking that the inputs are consistent (so that
    /// `run` can never index outside its views). `inputs[i]` is `None` for an absent optional input.
    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError>;

    /// Computes the outputs. Output views have the shapes `infer` returned; outputs never overlap
    /// inputs.
    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError>;
}

/// Typed access to a node's attributes, with errors naming the attribute.
#[derive(Clone, Copy)]
pub struct Attrs<'a>(pub &'a [Attribute]);

impl<'a> Attrs<'a> {
    fn get(&self, name: &str, kind: AttrKind) -> Result<Option<&'a Attribute>, KernelError> {
        match self.0.iter().find(|a| a.name == name) {
            None => Ok(None),
            Some(a) if a.kind == kind as i32 => Ok(Some(a)),
            Some(a) => {
                Err(KernelError::attr(name, format!("expected {kind:?}, found {:?}", AttrKind::try_from(a.kind))))
            }
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a.name == name)
    }

    pub fn int_opt(&self, name: &str) -> Result<Option<i64>, KernelError> {
        Ok(self.get(name, AttrKind::Int)?.map(|a| a.i))
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, KernelError> {
        Ok(self.int_opt(name)?.unwrap_or(default))
    }

    pub fn req_int(&self, name: &str) -> Result<i64, KernelError> {
        self.int_opt(name)?.ok_or_else(|| KernelError::attr(name, "is required"))
    }

    pub fn float_opt(&self, name: &str) -> Result<Option<f32>, KernelError> {
        Ok(self.get(name, AttrKind::Float)?.map(|a| a.f))
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32, KernelError> {
        Ok(self.float_opt(name)?.unwrap_or(default))
    }

    pub fn string_opt(&self, name: &str) -> Result<Option<String>, KernelError> {
        self.get(name, AttrKind::String)?
            .map(|a| String::from_utf8(a.s.clone()).map_err(|_| KernelError::attr(name, "is not UTF-8")))
            .transpose()
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String, KernelError> {
        Ok(self.string_opt(name)?.unwrap_or_else(|| default.to_string()))
    }

    pub fn ints(&self, name: &str) -> Result<Option<&'a [i64]>, KernelError> {
        Ok(self.get(name, AttrKind::Ints)?.map(|a| a.ints.as_slice()))
    }

    pub fn floats(&self, name: &str) -> Result<Option<&'a [f32]>, KernelError> {
        Ok(self.get(name, AttrKind::Floats)?.map(|a| a.floats.as_slice()))
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorValue>, KernelError> {
        Ok(self.get(name, AttrKind::Tensor)?.and_then(|a| a.tensor.as_ref()))
    }
}

/// Everything needed to prepare a kernel.
#[derive(Clone, Copy)]
pub struct OpSpec<'a> {
    pub op: &'a str,
    pub domain: &'a str,
    pub opset: i64,
    pub attrs: Attrs<'a>,
}

/// Known dims as usize, or an error naming the first symbolic one.
pub fn concrete(shape: &[Dim]) -> Result<Vec<usize>, KernelError> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Known(v) if *v >= 0 => Ok(*v as usize),
            _ => Err(KernelError::invalid(format!("dim {d} is not a known non-negative size"))),
        })
        .collect()
}

/// A shape of known dims.
pub fn known_shape(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Known(d as i64)).collect()
}

/// Resolves a possibly negative axis against `rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, KernelError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(KernelError::invalid(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// The input at `index`, or an error when it is absent.
pub fn required<T: Copy>(inputs: &[Option<T>], index: usize) -> Result<T, KernelError> {
    inputs.get(index).copied().flatten().ok_or_else(|| KernelError::input(index, "is required"))
}
