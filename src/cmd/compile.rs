//! `kiln compile MODEL -o OUT.kiln`: compile an ONNX model (or export folder) into a bundle.

use super::common::{physical_memory, PlanArgs};
use super::progress::phase;
use anyhow::{bail, Context, Result};
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::passes::quantize::WeightFormat;
use kiln_formats::target::parse_size;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// An .onnx file, or a folder holding model.onnx (and tokenizer.json, generation_config.json).
    model: PathBuf,
    /// The bundle to write.
    #[arg(short, long, required_unless_present = "plan_only")]
    output: Option<PathBuf>,
    #[command(flatten)]
    plan: PlanArgs,
    /// tokenizer.json to store in the bundle (default: the one in the model's folder).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Causal LMs: most tokens (prompt + generated) a sequence may hold; the decode plan is sized
    /// for it (default: the model's context from config.json, at most 2048).
    #[arg(long, value_name = "N")]
    max_context: Option<u64>,
    /// Causal LMs: most prompt tokens one prefill call takes (default 1024, or --dim SEQUENCE=..N).
    #[arg(long, value_name = "N")]
    prefill_max: Option<u64>,
    /// How products' weights are stored: f32 as exported, q8 (int8 in blocks of 32 with one
    /// half-float scale each), q4 (4-bit in blocks of 32 with a half-float scale and minimum
    /// each), f16 or bf16 (16-bit floats, rounded to nearest), read directly by the kernels;
    /// embeddings and norms stay f32.
    #[arg(long, value_enum, default_value = "f32")]
    weights: Weights,
    /// Causal LMs on CPU: how the KV cache is stored. f16 halves its memory and the bytes
    /// attention reads per token, the new positions rounded to nearest; states a product rather
    /// than fused attention reads stay f32.
    #[arg(long, value_enum, default_value = "f32")]
    kv_cache: KvCache,
    /// Largest arena one entry point's plan may need, e.g. 8GiB (default: half the machine's
    /// physical memory); a larger plan is refused, naming both numbers.
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    /// Plan and verify only: write no bundle and read no weight.
    #[arg(long)]
    plan_only: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// `--kv-cache` values.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum KvCache {
    F32,
    F16,
}

/// `--weights` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Weights {
    F32,
    Q8,
    Q4,
    F16,
    BF16,
}

