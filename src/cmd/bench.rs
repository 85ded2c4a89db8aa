//! `kiln bench BUNDLE`: load time, prefill and decode speed and peak memory of a causal LM bundle
//! (the numbers `bench/compare.sh` sets beside onnxruntime's), and optionally decode speed at
//! several context lengths with how much of each token's time goes to copying the KV cache.

use anyhow::{bail, Context, Result};
use kiln_formats::bundle::OpenOptions;
use kiln_runtime::generate::{GenerateOptions, LanguageModel};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A .kiln bundle of a causal LM.
    bundle: PathBuf,
    /// Prompt tokens of the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Tokens generated (greedy, EOS ignored) after the prompt for the decode measurement.
    #[arg(long, default_value_t = 64)]
    gen: usize,
    /// Repeats of the prefill and decode measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also time decoding at these context lengths (tokens already cached), e.g. 10,100,1000.
    #[arg(long, value_delimiter = ',')]
    contexts: Vec<usize>,
    /// Decode steps timed per context.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Threads for the kernels (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Read the bundle into memory instead of mapping it: a copy of the weights, but immune to
    /// the file being truncated or rewritten while kiln runs (see README, "Files that change underneath").
    #[arg(long)]
    no_mmap: bool,
    /// Skip hashing the bundle's entries at load, as `kiln run --no-verify-checksums`: load then
    /// measures opening the map and preparing the model alone.
    #[arg(long)]
    no_verify_checksums: bool,
    /// Where to run (see `kiln run --device`).
    #[arg(long, value_enum, default_value_t = super::device::DeviceFlag::Cpu)]
    device: super::device::DeviceFlag,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also print the decode time per op type at each context.
    #[arg(long)]
    profile: bool,
    /// Also measure the machine's memory read bandwidth with the same threads over a working set
    /// of the weight bytes a decoded token reads (after everything else, so peak RSS excludes
    /// it), and the share of it decode's weight traffic reaches: bytes per token × tokens/s.
    #[arg(long)]
    bandwidth: bool,
}

/// A fixed, varied prompt (the same ids `bench/ort_bench.py` feeds onnxruntime): valid, not meaningful.
fn bench_prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919 + 13) % 97 + 3).collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Ops whose time is moving cache bytes: the exported `Concat(past, new)`, the in-place append
/// of the new positions, and the copies of inputs into and outputs out of the session.
const COPY_OPS: [&str; 4] = ["Concat", "KvAppend", "(inputs)", "(outputs)"];

/// The twelve op types that took longest, with their share of the time.
fn print_profile(p: &kiln_runtime::Profile) {
    let mut ops: Vec<_> = p.ops.iter().collect();
    ops.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
    for (op, (d, calls)) in ops.iter().take(12) {
        let share = d.as_secs_f64() / p.total().as_secs_f64().max(1e-12) * 100.0;
        eprintln!("    {op:<16} {share:>5.1}%  {calls} calls");
    }
}

