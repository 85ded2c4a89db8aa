//! `kiln inspect MODEL.onnx|BUNDLE`: signature, op counts, unsupported ops, and memory plans.

use super::common::{is_bundle, PlanArgs};
use super::progress::phase;
use anyhow::{bail, Context, Result};
use kiln_compiler::plan::svg::{human_bytes, memory_svg, ChartOptions};
use kiln_compiler::{passes, CompileError, Graph};
use kiln_formats::bundle::OpenOptions;
use kiln_formats::program::Program;
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
    /// Draw the memory plan of an entry point into this SVG file (step × byte offset).
    #[arg(long, value_name = "FILE")]
    memory_svg: Option<PathBuf>,
    /// Entry point to draw with --memory-svg (default: the first; an .onnx model has `main`).
    #[arg(long, value_name = "NAME", requires = "memory_svg")]
    entry: Option<String>,
}

/// An entry point's program, for the picture: (entry, target, program).
type Planned = (String, String, Program);

pub fn main(args: Args) -> Result<()> {
    let (report, programs) = if is_bundle(&args.model) { bundle_report(&args.model)? } else { onnx_report(&args)? };
    if let Some(file) = &args.memory_svg {
        draw(&args, file, &programs)?;
    }
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(())
}

/// `--memory-svg`: the chosen entry point's plan, drawn into `file`.
fn draw(args: &Args, file: &Path, programs: &[Planned]) -> Result<()> {
    let names = || programs.iter().map(|(e, t, _)| format!("{e} [{t}]")).collect::<Vec<_>>().join(", ");
    let chosen = match &args.entry {
        Some(name) => programs.iter().find(|(e, _, _)| e == name).with_context(|| {
            format!("{} has no entry point '{name}'; pass --entry with one of: {}", args.model.display(), names())
        })?,
        None => match programs.first() {
            Some(p) => p,
            None => bail!(
                "{} has no memory plan to draw: kiln cannot run some of its ops (see `kiln inspect {}`)",
                args.model.display(),
                args.model.display()
            ),
        },
    };
    let (entry, target, program) = chosen;
    let stem = args.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let model_name = if stem == "model" {
        args.model.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned()).unwrap_or(stem)
    } else {
        stem
    };
    let opts =
        ChartOptions { title: format!("{model_name}: memory plan of '{entry}' [{target}]"), ..Default::default() };
    let (svg, summary) = memory_svg(program, &opts).map_err(anyhow::Error::msg).context("drawing the memory plan")?;
    std::fs::write(file, svg).with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "memory plan of '{entry}' [{target}] -> {}: {} values ({} drawn, {} in {} groups), arena {}, lower bound {}",
        file.display(),
        summary.tensors,
        summary.drawn,
        summary.grouped,
        summary.groups,
        human_bytes(summary.arena_bytes as f64),
        human_bytes(summary.lower_bound_bytes as f64)
    );
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
        "entry": name,
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

fn onnx_report(args: &Args) -> Result<(Value, Vec<Planned>)> {
    let (opts, targets) = args.plan.options()?;
    let path = &kiln_compiler::bundle::ModelSource::resolve(&args.model)?.onnx;
    let mut g = phase(format!("importing {}", path.display()), || kiln_compiler::import_file(path, &opts))
        .with_context(|| format!("importing {}", path.display()))?;
    let mut programs = Vec::new();
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
            let c = phase(format!("planning for {}", target.name), || kiln_compiler::compile_graph(g.clone(), &topts))
                .with_context(|| format!("planning {}", path.display()))?;
            ops_after = Some(c.ops_after.clone());
            entry_points.push(plan_json("main", &target.name, &c.plan));
            programs.push(("main".to_string(), target.name.clone(), c.program));
        }
        passes::optimize(&mut g)?;
    }
    let report = json!({
        "command": "inspect",
        "ok": true,
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
    });
    Ok((report, programs))
}

fn bundle_report(path: &Path) -> Result<(Value, Vec<Planned>)> {
    let loaded = phase(format!("loading {} (checksums, plans)", path.display()), || {
        LoadedBundle::open(path, OpenOptions { weights_in_background: false, ..OpenOptions::default() })
    })
    .with_context(|| format!("loading {}", path.display()))?;
    let programs: Vec<Planned> =
        loaded.entries.iter().map(|(ep, m)| (ep.name.clone(), ep.target.clone(), m.program().clone())).collect();
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
                "entry": ep.name,
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
    let report = json!({
        "command": "inspect",
        "ok": true,
        "kind": "bundle",
        "model": path.display().to_string(),
        "format_version": m.format_version.to_string(),
        "producer": m.producer,
        "source": m.source,
        "targets": m.targets,
        "entries": entries,
        "entry_points": entry_points,
        "metadata": m.metadata,
    });
    Ok((report, programs))
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
