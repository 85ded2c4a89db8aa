//! `kiln run BUNDLE --prompt TEXT`: text generation with a causal LM bundle, streaming the new
//! text to stdout and logs and statistics to stderr.

use anyhow::{bail, Context, Result};
use kiln_formats::bundle::OpenOptions;
use kiln_runtime::generate::{GenerateOptions, LanguageModel, Sampling, StopReason};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The generation flags of `kiln run`.
#[derive(clap::Args, Debug)]
pub struct GenArgs {
    /// Generate text after this prompt (the bundle must hold a causal LM and a tokenizer).
    #[arg(long, conflicts_with_all = ["inputs", "npz"])]
    pub prompt: Option<String>,
    /// Generate after these token ids (comma-separated) and print the new ids, one line;
    /// needs no tokenizer.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "inputs", "npz"])]
    pub prompt_ids: Option<Vec<u32>>,
    /// Apply the bundle's chat template to the prompt (as one user message).
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only from the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample only from the most likely tokens whose probabilities reach p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler: one seed, one text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print load time, prefill and decode tokens/s and peak memory to stderr.
    #[arg(long)]
    pub stats: bool,
}

impl GenArgs {
    pub fn wanted(&self) -> bool {
        self.prompt.is_some() || self.prompt_ids.is_some()
    }
}

pub fn main(path: &Path, args: &GenArgs, opts: OpenOptions, device: super::device::DeviceFlag) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.chat && args.prompt.is_none() {
        bail!("--chat applies the chat template to --prompt TEXT; it cannot apply to --prompt-ids");
    }
    if !super::common::is_bundle(path) {
        bail!("--prompt needs a bundle: compile {} with `kiln compile` first", path.display());
    }
    let started = Instant::now();
    let (loaded, chosen) = super::device::open_on(path, opts, device)?;
    let lm =
        Arc::new(LanguageModel::from_bundle(&loaded, Some(chosen.target)).with_context(|| path.display().to_string())?);
    let load_secs = started.elapsed().as_secs_f64();

    let prompt = match (&args.prompt, &args.prompt_ids) {
        (Some(text), _) => lm.encode(text, args.chat)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let gen_opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed },
        stop_at_eos: !args.ignore_eos,
    };
    let mut generator = lm.generator();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut ids = Vec::new();
    let stats = if args.prompt.is_some() {
        let tok = lm.tokenizer()?;
        let mut stream = tok.decode_stream(true);
        let mut failure = None;
        let stats = generator.generate(&prompt, &gen_opts, |id| {
            let piece = match stream.step(id) {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(anyhow::anyhow!("decoding token {id}: {e}"));
                    return ControlFlow::Break(());
                }
            };
            if let Some(piece) = piece {
                // A closed stdout (`| head`) ends generation rather than failing it.
                if out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        writeln!(out).and_then(|_| out.flush()).ok();
        stats
    } else {
        let stats = generator.generate(&prompt, &gen_opts, |id| {
            ids.push(id.to_string());
            ControlFlow::Continue(())
        })?;
        writeln!(out, "{}", ids.join(" ")).and_then(|_| out.flush()).ok();
        stats
    };
    if args.stats {
        let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
        eprintln!("load: {load_secs:.3}s");
        let (on_gpu, on_cpu) = lm.prefill_model().placement_counts();
        match &chosen.gpu {
            Some(_) => eprintln!("device: {} ({on_gpu} ops on GPU, {on_cpu} on CPU per prefill)", chosen.describe()),
            None => eprintln!("device: {}", chosen.describe()),
        }
        eprintln!(
            "prefill: {} tokens in {:.3}s ({:.1} tokens/s)",
            stats.prompt_tokens,
            stats.prefill.as_secs_f64(),
            rate(stats.prompt_tokens, stats.prefill)
        );
        let decoded = stats.generated_tokens.saturating_sub(1);
        eprintln!(
            "decode: {decoded} tokens in {:.3}s ({:.1} tokens/s)",
            stats.decode.as_secs_f64(),
            rate(decoded, stats.decode)
        );
        let stop = match stats.stop {
            StopReason::Eos => "end-of-sequence token",
            StopReason::MaxTokens => "--max-tokens reached",
            StopReason::ContextFull => "context full",
            StopReason::Callback => "output closed",
        };
        eprintln!("stopped: {stop}");
        match super::common::peak_memory_bytes() {
            Some(b) => eprintln!("peak memory: {:.1} MiB", b as f64 / (1 << 20) as f64),
            None => eprintln!("peak memory: unknown on this platform"),
        }
    }
    Ok(())
}
