//! kiln-compiler: ONNX import into a typed graph IR with symbolic shapes, optimisation passes,
//! and lowering to the program the runtime executes.

pub mod error;
pub mod import;
pub mod ir;
pub mod lower;
pub mod passes;

pub use error::CompileError;
pub use ir::Graph;
pub use lower::Lowered;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What the user told the compiler about symbolic dims.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Dims fixed to one value (`--dim NAME=N`).
    pub fixed_dims: HashMap<String, i64>,
    /// Upper bounds of dims that stay symbolic (`--dim NAME=..MAX`).
    pub dim_bounds: BTreeMap<String, u64>,
}

/// Reads an ONNX file (and its external data) into the IR, without optimising it.
pub fn import_file(path: &Path, opts: &CompileOptions) -> Result<Graph, CompileError> {
    let model = kiln_formats::onnx::load(path)?;
    import::import(model, &opts.fixed_dims)
}

/// Reads, optimises and lowers an ONNX file.
pub fn compile_file(path: &Path, opts: &CompileOptions) -> Result<Lowered, CompileError> {
    let mut g = import_file(path, opts)?;
    passes::optimize(&mut g)?;
    lower::lower(&g, &opts.dim_bounds)
}
