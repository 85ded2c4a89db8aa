//! `kiln check BUNDLE --inputs IN.npz --expect OUT.npz`: run and compare every output; what users
//! put in CI to catch regressions when they re-export or recompile.

use super::common::{load_model, order_inputs, read_inputs};
use super::progress::phase;
use anyhow::{bail, Result};
use kiln_formats::bundle::OpenOptions;
use kiln_formats::{npy, Tensor};
use kiln_runtime::Session;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .kiln bundle (or an .onnx model).
    model: PathBuf,
    /// Inputs, as an .npz archive.
    #[arg(long)]
    inputs: PathBuf,
    /// Expected outputs, as an .npz archive named by output.
    #[arg(long)]
    expect: PathBuf,
    /// Relative tolerance.
    #[arg(long, default_value_t = 1e-4)]
    rtol: f64,
    /// Absolute tolerance.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Entry point of the bundle to check (default: main, else the first).
    #[arg(long)]
    entry: Option<String>,
    /// Where to run (see `kiln run --device`).
    #[arg(long, value_enum, default_value_t = super::device::DeviceFlag::Cpu)]
    device: super::device::DeviceFlag,
}

/// The worst element of a comparison.
struct Worst {
    index: usize,
    got: f64,
    expected: f64,
    excess: f64,
}

fn compare(got: &Tensor, exp: &Tensor, rtol: f64, atol: f64) -> Result<Option<Worst>, String> {
    if got.dtype != exp.dtype {
        return Err(format!("dtype {} but expected {}", got.dtype, exp.dtype));
    }
    if got.shape != exp.shape {
        return Err(format!("shape {:?} but expected {:?}", got.shape, exp.shape));
    }
    let mut worst: Option<Worst> = None;
    for i in 0..got.numel() {
        let (g, e) = (got.get_f64(i), exp.get_f64(i));
        let excess = if g.is_nan() && e.is_nan() {
            0.0
        } else if g.is_nan() || e.is_nan() || (g.is_infinite() || e.is_infinite()) && g != e {
            f64::INFINITY
        } else {
            (g - e).abs() - (atol + rtol * e.abs())
        };
        if excess > 0.0 && worst.as_ref().is_none_or(|w| excess > w.excess) {
            worst = Some(Worst { index: i, got: g, expected: e, excess });
        }
    }
    Ok(worst)
}

pub fn main(args: Args) -> Result<()> {
    let given = read_inputs(&[], Some(&args.inputs))?;
    let model = load_model(&args.model, &given, OpenOptions::default(), args.entry.as_deref(), args.device)?;
    let inputs = order_inputs(&model, &given)?;
    let outputs = phase("running", || Session::new(model.clone()).run(&inputs))?;
    let expected = npy::read_npz(&args.expect)?;
    let mut results = Vec::new();
    let mut failed = 0;
    for (name, got) in model.output_names().iter().zip(&outputs) {
        let Some((_, exp)) = expected.iter().find(|(n, _)| n == name) else {
            eprintln!("{name}: not in {} (skipped)", args.expect.display());
            results.push(json!({"output": name, "status": "missing"}));
            continue;
        };
        match compare(got, exp, args.rtol, args.atol) {
            Ok(None) => {
                eprintln!("{name}: ok");
                results.push(json!({"output": name, "status": "ok"}));
            }
            Ok(Some(w)) => {
                failed += 1;
                eprintln!("{name}: MISMATCH at flat index {}: got {}, expected {}", w.index, w.got, w.expected);
                results.push(json!({"output": name, "status": "mismatch", "index": w.index, "got": w.got, "expected": w.expected}));
            }
            Err(reason) => {
                failed += 1;
                eprintln!("{name}: MISMATCH: {reason}");
                results.push(json!({"output": name, "status": "mismatch", "reason": reason}));
            }
        }
    }
    if args.json {
        println!(
            "{}",
            json!({"command": "check", "ok": failed == 0, "model": args.model.display().to_string(),
                "rtol": args.rtol, "atol": args.atol, "outputs": results})
        );
    }
    if failed > 0 {
        bail!(
            "{failed} output(s) differ beyond rtol {} / atol {}; if the change is intended, regenerate {}",
            args.rtol,
            args.atol,
            args.expect.display()
        );
    }
    Ok(())
}
