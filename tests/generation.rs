//! Text generation end to end on the committed tiny causal LMs (GPT-2 and Llama-style, both torch
//! exporters, with and without KV cache): greedy ids equal the references from
//! `examples/export/export.py`, and the CLI's tokenizer, chat, sampling and error paths.

mod common;
use common::{fixture, generate_ids, greedy_reference, run_kiln, stderr};
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::CompileOptions;
use kiln_formats::bundle::OpenOptions;
use kiln_formats::target::TargetLimits;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::generate::{GenerateError, GenerateOptions, LanguageModel, Sampling, StopReason};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

const LMS: [&str; 8] = [
    "gpt2-ts",
    "gpt2-dynamo",
    "gpt2-ts-kv",
    "gpt2-dynamo-kv",
    "llama-ts",
    "llama-dynamo",
    "llama-ts-kv",
    "llama-dynamo-kv",
];

fn reference(name: &str) -> (Vec<u32>, Vec<u32>) {
    greedy_reference(&fixture(name))
}

fn compile(name: &str, opts: &CompileOptions, out: &Path) -> Arc<LanguageModel> {
    compile_bundle(&ModelSource::resolve(&fixture(name)).unwrap(), opts, &[TargetLimits::cpu()], out).unwrap();
    let loaded = LoadedBundle::open(out, OpenOptions::default()).unwrap();
    Arc::new(LanguageModel::from_bundle(&loaded, None).unwrap())
}

fn greedy(lm: &Arc<LanguageModel>, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions { max_tokens: n, stop_at_eos: false, ..Default::default() };
    let (ids, stats) = generate_ids(lm, prompt, &opts);
    assert_eq!(stats.generated_tokens, ids.len());
    ids
}

#[test]
fn greedy_generation_matches_the_reference_on_every_tiny_lm() {
    let dir = tempfile::tempdir().unwrap();
    for name in LMS {
        let lm = compile(name, &CompileOptions::default(), &dir.path().join(format!("{name}.kiln")));
        assert_eq!(lm.config().kv.is_empty(), !name.ends_with("-kv"), "{name}");
        let (prompt, expected) = reference(name);
        assert_eq!(greedy(&lm, &prompt, expected.len()), expected, "{name}");
    }
}

#[test]
fn a_prompt_longer_than_one_prefill_is_fed_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama-dynamo-kv", "gpt2-ts-kv"] {
        let opts = CompileOptions { prefill_max: Some(3), ..Default::default() };
        let lm = compile(name, &opts, &dir.path().join(format!("{name}.kiln")));
        assert_eq!(lm.config().prefill_max, 3);
        let (prompt, expected) = reference(name);
        assert!(prompt.len() > 3);
        assert_eq!(greedy(&lm, &prompt, expected.len()), expected, "{name}");
    }
}

#[test]
fn generation_stops_at_the_context_and_refuses_a_prompt_that_fills_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CompileOptions { max_context: Some(10), ..Default::default() };
    let lm = compile("llama-ts-kv", &opts, &dir.path().join("m.kiln"));
    let (prompt, expected) = reference("llama-ts-kv");
    let mut ids = Vec::new();
    let opts = GenerateOptions { max_tokens: 100, stop_at_eos: false, ..Default::default() };
    let stats = lm
        .generator()
        .generate(&prompt, &opts, |id| {
            ids.push(id);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.stop, StopReason::ContextFull);
    assert_eq!(prompt.len() + ids.len(), 10);
    assert_eq!(ids, expected[..3]);
    let long: Vec<u32> = (0..10).collect();
    let err = lm.generator().generate(&long, &opts, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(err, GenerateError::PromptTooLong { tokens: 10, max_context: 10 }), "{err}");
}

#[test]
fn one_seed_gives_one_text_and_threads_share_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let lm = compile("gpt2-dynamo-kv", &CompileOptions::default(), &dir.path().join("m.kiln"));
    let (prompt, _) = reference("gpt2-dynamo-kv");
    let sample = |seed: u64| {
        let opts = GenerateOptions {
            max_tokens: 24,
            stop_at_eos: false,
            sampling: Sampling { temperature: 1.5, top_k: 50, top_p: 0.95, seed },
        };
        let mut ids = Vec::new();
        lm.generator()
            .generate(&prompt, &opts, |id| {
                ids.push(id);
                ControlFlow::Continue(())
            })
            .unwrap();
        ids
    };
    let first = sample(7);
    assert_eq!(first.len(), 24);
    assert_ne!(first, sample(8));
    let from_threads: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| sample(7))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(from_threads.iter().all(|ids| *ids == first));
}

/// A word-level tokenizer over the tiny models' 512 ids: token `tN` is id N.
fn word_tokenizer(path: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..512).map(|i| (format!("t{i}"), serde_json::Value::from(i))).collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
        "pre_tokenizer": {"type": "WhitespaceSplit"},
    });
    std::fs::write(path, serde_json::to_vec(&tok).unwrap()).unwrap();
}

