//! Property tests: the verifier accepts every plan the planner makes, plans respect the buffer
//! limit and the lower bound, and the verifier rejects planted faults.

use super::lifetime::{intervals, lower_bound, Interval};
use super::plan;
use kiln_formats::program::{DimInfo, Program, Step, Storage, ValueInfo};
use kiln_formats::target::TargetLimits;
use kiln_runtime::verify::{verify, VerifyError};
use proptest::prelude::*;

/// A program whose step `s` writes the values born at `s` and reads those dying at `s`, each a
/// u8 vector of the given size.
fn program_for(spans: &[(u64, usize, usize)]) -> Program {
    let steps = spans.iter().map(|&(_, _, l)| l + 1).max().unwrap_or(1);
    let values = spans
        .iter()
        .enumerate()
        .map(|(i, &(size, _, _))| ValueInfo {
            name: format!("v{i}"),
            dtype: 2,
            dims: vec![DimInfo { value: size as i64, symbol: String::new() }],
            storage: Some(Storage::dynamic()),
        })
        .collect();
    let steps = (0..steps)
        .map(|s| Step {
            op: "Test".into(),
            inputs: spans.iter().enumerate().filter(|(_, &(_, f, l))| l == s && f < s).map(|(i, _)| i as u32).collect(),
            outputs: spans.iter().enumerate().filter(|(_, &(_, f, _))| f == s).map(|(i, _)| i as u32).collect(),
            ..Default::default()
        })
        .collect();
    Program { values, steps, ..Default::default() }
}

fn spans() -> impl Strategy<Value = Vec<(u64, usize, usize)>> {
    prop::collection::vec((1u64..5000, 0usize..30, 0usize..10), 1..50)
        .prop_map(|v| v.into_iter().map(|(size, first, len)| (size, first, first + len)).collect())
}

fn planned(spans: &[(u64, usize, usize)], target: &TargetLimits) -> Program {
    let mut p = program_for(spans);
    plan(&mut p, target).expect("plannable");
    p
}

proptest! {
    #[test]
    fn verifier_accepts_every_plan(spans in spans(), align in prop::sample::select(vec![1u64, 64, 256])) {
        let target = TargetLimits { alignment: align, ..TargetLimits::cpu() };
        let p = planned(&spans, &target);
        prop_assert_eq!(verify(&p), Ok(()));
        let (ivs, _) = intervals(&p);
        prop_assert!(p.buffers.iter().sum::<u64>() >= lower_bound(&ivs, align));
    }

    #[test]
    fn plans_respect_the_buffer_limit(spans in spans()) {
        let target = TargetLimits::cpu().with_max_buffer(8192);
        let p = planned(&spans, &target);
        prop_assert!(p.buffers.iter().all(|&b| b <= 8192), "buffers {:?}", p.buffers);
        prop_assert_eq!(verify(&p), Ok(()));
    }

    #[test]
    fn verifier_rejects_planted_faults(spans in spans()) {
        let p = planned(&spans, &TargetLimits::cpu());
        let (ivs, _) = intervals(&p);
        // Two values live together moved onto the same bytes.
        if let Some((a, b)) = time_overlapping_pair(&ivs) {
            let mut bad = p.clone();
            let sa = bad.values[a].storage.clone().unwrap();
            let sb = bad.values[b].storage.as_mut().unwrap();
            sb.index = sa.index;
            sb.offset = sa.offset;
            let need = sa.offset + sb.capacity;
            let buf = &mut bad.buffers[sa.index as usize];
            *buf = (*buf).max(need);
            let is_overlap = matches!(verify(&bad), Err(VerifyError::Overlap { .. }));
            prop_assert!(is_overlap);
        }
        // A misaligned offset.
        let mut bad = p.clone();
        bad.values[0].storage.as_mut().unwrap().offset += 1;
        prop_assert!(verify(&bad).is_err());
        // A buffer one byte smaller than its contents need.
        let mut bad = p.clone();
        let last = bad.buffers.len() - 1;
        bad.buffers[last] -= 1;
        prop_assert!(verify(&bad).is_err());
        // A capacity one byte short of the value's bounded size.
        let mut bad = p;
        bad.values[0].storage.as_mut().unwrap().capacity -= 1;
        prop_assert!(verify(&bad).is_err());
    }
}

fn time_overlapping_pair(ivs: &[Interval]) -> Option<(usize, usize)> {
    for (i, a) in ivs.iter().enumerate() {
        for b in &ivs[i + 1..] {
            if a.overlaps_in_time(b) {
                return Some((a.slot, b.slot));
            }
        }
    }
    None
}

#[test]
fn a_value_over_the_limit_is_named() {
    let mut p = program_for(&[(100, 0, 1), (10_000, 1, 2)]);
    let err = plan(&mut p, &TargetLimits::cpu().with_max_buffer(4096)).unwrap_err().to_string();
    assert!(err.contains("'v1'") && err.contains("10000") && err.contains("4096"), "{err}");
}

#[test]
fn disjoint_lifetimes_share_memory() {
    let mut p = program_for(&[(1000, 0, 1), (1000, 2, 3), (1000, 4, 5)]);
    let report = plan(&mut p, &TargetLimits::cpu()).unwrap();
    assert_eq!(report.arena_bytes, 1000);
    assert_eq!(report.lower_bound_bytes, 1000);
}
