//! kiln-formats: the byte-level contracts shared by kiln's compiler and runtime — element types,
//! symbolic dims, tensors, ONNX decoding with external data, `.npy`/`.npz`, and the program schema.

pub mod bundle;
pub mod bytes;
pub mod dim;
pub mod dtype;
pub mod error;
pub mod generation;
pub mod npy;
pub mod onnx;
pub mod program;
pub mod target;
pub mod tensor;

pub use bytes::{AlignedBuf, SharedBytes};
pub use dim::Dim;
pub use dtype::DType;
pub use error::FormatError;
pub use tensor::Tensor;
