//! Errors of the format layer; each names the file, tensor or byte range at fault.

use std::path::PathBuf;

/// What went wrong reading or writing one of kiln's formats.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid ONNX model: {reason}")]
    NotOnnx { path: PathBuf, reason: String },
    #[error("tensor '{tensor}': {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("size overflows: {0}")]
    TooLarge(String),
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), source }
    }

    pub(crate) fn tensor(tensor: &str, reason: impl Into<String>) -> Self {
        FormatError::Tensor { tensor: tensor.to_string(), reason: reason.into() }
    }
}
