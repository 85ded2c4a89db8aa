//! The q8 weight format (`kiln compile --weights q8`, op `kiln::MatMulQ8`): int8 in blocks of
//! [`BLOCK`], one f32 scale per block (`scale = max |w| / 127`). Each row is stored as its
//! `k / BLOCK` little-endian f32 scales followed by its `k` int8 values, so a row is one
//! contiguous read of `k + k / 8` bytes, a quarter of f32's.

use super::lanes::{self, LaneDot, Lanes, GROUPS};
use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;

/// The q8 format.
pub struct Q8;

impl BlockFormat for Q8 {
    const OP: &'static str = MATMUL_Q8;
    const NAME: &'static str = "q8";

    fn row_bytes(k: usize) -> usize {
        k / BLOCK * 4 + k
    }

    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        let blocks = src.len() / BLOCK;
        let (scales, quants) = dst.split_at_mut(blocks * 4);
        for (b, (w, q)) in src.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).enumerate() {
            let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 0.0 };
            scales[b * 4..b * 4 + 4].copy_from_slice(&scale.to_le_bytes());
            for (d, &v) in q.iter_mut().zip(w) {
                let x = if scale > 0.0 { (v / scale).round().clamp(-127.0, 127.0) } else { 0.0 };
                *d = (x as i8) as u8;
            }
        }
    }

    fn dequantize_row(row: &[u8], dst: &mut [f32]) {
        let (scales, quants) = <Q8 as LaneDot>::row(row, dst.len() / BLOCK);
        for ((d, q), s) in dst.chunks_exact_mut(BLOCK).zip(quants).zip(scales) {
            let scale = f32::from_le_bytes(*s);
            for (x, &v) in d.iter_mut().zip(q) {
                *x = (v as i8) as f32 * scale;
            }
        }
    }

    fn dot_rows(a: &[f32], rows: &[u8], out: &mut [f32]) {
        lanes::dot_rows::<Self>(a, rows, out)
    }
}

/// Op type in the `kiln` domain.
pub const MATMUL_Q8: &str = "MatMulQ8";

impl LaneDot for Q8 {
    type A<V: Lanes> = [V; GROUPS];
    type Row<'a> = (&'a [[u8; 4]], &'a [[u8; BLOCK]]);

    #[inline(always)]
    fn a_block<V: Lanes>(a: &[f32; BLOCK]) -> [V; GROUPS] {
        lanes::load_block(a)
    }

    #[inline(always)]
    fn row(bytes: &[u8], blocks: usize) -> Self::Row<'_> {
        let (scales, quants) = bytes.split_at(blocks * 4);
        (scales.as_chunks().0, quants.as_chunks().0)
    }

    /// The block's `Σ a·q` in eight lanes, times its scale.
    #[inline(always)]
    fn block<V: Lanes>(a: &[V; GROUPS], (scales, quants): &Self::Row<'_>, b: usize) -> V {
        let q = quants[b].as_chunks::<8>().0;
        lanes::dot_block(a, std::array::from_fn(|t| V::i8s(&q[t]))).mul(V::splat(f32::from_le_bytes(scales[b])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::test_weights;

    #[test]
    fn the_simd_multi_row_dot_equals_the_portable_one_row_dot_bit_for_bit() {
        crate::ops::matmul::lanes::check_dot_rows::<Q8>();
    }

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let (w, q) = test_weights::<Q8>(3, 64);
        let mut back = vec![0f32; 64];
        for r in 0..3 {
            Q8::dequantize_row(&q[r * Q8::row_bytes(64)..(r + 1) * Q8::row_bytes(64)], &mut back);
            for (b, (x, y)) in w[r * 64..(r + 1) * 64].chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() <= step / 2.0 + 1e-7, "row {r} block {b}: {u} vs {v}");
                }
            }
        }
        let mut zero = vec![0u8; Q8::row_bytes(32)];
        Q8::quantize_row(&[0.0; 32], &mut zero);
        Q8::dequantize_row(&zero, &mut back[..32]);
        assert!(back[..32].iter().all(|&v| v == 0.0));
    }
}
