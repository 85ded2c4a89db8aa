//! The q8 weight format (`kiln compile --weights q8`, op `kiln::MatMulQ8`): int8 in blocks of
//! [`BLOCK`], one scale per block (`scale = max |w| / 127`, stored as a half float, as llama.cpp's
//! Q8_0). Each row is stored as its `k / BLOCK` little-endian f16 scales followed by its `k` int8
//! values, so a row is one contiguous read of `k + k / 16` bytes, 27% of f32's. The values go in
//! pairs of blocks, each block split in halves: block `2p`'s first 16, block `2p + 1`'s first 16,
//! block `2p`'s last 16, block `2p + 1`'s last 16 (a row's last block, when the count is odd, in
//! order). Each half of a pair is then 32 bytes that widen to words matching A's `lanes::I16Pair`:
//! two `vpdpwssd` per pair of blocks.

use super::f16_params;
use super::int_gemm::{self, IntWeights, WTile};
use super::lanes::{self, LaneDot, Lanes};
use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;
use super::quantized_a::DotA;

/// The q8 format.
pub struct Q8;

impl BlockFormat for Q8 {
    const OP: &'static str = MATMUL_Q8;
    const NAME: &'static str = "q8";
    /// Version 1 stored f32 scales and each block's values in order.
    const VERSION: i64 = 2;
    const LAYOUT: &'static str = "k / 32 half-float scales, then k int8 in pairs of blocks split in halves";

    fn row_bytes(k: usize) -> usize {
        k / BLOCK * 2 + k
    }

    /// Scales reach 65504 (a weight of 127·65504 ≈ 8.3 million).
    fn fits(w: &[f32]) -> bool {
        w.iter().all(|v| v.abs() <= 127.0 * f16_params::MAX)
    }

    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        let blocks = src.len() / BLOCK;
        let (scales, quants) = dst.split_at_mut(blocks * 2);
        for (b, w) in src.chunks_exact(BLOCK).enumerate() {
            let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let stored = f16_params::nearest(if max.is_finite() { (max / 127.0).min(f16_params::MAX) } else { 0.0 });
            scales[b * 2..b * 2 + 2].copy_from_slice(&stored);
            let scale = f16_params::read(stored);
            for (e, &v) in w.iter().enumerate() {
                let x = if scale > 0.0 { (v / scale).round().clamp(-127.0, 127.0) } else { 0.0 };
                quants[position(blocks, b, e)] = (x as i8) as u8;
            }
        }
    }

    fn dequantize_blocks(row: &[u8], k: usize, first: usize, dst: &mut [f32]) {
        let blocks = k / BLOCK;
        let (scales, quants, _) = <Q8 as LaneDot>::row(row, blocks);
        for ((d, b), s) in dst.chunks_exact_mut(BLOCK).zip(first..).zip(&scales[first..]) {
            let scale = f16_params::read(*s);
            for (x, v) in d.iter_mut().zip(block_values(quants, blocks, b)) {
                *x = (v as i8) as f32 * scale;
            }
        }
    }

    type Prepared = DotA;

    fn prepare(a: &[f32]) -> DotA {
        DotA::new(a, |j| (j, j + BLOCK / 2))
    }

    fn dot_rows(a: &DotA, k: usize, rows: &[u8], out: &mut [f32]) {
        lanes::dot_rows::<Self>(a, k, rows, out)
    }

    fn native_product(a: &[f32], w: &[u8], k: usize, n: usize, y: &mut [f32]) -> bool {
        int_gemm::product::<Self>(a, w, k, n, Self::row_bytes(k), y)
    }
}

impl IntWeights for Q8 {
    const MIN: bool = false;

    fn fill(row: &[u8], blocks: usize, tile: &mut WTile, c: usize) {
        let (scales, quants, _) = <Q8 as LaneDot>::row(row, blocks);
        for (b, s) in scales.iter().enumerate() {
            tile.set_block(c, b, &block_values(quants, blocks, b), f16_params::read(*s), 0.0);
        }
    }
}

/// Op type in the `kiln` domain.
pub const MATMUL_Q8: &str = "MatMulQ8";

impl LaneDot for Q8 {
    /// The blocks' integers.
    type A<V: Lanes> = V::Int16;
    /// Scales, values, blocks.
    type Row<'a> = (&'a [[u8; 2]], &'a [u8], usize);

    #[inline(always)]
    fn a_block<V: Lanes>(a: &DotA, b: usize) -> V::Int16 {
        V::load_i16(&a.pairs[b / 2], b % 2)
    }

    #[cfg(test)]
    fn a_as_read(a: &DotA) -> Vec<f32> {
        a.x.dequantized()
    }

