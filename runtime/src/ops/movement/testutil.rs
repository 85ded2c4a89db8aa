//! Test harness: builds a kernel from its op name and drives infer + run the way the executor
//! does, or infers symbolically the way the compiler does.

use crate::error::KernelError;
use crate::kernel::{Attrs, InferCx, Kernel, OpSpec, OutputInfo, RunCx, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::program::Attribute;
use kiln_formats::tensor::read_i64;
use kiln_formats::{DType, Dim, Tensor};

/// Compile-time context handing out symbols `hint0`, `hint1`, ...
pub struct Syms(pub usize);

impl InferCx for Syms {
    fn fresh(&mut self, hint: &str) -> Result<Dim, KernelError> {
        self.0 += 1;
        Ok(Dim::sym(&format!("{hint}{}", self.0 - 1)))
    }
}

pub fn kernel(op: &str, opset: i64, attrs: &[Attribute]) -> Result<Box<dyn Kernel>, KernelError> {
    let spec = OpSpec { op, domain: "", opset, attrs: Attrs(attrs) };
    super::build(&spec).expect("op belongs to the movement family")
}

/// Runs an op on concrete tensors (None = absent optional input).
pub fn run(op: &str, opset: i64, attrs: &[Attribute], inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, KernelError> {
    let k = kernel(op, opset, attrs)?;
    let dims: Vec<Vec<Dim>> = inputs
        .iter()
        .map(|t| t.map(|t| t.shape.iter().map(|&d| Dim::Known(d as i64)).collect()).unwrap_or_default())
        .collect();
    let values: Vec<Option<Vec<Dim>>> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = (*t)?;
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
            t.map(|t| ShapeInput {
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
            let shape = crate::kernel::concrete(&o.shape).unwrap();
            Tensor::zeros(o.dtype, &shape).unwrap()
        })
        .collect();
    let refs: Vec<Option<TensorRef>> = inputs.iter().map(|t| t.map(TensorRef::from_tensor)).collect();
    let shapes: Vec<Vec<usize>> = outs.iter().map(|t| t.shape.clone()).collect();
    let mut muts: Vec<TensorMut> = outs
        .iter_mut()
        .zip(&shapes)
        .map(|(t, s)| TensorMut { dtype: t.dtype, shape: s, data: t.bytes_mut() })
        .collect();
    k.run(&refs, &mut muts)?;
    drop(muts);
    Ok(outs)
}

/// A symbolic input description for [`infer`].
pub struct In {
    pub dtype: DType,
    pub shape: Vec<Dim>,
    pub value: Option<Vec<Dim>>,
}

pub fn sym_in(dtype: DType, shape: Vec<Dim>) -> Option<In> {
    Some(In { dtype, shape, value: None })
}

/// A 1-D int64 input whose values are known (possibly symbolic).
pub fn val_in(value: Vec<Dim>) -> Option<In> {
    Some(In { dtype: DType::I64, shape: vec![Dim::Known(value.len() as i64)], value: Some(value) })
}

/// Compile-time inference with fresh symbols from [`Syms`].
pub fn infer(op: &str, opset: i64, attrs: &[Attribute], inputs: &[Option<In>]) -> Result<Vec<OutputInfo>, KernelError> {
    let k = kernel(op, opset, attrs)?;
    let si: Vec<Option<ShapeInput>> = inputs
        .iter()
        .map(|i| {
            i.as_ref().map(|i| ShapeInput { dtype: i.dtype, shape: &i.shape, value: i.value.as_deref(), data: None })
        })
        .collect();
    k.infer(&si, &mut Syms(0))
}

pub fn s(name: &str) -> Dim {
    Dim::sym(name)
}

pub fn k(v: i64) -> Dim {
    Dim::Known(v)
}

pub fn ks(v: &[i64]) -> Vec<Dim> {
    v.iter().map(|&x| Dim::Known(x)).collect()
}

pub fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec())
}

pub fn i64s(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec())
}

pub fn i32s(shape: &[usize], v: &[i32]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec())
}

/// 0, 1, 2, ... as f32 in `shape`.
pub fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|x| x as f32).collect::<Vec<f32>>())
}

pub fn vals_f32(t: &Tensor) -> Vec<f32> {
    t.as_slice::<f32>().unwrap().to_vec()
}

pub fn vals_i64(t: &Tensor) -> Vec<i64> {
    t.as_slice::<i64>().unwrap().to_vec()
}
