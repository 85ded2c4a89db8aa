//! Elementwise steps that write over a dying input: the planner marks them, the arena shrinks,
//! the verifier accepts exactly those overlaps, and the executor (a chunk at a time, with the
//! other operand same-shaped, broadcast by rows, or broadcast otherwise) computes what the
//! out-of-place program computes.

mod common;
use common::{f32_tensor, model, node, save, value_info};
use kiln_compiler::{compile_file, CompileOptions};
use kiln_formats::Tensor;
use kiln_runtime::verify::verify;
use kiln_runtime::{Model, Session, TensorRef};

const ROWS: usize = 64;
const COLS: usize = 520; // 133 KB per tensor: several 64 KiB chunks, and not a whole number of them

fn values(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * scale).collect()
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

#[test]
fn in_place_chains_shrink_the_arena_and_compute_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let (r, c) = (ROWS as i64, COLS as i64);
    let bias = values(COLS, 0.01);
    let col = values(ROWS, 0.02);
    let w = values(COLS, 0.001);
    let m = model(
        vec![
            node("Add", &["x", "z"], &["t0"]),      // inputs are never overwritten
            node("Sin", &["t0"], &["u"]),           // t0 is still read: not in place
            node("Add", &["t0", "bias"], &["t1"]),  // over t0, broadcast by rows
            node("Sigmoid", &["t1"], &["t2"]),      // unary
            node("Mul", &["t2", "u"], &["t3"]),     // same shape
            node("Add", &["col", "t3"], &["t4"]),   // over input 1, broadcast by columns
            node("MatMul", &["t4", "w"], &["out"]), // a product: never in place
        ],
        vec![value_info("x", 1, &[&r.to_string(), "1"]), value_info("z", 1, &["1", &c.to_string()])],
        vec![value_info("out", 1, &[&r.to_string(), "1"])],
        vec![f32_tensor("bias", &[c], &bias), f32_tensor("col", &[r, 1], &col), f32_tensor("w", &[c, 1], &w)],
    );
    save(&m, &path);
    let compiled = compile_file(&path, &CompileOptions::default()).unwrap();
    let prog = &compiled.program;
    let in_place: Vec<&str> = prog.steps.iter().filter(|s| s.in_place != 0).map(|s| s.name.as_str()).collect();
    assert_eq!(in_place, ["Add_t1", "Sigmoid_t2", "Mul_t3", "Add_t4"]);
    // Two big ranges (t0..t4 and u) instead of three, plus the inputs and the output.
    let bytes = (ROWS * COLS * 4) as u64;
    let small = [ROWS * 4, COLS * 4, ROWS * 4].iter().map(|&b| (b as u64).next_multiple_of(64)).sum::<u64>();
    assert!(compiled.plan.arena_bytes <= 2 * bytes.next_multiple_of(64) + small, "{}", compiled.plan.arena_bytes);

    let xs = values(ROWS, 0.03);
    let zs = values(COLS, 0.05);
    let (x, z) = (Tensor::from_vec(&[ROWS, 1], xs.clone()), Tensor::from_vec(&[1, COLS], zs.clone()));
    let model = Model::new(compiled.program.clone(), &compiled.weights).unwrap();
    let out = Session::new(model).run(&[TensorRef::from_tensor(&x), TensorRef::from_tensor(&z)]).unwrap();
    let got = out[0].as_slice::<f32>().unwrap();
    for row in 0..ROWS {
        let want: f64 = (0..COLS)
            .map(|j| {
                let t0 = xs[row] + zs[j];
                ((col[row] + sigmoid(t0 + bias[j]) * t0.sin()) * w[j]) as f64
            })
            .sum();
        assert!((got[row] as f64 - want).abs() <= 1e-4 + 1e-4 * want.abs(), "row {row}: {} vs {want}", got[row]);
    }
}

#[test]
fn the_verifier_refuses_in_place_marks_that_do_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let m = model(
        vec![node("Relu", &["x"], &["a"]), node("Sigmoid", &["a"], &["b"]), node("Add", &["a", "b"], &["out"])],
        vec![value_info("x", 1, &["8", "8"])],
        vec![value_info("out", 1, &["8", "8"])],
        vec![],
    );
    save(&m, &path);
    let compiled = compile_file(&path, &CompileOptions::default()).unwrap();
    let mut p = compiled.program;
    verify(&p).unwrap();
    // Sigmoid may not overwrite 'a': Add still reads it.
    let s = p.steps.iter().position(|s| s.op == "Sigmoid").unwrap();
    let a = p.steps[s].inputs[0] as usize;
    let b = p.steps[s].outputs[0] as usize;
    p.steps[s].in_place = 1;
    p.values[b].storage = p.values[a].storage.clone();
    let err = verify(&p).unwrap_err().to_string();
    assert!(err.contains("in place") && err.contains("still read"), "{err}");
    // A product never runs in place.
    let mut q = p.clone();
    q.steps[s].op = "MatMul".into();
    assert!(verify(&q).unwrap_err().to_string().contains("cannot write over an input"));
}
