//! Offset assignment: each strategy orders the values and places each at a fitting gap among the
//! already placed values it is live with, in the first arena buffer where it fits under the limit.

use super::lifetime::Interval;

/// How values are ordered before placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Largest first (TFLite's greedy by size).
    Size,
    /// Values live during the busiest steps first, then by size (greedy by breadth).
    Breadth,
    /// Longest-lived first.
    Duration,
    /// Largest size × duration first.
    Area,
    /// Earliest first (a linear scan), larger first on ties.
    FirstUse,
    /// A base order (by size, breadth or area) with deterministic jitter of up to ±25%: explores
    /// orders near the greedy ones when near-ties decide the result.
    Jittered(u64),
}

/// Which gap a value goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// The lowest offset that fits.
    First,
    /// The smallest gap that fits (the open end only when no gap does).
    Best,
}

/// A placement: per interval (same order as given) its buffer and offset, and buffer sizes.
#[derive(Clone, Debug)]
pub struct Placement {
    pub slots: Vec<(usize, u64)>,
    pub buffers: Vec<u64>,
}

impl Placement {
    pub fn total(&self) -> u64 {
        self.buffers.iter().sum()
    }
}

/// Places every interval; `limit` bounds each buffer's size. Each interval must fit the limit.
pub fn place(ivs: &[Interval], align: u64, limit: u64, order: Order, fit: Fit) -> Placement {
    let aligned = |s: u64| s.next_multiple_of(align);
    let mut idx: Vec<usize> = (0..ivs.len()).collect();
    match order {
        Order::Size => idx.sort_by_key(|&i| (std::cmp::Reverse(ivs[i].size), ivs[i].first)),
        Order::FirstUse => idx.sort_by_key(|&i| (ivs[i].first, std::cmp::Reverse(ivs[i].size))),
        Order::Duration => {
            idx.sort_by_key(|&i| (std::cmp::Reverse(ivs[i].last - ivs[i].first), std::cmp::Reverse(ivs[i].size)))
        }
        Order::Area => {
            idx.sort_by_key(|&i| std::cmp::Reverse(ivs[i].size as u128 * (ivs[i].last - ivs[i].first + 1) as u128))
        }
        Order::Breadth => {
            let breadth = breadths(ivs, align);
            idx.sort_by_key(|&i| (std::cmp::Reverse(breadth[i]), std::cmp::Reverse(ivs[i].size)));
        }
        Order::Jittered(seed) => {
            // Base key by seed: size, breadth or size×duration, each scaled by a reproducible
            // pseudo-random factor in [0.75, 1.25] (splitmix64 of seed and index).
            let breadth = breadths(ivs, align);
            let noise = |i: usize| {
                let mut z = seed
                    .wrapping_mul(0xD1B5_4A32_D192_ED03)
                    .wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                0.75 + 0.5 * ((z ^ (z >> 31)) as f64 / u64::MAX as f64)
            };
            let base = |i: usize| match seed % 3 {
                0 => ivs[i].size as f64,
                1 => breadth[i] as f64 + ivs[i].size as f64 / 1e6,
                _ => ivs[i].size as f64 * (ivs[i].last - ivs[i].first + 1) as f64,
            };
            let keys: Vec<f64> = (0..ivs.len()).map(|i| base(i) * noise(i)).collect();
            idx.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]));
        }
    }
    let mut slots = vec![(0usize, 0u64); ivs.len()];
    // Per buffer: (offset, end, interval index) of placed values.
    let mut buffers: Vec<Vec<(u64, u64, usize)>> = Vec::new();
    for &i in &idx {
        let iv = &ivs[i];
        let size = aligned(iv.size);
        let mut done = false;
        for (b, placed) in buffers.iter_mut().enumerate() {
            if let Some(off) = find_gap(placed, ivs, iv, size, align, limit, fit) {
                placed.push((off, off + size, i));
                slots[i] = (b, off);
                done = true;
                break;
            }
        }
        if !done {
            buffers.push(vec![(0, size, i)]);
            slots[i] = (buffers.len() - 1, 0);
        }
    }
    // Exactly what the values need: no padding after the last one.
    let sizes = buffers.iter().map(|p| p.iter().map(|&(o, _, i)| o + ivs[i].size).max().unwrap_or(0)).collect();
    Placement { slots, buffers: sizes }
}

/// For each value, the most bytes live at any step of its lifetime.
fn breadths(ivs: &[Interval], align: u64) -> Vec<u64> {
    let steps = ivs.iter().map(|i| i.last + 1).max().unwrap_or(0);
    let mut live = vec![0u64; steps];
    for iv in ivs {
        for s in &mut live[iv.first..=iv.last] {
            *s += iv.size.next_multiple_of(align);
        }
    }
    ivs.iter().map(|iv| live[iv.first..=iv.last].iter().copied().max().unwrap_or(0)).collect()
}

fn find_gap(
    placed: &[(u64, u64, usize)],
    ivs: &[Interval],
    iv: &Interval,
    size: u64,
    align: u64,
    limit: u64,
    fit: Fit,
) -> Option<u64> {
    let mut busy: Vec<(u64, u64)> =
        placed.iter().filter(|&&(_, _, j)| ivs[j].overlaps_in_time(iv)).map(|&(s, e, _)| (s, e)).collect();
    busy.sort_unstable();
    let mut cursor = 0u64;
    let mut best: Option<(u64, u64)> = None; // (gap size, offset)
    for (s, e) in busy {
        if s >= cursor + size {
            match fit {
                Fit::First => return Some(cursor),
                Fit::Best => {
                    if best.is_none_or(|(g, _)| s - cursor < g) {
                        best = Some((s - cursor, cursor));
                    }
                }
            }
        }
        cursor = cursor.max(e.next_multiple_of(align));
    }
    if let Some((_, off)) = best {
        return Some(off);
    }
    (cursor + size <= limit).then_some(cursor)
}
