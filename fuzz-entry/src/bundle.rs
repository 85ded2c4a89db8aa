//! A `.kiln` file: opened and checked as `kiln verify` does, then loaded without checksums (as
//! `kiln run --no-verify-checksums` does, so mutations reach the program decoder, the plan
//! verifier and the kernels) and its smallest entry point run on zero-filled inputs.

use kiln_formats::bundle::{Bundle, OpenOptions};
use kiln_formats::{SharedBytes, Tensor};
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::{Session, TensorRef};

/// Opens, verifies, loads and runs the bundle held in `data`.
pub fn open_verify_run(data: &[u8]) -> Result<(), String> {
    let bytes = SharedBytes::copy_from(data);
    // What `kiln verify` and a default `kiln run` do: every check, checksums included.
    let all = OpenOptions { weights_in_background: false, ..OpenOptions::default() };
    let verified = Bundle::from_bytes(bytes.clone(), all)
        .map_err(|e| e.to_string())
        .and_then(|b| LoadedBundle::from_bundle(b).map_err(|e| e.to_string()));
    let unchecked = Bundle::from_bytes(bytes, OpenOptions { verify_checksums: false, ..OpenOptions::default() })
        .map_err(|e| e.to_string())?;
    let loaded = LoadedBundle::from_bundle(unchecked).map_err(|e| e.to_string())?;
    run_smallest(&loaded)?;
    verified.map(|_| ())
}

/// Runs the entry point with the smallest arena once, on zeros at each input's largest shape;
/// entry points whose arena or inputs exceed [`crate::HARNESS_MEMORY`] are not run (allocating
/// what a plan asks for is the runtime's job; the harness must not trip the fuzzer's RSS limit).
fn run_smallest(loaded: &LoadedBundle) -> Result<(), String> {
    let arena = |m: &kiln_runtime::Model| m.program().buffers.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let Some(model) = loaded.entries.iter().map(|(_, m)| m).min_by_key(|m| arena(m)) else { return Ok(()) };
    if arena(model) > crate::HARNESS_MEMORY {
        return Ok(());
    }
    let prog = model.program();
    let mut inputs = Vec::new();
    let mut total = 0u64;
    for &slot in &prog.inputs {
        let v = prog.values.get(slot as usize).ok_or_else(|| format!("input slot {slot} out of range"))?;
        let dtype = v.dtype().ok_or_else(|| format!("input '{}' has an unknown dtype", v.name))?;
        let shape: Vec<usize> = v.dims.iter().map(|d| if d.value >= 0 { d.value as usize } else { 1 }).collect();
        let bytes = kiln_formats::tensor::byte_size(dtype, &shape).map(|b| b as u64).unwrap_or(u64::MAX);
        total = total.saturating_add(bytes);
        if total > crate::HARNESS_MEMORY {
            return Ok(());
        }
        inputs.push(Tensor::zeros(dtype, &shape).map_err(|e| e.to_string())?);
    }
    let refs: Vec<TensorRef> = inputs.iter().map(TensorRef::from_tensor).collect();
    Session::new(model.clone()).run(&refs).map_err(|e| e.to_string())?;
    Ok(())
}
