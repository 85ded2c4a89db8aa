//! Pieces several subcommands share: plan options, loading a model from ONNX or a bundle, and
//! reading input tensors.

use super::device::DeviceFlag;
use anyhow::{bail, Context, Result};
use kiln_compiler::CompileOptions;
use kiln_formats::bundle::OpenOptions;
use kiln_formats::target::{parse_size, TargetLimits};
use kiln_formats::{npy, Dim, Tensor};
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::{Model, TensorRef};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// `--dim`, `--target`, `--max-buffer`: how symbolic dims are bounded and what the plan must fit.
#[derive(clap::Args, Clone, Default)]
pub struct PlanArgs {
    /// Fix a symbolic dim (NAME=N) or bound it (NAME=..MAX); repeatable.
    #[arg(long = "dim", value_name = "NAME=N|NAME=..MAX")]
    pub dims: Vec<String>,
    /// Target(s) to plan for.
    #[arg(long, value_parser = ["cpu", "gpu", "all"], default_value = "cpu")]
    pub target: String,
    /// Largest buffer (and binding) the target allows, e.g. 64KiB, 128MiB, 4GiB or bytes.
    #[arg(long, value_name = "SIZE")]
    pub max_buffer: Option<String>,
}

impl PlanArgs {
    /// Compile options and targets from the flags.
    pub fn options(&self) -> Result<(CompileOptions, Vec<TargetLimits>)> {
        let mut opts = CompileOptions::default();
        for spec in &self.dims {
            let (name, val) =
                spec.split_once('=').with_context(|| format!("--dim '{spec}' must be NAME=N or NAME=..MAX"))?;
            if let Some(max) = val.strip_prefix("..") {
                let max: u64 = max.parse().with_context(|| format!("--dim '{spec}': '{max}' is not a whole number"))?;
                opts.dim_bounds.insert(name.to_string(), max);
            } else {
                let v: i64 = val.parse().with_context(|| format!("--dim '{spec}': '{val}' is not a whole number"))?;
                if v < 0 {
                    bail!("--dim '{spec}': a dim cannot be negative");
                }
                opts.fixed_dims.insert(name.to_string(), v);
            }
        }
        let mut targets = match self.target.as_str() {
            "gpu" => vec![TargetLimits::gpu_default()],
            "all" => vec![TargetLimits::cpu(), TargetLimits::gpu_default()],
            _ => vec![TargetLimits::cpu()],
        };
        if let Some(s) = &self.max_buffer {
            let bytes = parse_size(s).map_err(anyhow::Error::msg).context("--max-buffer")?;
            targets = targets.into_iter().map(|t| t.with_max_buffer(bytes)).collect();
        }
        opts.target = targets[0].clone();
        Ok((opts, targets))
    }
}

/// Whether `path` is a kiln bundle (a zip file, or a file named `.kiln`) rather than an ONNX
/// model. The name counts too, so that a damaged bundle gets the bundle loader's error (which
/// names the damage) instead of an ONNX decoding error.
pub fn is_bundle(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "kiln") && path.is_file() {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"PK\x03\x04"
}

/// Reads `--input NAME=FILE.npy` and `--inputs FILE.npz` into named tensors.
pub fn read_inputs(specs: &[String], npz: Option<&Path>) -> Result<HashMap<String, Tensor>> {
    let mut given = HashMap::new();
    if let Some(npz) = npz {
        for (name, t) in npy::read_npz(npz)? {
            given.insert(name, t);
        }
    }
    for spec in specs {
        let (name, file) =
            spec.split_once('=').with_context(|| format!("--input '{spec}' must look like NAME=FILE.npy"))?;
        given.insert(name.to_string(), npy::read_npy(file.as_ref())?);
    }
    Ok(given)
}