    #[inline(always)]
    fn row(bytes: &[u8], blocks: usize) -> Self::Row<'_> {
        let (scales, quants) = bytes.split_at(blocks * 2);
        (scales.as_chunks().0, quants, blocks)
    }

    /// Each block's exact integer `Σ q·x` in eight lanes (scaled by the pass).
    #[inline(always)]
    fn block<V: Lanes>(x: &V::Int16, &(_, quants, blocks): &Self::Row<'_>, b: usize) -> V {
        // Blocks `b..b + V::BLOCKS`' halves: a whole pair's when `V` takes two (`b` even).
        let (lo, hi) = (position(blocks, b, 0), position(blocks, b, BLOCK / 2));
        let len = BLOCK / 2 * V::BLOCKS;
        V::i8_dot(x, &quants[lo..lo + len], &quants[hi..hi + len])
    }

    const SCALED: bool = true;

    #[inline(always)]
    fn row_scales<'r>(row: &Self::Row<'r>) -> &'r [[u8; 2]] {
        row.0
    }

    #[inline(always)]
    fn a_scales(a: &DotA) -> &[f32] {
        &a.d
    }
}

/// Where element `e` of block `b` of a row of `blocks` blocks sits among the row's values.
#[inline(always)]
fn position(blocks: usize, b: usize, e: usize) -> usize {
    let pair = b / 2 * 2 * BLOCK;
    if b | 1 < blocks {
        pair + e / (BLOCK / 2) * BLOCK + b % 2 * (BLOCK / 2) + e % (BLOCK / 2)
    } else {
        pair + e
    }
}

/// Block `b`'s values in order: its two halves, each one copy.
#[inline(always)]
fn block_values(quants: &[u8], blocks: usize, b: usize) -> [u8; BLOCK] {
    let (lo, hi) = (position(blocks, b, 0), position(blocks, b, BLOCK / 2));
    let mut q = [0u8; BLOCK];
    q[..BLOCK / 2].copy_from_slice(&quants[lo..lo + BLOCK / 2]);
    q[BLOCK / 2..].copy_from_slice(&quants[hi..hi + BLOCK / 2]);
    q
}

/// `n` stored rows of `k` weights whose bytes take every value, -128 (which `quantize_row` never
/// writes) included, with distinct scales: what a hostile bundle could hold, for tests that every
/// path multiplies them exactly.
#[cfg(test)]
pub(crate) fn rows_of_every_byte(n: usize, k: usize) -> Vec<u8> {
    let rb = Q8::row_bytes(k);
    let mut rows = vec![0u8; n * rb];
    for (r, row) in rows.chunks_exact_mut(rb).enumerate() {
        let (scales, quants) = row.split_at_mut(k / BLOCK * 2);
        for (b, s) in scales.chunks_exact_mut(2).enumerate() {
            s.copy_from_slice(&f16_params::nearest(0.01 * (1 + r + b) as f32));
        }
        for (j, q) in quants.iter_mut().enumerate() {
            *q = (r * 64 + j * 7) as u8;
        }
    }
    assert!(rows.contains(&0x80));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::test_weights;

    #[test]
    fn the_simd_multi_row_dot_equals_the_portable_one_row_dot_bit_for_bit() {
        crate::ops::matmul::lanes::check_dot_rows::<Q8>();
    }

    /// Stored rows need not come from `quantize_row`: a byte of -128 (which it never writes)
    /// still multiplies exactly on every path.
    #[test]
    fn every_byte_value_multiplies_exactly_on_every_path() {
        let k = 64;
        let rows = rows_of_every_byte(9, k);
        let a: Vec<f32> = (0..k).map(|i| if i % 5 == 0 { -1.5 } else { 0.37 * (i % 7) as f32 }).collect();
        crate::ops::matmul::lanes::check_dot_rows_on::<Q8>(&a, &rows);
    }

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let (w, q) = test_weights::<Q8>(3, 64);
        let mut back = vec![0f32; 64];
        for r in 0..3 {
            Q8::dequantize_row(&q[r * Q8::row_bytes(64)..(r + 1) * Q8::row_bytes(64)], &mut back);
            let row = &q[r * Q8::row_bytes(64)..(r + 1) * Q8::row_bytes(64)];
            for (b, (x, y)) in w[r * 64..(r + 1) * 64].chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                // The stored (half float) scale is the step; the largest weight may sit up to 127
                // times the scale's rounding off its level, as the level stops at 127.
                let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let stored = f16_params::read([row[2 * b], row[2 * b + 1]]);
                assert!((stored - step).abs() <= step / 2048.0, "row {r} block {b}: scale {stored} for {step}");
                let bound = stored / 2.0 + 127.0 * (stored - step).abs() + 1e-7;
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() <= bound, "row {r} block {b}: {u} vs {v}");
                }
            }
        }
        let mut zero = vec![0u8; Q8::row_bytes(32)];
        Q8::quantize_row(&[0.0; 32], &mut zero);
        Q8::dequantize_row(&zero, &mut back[..32]);
        assert!(back[..32].iter().all(|&v| v == 0.0));
    }
}
