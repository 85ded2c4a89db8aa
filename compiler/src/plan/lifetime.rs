//! Lifetimes of the values a plan must place: from the step that writes a value to the last step
//! that reads it or any view of it. Inputs live from the start, outputs to the end.

use kiln_formats::program::{Program, StorageKind, NO_VALUE};
use kiln_runtime::verify::bounded_bytes;

/// A value to place: its slot, bytes at the planned bounds, and the steps it is live at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub slot: usize,
    pub size: u64,
    pub first: usize,
    pub last: usize,
}

impl Interval {
    pub fn overlaps_in_time(&self, o: &Interval) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// First and last step of every value that owns its bytes, counting reads of its views; inputs
/// from step 0, outputs to the end (`usize::MAX` as first: never touched).
pub fn spans(p: &Program) -> (Vec<usize>, Vec<usize>) {
    let n = p.values.len();
    let kind = |i: usize| p.values[i].storage.as_ref().map_or(StorageKind::Dynamic as i32, |s| s.kind);
    let root = |mut i: usize| {
        while kind(i) == StorageKind::Alias as i32 {
            i = p.values[i].storage.as_ref().map_or(i, |s| s.index as usize);
        }
        i
    };
    let (mut first, mut last) = (vec![usize::MAX; n], vec![0; n]);
    let mut touch = |slot: u32, step: usize| {
        if slot != NO_VALUE {
            let r = root(slot as usize);
            first[r] = first[r].min(step);
            last[r] = last[r].max(step);
        }
    };
    p.inputs.iter().for_each(|&i| touch(i, 0));
    for (s, step) in p.steps.iter().enumerate() {
        step.inputs.iter().chain(&step.outputs).for_each(|&i| touch(i, s));
    }
    (0..p.outputs.len()).flat_map(|i| p.output_slots(i)).for_each(|o| touch(o, p.steps.len()));
    (first, last)
}

/// The values of `p` that own storage the runtime would otherwise allocate (not weights, not
/// views, not values written in place over another: their leader's interval covers them), split
/// into those with bounded sizes and those whose size depends on unbounded dims.
pub fn intervals(p: &Program) -> (Vec<Interval>, Vec<usize>) {
    let n = p.values.len();
    let kind = |i: usize| p.values[i].storage.as_ref().map_or(StorageKind::Dynamic as i32, |s| s.kind);
    let (mut first, mut last) = spans(p);
    // A value written in place over another lives in its leader's range, from the leader's first
    // step to its own last.
    let mut member = vec![false; n];
    for (m, leader) in super::in_place::shared_storage(p) {
        if first[m] != usize::MAX {
            first[leader] = first[leader].min(first[m]);
            last[leader] = last[leader].max(last[m]);
        }
        member[m] = true;
    }

    let (mut planned, mut unbounded) = (Vec::new(), Vec::new());
    for i in 0..n {
        let k = kind(i);
        let elsewhere = [StorageKind::Weight, StorageKind::Alias, StorageKind::State].map(|s| s as i32);
        if first[i] == usize::MAX || member[i] || elsewhere.contains(&k) {
            continue;
        }
        match bounded_bytes(&p.values[i]) {
            Some(size) => planned.push(Interval { slot: i, size, first: first[i], last: last[i] }),
            None => unbounded.push(i),
        }
    }
    (planned, unbounded)
}

/// Max over steps of the bytes live at that step, each value rounded up to the alignment except
/// the one whose padding is largest (it can sit last in the buffer, unpadded): no plan can be smaller.
pub fn lower_bound(ivs: &[Interval], align: u64) -> u64 {
    let steps = ivs.iter().map(|i| i.last + 1).max().unwrap_or(0);
    let mut live = vec![0u64; steps];
    let mut max_pad = vec![0u64; steps];
    for iv in ivs {
        let (aligned, pad) = (iv.size.next_multiple_of(align), iv.size.next_multiple_of(align) - iv.size);
        for s in iv.first..=iv.last {
            live[s] += aligned;
            max_pad[s] = max_pad[s].max(pad);
        }
    }
    live.iter().zip(&max_pad).map(|(l, p)| l - p).max().unwrap_or(0)
}
