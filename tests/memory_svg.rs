//! `kiln inspect --memory-svg`: the picture of a real model's plan parses as SVG and holds one
//! rectangle per planned value (or per group of tiny ones) and the buffer limit line.

mod common;

use common::{run_kiln, stderr};
use kiln_compiler::plan::svg::{
    memory_svg, svg_color as hex, ChartOptions, ChartSummary, ACTIVATION, GROUP, KV_CACHE, LIMIT, SPLIT_PIECE,
};
use kiln_compiler::CompileOptions;
use kiln_formats::program::{Program, StorageKind};
use kiln_formats::target::TargetLimits;
use std::path::{Path, PathBuf};

fn gpt2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-ts/model.onnx")
}

/// gpt2-ts at batch 1, up to 64 tokens, with 64 KiB buffers: several buffers and split pieces.
fn planned() -> Program {
    let mut opts = CompileOptions { target: TargetLimits::cpu().with_max_buffer(64 << 10), ..Default::default() };
    opts.fixed_dims.insert("batch".into(), 1);
    opts.dim_bounds.insert("sequence".into(), 64);
    kiln_compiler::compile_file(&gpt2(), &opts).expect("gpt2-ts compiles").program
}

/// Rectangles filled with a tensor or group colour, and polylines stroked in the limit colour.
fn count(svg: &str) -> (usize, usize) {
    let doc = roxmltree::Document::parse(svg).expect("the picture is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let fills: Vec<String> = [ACTIVATION, KV_CACHE, SPLIT_PIECE, GROUP].into_iter().map(hex).collect();
    let rects = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect"))
        .filter(|n| n.attribute("fill").is_some_and(|f| fills.iter().any(|c| c.eq_ignore_ascii_case(f))))
        .count();
    let limit = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .filter(|n| n.attribute("stroke").is_some_and(|s| s.eq_ignore_ascii_case(&hex(LIMIT))))
        .count();
    (rects, limit)
}

/// Arena ranges: values with arena storage, except those written in place over another (they
/// share its range and its rectangle).
fn arena_values(p: &Program) -> usize {
    let members: Vec<usize> = kiln_compiler::plan::in_place::shared_storage(p).into_iter().map(|(m, _)| m).collect();
    p.values
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            !members.contains(i) && v.storage.as_ref().is_some_and(|s| s.kind == StorageKind::Arena as i32)
        })
        .count()
}

fn check(p: &Program, svg: &str, s: &ChartSummary) {
    let (rects, limit_lines) = count(svg);
    assert_eq!(s.tensors, arena_values(p), "every arena value is accounted for");
    assert_eq!(s.drawn + s.grouped, s.tensors, "each value is drawn alone or in a group");
    assert_eq!(rects, s.drawn + s.groups + s.swatches, "one rectangle per value or group, plus the legend");
    // One per buffer whose start + limit is on the chart, and the legend's sample.
    assert!(s.limit_lines >= 1 && limit_lines == s.limit_lines + 1, "{limit_lines} limit lines, summary {s:?}");
    assert_eq!(s.arena_bytes, p.buffers.iter().sum::<u64>());
    assert!(s.lower_bound_bytes <= s.arena_bytes && s.lower_bound_bytes > 0);
    for text in ["arena", "lower bound", "split piece"] {
        assert!(svg.contains(text), "the legend names '{text}'");
    }
}

#[test]
fn gpt2_plan_draws_one_rectangle_per_value_and_the_limit() {
    let p = planned();
    assert!(p.buffers.len() > 1, "64 KiB buffers split the arena: {:?}", p.buffers);
    let (svg, s) = memory_svg(&p, &ChartOptions::default()).unwrap();
    assert_eq!(s.groups, 0, "{} values are few enough to draw one by one", s.tensors);
    check(&p, &svg, &s);
    assert!(s.labelled > 0);
}

#[test]
fn tiny_values_are_grouped_in_large_programs() {
    let p = planned();
    let opts = ChartOptions { group_above: 20, tiny_fraction: 0.05, ..Default::default() };
    let (svg, s) = memory_svg(&p, &opts).unwrap();
    assert!(s.groups > 0 && s.grouped > 0 && s.groups < s.grouped, "{s:?}");
    check(&p, &svg, &s);
}

#[test]
fn cli_writes_the_svg_and_names_unknown_entries() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan.svg");
    let model = gpt2();
    let base = [model.to_str().unwrap(), "--dim", "batch=1", "--dim", "sequence=..64", "--max-buffer", "64KiB"];
    let mut args = vec!["inspect"];
    args.extend(base);
    args.extend(["--memory-svg", out.to_str().unwrap(), "--json"]);
    let o = run_kiln(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout stays one JSON object");
    assert_eq!(report["kind"], "onnx");
    let svg = std::fs::read_to_string(&out).unwrap();
    let (rects, limit) = count(&svg);
    assert!(rects > 100 && limit >= 1, "{rects} rectangles, {limit} limit lines");

    args.extend(["--entry", "decode"]);
    let o = run_kiln(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no entry point 'decode'") && err.contains("--entry") && err.contains("main"), "{err}");
}
