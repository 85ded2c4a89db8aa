//! Normalisations: Softmax, LogSoftmax and Hardmax; LayerNormalization and RMSNormalization.

mod layernorm;
pub mod scaled_softmax;
pub(crate) mod softmax;

use crate::error::KernelError;
use crate::kernel::{Kernel, OpSpec};

/// Op types this family has kernels for.
pub const OPS: &[&str] = &["Hardmax", "LayerNormalization", "LogSoftmax", "RMSNormalization", "Softmax"];

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    Some(match spec.op {
        "Softmax" => softmax::build(spec, softmax::Mode::Soft),
        "LogSoftmax" => softmax::build(spec, softmax::Mode::Log),
        "Hardmax" => softmax::build(spec, softmax::Mode::Hard),
        "LayerNormalization" => layernorm::build(spec, false),
        "RMSNormalization" => layernorm::build(spec, true),
        _ => return None,
    })
}

/// Inputs larger than this are processed in parallel, row by row.
const PAR_MIN: usize = 1 << 15;
