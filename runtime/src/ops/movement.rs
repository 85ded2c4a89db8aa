//! Data movement: ops that reshape, reorder, select or generate elements without arithmetic on
//! them (Reshape, Transpose, Concat, Slice, Gather, ScatterND, Range, Constant, ...). One file
//! per op or small group under `movement/`; shared helpers in `common` and the strided-view copy
//! behind Transpose, Slice, Expand and Tile in `strided`.

pub(crate) mod common;
mod concat;
mod constant;
mod expand;
mod gather;
mod range;
mod reshape;
mod scatter;
mod shape;
pub(crate) mod slice;
mod split;
mod strided;
#[cfg(test)]
mod testutil;
mod transpose;
mod trilu;

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
    "Gather",
    "GatherElements",
    "GatherND",
    "ScatterND",
    "Trilu",
    "Range",
    "ConstantOfShape",
    "Constant",
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
        "Gather" => gather::Gather::new(spec).map(boxed),
        "GatherElements" => gather::GatherElements::new(spec).map(boxed),
        "GatherND" => gather::GatherNd::new(spec).map(boxed),
        "ScatterND" => scatter::ScatterNd::new(spec).map(boxed),
        "Trilu" => trilu::Trilu::new(spec).map(boxed),
        "Range" => Ok(boxed(range::Range)),
        "ConstantOfShape" => constant::ConstantOfShape::new(spec).map(boxed),
        "Constant" => constant::Constant::new(spec).map(boxed),
        _ => return None,
    })
}