fn words(ids: &[u32]) -> String {
    ids.iter().map(|i| format!("t{i}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn cli_streams_text_and_applies_the_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("lm");
    std::fs::create_dir(&src).unwrap();
    for f in ["model.onnx", "config.json"] {
        std::fs::copy(fixture("llama-ts-kv").join(f), src.join(f)).unwrap();
    }
    word_tokenizer(&src.join("tokenizer.json"));
    let template = "{{ bos_token }} {% for m in messages %}t5 {{ m['content'] | trim }} t6{% endfor %}";
    let tc = serde_json::json!({"chat_template": template, "bos_token": "t1"});
    std::fs::write(src.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let out = dir.path().join("lm.kiln");
    let o = run_kiln(&["compile", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let (prompt, expected) = reference("llama-ts-kv");
    let bundle = out.to_str().unwrap();
    let o = run_kiln(&["run", bundle, "--prompt", &words(&prompt), "--max-tokens", "32", "--ignore-eos", "--stats"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.split_whitespace().collect::<Vec<_>>().join(" "), words(&expected));
    for stat in ["load:", "prefill:", "decode:", "tokens/s", "peak memory:"] {
        assert!(stderr(&o).contains(stat), "{stat} missing from {}", stderr(&o));
    }

    // --chat: the template turns " t9 t10 " into t1 t5 t9 t10 t6.
    let chat = run_kiln(&["run", bundle, "--chat", "--prompt", " t9 t10 ", "--max-tokens", "8", "--ignore-eos"]);
    assert!(chat.status.success(), "{}", stderr(&chat));
    let ids = run_kiln(&["run", bundle, "--prompt-ids", "1,5,9,10,6", "--max-tokens", "8", "--ignore-eos"]);
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(|i| format!("t{i}")).collect();
    assert_eq!(String::from_utf8_lossy(&chat.stdout).split_whitespace().collect::<Vec<_>>(), ids);

    // Same seed, same text; sampling flags are checked.
    let sampled = |seed: &str| {
        let o = run_kiln(&[
            "run",
            bundle,
            "--prompt",
            "t3 t4",
            "--temperature",
            "1.2",
            "--seed",
            seed,
            "--max-tokens",
            "16",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(sampled("3"), sampled("3"));
    let bad = run_kiln(&["run", bundle, "--prompt", "t3", "--top-p", "0"]);
    assert!(!bad.status.success() && stderr(&bad).contains("--top-p"), "{}", stderr(&bad));
}

#[test]
fn cli_names_what_is_missing_for_generation() {
    let dir = tempfile::tempdir().unwrap();
    // A causal LM without a tokenizer: --prompt is refused, --prompt-ids works.
    let lm = dir.path().join("lm.kiln");
    let o = run_kiln(&["compile", fixture("gpt2-ts-kv").to_str().unwrap(), "-o", lm.to_str().unwrap()]);
    assert!(o.status.success() && stderr(&o).contains("no tokenizer.json"), "{}", stderr(&o));
    let o = run_kiln(&["run", lm.to_str().unwrap(), "--prompt", "hello"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no tokenizer"), "{}", stderr(&o));
    let o = run_kiln(&["run", lm.to_str().unwrap(), "--chat", "--prompt-ids", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--chat"), "{}", stderr(&o));

    // A prompt that does not fit the context.
    let long: Vec<String> = (0..200).map(|i| (i % 500).to_string()).collect();
    let o = run_kiln(&["run", lm.to_str().unwrap(), "--prompt-ids", &long.join(",")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("200 tokens") && stderr(&o).contains("context of 128"), "{}", stderr(&o));

    // Not a causal LM at all.
    let mlp = dir.path().join("mlp.kiln");
    let tiny = common::examples().join("tiny_mlp.onnx");
    let o = run_kiln(&["compile", tiny.to_str().unwrap(), "-o", mlp.to_str().unwrap(), "--dim", "batch=..4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_kiln(&["run", mlp.to_str().unwrap(), "--prompt", "hello"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a causal language model"), "{}", stderr(&o));
}

/// The weight bytes a decoded token reads: every constant the decode program's steps take, once
/// each, except the tables only `Gather` reads (rows of them).
#[test]
fn decode_reads_every_weight_but_the_gathered_tables() {
    use kiln_formats::program::StorageKind;
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama-ts-kv", "gpt2-ts-kv"] {
        let lm = compile(name, &CompileOptions::default(), &dir.path().join(format!("{name}.kiln")));
        let model = lm.decode_model().expect("a decode entry point");
        let p = model.program();
        let weight = |mut slot: u32| loop {
            let st = p.values[slot as usize].storage.as_ref().unwrap();
            match st.kind() {
                StorageKind::Alias => slot = st.index,
                StorageKind::Weight => break Some(st.index as usize),
                _ => break None,
            }
        };
        let gathered: std::collections::BTreeSet<usize> =
            p.steps.iter().filter(|s| s.op == "Gather").filter_map(|s| weight(s.inputs[0])).collect();
        assert!(!gathered.is_empty(), "{name}: the embeddings are gathered");
        let read_elsewhere = |w: usize| {
            p.steps.iter().any(|s| {
                s.inputs.iter().enumerate().any(|(i, &x)| {
                    x != kiln_formats::program::NO_VALUE && !(s.op == "Gather" && i == 0) && weight(x) == Some(w)
                })
            })
        };
        let total: u64 = p.weights.iter().map(|w| w.len).sum();
        let skipped: u64 = gathered.iter().filter(|&&w| !read_elsewhere(w)).map(|&w| p.weights[w].len).sum();
        assert!(skipped > 0, "{name}: the token embedding table is read only by Gather");
        assert_eq!(model.weight_bytes_read(), total - skipped, "{name}");
    }
}
