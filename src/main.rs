//! The `kiln` command line: inspect, compile and run models.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// kiln: compile ONNX models ahead of time and run them from a memory map.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, ops and what kiln cannot run yet.
    Inspect(cmd::inspect::Args),
    /// Run a model on tensors from .npy/.npz files.
    Run(cmd::run::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::main(a),
        Command::Run(a) => cmd::run::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
