//! Real torch exports of GPT-2 (the committed TorchScript and dynamo fixtures) reach the CPU's
//! fast paths: their linears, which both exporters write as `Gemm` on the flattened activations,
//! are packed for the f32 kernel and quantized by `--weights`, and their tanh GELU (eight steps)
//! is one `kiln::GeluTanh`, and each linear's bias and each residual connection are the product's
//! third and fourth inputs. Before, the linears stayed general f32 products (one of the 9 products
//! was quantized), the GELU ran as eight steps with `powf` in them, and each bias and residual was
//! a separate `Add`.

use kiln_compiler::bundle::{compile_bundle, BundleSummary, ModelSource};
use kiln_compiler::passes::quantize::WeightFormat;
use kiln_compiler::CompileOptions;
use kiln_formats::target::TargetLimits;

fn ops(summary: &BundleSummary, op: &str) -> usize {
    with_inputs(summary, op, |_| true)
}

fn with_inputs(summary: &BundleSummary, op: &str, inputs: impl Fn(usize) -> bool) -> usize {
    let steps = summary.compiled.iter().flat_map(|c| &c.compiled.program.steps);
    steps.filter(|s| s.op == op && inputs(s.inputs.len())).count()
}

/// `Add` steps reading an output of an `op` step.
fn adds_after(summary: &BundleSummary, op: &str) -> usize {
    let programs = summary.compiled.iter().map(|c| &c.compiled.program);
    programs
        .map(|p| {
            let made: Vec<u32> = p.steps.iter().filter(|s| s.op == op).flat_map(|s| s.outputs.clone()).collect();
            p.steps.iter().filter(|s| s.op == "Add" && s.inputs.iter().any(|i| made.contains(i))).count()
        })
        .sum()
}

#[test]
fn gpt2_exports_take_the_packed_quantized_and_fused_paths() {
    for fixture in ["gpt2-ts-kv", "gpt2-dynamo-kv"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
        let dir = tempfile::tempdir().unwrap();
        let src = ModelSource::resolve(&path).unwrap();
        let mut opts = CompileOptions::default();
        opts.dim_bounds.insert("batch".into(), 1);
        let f32 = compile_bundle(&src, &opts, &[TargetLimits::cpu()], &dir.path().join("f32.kiln")).unwrap();
        opts.weights = WeightFormat::Q8;
        let q8 = compile_bundle(&src, &opts, &[TargetLimits::cpu()], &dir.path().join("q8.kiln")).unwrap();
        let plans = f32.compiled.len();
        for (summary, format) in [(&f32, "f32"), (&q8, "q8")] {
            for gone in ["Gemm", "Pow", "Tanh"] {
                assert_eq!(ops(summary, gone), 0, "{fixture} {format}: a {gone} is left");
            }
            assert_eq!(ops(summary, "GeluTanh"), 2 * plans, "{fixture} {format}: one GELU per layer");
        }
        // Two layers of four linears, and the head, per plan.
        assert_eq!(ops(&f32, "MatMulPacked"), 9 * plans, "{fixture}");
        assert_eq!(ops(&q8, "MatMulQ8"), 9 * plans, "{fixture}");
        // The linears' biases (the TorchScript export's; the dynamo fixture's linears have none)
        // ride in their products.
        for (summary, product) in [(&f32, "MatMulPacked"), (&q8, "MatMulQ8")] {
            assert_eq!(adds_after(summary, product), 0, "{fixture}: a bias Add after a {product}");
            if fixture == "gpt2-ts-kv" {
                assert_eq!(with_inputs(summary, product, |n| n >= 3), 8 * plans, "{fixture}: {product} biases");
            }
            // So do both residual connections of each layer, through the Reshape back to 3-D.
            assert_eq!(with_inputs(summary, product, |n| n == 4), 4 * plans, "{fixture}: {product} residuals");
        }
    }
}
