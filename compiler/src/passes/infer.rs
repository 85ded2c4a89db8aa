//! Type and shape inference: asks each op's runtime kernel for its outputs' dtypes and (possibly
//! symbolic) shapes, feeding it the constant and symbolic values shape arithmetic depends on.

use super::{const_fold, sym_values};
use crate::error::CompileError;
use crate::ir::{Graph, Node, Value};
use kiln_formats::tensor::read_i64;
use kiln_formats::Dim;
use kiln_runtime::kernel::{Attrs, InferCx, Kernel, OpSpec, ShapeInput};
use kiln_runtime::{ops, KernelError};

/// Integer constants longer than this are not turned into dims (they are data, not shapes).
const MAX_VALUE_ELEMS: usize = 4096;

/// Names fresh symbols for sizes that depend on data unknown at compile time.
#[derive(Default)]
pub struct CompileCx {
    next: usize,
}

impl InferCx for CompileCx {
    fn fresh(&mut self, hint: &str) -> Result<Dim, KernelError> {
        self.next += 1;
        Ok(Dim::sym(&format!("{hint}#{}", self.next)))
    }
}

/// The kernel for a node, as the runtime will prepare it.
pub fn kernel_for(node: &Node) -> Result<Box<dyn Kernel>, KernelError> {
    ops::build(&OpSpec { op: &node.op, domain: &node.domain, opset: node.opset, attrs: Attrs(&node.attrs) })
}

/// Fails with every op type that has no kernel, and the first node of each.
pub fn check_supported(g: &Graph) -> Result<(), CompileError> {
    let mut missing: Vec<String> = Vec::new();
    for n in &g.nodes {
        if let Err(KernelError::Unsupported(what)) = kernel_for(n) {
            let key = format!("{what} (node '{}')", n.name);
            if !missing.iter().any(|m| m.starts_with(&what)) {
                missing.push(key);
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CompileError::Unsupported(missing))
    }
}

/// The elements of an integer value as dims, when known.
pub fn value_dims(v: &Value) -> Option<Vec<Dim>> {
    if let Some(s) = &v.sym_value {
        return Some(s.clone());
    }
    let (c, dt) = (v.constant.as_ref()?, v.dtype?);
    let n = c.len() / dt.size();
    if n > MAX_VALUE_ELEMS {
        return None;
    }
    (0..n).map(|i| read_i64(dt, c.as_slice(), i).map(Dim::Known)).collect()
}

/// Infers every node's outputs, in order, folding constants as it goes so later nodes see them.
pub fn infer(g: &mut Graph) -> Result<(), CompileError> {
    let mut cx = CompileCx::default();
    for ni in 0..g.nodes.len() {
        infer_node(g, ni, &mut cx)?;
        sym_values::propagate(g, ni);
        const_fold::fold_node(g, ni)?;
    }
    Ok(())
}

fn infer_node(g: &mut Graph, ni: usize, cx: &mut CompileCx) -> Result<(), CompileError> {
    let node = &g.nodes[ni];
    let kernel = kernel_for(node).map_err(|e| CompileError::node(node, e))?;
    let wanted = kernel.value_inputs();
    let mut shapes = Vec::with_capacity(node.inputs.len());
    let mut values = Vec::with_capacity(node.inputs.len());
    for (k, inp) in node.inputs.iter().enumerate() {
        match inp {
            Some(id) => {
                let v = &g.values[*id];
                if v.dtype.is_none() || v.shape.is_none() {
                    return Err(CompileError::node(node, format!("input '{}' has no known type and shape", v.name)));
                }
                shapes.push(v.shape.clone());
                values.push(if wanted.contains(&k) { value_dims(v) } else { None });
            }
            None => {
                shapes.push(None);
                values.push(None);
            }
        }
    }
    let inputs: Vec<Option<ShapeInput>> = node
        .inputs
        .iter()
        .enumerate()
        .map(|(k, inp)| {
            inp.map(|id| {
                let v = &g.values[id];
                ShapeInput {
                    dtype: v.dtype.expect("checked above"),
                    shape: shapes[k].as_deref().unwrap_or_default(),
                    value: values[k].as_deref(),
                    data: v.constant.as_ref().map(|c| c.as_slice()),
                }
            })
        })
        .collect();
    let outs = kernel.infer(&inputs, cx).map_err(|e| CompileError::node(node, e))?;
    if outs.len() < node.outputs.len() {
        return Err(CompileError::node(
            node,
            format!("has {} outputs but the op defines {}", node.outputs.len(), outs.len()),
        ));
    }
    let out_ids = node.outputs.clone();
    for (id, info) in out_ids.into_iter().zip(outs) {
        let v = &mut g.values[id];
        v.dtype = Some(info.dtype);
        v.shape = Some(info.shape);
    }
    Ok(())
}
