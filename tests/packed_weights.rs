//! f32 product weights are stored packed for the CPU kernel only when every plan of the bundle
//! is for the CPU: a bundle that also has a GPU plan keeps one transposed copy both plans read.

use kiln_compiler::bundle::{compile_bundle, BundleSummary, ModelSource};
use kiln_compiler::CompileOptions;
use kiln_formats::target::TargetLimits;

fn ops(summary: &BundleSummary, target: &str, op: &str) -> usize {
    summary
        .compiled
        .iter()
        .filter(|c| c.target == target)
        .flat_map(|c| &c.compiled.program.steps)
        .filter(|s| s.op == op)
        .count()
}

#[test]
fn only_cpu_only_bundles_pack_their_weights_and_neither_stores_a_weight_twice() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-dynamo");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = CompileOptions::default();
    opts.dim_bounds.insert("batch".into(), 1);
    opts.dim_bounds.insert("sequence".into(), 64);
    let src = ModelSource::resolve(&fixture).unwrap();
    let cpu = compile_bundle(&src, &opts, &[TargetLimits::cpu()], &dir.path().join("cpu.kiln")).unwrap();
    let both =
        compile_bundle(&src, &opts, &[TargetLimits::cpu(), TargetLimits::gpu_default()], &dir.path().join("both.kiln"))
            .unwrap();
    assert!(ops(&cpu, "cpu", "MatMulPacked") > 0, "a CPU-only bundle packs its f32 weights");
    assert_eq!(ops(&both, "cpu", "MatMulPacked"), 0, "with a GPU plan the CPU plan reads the transposed weights");
    assert_eq!(ops(&both, "gpu", "MatMulPacked"), 0);
    assert!(
        both.weight_bytes <= cpu.weight_bytes + cpu.weight_bytes / 100,
        "{} bytes for two targets, {} for one",
        both.weight_bytes,
        cpu.weight_bytes
    );
}
