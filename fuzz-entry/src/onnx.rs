//! ONNX bytes → decoded model → IR graph → optimised, lowered and planned program, as
//! `kiln compile` does for a model with no external data.

use kiln_compiler::CompileOptions;
use std::collections::HashMap;

/// Imports and compiles `data` as an ONNX model under a memory budget of [`crate::HARNESS_MEMORY`].
pub fn import_and_plan(data: &[u8]) -> Result<(), String> {
    let model = kiln_formats::onnx::parse(data, None, "fuzz.onnx").map_err(|e| e.to_string())?;
    let graph = kiln_compiler::import::import(model, &HashMap::new()).map_err(|e| e.to_string())?;
    let opts = CompileOptions { max_memory: Some(crate::HARNESS_MEMORY), ..CompileOptions::default() };
    let compiled = kiln_compiler::compile_graph(graph, &opts).map_err(|e| e.to_string())?;
    // The runtime re-checks what the compiler produced, as it does for a bundle at load.
    kiln_runtime::Model::new(compiled.program, &compiled.weights).map_err(|e| e.to_string())?;
    Ok(())
}
