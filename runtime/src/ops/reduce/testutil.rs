//! Test helpers shared by this family's tests (and the norm, matmul and attention tests): build a
//! kernel through the registry, infer with known shapes, and run it on owned tensors.

#![allow(dead_code)]
use crate::error::KernelError;
use crate::kernel::{Attrs, InferCx, OpSpec, OutputInfo, RunCx, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::program::{AttrKind, Attribute};
use kiln_formats::tensor::read_i64;
use kiln_formats::{DType, Dim, Tensor};

pub fn int(name: &str, v: i64) -> Attribute {
    Attribute { name: name.into(), kind: AttrKind::Int as i32, i: v, ..Default::default() }
}

pub fn ints(name: &str, v: &[i64]) -> Attribute {
    Attribute { name: name.into(), kind: AttrKind::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

pub fn float(name: &str, v: f32) -> Attribute {
    Attribute { name: name.into(), kind: AttrKind::Float as i32, f: v, ..Default::default() }
}

/// Names symbols `hint0`, `hint1`, ...
pub struct SymCx(pub usize);

impl InferCx for SymCx {
    fn fresh(&mut self, hint: &str) -> Result<Dim, KernelError> {
        self.0 += 1;
        Ok(Dim::sym(&format!("{hint}{}", self.0)))
    }
}

fn spec<'a>(op: &'a str, opset: i64, attrs: &'a [Attribute]) -> OpSpec<'a> {
    OpSpec { op, domain: "", opset, attrs: Attrs(attrs) }
}

/// Infers and runs an op of `domain`, returning every output.
pub fn try_run_in(
    domain: &str,
    op: &str,
    opset: i64,
    attrs: &[Attribute],
    inputs: Vec<Option<Tensor>>,
) -> Result<Vec<Tensor>, KernelError> {
    run_built(crate::ops::build(&OpSpec { domain, ..spec(op, opset, attrs) })?, inputs)
}

/// An input for [`infer1`]: dtype, shape and (for value inputs) the known elements.
pub type In<'a> = Option<(DType, &'a [Dim], Option<&'a [Dim]>)>;

/// Shape inference on (dtype, shape, value) triples.
pub fn infer1(op: &str, opset: i64, attrs: &[Attribute], inputs: &[In]) -> Result<Vec<OutputInfo>, KernelError> {
    let k = crate::ops::build(&spec(op, opset, attrs))?;
    let si: Vec<Option<ShapeInput>> =
        inputs.iter().map(|i| i.map(|(dtype, shape, value)| ShapeInput { dtype, shape, value, data: None })).collect();
    k.infer(&si, &mut SymCx(0))
}

/// Infers and runs, returning every output.
pub fn try_run(
    op: &str,
    opset: i64,
    attrs: &[Attribute],
    inputs: Vec<Option<Tensor>>,
) -> Result<Vec<Tensor>, KernelError> {
    run_built(crate::ops::build(&spec(op, opset, attrs))?, inputs)
}

fn run_built(k: Box<dyn crate::kernel::Kernel>, inputs: Vec<Option<Tensor>>) -> Result<Vec<Tensor>, KernelError> {
    let dims: Vec<Vec<Dim>> = inputs
        .iter()
        .map(|t| t.as_ref().map(|t| t.shape.iter().map(|&d| Dim::Known(d as i64)).collect()).unwrap_or_default())
        .collect();
    let values: Vec<Option<Vec<Dim>>> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.as_ref()?;
            if !k.value_inputs().contains(&i) {
                return None;
            }
            (0..t.numel()).map(|j| read_i64(t.dtype, t.bytes(), j).map(Dim::Known)).collect()
        })
        .collect();
    let si: Vec<Option<ShapeInput>> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_ref().map(|t| ShapeInput {
                dtype: t.dtype,
                shape: &dims[i],
                value: values[i].as_deref(),
                data: Some(t.bytes()),
            })
        })
        .collect();
    let infos = k.infer(&si, &mut RunCx)?;
    let mut outs: Vec<Tensor> = infos
        .iter()
        .map(|o| {
            let shape = crate::kernel::concrete(&o.shape)?;
            Tensor::zeros(o.dtype, &shape).map_err(|e| KernelError::invalid(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<Option<TensorRef>> = inputs.iter().map(|t| t.as_ref().map(TensorRef::from_tensor)).collect();
    let shapes: Vec<Vec<usize>> = outs.iter().map(|t| t.shape.clone()).collect();
    let mut views: Vec<TensorMut> = outs
        .iter_mut()
        .zip(&shapes)
        .map(|(t, shape)| TensorMut { dtype: t.dtype, shape, data: t.bytes_mut() })
        .collect();
    k.run(&refs, &mut views)?;
    drop(views);
    Ok(outs)
}

/// Runs and returns the first output, panicking on errors.
pub fn run1(op: &str, opset: i64, attrs: &[Attribute], inputs: Vec<Option<Tensor>>) -> Tensor {
    try_run(op, opset, attrs, inputs).unwrap_or_else(|e| panic!("{op}: {e}")).remove(0)
}

/// The elements of a float tensor as f32.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    (0..t.numel()).map(|i| t.get_f64(i) as f32).collect()
}

/// Asserts two float lists agree within `tol`.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "lengths differ: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * (1. + y.abs());
        assert!(ok, "element {i}: {x} vs {y}\n{a:?}\n{b:?}");
    }
}
