//! The f16 weight format (`kiln compile --weights f16`, op `kiln::MatMulF16`): a row is its `k`
//! weights as little-endian IEEE half floats, rounded to nearest (ties to even), half of f32's
//! bytes. f16 keeps 11 significant bits but only magnitudes up to 65504 (beyond, a weight
//! becomes ±inf) and down to 6e-8. The layout has no blocks, but `k` is still a multiple of
//! [`BLOCK`]: the dot takes A a block at a time, and the compiler only converts such weights.

use super::lanes::{self, LaneDot, Lanes, GROUPS};
use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Op type in the `kiln` domain.
pub const MATMUL_F16: &str = "MatMulF16";

/// The f16 format.
pub struct F16;

impl BlockFormat for F16 {
    const OP: &'static str = MATMUL_F16;
    const NAME: &'static str = "f16";

    fn row_bytes(k: usize) -> usize {
        2 * k
    }

    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
            d.copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }

    fn dequantize_row(row: &[u8], dst: &mut [f32]) {
        // `half`'s slice conversion takes eight at a time with F16C (one at a time, SmolLM2's
        // prefill ran at 350 tokens/s instead of 420); it needs the row 2-aligned (bundle rows
        // are) and in native order.
        #[cfg(target_endian = "little")]
        if let Ok(halves) = bytemuck::try_cast_slice::<u8, f16>(&row[..2 * dst.len()]) {
            return halves.convert_to_f32_slice(dst);
        }
        for (x, h) in dst.iter_mut().zip(row.as_chunks::<2>().0) {
            *x = f16::from_le_bytes(*h).to_f32();
        }
    }

    fn dot_rows(a: &[f32], rows: &[u8], out: &mut [f32]) {
        lanes::dot_rows::<Self>(a, rows, out)
    }
}

impl LaneDot for F16 {
    type A<V: Lanes> = [V; GROUPS];
    type Row<'a> = &'a [[u8; 2 * BLOCK]];

    #[inline(always)]
    fn a_block<V: Lanes>(a: &[f32; BLOCK]) -> [V; GROUPS] {
        lanes::load_block(a)
    }

    #[inline(always)]
    fn row(bytes: &[u8], _blocks: usize) -> Self::Row<'_> {
        bytes.as_chunks().0
    }

    #[inline(always)]
    fn block<V: Lanes>(a: &[V; GROUPS], row: &Self::Row<'_>, b: usize) -> V {
        lanes::half_block(a, &row[b], V::f16s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::check_nearest_16;

    #[test]
    fn the_simd_multi_row_dot_equals_the_portable_one_row_dot_bit_for_bit() {
        lanes::check_dot_rows::<F16>();
    }

    #[test]
    fn weights_round_to_the_nearest_f16() {
        check_nearest_16::<F16>(|h| f16::from_bits(h).to_f32());
        let mut row = vec![0u8; F16::row_bytes(32)];
        F16::quantize_row(&[1e5; 32], &mut row);
        let mut back = [0f32; 32];
        F16::dequantize_row(&row, &mut back);
        assert!(back.iter().all(|&v| v == f32::INFINITY), "beyond f16's range: {back:?}");
    }

    #[test]
    fn a_misaligned_row_reads_the_same_values() {
        let (_, q) = crate::ops::matmul::quantized::test_weights::<F16>(1, 64);
        let mut buf = vec![0u16; q.len() / 2 + 1];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        bytes[1..=q.len()].copy_from_slice(&q);
        let (mut aligned, mut odd) = (vec![0f32; 64], vec![0f32; 64]);
        F16::dequantize_row(&q, &mut aligned);
        F16::dequantize_row(&bytes[1..=q.len()], &mut odd);
        assert_eq!(aligned, odd);
    }
}
