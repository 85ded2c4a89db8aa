//! Compiler errors: each names the node, value or input at fault.

use kiln_formats::FormatError;

/// Why a model could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("invalid model: {0}")]
    Model(String),
    #[error("node '{node}' ({op}): {reason}")]
    Node { node: String, op: String, reason: String },
    #[error("unsupported ops: {}", .0.join(", "))]
    Unsupported(Vec<String>),
    #[error("{0}")]
    Options(String),
    #[error("{what} {bytes} bytes, above the memory limit of {limit} bytes (--max-memory)")]
    TooLarge { what: String, bytes: u64, limit: u64 },
}

impl CompileError {
    pub(crate) fn node(node: &crate::ir::Node, reason: impl std::fmt::Display) -> Self {
        CompileError::Node { node: node.name.clone(), op: node.op.clone(), reason: reason.to_string() }
    }
}
