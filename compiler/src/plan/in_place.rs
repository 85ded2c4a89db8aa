//! Choosing in-place steps: an elementwise op whose input dies at that step, with the output's
//! dtype size and bounded shape, writes its output over that input's bytes. The pair then needs
//! one arena range instead of two.

use kiln_formats::program::{Program, StorageKind, NO_VALUE};
use kiln_runtime::ops::in_place_capable;
use kiln_runtime::verify::bounded_bytes;

/// Marks every step that can run in place (`Step::in_place`); returns how many.
pub fn mark(p: &mut Program) -> usize {
    let n = p.values.len();
    let kind = |i: usize| p.values[i].storage.as_ref().map_or(StorageKind::Dynamic as i32, |s| s.kind);
    // Last step reading each value or any view of it; graph inputs and outputs never qualify.
    let (_, last) = super::lifetime::spans(p);
    let mut has_views = vec![false; n];
    for i in 0..n {
        if kind(i) == StorageKind::Alias as i32 {
            if let Some(s) = &p.values[i].storage {
                if (s.index as usize) < n {
                    has_views[s.index as usize] = true;
                }
            }
        }
    }
    let mut boundary = vec![false; n];
    for &i in &p.inputs {
        boundary[i as usize] = true;
    }
    for o in 0..p.outputs.len() {
        for s in p.output_slots(o) {
            boundary[s as usize] = true;
        }
    }
    let plain =
        |i: usize| ![StorageKind::Weight, StorageKind::Alias, StorageKind::State].map(|s| s as i32).contains(&kind(i));

    let mut marked = 0;
    for s in 0..p.steps.len() {
        let step = &p.steps[s];
        // A GPU kernel may not bind one range as both input and output.
        if step.on_gpu() || !in_place_capable(&step.op, &step.domain) || step.outputs.len() != 1 || step.in_place != 0 {
            continue;
        }
        if step.attrs.iter().any(|a| a.name == "broadcast") {
            continue; // opset < 7 broadcasting by axis: not the numpy rule the executor chunks by
        }
        let o = step.outputs[0] as usize;
        let out = &p.values[o];
        let Some(out_bytes) = bounded_bytes(out) else { continue };
        if !plain(o) || boundary[o] {
            continue;
        }
        let chosen = step.inputs.iter().enumerate().find(|&(j, &x)| {
            let x = x as usize;
            x != NO_VALUE as usize
                && x < n
                && x != o
                && plain(x)
                && !boundary[x]
                && !has_views[x]
                && last[x] == s
                && step.inputs.iter().filter(|&&y| y as usize == x).count() == 1
                && p.values[x].dtype == out.dtype
                && p.values[x].dims == out.dims
                && bounded_bytes(&p.values[x]) == Some(out_bytes)
                && j < 2
        });
        if let Some((j, _)) = chosen {
            p.steps[s].in_place = j as u32 + 1;
            marked += 1;
        }
    }
    marked
}

/// (member, leader) for every value that shares its leader's arena range through a chain of
/// in-place steps; the leader is the chain's first value.
pub fn shared_storage(p: &Program) -> Vec<(usize, usize)> {
    let mut leader: Vec<usize> = (0..p.values.len()).collect();
    let mut pairs = Vec::new();
    for step in &p.steps {
        if let (Some(x), Some(&o)) = (step.in_place_input(), step.outputs.first()) {
            let (x, o) = (x as usize, o as usize);
            if x < leader.len() && o < leader.len() {
                leader[o] = leader[x];
                pairs.push((o, leader[x]));
            }
        }
    }
    pairs
}
