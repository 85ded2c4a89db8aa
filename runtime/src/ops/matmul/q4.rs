//! The q4 weight format (`kiln compile --weights q4`, op `kiln::MatMulQ4`): 4-bit in blocks of
//! [`BLOCK`] with a scale and a minimum per block (`w ≈ q · scale + min`, q in 0..=15, both half
//! floats, as llama.cpp's Q4_1). A row is stored as its `k / BLOCK` scales, then its `k / BLOCK`
//! minimums (little-endian f16), then `k / 2` bytes of 4-bit values: byte `2l + e` (`e` 0 or 1)
//! of block `b` holds weight `32b + 4l + e` in its low half and `32b + 4l + 2 + e` in its high
//! half. Widened to 16-bit words, a block's bytes are then two vectors (a mask and a shift) whose
//! 32-bit lane `l` pairs cover elements `4l..4l + 4`: the lanes every format's integer dot sums
//! (`vpdpwssd` against A's 16-bit integers, see `lanes::I16Pair`). A row is `k / 2 + k / 8` bytes,
//! 16% of f32's.

use super::f16_params;
use super::int_gemm::{self, IntWeights, WTile};
use super::lanes::{self, LaneDot, Lanes};
use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;
use super::quantized_a::DotA;

/// Op type in the `kiln` domain.
pub const MATMUL_Q4: &str = "MatMulQ4";

/// The q4 format.
pub struct Q4;

impl BlockFormat for Q4 {
    const OP: &'static str = MATMUL_Q4;
    const NAME: &'static str = "q4";
    /// Version 1 stored f32 scales and minimums, and byte `j` of a block held elements `j` and
    /// `16 + j`.
    const VERSION: i64 = 2;
    const LAYOUT: &'static str =
        "k / 32 half-float scales, k / 32 half-float minimums, then k / 2 bytes of 4-bit levels";

    fn row_bytes(k: usize) -> usize {
        k / BLOCK * 4 + k / 2
    }

    /// Minimums reach ±65504; the scale then reaches (65504 + 65504) / 15.
    fn fits(w: &[f32]) -> bool {
        w.iter().all(|v| v.abs() <= f16_params::MAX)
    }

    /// The minimum is rounded down and the scale up, so the levels 0..=15 span the whole block.
    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        let blocks = src.len() / BLOCK;
        let (params, quants) = dst.split_at_mut(blocks * 4);
        let (scales, mins) = params.split_at_mut(blocks * 2);
        for (b, (w, q)) in src.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK / 2)).enumerate() {
            let lo = w.iter().fold(f32::INFINITY, |m, &v| m.min(v));
            let hi = w.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let (min, scale) = if lo.is_finite() && hi.is_finite() && lo.abs().max(hi.abs()) <= f16_params::MAX {
                let min = f16_params::at_most(lo);
                (min, f16_params::at_least((hi - f16_params::read(min)) / 15.0))
            } else {
                (f16_params::nearest(0.0), f16_params::nearest(0.0))
            };
            scales[b * 2..b * 2 + 2].copy_from_slice(&scale);
            mins[b * 2..b * 2 + 2].copy_from_slice(&min);
            let (scale, min) = (f16_params::read(scale), f16_params::read(min));
            let level = |v: f32| if scale > 0.0 { ((v - min) / scale).round().clamp(0.0, 15.0) as u8 } else { 0 };
            for (j, byte) in q.iter_mut().enumerate() {
                let (low, high) = elements(j);
                *byte = level(w[low]) | (level(w[high]) << 4);
            }
        }
    }

    fn dequantize_blocks(row: &[u8], k: usize, first: usize, dst: &mut [f32]) {
        let (scales, mins, quants) = <Q4 as LaneDot>::row(row, k / BLOCK);
        let params = scales[first..].iter().zip(&mins[first..]);
        for ((d, q), (s, m)) in dst.chunks_exact_mut(BLOCK).zip(&quants[first..]).zip(params) {
            let (scale, min) = (f16_params::read(*s), f16_params::read(*m));
            for (j, &byte) in q.iter().enumerate() {
                let (low, high) = elements(j);
                d[low] = (byte & 15) as f32 * scale + min;
                d[high] = (byte >> 4) as f32 * scale + min;
            }
        }
    }

    type Prepared = Q4A;

    fn prepare(a: &[f32]) -> Q4A {
        let a = DotA::new(a, elements);
        let sums = a.x.0.iter().map(|b| b.scale * b.sum).collect();
        Q4A { a, sums }
    }

    fn dot_rows(a: &Q4A, k: usize, rows: &[u8], out: &mut [f32]) {
        lanes::dot_rows::<Self>(a, k, rows, out)
    }

    fn native_product(a: &[f32], w: &[u8], k: usize, n: usize, y: &mut [f32]) -> bool {
        int_gemm::product::<Self>(a, w, k, n, Self::row_bytes(k), y)
    }
}

