//! Memory planning: every value the runtime would otherwise allocate gets an aligned offset in an
//! arena buffer, sized for the upper bounds of its symbolic dims. Several strategies run and the
//! smallest plan is kept; the independent verifier then checks it.

pub mod in_place;
pub mod lifetime;
pub mod place;
pub mod svg;

use crate::error::CompileError;
use kiln_formats::program::{Device, Program, Storage};
use kiln_formats::target::TargetLimits;
use kiln_runtime::verify::verify;
use lifetime::{intervals, lower_bound};
use place::{place, Fit, Order};
use serde::Serialize;

/// What a plan costs and how close it is to the best possible.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub target: String,
    pub alignment: u64,
    pub arena_bytes: u64,
    pub lower_bound_bytes: u64,
    /// arena / lower bound (1.0 = optimal).
    pub ratio: f64,
    pub buffers: Vec<u64>,
    pub strategy: String,
    /// The largest planned values: (name, bytes).
    pub largest: Vec<(String, u64)>,
    /// Values whose size depends on data unknown at compile time; the runtime sizes them per run.
    pub unplanned: Vec<String>,
    /// Constants split to fit the target's largest buffer.
    pub splits: Vec<String>,
}

/// Plans `p` for `target`, writes the arena offsets into it, and verifies the result. Elementwise
/// steps run in place (output over a dying input) when that makes the arena smaller.
pub fn plan(p: &mut Program, target: &TargetLimits) -> Result<PlanReport, CompileError> {
    let align = target.alignment.max(1);
    let limit = target.largest_buffer();
    let mut with_in_place = p.clone();
    let (mut chosen, mut ivs, mut lower) = search(p, align, limit, target)?;
    if in_place::mark(&mut with_in_place) > 0 {
        let candidate = search(&with_in_place, align, limit, target)?;
        if candidate.0 .0.total() < chosen.0.total() {
            *p = with_in_place;
            (chosen, ivs, lower) = candidate;
        }
    }
    let ((placement, strategy), (ivs, unbounded)) = (chosen, ivs);
    for (iv, &(buffer, offset)) in ivs.iter().zip(&placement.slots) {
        p.values[iv.slot].storage = Some(Storage::arena(buffer as u32, offset, iv.size));
    }
    for (member, leader) in in_place::shared_storage(p) {
        p.values[member].storage = p.values[leader].storage.clone();
    }
    p.buffers = placement.buffers.clone();
    p.alignment = align;
    p.max_buffer = if limit >= i64::MAX as u64 { 0 } else { limit };
    verify(p).map_err(|e| CompileError::Model(format!("the planner produced an invalid plan (a kiln bug): {e}")))?;

    let arena = placement.total();
    let mut largest: Vec<(String, u64)> = ivs.iter().map(|iv| (p.values[iv.slot].name.clone(), iv.size)).collect();
    largest.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
    largest.truncate(5);
    Ok(PlanReport {
        target: target.name.clone(),
        alignment: align,
        arena_bytes: arena,
        lower_bound_bytes: lower,
        ratio: if lower == 0 { 1.0 } else { arena as f64 / lower as f64 },
        buffers: placement.buffers,
        strategy,
        largest,
        unplanned: unbounded.iter().map(|&i| p.values[i].name.clone()).collect(),
        splits: Vec::new(),
    })
}

/// The smallest placement the strategies find for `p` as it stands, with its intervals (planned,
/// and the values left unbounded) and lower bound.
#[allow(clippy::type_complexity)]
fn search(
    p: &Program,
    align: u64,
    limit: u64,
    target: &TargetLimits,
) -> Result<((place::Placement, String), (Vec<lifetime::Interval>, Vec<usize>), u64), CompileError> {
    let (all, unbounded) = intervals(p);
    // A GPU program keeps host and device values in separate buffers, so each side allocates
    // only its own.
    let homes = kiln_runtime::gpu::support::homes(p);
    let mut groups: Vec<Vec<lifetime::Interval>> = Vec::new();
    for device in [Device::Cpu, Device::Gpu] {
        let group: Vec<_> = all.iter().filter(|iv| homes[iv.slot] == device).cloned().collect();
        if !group.is_empty() || groups.is_empty() {
            groups.push(group);
        }
    }
    let mut merged = place::Placement { slots: vec![], buffers: vec![] };
    let mut names = Vec::new();
    let mut ivs = Vec::new();
    let mut lower = 0;
    for group in groups {
        let ((placement, name), group_lower) = search_group(p, &group, align, limit, target)?;
        let shift = merged.buffers.len();
        merged.slots.extend(placement.slots.iter().map(|&(b, o)| (b + shift, o)));
        merged.buffers.extend(placement.buffers);
        names.push(name);
        ivs.extend(group);
        lower += group_lower;
    }
    Ok(((merged, names.join(" + ")), (ivs, unbounded), lower))
}

/// The smallest placement the strategies find for one device's intervals, and its lower bound.
fn search_group(
    p: &Program,
    ivs: &[lifetime::Interval],
    align: u64,
    limit: u64,
    target: &TargetLimits,
) -> Result<((place::Placement, String), u64), CompileError> {
    if let Some(big) = ivs.iter().find(|iv| iv.size.next_multiple_of(align) > limit) {
        return Err(CompileError::Model(format!(
            "value '{}' needs {} bytes, more than the {} target's largest buffer ({limit} bytes), and kiln cannot split it",
            p.values[big.slot].name, big.size, target.name
        )));
    }
    let lower = lower_bound(ivs, align);
    let mut orders = vec![Order::Size, Order::Breadth, Order::Duration, Order::Area, Order::FirstUse];
    // Jittered restarts while the program is small enough for them to be cheap (placement is
    // quadratic in the number of values).
    let restarts = (4_000_000 / (ivs.len() * ivs.len()).max(1)).min(1024) as u64;
    orders.extend((1..=restarts).map(Order::Jittered));
    let mut best: Option<(place::Placement, String)> = None;
    'search: for order in orders {
        for fit in [Fit::First, Fit::Best] {
            let candidate = place(ivs, align, limit, order, fit);
            if best.as_ref().is_none_or(|(b, _)| candidate.total() < b.total()) {
                let name = match order {
                    Order::Jittered(seed) => format!("jittered #{seed}/{fit:?}").to_lowercase(),
                    _ => format!("{order:?}/{fit:?}").to_lowercase(),
                };
                let optimal = candidate.total() <= lower && candidate.buffers.len() <= 1;
                best = Some((candidate, name));
                if optimal {
                    break 'search;
                }
            }
        }
    }
    let best = best.unwrap_or((place::Placement { slots: vec![], buffers: vec![] }, "none".into()));
    Ok((best, lower))
}

#[cfg(test)]
mod tests;
