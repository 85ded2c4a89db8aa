//! (family placeholder: kernels land here)

use crate::error::KernelError;
use crate::kernel::{Kernel, OpSpec};

/// Op types this family has kernels for.
pub const OPS: &[&str] = &[];

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(_spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    None
}
