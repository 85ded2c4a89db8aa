//! A trained model end to end: SmolLM2-135M-Instruct (exported by `scripts/fetch-smollm2.sh`
//! into a folder outside the clone, named by `KILN_SMOLLM2`) compiled into a bundle and asked
//! "What is the capital of France?" with its chat template. The answer must equal the reference
//! onnxruntime produced, token for token.
//!
//! Without `KILN_SMOLLM2` the test is skipped, unless `KILN_REQUIRE_SMOLLM2=1` (set by `.ci/run`).

use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::CompileOptions;
use kiln_formats::bundle::OpenOptions;
use kiln_formats::target::TargetLimits;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::generate::{GenerateOptions, LanguageModel, StopReason};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

fn model_folder() -> Option<PathBuf> {
    match std::env::var_os("KILN_SMOLLM2") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("KILN_REQUIRE_SMOLLM2").as_deref() == Ok("1") => {
            panic!("KILN_SMOLLM2 is not set: run `export KILN_SMOLLM2=$(bash scripts/fetch-smollm2.sh)`")
        }
        None => None,
    }
}

#[test]
fn smollm2_answers_the_reference_token_for_token() {
    let Some(folder) = model_folder() else {
        eprintln!("skipped: KILN_SMOLLM2 is not set (scripts/fetch-smollm2.sh makes the model)");
        return;
    };
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap()).unwrap();
    let ids =
        |k: &str| -> Vec<u32> { reference[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2.kiln");
    let opts = CompileOptions { max_context: Some(256), ..Default::default() };
    compile_bundle(&ModelSource::resolve(&folder).unwrap(), &opts, &[TargetLimits::cpu()], &out).unwrap();
    let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
    let lm = Arc::new(LanguageModel::from_bundle(&loaded, None).unwrap());

    let prompt = lm.encode(reference["prompt"].as_str().unwrap(), true).unwrap();
    assert_eq!(prompt, ids("prompt_ids"), "chat template or tokenizer differs from transformers'");
    let mut generated = Vec::new();
    let opts = GenerateOptions { max_tokens: 32, ..Default::default() };
    let stats = lm
        .generator()
        .generate(&prompt, &opts, |id| {
            generated.push(id);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(generated, ids("generated_ids"));
    assert_eq!(stats.stop, StopReason::Eos);
    let text = lm.tokenizer().unwrap().decode(&generated, true).unwrap();
    assert_eq!(text, reference["text"].as_str().unwrap());
    assert_eq!(text, "The capital of France is Paris.");
}
