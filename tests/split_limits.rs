//! Device limits: a model whose embedding table and output head are each 8 MiB runs under a
//! 1 MiB buffer limit with outputs bit-identical to the unsplit program, and a value that cannot be
//! split is named with its size and the limit.

mod common;
use common::*;
use kiln_compiler::{compile_file, CompileOptions};
use kiln_formats::target::TargetLimits;
use kiln_formats::Tensor;
use kiln_runtime::{Model, Session, TensorRef};

const VOCAB: i64 = 4096;
const HIDDEN: i64 = 512;

fn lm_like(dir: &std::path::Path) -> std::path::PathBuf {
    lm_with_tail(dir, false)
}

/// With `softmax`, the logits feed one more node instead of being the output.
fn lm_with_tail(dir: &std::path::Path, softmax: bool) -> std::path::PathBuf {
    let table: Vec<f32> = (0..VOCAB * HIDDEN).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let head: Vec<f32> = (0..HIDDEN * VOCAB).map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5).collect();
    let mut nodes = vec![
        node("Gather", &["table", "ids"], &["h"]),
        node("Tanh", &["h"], &["t"]),
        node("MatMul", &["t", "head"], &["logits"]),
    ];
    let mut out = "logits";
    if softmax {
        nodes.push(node("Softmax", &["logits"], &["probs"]));
        out = "probs";
    }
    let m = model(
        nodes,
        vec![value_info("ids", 7, &["1", "seq"])],
        vec![value_info(out, 1, &["1", "seq", &VOCAB.to_string()])],
        vec![f32_tensor("table", &[VOCAB, HIDDEN], &table), f32_tensor("head", &[HIDDEN, VOCAB], &head)],
    );
    let p = dir.join("lm.onnx");
    save(&m, &p);
    p
}

fn run(path: &std::path::Path, target: TargetLimits) -> (Tensor, Vec<String>, Vec<u64>) {
    let mut o = CompileOptions { target, ..Default::default() };
    o.dim_bounds.insert("seq".into(), 16);
    let c = compile_file(path, &o).unwrap();
    assert!(c.plan.unplanned.is_empty(), "every value planned in the arena: {:?}", c.plan.unplanned);
    let (splits, buffers) = (c.plan.splits.clone(), c.program.buffers.clone());
    let ids = Tensor::from_vec(&[1, 5], vec![0i64, 4095, 17, 2048, 999]);
    let out = Session::new(Model::new(c.program, &c.weights).unwrap()).run(&[TensorRef::from_tensor(&ids)]).unwrap();
    (out.into_iter().next().unwrap(), splits, buffers)
}

#[test]
fn one_mib_limit_splits_table_and_head_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let p = lm_like(dir.path());
    let (whole, none, _) = run(&p, TargetLimits::cpu());
    assert!(none.is_empty());
    let (split, splits, buffers) = run(&p, TargetLimits::cpu().with_max_buffer(1 << 20));
    assert_eq!(splits.len(), 2, "{splits:?}");
    assert!(splits.iter().all(|s| s.contains("8 column blocks")), "{splits:?}");
    assert!(buffers.iter().all(|&b| b <= 1 << 20), "{buffers:?}");
    assert_eq!(whole.shape, vec![1, 5, VOCAB as usize]);
    assert_eq!(whole.bytes(), split.bytes(), "split outputs differ");
}

#[test]
fn an_output_over_the_limit_is_computed_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let p = lm_like(dir.path());
    // The logits (16 × 4096 × 4 bytes = 256 KiB at the bound) stay in pieces of at most 64 KiB,
    // joined only when returned.
    let (whole, _, _) = run(&p, TargetLimits::cpu());
    let (split, splits, buffers) = run(&p, TargetLimits::cpu().with_max_buffer(64 << 10));
    assert!(buffers.iter().all(|&b| b <= 64 << 10), "{buffers:?}");
    assert!(!splits.is_empty());
    assert_eq!(whole.shape, split.shape);
    // 32-column blocks take the matmul kernel's small-product path, which associates the k-sum
    // differently from the packed path the whole product takes: equal within float rounding,
    // not bit for bit (blocks that keep the kernel path, as in the 1 MiB test, are bit-identical).
    let worst = (0..whole.numel()).map(|i| (whole.get_f64(i) - split.get_f64(i)).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-5, "assembled output differs by {worst}");
}

#[test]
fn an_unsplittable_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = lm_with_tail(dir.path(), true);
    // The logits (256 KiB at the bound) feed a Softmax, so they cannot stay in pieces.
    let out = run_kiln(&["compile", p.to_str().unwrap(), "--plan-only", "--dim", "seq=..16", "--max-buffer", "64KiB"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("262144") && err.contains("65536") && (err.contains("'logits'") || err.contains("'probs'")),
        "{err}"
    );
}
