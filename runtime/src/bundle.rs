//! Loading a bundle: the container checks of kiln-formats, then every program decoded, its weight
//! references checked for alignment, its plan verified, and its kernels prepared. Weights stay in
//! the file's memory map.

use crate::error::RuntimeError;
use crate::model::Model;
use kiln_formats::bundle::manifest::{EntryPoint, TensorSig};
use kiln_formats::bundle::{Bundle, BundleError, OpenOptions, TENSOR_ALIGN};
use kiln_formats::program::Program;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// Why a bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("entry point '{entry}' (target {target}): {source}")]
    Program { entry: String, target: String, source: Box<RuntimeError> },
    #[error("entry point '{entry}' (target {target}): weight {index} at offset {offset} of weight entry {weight_entry} is not {TENSOR_ALIGN}-byte aligned")]
    Misaligned { entry: String, target: String, index: usize, offset: u64, weight_entry: u32 },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("entry point '{entry}': the manifest's signature has {which} {manifest}, its program has {program}")]
    Signature { entry: String, which: String, manifest: String, program: String },
}

/// The manifest's inputs and outputs of `ep` must be its program's: callers size and name their
/// tensors from the manifest, so a manifest that lies would feed a program what it does not take.
fn check_signature(ep: &EntryPoint, prog: &kiln_formats::program::Program) -> Result<(), LoadError> {
    for (which, sigs, slots) in [("input", &ep.inputs, &prog.inputs), ("output", &ep.outputs, &prog.outputs)] {
        let n = sigs.len().max(slots.len());
        for i in 0..n {
            let want = slots.get(i).and_then(|&s| prog.values.get(s as usize)).map(TensorSig::of);
            let have = sigs.get(i);
            if have != want.as_ref() {
                let show = |s: Option<&TensorSig>| s.map_or_else(|| "nothing".to_string(), |s| s.to_string());
                return Err(LoadError::Signature {
                    entry: ep.name.clone(),
                    which: format!("{which} {i}"),
                    manifest: show(have),
                    program: show(want.as_ref()),
                });
            }
        }
    }
    if ep.plan.buffers != prog.buffers || ep.plan.alignment != prog.alignment {
        return Err(LoadError::Signature {
            entry: ep.name.clone(),
            which: "plan".into(),
            manifest: format!("buffers {:?} aligned to {}", ep.plan.buffers, ep.plan.alignment),
            program: format!("buffers {:?} aligned to {}", prog.buffers, prog.alignment),
        });
    }
    Ok(())
}

/// A validated bundle with a ready model per entry point.
pub struct LoadedBundle {
    pub bundle: Bundle,
    pub entries: Vec<(EntryPoint, Arc<Model>)>,
}

impl LoadedBundle {
    /// Opens and fully validates the bundle at `path`.
    pub fn open(path: &Path, opts: OpenOptions) -> Result<LoadedBundle, LoadError> {
        Self::from_bundle(Bundle::open(path, opts)?)
    }

    /// Prepares every entry point of an opened bundle, all on CPU.
    pub fn from_bundle(bundle: Bundle) -> Result<LoadedBundle, LoadError> {
        Self::from_bundle_on(bundle, None)
    }

    /// Prepares every entry point of an opened bundle; with `gpu`, the entry points compiled for
    /// the GPU target are loaded onto it (their plans checked against its limits, their weights
    /// uploaded). Without it they run every step on CPU.
    pub fn from_bundle_on(bundle: Bundle, gpu: Option<Arc<crate::gpu::Gpu>>) -> Result<LoadedBundle, LoadError> {
        let mut programs: Vec<Option<Program>> = bundle.programs()?.programs.into_iter().map(Some).collect();
        let weights = bundle.weight_entries()?;
        let eps = &bundle.manifest.entry_points;
        // Each entry point's program: moved out at its last use, copied before (entry points
        // usually have programs of their own; a copy of SmolLM2's costs ~1 ms).
        let mut uses = vec![0usize; programs.len()];
        for ep in eps {
            if let Some(u) = uses.get_mut(ep.program as usize) {
                *u += 1;
            }
        }
        let mut jobs = Vec::with_capacity(eps.len());
        let count = programs.len();
        for ep in eps {
            let i = ep.program as usize;
            let missing =
                || LoadError::Manifest(format!("entry point '{}' names program {} of {}", ep.name, ep.program, count));
            let slot = programs.get_mut(i).ok_or_else(missing)?;
            uses[i] -= 1;
            let prog = if uses[i] == 0 { slot.take() } else { slot.clone() };
            jobs.push((ep, prog.ok_or_else(missing)?));
        }
        let check = bundle.weight_check();
        let prepare = |(ep, prog): (&EntryPoint, Program)| -> Result<(EntryPoint, Arc<Model>), LoadError> {
            for (index, w) in prog.weights.iter().enumerate() {
                if w.offset % TENSOR_ALIGN != 0 {
                    return Err(LoadError::Misaligned {
                        entry: ep.name.clone(),
                        target: ep.target.clone(),
                        index,
                        offset: w.offset,
                        weight_entry: w.entry,
                    });
                }
            }
            check_signature(ep, &prog)?;
            #[cfg(feature = "gpu")]
            let model = Model::new_checked(prog, &weights, check.cloned(), gpu.clone().filter(|_| ep.target == "gpu"));
            #[cfg(not(feature = "gpu"))]
            let model = Model::new_checked(prog, &weights, check.cloned());
            let model = model.map_err(|source| LoadError::Program {
                entry: ep.name.clone(),
                target: ep.target.clone(),
                source: Box::new(source),
            })?;
            Ok((ep.clone(), model))
        };
        // Entry points are prepared side by side (decoding aside, each costs ~1 ms for SmolLM2);
        // on a GPU, one at a time, as their uploads share the device's queue. The first error in
        // entry point order is the one reported, whichever finished first.
        let prepared: Vec<_> = match gpu {
            None => jobs.into_par_iter().map(prepare).collect(),
            Some(_) => jobs.into_iter().map(prepare).collect(),
        };
        let entries = prepared.into_iter().collect::<Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            return Err(LoadError::Manifest("the bundle has no entry points".into()));
        }
        Ok(LoadedBundle { bundle, entries })
    }

    /// Whether the bundle holds programs compiled for `target`.
    pub fn has_target(&self, target: &str) -> bool {
        self.entries.iter().any(|(ep, _)| ep.target == target)
    }

    /// The model of entry point `name` for `target`, or the first entry point named `name`.
    pub fn model(&self, name: &str, target: Option<&str>) -> Option<&Arc<Model>> {
        self.entries.iter().find(|(ep, _)| ep.name == name && target.is_none_or(|t| ep.target == t)).map(|(_, m)| m)
    }
}
