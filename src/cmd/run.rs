//! `kiln run MODEL|BUNDLE --input NAME=FILE.npy ...`: run a model on tensors.

use super::common::{file_name_for, load_model, order_inputs, read_inputs};
use super::device::DeviceFlag;
use super::generate::GenArgs;
use anyhow::{Context, Result};
use kiln_formats::bundle::OpenOptions;
use kiln_formats::npy;
use kiln_runtime::Session;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An .onnx model or a .kiln bundle.
    model: PathBuf,
    /// An input tensor, as NAME=FILE.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// All inputs from one .npz archive (array names = input names).
    #[arg(long = "inputs", value_name = "FILE.npz")]
    npz: Option<PathBuf>,
    /// Write NAME.npy per output here instead of printing a summary.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Skip hashing the bundle's entries at load (faster; structure is still checked).
    #[arg(long)]
    no_verify_checksums: bool,
    /// Read the bundle into memory instead of mapping it: a copy of the weights, but immune to
    /// the file being truncated or rewritten while kiln runs (see README, "Files that change underneath").
    #[arg(long)]
    no_mmap: bool,
    /// Entry point of the bundle to run on tensors (default: main, else the first).
    #[arg(long)]
    entry: Option<String>,
    /// Where to run: cpu, gpu (the bundle's GPU plan on the GPU), or auto (the GPU when there is
    /// an adapter and the bundle has a GPU plan).
    #[arg(long, value_enum, default_value_t = DeviceFlag::Cpu)]
    device: DeviceFlag,
    /// Threads for the kernels (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    gen: GenArgs,
}

pub fn main(args: Args) -> Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("--threads")?;
    }
    let opts = OpenOptions {
        verify_checksums: !args.no_verify_checksums,
        read_into_memory: args.no_mmap,
        ..OpenOptions::default()
    };
    if args.gen.wanted() {
        return super::generate::main(&args.model, &args.gen, opts, args.device);
    }
    let given = read_inputs(&args.inputs, args.npz.as_deref())?;
    let model = load_model(&args.model, &given, opts, args.entry.as_deref(), args.device)?;
    let inputs = order_inputs(&model, &given)?;
    let outputs = Session::new(model.clone()).run(&inputs)?;
    let names = model.output_names();
    match &args.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, t) in names.iter().zip(&outputs) {
                let path = dir.join(format!("{}.npy", file_name_for(name)));
                npy::write_npy(&path, t).with_context(|| format!("writing output '{name}'"))?;
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            for (name, t) in names.iter().zip(&outputs) {
                let shown: Vec<String> = (0..t.numel().min(8)).map(|i| format!("{}", t.get_f64(i))).collect();
                let more = if t.numel() > 8 { ", ..." } else { "" };
                println!("{name}: {} {:?} [{}{more}]", t.dtype, t.shape, shown.join(", "));
            }
        }
    }
    Ok(())
}
