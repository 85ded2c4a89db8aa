//! Generating text from Rust with `kiln_runtime`: open a bundle once, share the language model,
//! and give each thread its own generator.
//!
//!     cargo run --release --example generate -- model.kiln "What is the capital of France?"

use kiln_formats::bundle::OpenOptions;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::generate::{GenerateOptions, LanguageModel};
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(question)) = (args.next(), args.next()) else {
        return Err("usage: generate BUNDLE PROMPT".into());
    };
    let bundle = LoadedBundle::open(path.as_ref(), OpenOptions::default())?;
    let lm = Arc::new(LanguageModel::from_bundle(&bundle, None)?);
    let chat = lm.config().chat_template.is_some();
    let prompt = lm.encode(&question, chat)?;

    // Several threads can generate from one model at once; here two answer the same question.
    let answers: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (lm, prompt) = (lm.clone(), prompt.clone());
                s.spawn(move || -> Result<String, String> {
                    let mut ids = Vec::new();
                    lm.generator()
                        .generate(&prompt, &GenerateOptions::default(), |id| {
                            ids.push(id);
                            ControlFlow::Continue(())
                        })
                        .map_err(|e| e.to_string())?;
                    lm.tokenizer().map_err(|e| e.to_string())?.decode(&ids, true).map_err(|e| e.to_string())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker panicked")).collect::<Result<_, _>>()
    })?;
    assert_eq!(answers[0], answers[1], "greedy decoding is deterministic");

    // Streaming: print each piece of text as its token arrives.
    let tok = lm.tokenizer()?;
    let mut stream = tok.decode_stream(true);
    let mut out = std::io::stdout().lock();
    let stats = lm.generator().generate(&prompt, &GenerateOptions::default(), |id| match stream.step(id) {
        Ok(Some(piece)) => {
            let _ = out.write_all(piece.as_bytes()).and_then(|_| out.flush());
            ControlFlow::Continue(())
        }
        Ok(None) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    })?;
    writeln!(out)?;
    eprintln!("{} prompt tokens, {} generated ({:?})", stats.prompt_tokens, stats.generated_tokens, stats.stop);
    Ok(())
}
