//! `kiln inspect MODEL.onnx`: signature, op counts, unsupported ops.

use anyhow::{Context, Result};
use kiln_compiler::{passes, CompileOptions, Graph};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An .onnx model.
    model: PathBuf,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

fn describe(g: &Graph, ids: &[usize]) -> Vec<serde_json::Value> {
    ids.iter()
        .map(|&id| {
            let v = &g.values[id];
            json!({
                "name": v.name,
                "dtype": v.dtype.map(|d| d.name()),
                "shape": v.shape.as_ref().map(|s| s.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
            })
        })
        .collect()
}

pub fn main(args: Args) -> Result<()> {
    let opts = CompileOptions::default();
    let mut g = kiln_compiler::import_file(&args.model, &opts)
        .with_context(|| format!("importing {}", args.model.display()))?;
    let ops_in = g.op_counts();
    let unsupported: Vec<String> = match passes::infer::check_supported(&g) {
        Ok(()) => Vec::new(),
        Err(kiln_compiler::CompileError::Unsupported(list)) => list,
        Err(e) => return Err(e.into()),
    };
    let mut optimized = None;
    if unsupported.is_empty() {
        passes::optimize(&mut g).with_context(|| format!("optimising {}", args.model.display()))?;
        optimized = Some(g.op_counts());
    }
    let report = json!({
        "model": args.model.display().to_string(),
        "opsets": g.opsets,
        "inputs": describe(&g, &g.inputs),
        "outputs": describe(&g, &g.outputs),
        "ops": ops_in,
        "ops_after_optimisation": optimized,
        "constant_bytes": g.constant_bytes(),
        "unsupported": unsupported,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let sig = |title: &str, list: &serde_json::Value| {
        println!("{title}:");
        for v in list.as_array().into_iter().flatten() {
            println!(
                "  {} {} {}",
                v["name"].as_str().unwrap_or(""),
                v["dtype"].as_str().unwrap_or("?"),
                v["shape"]
            );
        }
    };
    println!("model: {}", args.model.display());
    sig("inputs", &report["inputs"]);
    sig("outputs", &report["outputs"]);
    println!("ops ({} nodes):", ops_in.values().sum::<usize>());
    for (op, n) in &ops_in {
        println!("  {op:<24} {n}");
    }
    if let Some(after) = &optimized {
        println!(
            "after shape folding, constant folding and dead code removal: {} nodes",
            after.values().sum::<usize>()
        );
    }
    println!("constants: {} bytes", g.constant_bytes());
    if unsupported.is_empty() {
        println!("unsupported ops: none");
    } else {
        println!("unsupported ops: {}", unsupported.join(", "));
    }
    Ok(())
}