pub fn main(args: Args) -> Result<()> {
    let started = Instant::now();
    let (mut opts, targets) = args.plan.options()?;
    opts.max_context = args.max_context;
    opts.prefill_max = args.prefill_max;
    opts.weights = match args.weights {
        Weights::F32 => WeightFormat::F32,
        Weights::Q8 => WeightFormat::Q8,
        Weights::Q4 => WeightFormat::Q4,
        Weights::F16 => WeightFormat::F16,
        Weights::BF16 => WeightFormat::BF16,
    };
    opts.half_kv_cache = args.kv_cache == KvCache::F16;
    opts.max_memory = match &args.max_memory {
        Some(s) => Some(parse_size(s).map_err(anyhow::Error::msg).context("--max-memory")?),
        None => physical_memory().map(|m| m / 2),
    };
    let mut source = ModelSource::resolve(&args.model)?;
    if let Some(t) = &args.tokenizer {
        source.tokenizer = Some(t.clone());
    }
    if args.plan_only {
        return plan_only(&args, &source, &opts, &targets, started);
    }
    let output = args.output.clone().context("--output is required")?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        bail!("the folder {} of --output does not exist: create it or pass another --output", dir.display());
    }
    let summary = phase(format!("compiling {}: import, optimise, plan, write weights", args.model.display()), || {
        compile_bundle(&source, &opts, &targets, &output)
    })
    .with_context(|| format!("compiling {} into {}", args.model.display(), output.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let plans: Vec<_> = summary
        .compiled
        .iter()
        .map(|ce| {
            let c = &ce.compiled;
            json!({
                "entry": ce.entry,
                "target": ce.target,
                "arena_bytes": c.plan.arena_bytes,
                "lower_bound_bytes": c.plan.lower_bound_bytes,
                "ratio": c.plan.ratio,
                "buffers": c.plan.buffers,
                "alignment": c.plan.alignment,
                "strategy": c.plan.strategy,
                "unplanned": c.plan.unplanned,
                "splits": c.plan.splits,
                "placement": c.placement,
            })
        })
        .collect();
    let (ops_before, ops_after) = summary
        .compiled
        .first()
        .map(|ce| (ce.compiled.ops_before.values().sum::<usize>(), ce.compiled.ops_after.values().sum::<usize>()))
        .unwrap_or_default();
    let report = json!({
        "command": "compile",
        "ok": true,
        "plan_only": false,
        "output": output.display().to_string(),
        "nodes_imported": ops_before,
        "nodes_after_optimisation": ops_after,
        "weight_bytes": summary.weight_bytes,
        "weight_entries": summary.manifest.entries.iter().filter(|e| e.kind == "weights").count(),
        "plans": plans,
        "generation": summary.generation,
        "notes": summary.notes,
        "seconds": secs,
    });
    if args.json {
        println!("{report}");
    }
    eprintln!("compiled {} -> {} in {secs:.2}s", args.model.display(), output.display());
    eprintln!("  nodes: {ops_before} imported, {ops_after} after shape and constant folding");
    eprintln!("  weights: {} bytes in {} entries", summary.weight_bytes, report["weight_entries"]);
    for ce in &summary.compiled {
        let (c, target) = (&ce.compiled, format!("{}/{}", ce.entry, ce.target));
        eprintln!(
            "  plan[{target}]: arena {} bytes in {} buffer(s), lower bound {}, ratio {:.4} ({})",
            c.plan.arena_bytes,
            c.plan.buffers.len(),
            c.plan.lower_bound_bytes,
            c.plan.ratio,
            c.plan.strategy
        );
        for s in &c.plan.splits {
            eprintln!("  plan[{target}]: split {s}");
        }
        if !c.plan.unplanned.is_empty() {
            eprintln!("  plan[{target}]: {} values sized at run time (data-dependent shapes)", c.plan.unplanned.len());
        }
        if let Some(p) = &c.placement {
            eprintln!(
                "  place[{target}]: {} steps on GPU, {} on CPU; {} transfers to GPU, {} to CPU",
                p.gpu_steps, p.cpu_steps, p.transfers.0, p.transfers.1
            );
            for (op, (n, why)) in &p.cpu_ops {
                eprintln!("  place[{target}]: {op} x{n} on CPU: {why}");
            }
        }
    }
    for note in &summary.notes {
        eprintln!("  note: {note}");
    }
    Ok(())
}

/// `--plan-only`: compile and plan each target, print the plans, write nothing.
fn plan_only(
    args: &Args,
    source: &ModelSource,
    opts: &kiln_compiler::CompileOptions,
    targets: &[kiln_formats::target::TargetLimits],
    started: Instant,
) -> Result<()> {
    let mut plans = Vec::new();
    let graph =
        phase(format!("importing {}", source.onnx.display()), || kiln_compiler::import_file(&source.onnx, opts))
            .with_context(|| format!("importing {}", source.onnx.display()))?;
    for target in targets {
        let topts = kiln_compiler::CompileOptions { target: target.clone(), require_bounds: true, ..opts.clone() };
        let c = phase(format!("planning for {}", target.name), || kiln_compiler::compile_graph(graph.clone(), &topts))
            .with_context(|| format!("planning {}", args.model.display()))?;
        let p = &c.plan;
        eprintln!(
            "plan[{}]: arena {} bytes in {} buffer(s) {:?}, lower bound {}, ratio {:.4} ({}), verified",
            target.name,
            p.arena_bytes,
            p.buffers.len(),
            p.buffers,
            p.lower_bound_bytes,
            p.ratio,
            p.strategy
        );
        for (name, bytes) in &p.largest {
            eprintln!("  largest: {name} {bytes} bytes");
        }
        for s in &p.splits {
            eprintln!("  split {s}");
        }
        plans.push(json!({"entry": "main", "target": target.name, "arena_bytes": p.arena_bytes,
            "lower_bound_bytes": p.lower_bound_bytes, "ratio": p.ratio, "buffers": p.buffers, "alignment": p.alignment,
            "strategy": p.strategy, "unplanned": p.unplanned, "splits": p.splits, "largest": p.largest}));
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("planned {} in {secs:.2}s (no bundle written)", args.model.display());
    if args.json {
        println!(
            "{}",
            json!({"command": "compile", "ok": true, "plan_only": true, "output": null, "plans": plans, "seconds": secs})
        );
    }
    Ok(())
}
