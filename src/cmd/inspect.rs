//! `kiln inspect MODEL.onnx|BUNDLE`: signature, op counts, unsupported ops, and memory plans.

use super::common::{is_bundle, PlanArgs};
use anyhow::{Context, Result};
use kiln_compiler::{passes, CompileError, Graph};
use kiln_formats::bundle::OpenOptions;
use kiln_runtime::bundle::LoadedBundle;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// An .onnx model or a .kiln bundle.
    model: PathBuf,
    #[command(flatten)]
    plan: PlanArgs,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main(args: Args) -> Result<()> {
    let report = if is_bundle(&args.model) { bundle_report(&args.model)? } else { onnx_report(&args)? };
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(())
}

fn describe(g: &Graph, ids: &[usize]) -> Vec<Value> {
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

fn plan_json(name: &str, target: &str, plan: &kiln_compiler::plan::PlanReport) -> Value {
    json!({
        "name": name,
        "target": target,
        "arena_bytes": plan.arena_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "ratio": plan.ratio,
        "buffers": plan.buffers,
        "alignment": plan.alignment,
        "strategy": plan.strategy,
        "largest": plan.largest,
        "unplanned": plan.unplanned,
    })
}

fn onnx_report(args: &Args) -> Result<Value> {
    let (opts, targets) = args.plan.options()?;
    let path = &kiln_compiler::bundle::ModelSource::resolve(&args.model)?.onnx;
    let mut g = kiln_compiler::import_file(path, &opts).with_context(|| format!("importing {}", path.display()))?;
    let ops_in = g.op_counts();
    let unsupported: Vec<String> = match passes::infer::check_supported(&g) {
        Ok(()) => Vec::new(),
        Err(CompileError::Unsupported(list)) => list,
        Err(e) => return Err(e.into()),
    };
    let mut entry_points = Vec::new();
    let mut ops_after = None;
    if unsupported.is_empty() {
        for target in &targets {
            let topts = kiln_compiler::CompileOptions { target: target.clone(), ..opts.clone() };
            let c = kiln_compiler::compile_graph(g.clone(), &topts)
                .with_context(|| format!("planning {}", path.display()))?;
            ops_after = Some(c.ops_after.clone());
            entry_points.push(plan_json("main", &target.name, &c.plan));
        }
        passes::optimize(&mut g)?;
    }
    Ok(json!({
        "kind": "onnx",
        "model": path.display().to_string(),
        "opsets": g.opsets,
        "inputs": describe(&g, &g.inputs),
        "outputs": describe(&g, &g.outputs),
        "ops": ops_in,
        "ops_after_optimisation": ops_after,
        "constant_bytes": g.constant_bytes(),
        "unsupported": unsupported,
        "entry_points": entry_points,
    }))
}

fn bundle_report(path: &Path) -> Result<Value> {
    let loaded =
        LoadedBundle::open(path, OpenOptions::default()).with_context(|| format!("loading {}", path.display()))?;
    let b = &loaded.bundle;
    let m = &b.manifest;
    let entries: Vec<Value> = m
        .entries
        .iter()
        .map(|e| {
            let start = b.entry_range(&e.name).map(|r| r.start).unwrap_or(0);
            json!({"name": e.name, "kind": e.kind, "offset": start, "len": e.len, "aligned_16k": start % 16384 == 0, "checksum": e.checksum})
        })
        .collect();
    let entry_points: Vec<Value> = m
        .entry_points
        .iter()
        .map(|ep| {
            let ratio = if ep.plan.lower_bound_bytes == 0 {
                1.0
            } else {
                ep.plan.arena_bytes as f64 / ep.plan.lower_bound_bytes as f64
            };
            json!({
                "name": ep.name,
                "target": ep.target,
                "arena_bytes": ep.plan.arena_bytes,
                "lower_bound_bytes": ep.plan.lower_bound_bytes,
                "ratio": ratio,
                "buffers": ep.plan.buffers,
                "alignment": ep.plan.alignment,
                "inputs": ep.inputs,
                "outputs": ep.outputs,
            })
        })
        .collect();
    Ok(json!({
        "kind": "bundle",
        "model": path.display().to_string(),
        "format_version": m.format_version.to_string(),
        "producer": m.producer,
        "source": m.source,
        "targets": m.targets,
        "entries": entries,
        "entry_points": entry_points,
        "metadata": m.metadata,
    }))
}

fn sig_line(v: &Value) -> String {
    let dims = match &v["shape"] {
        Value::Array(a) => a.iter().map(|d| d.as_str().unwrap_or("?").to_string()).collect::<Vec<_>>().join(", "),
        _ => v["dims"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| match (&d["value"], &d["symbol"]) {
                        (Value::Number(n), _) => n.to_string(),
                        (_, Value::String(s)) => format!("{s}≤{}", d["max"]),
                        _ => "?".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
    };
    format!("{} {} [{dims}]", v["name"].as_str().unwrap_or(""), v["dtype"].as_str().unwrap_or("?"))
}

fn print_text(r: &Value) {
    println!("{}: {}", r["kind"].as_str().unwrap_or(""), r["model"].as_str().unwrap_or(""));
    if r["kind"] == "bundle" {
        let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
        println!(
            "format {} by {} {}",
            text(&r["format_version"]),
            text(&r["producer"]["name"]),
            text(&r["producer"]["version"])
        );
        println!("source {} (sha256 {})", text(&r["source"]["name"]), text(&r["source"]["sha256"]));
        println!("entries:");
        for e in r["entries"].as_array().into_iter().flatten() {
            println!(
                "  {:<24} {:<10} {:>12} bytes at {:>10}{}",
                e["name"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                e["len"],
                e["offset"],
                if e["kind"] == "weights" { format!(" 16KiB-aligned: {}", e["aligned_16k"]) } else { String::new() }
            );
        }
    } else {
        for (title, key) in [("inputs", "inputs"), ("outputs", "outputs")] {
            println!("{title}:");
            for v in r[key].as_array().into_iter().flatten() {
                println!("  {}", sig_line(v));
            }
        }
        let ops = r["ops"].as_object().cloned().unwrap_or_default();
        println!("ops ({} nodes):", ops.values().filter_map(|v| v.as_u64()).sum::<u64>());
        for (op, n) in &ops {
            println!("  {op:<24} {n}");
        }
        if let Some(after) = r["ops_after_optimisation"].as_object() {
            println!(
                "after shape folding, constant folding and dead code removal: {} nodes",
                after.values().filter_map(|v| v.as_u64()).sum::<u64>()
            );
        }
        println!("constants: {} bytes", r["constant_bytes"]);
        let unsupported: Vec<&str> =
            r["unsupported"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        println!(
            "unsupported ops: {}",
            if unsupported.is_empty() { "none".to_string() } else { unsupported.join(", ") }
        );
    }
    for ep in r["entry_points"].as_array().into_iter().flatten() {
        println!(
            "plan '{}' [{}]: arena {} bytes, lower bound {}, ratio {:.4}, buffers {}",
            ep["name"].as_str().unwrap_or(""),
            ep["target"].as_str().unwrap_or(""),
            ep["arena_bytes"],
            ep["lower_bound_bytes"],
            ep["ratio"].as_f64().unwrap_or(0.0),
            ep["buffers"]
        );
        for v in ep["inputs"].as_array().into_iter().flatten() {
            println!("  input  {}", sig_line(v));
        }
        for v in ep["outputs"].as_array().into_iter().flatten() {
            println!("  output {}", sig_line(v));
        }
        if let Some(u) = ep["unplanned"].as_array().filter(|u| !u.is_empty()) {
            println!("  {} values sized at run time: their dims are unbounded", u.len());
        }
    }
}
