//! Constant folding: a node whose inputs are all constants is run once, now, by the same runtime
//! kernel that would run it later; a node whose integer outputs shape arithmetic fully resolved
//! becomes those numbers. Either way its outputs become constants and the node disappears.
//! Inference calls [`fold_node`] as it goes, so every later node sees the constants (a Reshape
//! target computed by `Neg` of a constant, say); [`remove_folded`] then drops the folded nodes.

use super::infer::kernel_for;
use crate::error::CompileError;
use crate::ir::Graph;
use kiln_formats::tensor::byte_size;
use kiln_formats::{DType, SharedBytes, Tensor};
use kiln_runtime::{TensorMut, TensorRef};

/// Folded outputs larger than this stay computed at run time, to keep bundles small.
const MAX_FOLDED_BYTES: usize = 64 << 20;

/// Makes node `ni`'s outputs constants when it can be folded; returns whether it was.
pub fn fold_node(g: &mut Graph, ni: usize) -> Result<bool, CompileError> {
    Ok(fold_resolved(g, ni) || fold_constant_inputs(g, ni)?)
}

/// Drops the nodes all of whose outputs are constants; returns how many.
pub fn remove_folded(g: &mut Graph) -> usize {
    let before = g.nodes.len();
    let values = &g.values;
    g.nodes.retain(|n| !n.outputs.iter().all(|&o| values[o].constant.is_some()));
    before - g.nodes.len()
}

/// Outputs whose every element shape arithmetic resolved to a number.
fn fold_resolved(g: &mut Graph, ni: usize) -> bool {
    let outs = g.nodes[ni].outputs.clone();
    let mut tensors = Vec::with_capacity(outs.len());
    for &o in &outs {
        let v = &g.values[o];
        let (Some(vals), Some(shape), Some(dt)) = (&v.sym_value, v.known_shape(), v.dtype) else {
            return false;
        };
        let Some(nums) = vals.iter().map(|d| d.known()).collect::<Option<Vec<i64>>>() else {
            return false;
        };
        if nums.len() != shape.iter().product::<usize>() {
            return false;
        }
        let t = match dt {
            DType::I64 => Tensor::from_vec(&shape, nums),
            DType::I32 => Tensor::from_vec(&shape, nums.iter().map(|&x| x as i32).collect()),
            _ => return false,
        };
        tensors.push(t);
    }
    for (&o, t) in outs.iter().zip(tensors) {
        g.values[o].constant = Some(SharedBytes::copy_from(t.bytes()));
    }
    true
}

fn fold_constant_inputs(g: &mut Graph, ni: usize) -> Result<bool, CompileError> {
    let node = &g.nodes[ni];
    if node.inputs.iter().flatten().any(|&id| g.values[id].constant.is_none()) {
        return Ok(false);
    }
    let mut outputs = Vec::with_capacity(node.outputs.len());
    for &o in &node.outputs {
        let v = &g.values[o];
        let (Some(shape), Some(dt)) = (v.known_shape(), v.dtype) else {
            return Ok(false);
        };
        // Size before allocating: a shape of 10^12 elements must not be allocated to learn that
        // it is too big to fold.
        if byte_size(dt, &shape).is_none_or(|b| b > MAX_FOLDED_BYTES) {
            return Ok(false);
        }
        let Ok(t) = Tensor::zeros(dt, &shape) else { return Ok(false) };
        outputs.push(t);
    }
    let kernel = kernel_for(node).map_err(|e| CompileError::node(node, e))?;
    let in_shapes: Vec<Option<Vec<usize>>> =
        node.inputs.iter().map(|i| i.and_then(|id| g.values[id].known_shape())).collect();
    let inputs: Vec<Option<TensorRef>> = node
        .inputs
        .iter()
        .zip(&in_shapes)
        .map(|(i, s)| {
            i.map(|id| {
                let v = &g.values[id];
                TensorRef {
                    dtype: v.dtype.expect("constants have a dtype"),
                    shape: s.as_deref().unwrap_or_default(),
                    data: v.constant.as_ref().expect("checked above").as_slice(),
                }
            })
        })
        .collect();
    let shapes: Vec<Vec<usize>> = outputs.iter().map(|t| t.shape.clone()).collect();
    let mut outs: Vec<TensorMut> = outputs
        .iter_mut()
        .zip(&shapes)
        .map(|(t, s)| TensorMut { dtype: t.dtype, shape: s, data: t.bytes_mut() })
        .collect();
    kernel.run(&inputs, &mut outs).map_err(|e| CompileError::node(node, format!("constant folding failed: {e}")))?;
    drop(outs);
    let out_ids = node.outputs.clone();
    for (o, t) in out_ids.into_iter().zip(outputs) {
        g.values[o].constant = Some(SharedBytes::copy_from(t.bytes()));
    }
    Ok(true)
}
