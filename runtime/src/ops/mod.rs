//! CPU kernels, one file per op family. [`build`] prepares the kernel for a step.

pub mod attention;
pub mod binary;
pub mod broadcast;
pub mod cast;
pub mod kv_cache;
pub mod matmul;
pub mod movement;
pub mod norm;
pub mod num;
pub mod reduce;
pub mod transfer;
pub mod unary;

use crate::error::KernelError;
use crate::kernel::{Kernel, OpSpec};

/// Domain of the ops kiln's compiler passes create (never found in an ONNX file).
pub const KILN_DOMAIN: &str = "kiln";

/// A family's constructor: `None` when the op is not one of its own.
type Family = fn(&OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>>;

const FAMILIES: &[Family] = &[
    unary::build,
    binary::build,
    cast::build,
    reduce::build,
    norm::build,
    matmul::build,
    movement::build,
    attention::build,
];

/// Prepares the kernel for an op; an error when no kernel exists or its attributes are invalid.
pub fn build(spec: &OpSpec) -> Result<Box<dyn Kernel>, KernelError> {
    if spec.domain == KILN_DOMAIN {
        return matmul::build_kiln(spec)
            .or_else(|| kv_cache::build_kiln(spec))
            .or_else(|| transfer::build_kiln(spec))
            .or_else(|| unary::silu::build_kiln(spec))
            .or_else(|| unary::gelu_tanh::build_kiln(spec))
            .or_else(|| attention::build_kiln(spec))
            .or_else(|| norm::scaled_softmax::build_kiln(spec))
            .unwrap_or_else(|| Err(KernelError::unsupported(format!("op {}::{}", spec.domain, spec.op))));
    }
    if !matches!(spec.domain, "" | "ai.onnx") {
        return Err(KernelError::unsupported(format!("op {}::{}", spec.domain, spec.op)));
    }
    FAMILIES
        .iter()
        .find_map(|f| f(spec))
        .unwrap_or_else(|| Err(KernelError::unsupported(format!("op {} (opset {})", spec.op, spec.opset))))
}

/// Ops whose output element `i` depends only on element `i` of each full-size input (and on a
/// broadcast operand): their output may overwrite an input that dies at that step, and the
/// executor can run them a chunk at a time.
const IN_PLACE_OPS: &[&str] = &[
    "Abs",
    "Add",
    "Ceil",
    "Cos",
    "Div",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "Log",
    "Mul",
    "Neg",
    "Pow",
    "Reciprocal",
    "Relu",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sqrt",
    "Sub",
    "Tanh",
];

/// Whether the planner may make this op write over one of its inputs.
pub fn in_place_capable(op: &str, domain: &str) -> bool {
    matches!(domain, "" | "ai.onnx") && IN_PLACE_OPS.contains(&op)
}

/// Op types each family has kernels for.
const OP_LISTS: &[&[&str]] =
    &[unary::OPS, binary::OPS, cast::OPS, reduce::OPS, norm::OPS, matmul::OPS, movement::OPS, attention::OPS];

/// Whether a CPU kernel exists for this op type in the default domain.
pub fn is_supported(op: &str) -> bool {
    OP_LISTS.iter().any(|l| l.contains(&op))
}

/// Every op type the CPU backend has kernels for, sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&str> = OP_LISTS.iter().flat_map(|l| l.iter().copied()).collect();
    v.sort_unstable();
    v
}
