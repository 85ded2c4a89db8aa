//! `kiln bench BUNDLE`: decode speed of a causal LM bundle at several context lengths, and how
//! much of each token's time goes to copying the KV cache.

use super::progress::phase;
use anyhow::{bail, Context, Result};
use kiln_formats::bundle::OpenOptions;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::generate::{GenerateOptions, LanguageModel};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// A .kiln bundle of a causal LM.
    bundle: PathBuf,
    /// Tokens already in the context when the timed decode steps start.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    contexts: Vec<usize>,
    /// Decode steps timed per context.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Threads for the kernels (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also print the decode time per op type at each context.
    #[arg(long)]
    profile: bool,
}

/// Ops whose time is copying cache tensors: the exported `Concat(past, new)` and the copies of
/// inputs into and outputs out of the session.
const COPY_OPS: [&str; 3] = ["Concat", "(inputs)", "(outputs)"];

pub fn main(args: Args) -> Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("--threads")?;
    }
    if args.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    let loaded = phase(format!("loading {}", args.bundle.display()), || {
        LoadedBundle::open(&args.bundle, OpenOptions { verify_checksums: false })
    })
    .with_context(|| format!("loading {}", args.bundle.display()))?;
    let lm = Arc::new(LanguageModel::from_bundle(&loaded, Some("cpu"))?);
    let max = lm.config().max_context as usize;
    let mut rows = Vec::new();
    eprintln!("{:>8} {:>12} {:>10} {:>12}", "context", "ms/token", "tokens/s", "cache copy");
    for &ctx in &args.contexts {
        if ctx == 0 || ctx + args.tokens + 1 > max {
            bail!("context {ctx} + {} tokens does not fit the bundle's context of {max}", args.tokens + 1);
        }
        // A fixed, varied prompt: the ids only need to be valid, not meaningful.
        let prompt: Vec<u32> = (0..ctx as u32).map(|i| (i * 7919 + 13) % 97 + 3).collect();
        let mut generator = lm.generator();
        generator.set_profiling(true);
        let opts = GenerateOptions { max_tokens: args.tokens + 1, stop_at_eos: false, ..Default::default() };
        let stats = generator.generate(&prompt, &opts, |_| ControlFlow::Continue(()))?;
        let (_, decode) = generator.take_profile();
        if let (true, Some(p)) = (args.profile, &decode) {
            let mut ops: Vec<_> = p.ops.iter().collect();
            ops.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
            for (op, (d, calls)) in ops.iter().take(12) {
                let share = d.as_secs_f64() / p.total().as_secs_f64().max(1e-12) * 100.0;
                eprintln!("    {op:<16} {share:>5.1}%  {calls} calls");
            }
        }
        let per_token = stats.decode.as_secs_f64() / args.tokens as f64;
        let copy_share = decode
            .map(|p| {
                let copy: f64 = COPY_OPS.iter().filter_map(|k| p.ops.get(*k)).map(|(d, _)| d.as_secs_f64()).sum();
                copy / p.total().as_secs_f64().max(1e-12)
            })
            .unwrap_or(0.0);
        eprintln!("{ctx:>8} {:>12.3} {:>10.1} {:>11.1}%", per_token * 1e3, 1.0 / per_token, copy_share * 100.0);
        rows.push(json!({"context": ctx, "ms_per_token": per_token * 1e3, "tokens_per_s": 1.0 / per_token,
            "cache_copy_share": copy_share}));
    }
    let cache = if lm.config().kv.is_empty() { "none (recomputes the sequence)" } else { "copied per step" };
    eprintln!("KV cache: {cache}; threads: {}", rayon::current_num_threads());
    if args.json {
        println!(
            "{}",
            json!({"command": "bench", "ok": true, "bundle": args.bundle.display().to_string(),
            "threads": rayon::current_num_threads(), "tokens": args.tokens,
            "kv_cache": if lm.config().kv.is_empty() { "none" } else { "copied" }, "decode": rows})
        );
    }
    Ok(())
}
