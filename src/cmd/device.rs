//! `--device cpu|gpu|auto`: which device runs a bundle, and opening the bundle onto it.

use anyhow::{bail, Context, Result};
use kiln_formats::bundle::{Bundle, OpenOptions};
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::gpu::Gpu;
use std::path::Path;

/// The `--device` flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceFlag {
    /// Every step on CPU (the bundle's CPU programs).
    #[default]
    Cpu,
    /// The bundle's GPU programs on the GPU; an error when there is no adapter or GPU plan.
    Gpu,
    /// The GPU when an adapter exists and the bundle has a GPU plan, else the CPU.
    Auto,
}

/// What runs the bundle: the target whose programs are used, and the GPU's description.
pub struct Chosen {
    pub target: &'static str,
    pub gpu: Option<String>,
}

impl Chosen {
    /// For `--stats`: e.g. `gpu: llvmpipe (Vulkan)` or `cpu`.
    pub fn describe(&self) -> String {
        match &self.gpu {
            Some(name) => format!("gpu: {name}"),
            None => "cpu".into(),
        }
    }
}

/// Opens `path` for `device`: the container and every check as `open_bundle` does, with the GPU
/// entry points loaded onto the GPU when it is chosen.
pub fn open_on(path: &Path, opts: OpenOptions, device: DeviceFlag) -> Result<(LoadedBundle, Chosen)> {
    let bundle = super::progress::phase(format!("opening {}", path.display()), || Bundle::open(path, opts))
        .with_context(|| format!("loading {}", path.display()))?;
    let has_gpu_plan = bundle.manifest.entry_points.iter().any(|ep| ep.target == "gpu");
    let has_cpu_plan = bundle.manifest.entry_points.iter().any(|ep| ep.target == "cpu");
    let gpu = match device {
        DeviceFlag::Cpu => None,
        DeviceFlag::Gpu => {
            if !has_gpu_plan {
                bail!(
                    "{} has no GPU plan: compile it with --target gpu (or all) to run it with --device gpu",
                    path.display()
                );
            }
            Some(Gpu::open().context("--device gpu")?)
        }
        DeviceFlag::Auto if has_gpu_plan => match Gpu::open() {
            Ok(gpu) => Some(gpu),
            Err(e) => {
                eprintln!("note: running on CPU: {e}");
                None
            }
        },
        DeviceFlag::Auto => None,
    };
    let describe = gpu.as_ref().map(|g| g.describe());
    let loaded =
        super::progress::phase(format!("loading {}", path.display()), || LoadedBundle::from_bundle_on(bundle, gpu))
            .with_context(|| format!("loading {}", path.display()))?;
    super::common::check_arenas(path, &loaded)?;
    // Without a GPU, a bundle compiled for the GPU only still runs: its transfers become copies.
    let target = if describe.is_some() || !has_cpu_plan { "gpu" } else { "cpu" };
    Ok((loaded, Chosen { target, gpu: describe }))
}
