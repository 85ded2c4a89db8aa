//! Runtime errors: each names the step, value or byte range at fault.

/// A kernel refused its inputs or attributes.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum KernelError {
    #[error("attribute '{name}': {reason}")]
    Attr { name: String, reason: String },
    #[error("input {index}: {reason}")]
    Input { index: usize, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is not supported")]
    Unsupported(String),
}

impl KernelError {
    pub fn input(index: usize, reason: impl Into<String>) -> Self {
        KernelError::Input { index, reason: reason.into() }
    }
    pub fn attr(name: &str, reason: impl Into<String>) -> Self {
        KernelError::Attr { name: name.into(), reason: reason.into() }
    }
    pub fn invalid(reason: impl Into<String>) -> Self {
        KernelError::Invalid(reason.into())
    }
    pub fn unsupported(what: impl Into<String>) -> Self {
        KernelError::Unsupported(what.into())
    }
}

/// Loading or running a program failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    // `reason`, not `source`: the message already says it, and a source would repeat it in
    // every printed error chain.
    #[error("step {step} ({op} '{node}'): {reason}")]
    Step { step: usize, op: String, node: String, reason: KernelError },
    #[error("input '{name}': {reason}")]
    Input { name: String, reason: String },
    #[error("value '{name}': {reason}")]
    Value { name: String, reason: String },
    #[error("invalid program: {0}")]
    Program(String),
    /// The weights' checksums, verified in the background while the run computed, do not
    /// match: the run's outputs are withheld.
    #[error(transparent)]
    Weights(#[from] kiln_formats::bundle::BundleError),
}
