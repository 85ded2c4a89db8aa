//! Test helpers shared by the elementwise families: build a kernel through the registry, infer
//! and run it on owned tensors.

use crate::error::KernelError;
use crate::kernel::{concrete, Attrs, OpSpec, OutputInfo, RunCx, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::program::Attribute;
use kiln_formats::tensor::read_i64;
use kiln_formats::{DType, Dim, Tensor};

fn spec<'a>(op: &'a str, opset: i64, attrs: &'a [Attribute]) -> OpSpec<'a> {
    OpSpec { op, domain: "", opset, attrs: Attrs(attrs) }
}

/// Shape inference alone, on (dtype, dims) inputs.
pub(crate) fn infer_op(
    op: &str,
    opset: i64,
    attrs: &[Attribute],
    inputs: &[Option<(DType, Vec<Dim>)>],
) -> Result<Vec<OutputInfo>, KernelError> {
    let k = crate::ops::build(&spec(op, opset, attrs))?;
    let si: Vec<Option<ShapeInput>> = inputs
        .iter()
        .map(|i| i.as_ref().map(|(dtype, shape)| ShapeInput { dtype: *dtype, shape, value: None, data: None }))
        .collect();
    k.infer(&si, &mut RunCx)
}

/// Infers, allocates and runs, as the session does.
pub(crate) fn run_op(
    op: &str,
    opset: i64,
    attrs: &[Attribute],
    inputs: &[Option<&Tensor>],
) -> Result<Vec<Tensor>, KernelError> {
    let k = crate::ops::build(&spec(op, opset, attrs))?;
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
    let mut outs = Vec::new();
    for info in &infos {
        let shape = concrete(&info.shape)?;
        outs.push(Tensor::zeros(info.dtype, &shape).map_err(|e| KernelError::invalid(e.to_string()))?);
    }
    let refs: Vec<Option<TensorRef>> = inputs.iter().map(|t| t.map(TensorRef::from_tensor)).collect();
    let shapes: Vec<Vec<usize>> = outs.iter().map(|t| t.shape.clone()).collect();
    let mut views: Vec<TensorMut> = outs
        .iter_mut()
        .zip(&shapes)
        .map(|(t, s)| TensorMut { dtype: t.dtype, shape: s, data: t.bytes_mut() })
        .collect();
    k.run(&refs, &mut views)?;
    drop(views);
    Ok(outs)
}

/// All elements as f64.
pub(crate) fn values(t: &Tensor) -> Vec<f64> {
    (0..t.numel()).map(|i| t.get_f64(i)).collect()
}

/// Known dims.
pub(crate) fn dims(v: &[i64]) -> Vec<Dim> {
    v.iter().map(|&d| Dim::Known(d)).collect()
}
