//! `kiln verify BUNDLE`: every check the loader makes, then a verdict.

use super::progress::phase;
use anyhow::{Context, Result};
use kiln_formats::bundle::OpenOptions;
use kiln_runtime::bundle::LoadedBundle;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .kiln bundle.
    bundle: PathBuf,
    /// Read the bundle into memory instead of mapping it: a copy of the weights, but immune to
    /// the file being truncated or rewritten while kiln runs (see README, "Files that change underneath").
    #[arg(long)]
    no_mmap: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn main(args: Args) -> Result<()> {
    let bundle = args.bundle.display().to_string();
    let opened = phase(format!("verifying {bundle}: checksums, alignment, plans"), || {
        LoadedBundle::open(
            &args.bundle,
            OpenOptions { read_into_memory: args.no_mmap, weights_in_background: false, ..OpenOptions::default() },
        )
    });
    let loaded = match opened {
        Ok(l) => l,
        Err(e) => {
            if args.json {
                println!("{}", json!({"command": "verify", "ok": false, "bundle": bundle, "error": e.to_string()}));
            }
            return Err(e).with_context(|| format!("{bundle} failed verification"));
        }
    };
    let m = &loaded.bundle.manifest;
    if args.json {
        println!(
            "{}",
            json!({"command": "verify", "ok": true, "bundle": bundle, "format_version": m.format_version.to_string(),
                "entries": m.entries.len(), "entry_points": loaded.entries.len()})
        );
    }
    eprintln!(
        "{}: ok (format {}, {} entries checksummed, {} entry point(s), plans verified)",
        args.bundle.display(),
        m.format_version,
        m.entries.len(),
        loaded.entries.len()
    );
    Ok(())
}
