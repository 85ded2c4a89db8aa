//! The `kiln` command line: inspect, compile and run models.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// kiln: compile ONNX models ahead of time and run them from a memory map.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    /// No progress spinners on stderr (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's or bundle's signature, ops, memory plan and what kiln cannot run yet.
    Inspect(cmd::inspect::Args),
    /// Compile an ONNX model into a .kiln bundle.
    Compile(cmd::compile::Args),
    /// Run a model or bundle on tensors from .npy/.npz files.
    Run(cmd::run::Args),
    /// Decode speed of a causal LM bundle at several context lengths.
    Bench(cmd::bench::Args),
    /// Check a bundle as the loader does: structure, alignment, checksums, memory plans.
    Verify(cmd::verify::Args),
    /// Run on inputs and compare every output with expected values.
    Check(cmd::check::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::progress::set_quiet(cli.quiet);
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::main(a),
        Command::Compile(a) => cmd::compile::main(a),
        Command::Run(a) => cmd::run::main(a),
        Command::Verify(a) => cmd::verify::main(a),
        Command::Bench(a) => cmd::bench::main(a),
        Command::Check(a) => cmd::check::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = cmd::hint::hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(1)
        }
    }
}
