//! Data movement: ops that reshape, reorder, select or generate elements without arithmetic on
//! them (Reshape, Transpose, Concat, Slice, Gather, ScatterND, Range, Constant, ...). One file
//! per op or small group under `movement/`; shared helpers in `common` and the strided-view copy
//! behind Transpose, Slice, Expand and Tile in `strided`.

mod common;
mod concat;
mod expand;
mod reshape;
mod shape;
mod slice;
mod split;
mod strided;
#[cfg(test)]
mod testutil;
mod transpose;

use crate::error::KernelError;
use crate::kernel::{Kernel, OpSpec};

/// Op types this family has kernels for.
pub const OPS: &[&str] = &[
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Shape",
    "Size",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "Expand",
    "Tile",
];

fn boxed<K: Kernel + 'static>(k: K) -> Box<dyn Kernel> {
    Box::new(k)
}

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    Some(match spec.op {
        "Reshape" => reshape::Reshape::new(spec).map(boxed),
        "Flatten" => reshape::Flatten::new(spec).map(boxed),
        "Squeeze" => reshape::Squeeze::new(spec).map(boxed),
        "Unsqueeze" => reshape::Unsqueeze::new(spec).map(boxed),
        "Identity" => Ok(boxed(reshape::Identity)),
        "Shape" => shape::Shape::new(spec).map(boxed),
        "Size" => Ok(boxed(shape::Size)),
        "Transpose" => transpose::Transpose::new(spec).map(boxed),
        "Concat" => concat::Concat::new(spec).map(boxed),
        "Split" => split::Split::new(spec).map(boxed),
        "Slice" => slice::Slice::new(spec).map(boxed),
        "Expand" => Ok(boxed(expand::Expand)),
        "Tile" => Ok(boxed(expand::Tile)),
        _ => return None,
    })
}