pub fn main(args: Args) -> Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("--threads")?;
    }
    if args.tokens == 0 || args.gen < 2 || args.prompt_len == 0 || args.repeats == 0 {
        bail!("--tokens, --prompt-len and --repeats must be at least 1, --gen at least 2");
    }
    // Load as a server would: checksums verified (unless told not to; the weights' in the
    // background, so prefill's first run includes any wait for them), the model and one
    // generator ready to run.
    let started = Instant::now();
    let (loaded, chosen) = super::device::open_on(
        &args.bundle,
        OpenOptions {
            read_into_memory: args.no_mmap,
            verify_checksums: !args.no_verify_checksums,
            ..OpenOptions::default()
        },
        args.device,
    )?;
    let lm = Arc::new(LanguageModel::from_bundle(&loaded, Some(chosen.target))?);
    let mut generator = lm.generator();
    let load_s = started.elapsed().as_secs_f64();
    let max = lm.config().max_context as usize;
    if args.prompt_len + args.gen > max {
        bail!(
            "--prompt-len {} + --gen {} does not fit the bundle's context of {max}; pass smaller values",
            args.prompt_len,
            args.gen
        );
    }
    let prompt = bench_prompt(args.prompt_len);
    let opts = GenerateOptions { max_tokens: args.gen, stop_at_eos: false, ..Default::default() };
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    generator.set_profiling(args.profile);
    let mut first_token_s = None;
    for _ in 0..args.repeats {
        let stats = generator.generate(&prompt, &opts, |_| ControlFlow::Continue(()))?;
        // Open until the first token: what a user waits for, including any wait for the weights'
        // checksums.
        first_token_s.get_or_insert(load_s + stats.prefill.as_secs_f64());
        prefill.push(args.prompt_len as f64 / stats.prefill.as_secs_f64().max(1e-12));
        decode.push((stats.generated_tokens - 1) as f64 / stats.decode.as_secs_f64().max(1e-12));
    }
    let (prefill_tps, decode_tps) = (median(&mut prefill), median(&mut decode));
    if let (true, (Some(p), _)) = (args.profile, generator.take_profile()) {
        eprintln!("prefill time by op ({} tokens, all repeats):", args.prompt_len);
        print_profile(&p);
    }
    let peak_rss = super::common::peak_memory_bytes();
    let checked = if args.no_verify_checksums {
        "checksums not verified"
    } else {
        "checksums verified; the weights' on a background thread, awaited by the first output"
    };
    eprintln!("load: {load_s:.3}s ({checked})");
    let first_token_s = first_token_s.unwrap_or(load_s);
    eprintln!("first token: {first_token_s:.3}s after opening the bundle");
    eprintln!("prefill: {prefill_tps:.1} tokens/s ({} tokens, median of {})", args.prompt_len, args.repeats);
    eprintln!("decode: {decode_tps:.1} tokens/s ({} tokens after the prompt, median of {})", args.gen, args.repeats);
    match peak_rss {
        Some(b) => eprintln!("peak RSS: {:.1} MiB", b as f64 / (1 << 20) as f64),
        None => eprintln!("peak RSS: unknown on this platform"),
    }

    let mut rows = Vec::new();
    if !args.contexts.is_empty() {
        eprintln!("{:>8} {:>12} {:>10} {:>12}", "context", "ms/token", "tokens/s", "cache copy");
    }
    for &ctx in &args.contexts {
        if ctx == 0 || ctx + args.tokens + 1 > max {
            bail!("context {ctx} + {} tokens does not fit the bundle's context of {max}", args.tokens + 1);
        }
        let prompt = bench_prompt(ctx);
        let mut generator = lm.generator();
        generator.set_profiling(true);
        let opts = GenerateOptions { max_tokens: args.tokens + 1, stop_at_eos: false, ..Default::default() };
        let stats = generator.generate(&prompt, &opts, |_| ControlFlow::Continue(()))?;
        let (_, decode) = generator.take_profile();
        if let (true, Some(p)) = (args.profile, &decode) {
            print_profile(p);
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
    // Decode reads every weight once per token; embeddings only a row.
    let weight_bytes = lm.decode_model().unwrap_or(lm.prefill_model()).weight_bytes_read();
    eprintln!(
        "weights read per decoded token: {:.1} MB ({:.1} GB/s at the decode rate)",
        weight_bytes as f64 / 1e6,
        weight_bytes as f64 * decode_tps / 1e9
    );
    let bandwidth = args.bandwidth.then(|| super::bandwidth::read_bandwidth(weight_bytes));
    let share = bandwidth.map(|b| weight_bytes as f64 * decode_tps / b);
    if let (Some(b), Some(s)) = (bandwidth, share) {
        eprintln!("memory read bandwidth: {:.1} GB/s; decode's weight traffic reaches {:.2} of it", b / 1e9, s);
    }
    let (kept, total) = (lm.kv_in_place(), lm.config().kv.len());
    let (cache, key) = match kept {
        _ if total == 0 => ("none (recomputes the sequence)".to_string(), "none"),
        k if k == total => (format!("in place ({total} tensors, appended per step)"), "in_place"),
        0 => ("copied per step".to_string(), "copied"),
        k => (format!("{k} of {total} tensors in place, the rest copied per step"), "partly_in_place"),
    };
    eprintln!("KV cache: {cache}; threads: {}; device: {}", rayon::current_num_threads(), chosen.describe());
    if args.json {
        println!(
            "{}",
            json!({"command": "bench", "ok": true, "bundle": args.bundle.display().to_string(),
            "threads": rayon::current_num_threads(), "load_s": load_s, "first_token_s": first_token_s,
            "checksums_verified": !args.no_verify_checksums, "prompt_len": args.prompt_len,
            "gen": args.gen, "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps,
            "peak_rss_bytes": peak_rss, "tokens": args.tokens, "decode_weight_bytes": weight_bytes,
            "read_bandwidth_bytes_per_s": bandwidth, "decode_bandwidth_share": share,
            "kv_cache": key, "device": chosen.describe(), "decode": rows})
        );
    }
    Ok(())
}