impl IntWeights for Q4 {
    const MIN: bool = true;

    fn fill(row: &[u8], blocks: usize, tile: &mut WTile, c: usize) {
        let (scales, mins, quants) = <Q4 as LaneDot>::row(row, blocks);
        for (b, ((q, s), m)) in quants.iter().zip(scales).zip(mins).enumerate() {
            let mut levels = [0u8; BLOCK];
            for (j, &v) in q.iter().enumerate() {
                let (low, high) = elements(j);
                (levels[low], levels[high]) = (v & 15, v >> 4);
            }
            tile.set_block(c, b, &levels, f16_params::read(*s), f16_params::read(*m));
        }
    }
}

impl LaneDot for Q4 {
    /// The blocks' integers.
    type A<V: Lanes> = V::Int16;
    type Row<'a> = (&'a [[u8; 2]], &'a [[u8; 2]], &'a [[u8; BLOCK / 2]]);

    #[inline(always)]
    fn a_block<V: Lanes>(a: &Q4A, b: usize) -> V::Int16 {
        V::load_i16(&a.a.pairs[b / 2], b % 2)
    }

    #[cfg(test)]
    fn a_as_read(a: &Q4A) -> Vec<f32> {
        a.a.x.dequantized()
    }

    #[inline(always)]
    fn row(bytes: &[u8], blocks: usize) -> Self::Row<'_> {
        let (params, quants) = bytes.split_at(blocks * 4);
        let (scales, mins) = params.split_at(blocks * 2);
        (scales.as_chunks().0, mins.as_chunks().0, quants.as_chunks().0)
    }

    /// `Σ q·x` in eight lanes per block, the sums exact integers (scaled by the pass).
    #[inline(always)]
    fn block<V: Lanes>(x: &V::Int16, (_, _, quants): &Self::Row<'_>, b: usize) -> V {
        V::u4_dot(x, &quants[b..])
    }

    const SCALED: bool = true;

    #[inline(always)]
    fn row_scales<'r>(row: &Self::Row<'r>) -> &'r [[u8; 2]] {
        row.0
    }

    #[inline(always)]
    fn a_scales(a: &Q4A) -> &[f32] {
        &a.a.d
    }

    const ROW_TERM: bool = true;

    /// `Σ min · (d · Σ x)` over the blocks: the minimums' share of the dot, one multiply per
    /// block rather than eight lanes of them.
    #[inline(always)]
    fn row_term<V: Lanes>(a: &Q4A, (_, mins, _): &Self::Row<'_>) -> f32 {
        lanes::dot_f16::<V>(mins, &a.sums)
    }
}

/// The elements of a block whose levels byte `j` holds: (low half's, high half's).
#[inline(always)]
fn elements(j: usize) -> (usize, usize) {
    let low = 4 * (j / 2) + j % 2;
    (low, low + 2)
}

/// A row of A as q4's dot reads it: as q8's, and each block's `d · Σ x` (the minimums' share).
pub struct Q4A {
    a: DotA,
    sums: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::test_weights;

    #[test]
    fn the_simd_multi_row_dot_equals_the_portable_one_row_dot_bit_for_bit() {
        crate::ops::matmul::lanes::check_dot_rows::<Q4>();
    }

    #[test]
    fn rows_round_trip_within_half_a_step_and_constant_blocks_exactly() {
        let (w, q) = test_weights::<Q4>(3, 64);
        let mut back = vec![0f32; 64];
        for r in 0..3 {
            let row = &q[r * Q4::row_bytes(64)..(r + 1) * Q4::row_bytes(64)];
            Q4::dequantize_row(row, &mut back);
            for (b, (x, y)) in w[r * 64..(r + 1) * 64].chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let scale = f16_params::read([row[2 * b], row[2 * b + 1]]);
                let min = f16_params::read([row[4 + 2 * b], row[4 + 2 * b + 1]]);
                // The half-float parameters bracket the block and cost at most a rounding step.
                assert!(min <= lo && min + 15.0 * scale >= hi, "row {r} block {b}: {min} + 15·{scale} vs {lo}..{hi}");
                assert!(
                    scale <= (hi - lo) / 15.0 * (1.0 + 1e-3) + lo.abs() * 1e-3 / 15.0,
                    "row {r} block {b}: {scale}"
                );
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() <= scale / 2.0 + 1e-6, "row {r} block {b}: {u} vs {v}");
                }
            }
        }
        let mut row = vec![0u8; Q4::row_bytes(32)];
        Q4::quantize_row(&[0.75; 32], &mut row);
        Q4::dequantize_row(&row, &mut back[..32]);
        assert!(back[..32].iter().all(|&v| v == 0.75));
    }
}
