//! kiln-runtime: runs lowered programs over planned memory with CPU kernels. Depends on
//! kiln-formats only — never on the compiler.

pub mod bundle;
pub mod error;
pub mod generate;
pub mod gpu;
mod infer_memo;
pub mod kernel;
pub mod memory;
pub mod model;
pub mod ops;
pub mod session;
pub mod state;
pub mod verify;
pub mod view;
mod warm_pool;

pub use error::{KernelError, RuntimeError};
pub use model::Model;
pub use session::{Profile, Session};
pub use state::KvState;
pub use view::{TensorMut, TensorRef};