/// The model to run: the bundle's CPU entry point, or the ONNX file compiled in memory with its
/// symbolic dims fixed by the given inputs (so the plan is exact for this run).
/// The model of `path`: a bundle's entry point `entry` (default `main`, else the first), or an
/// ONNX model compiled with its dims fixed from `given`.
pub fn load_model(
    path: &Path,
    given: &HashMap<String, Tensor>,
    opts: OpenOptions,
    entry: Option<&str>,
    device: DeviceFlag,
) -> Result<Arc<Model>> {
    if is_bundle(path) {
        if !opts.verify_checksums {
            eprintln!("warning: checksums not verified (--no-verify-checksums)");
        }
        let (loaded, chosen) = super::device::open_on(path, opts, device)?;
        let target = chosen.target;
        if let Some(name) = entry {
            let names: Vec<&str> = loaded.entries.iter().map(|(ep, _)| ep.name.as_str()).collect();
            let model = loaded.model(name, Some(target)).or_else(|| loaded.model(name, None));
            return Ok(model
                .with_context(|| {
                    format!("the bundle has no entry point '{name}'; pass --entry with one of: {}", names.join(", "))
                })?
                .clone());
        }
        let model = loaded.model("main", Some(target)).or_else(|| loaded.entries.first().map(|(_, m)| m));
        return Ok(model.context("the bundle has no entry point")?.clone());
    }
    if device == DeviceFlag::Gpu {
        bail!("--device gpu runs bundles: compile {} with --target gpu first", path.display());
    }
    // The plan is allocated right away, so it must fit the machine (as `compile`'s default limit).
    let opts = CompileOptions { max_memory: physical_memory().map(|m| m / 2), ..CompileOptions::default() };
    let path = &kiln_compiler::bundle::ModelSource::resolve(path)?.onnx;
    let mut graph =
        super::progress::phase(format!("importing {}", path.display()), || kiln_compiler::import_file(path, &opts))
            .with_context(|| format!("importing {}", path.display()))?;
    graph.fix_dims(&dims_from_inputs(&graph, given)?);
    let compiled =
        super::progress::phase(format!("compiling {}", path.display()), || kiln_compiler::compile_graph(graph, &opts))
            .with_context(|| format!("compiling {}", path.display()))?;
    Ok(Model::new(compiled.program, &compiled.weights)?)
}

/// The given tensors in the model's input order; an error naming a missing or unknown input.
pub fn order_inputs<'a>(model: &Model, given: &'a HashMap<String, Tensor>) -> Result<Vec<TensorRef<'a>>> {
    let names: Vec<String> = model.input_names().iter().map(|s| s.to_string()).collect();
    if let Some(extra) = given.keys().find(|k| !names.contains(k)) {
        bail!("the model has no input named '{extra}' (it takes: {})", names.join(", "));
    }
    names
        .iter()
        .map(|n| match given.get(n) {
            Some(t) => Ok(TensorRef::from_tensor(t)),
            None => {
                bail!("input '{n}' was not given; pass --input {n}=FILE.npy (the model takes: {})", names.join(", "))
            }
        })
        .collect()
}

/// Values of the symbolic input dims, read off the given tensors.
fn dims_from_inputs(g: &kiln_compiler::Graph, given: &HashMap<String, Tensor>) -> Result<HashMap<String, i64>> {
    let mut fixed: HashMap<String, i64> = HashMap::new();
    for &i in &g.inputs {
        let v = &g.values[i];
        let (Some(t), Some(shape)) = (given.get(&v.name), &v.shape) else { continue };
        if t.shape.len() != shape.len() {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            bail!(
                "input '{}' must have rank {} (shape [{}]), got shape {:?}",
                v.name,
                shape.len(),
                dims.join(", "),
                t.shape
            );
        }
        for (d, &got) in shape.iter().zip(&t.shape) {
            let syms = d.symbols();
            let Some(name) = syms.first().filter(|n| syms.len() == 1 && *d == Dim::sym(n)) else { continue };
            if let Some(prev) = fixed.insert(name.clone(), got as i64).filter(|&p| p != got as i64) {
                bail!("dim '{name}' is {prev} in one input and {got} in '{}'", v.name);
            }
        }
    }
    Ok(fixed)
}

/// Output names can hold '/' or ':' (e.g. `present.0/key`); keep file names flat.
pub fn file_name_for(name: &str) -> String {
    name.chars().map(|c| if c.is_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// Refuses an entry point whose arena is larger than this machine's memory (allocating it would
/// abort the process instead of failing with a message).
pub fn check_arenas(path: &Path, loaded: &LoadedBundle) -> Result<()> {
    if let Some(memory) = physical_memory() {
        for (ep, model) in &loaded.entries {
            let arena = model.arena_bytes();
            if arena > memory {
                bail!(
                    "{}: entry point '{}' (target {}) needs an arena of {arena} bytes, more than this machine's memory ({memory} bytes)",
                    path.display(),
                    ep.name,
                    ep.target
                );
            }
        }
    }
    Ok(())
}

pub use kiln_runtime::memory::physical_memory;

/// Peak resident memory of this process (Linux: VmHWM); `None` where the platform does not say.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
