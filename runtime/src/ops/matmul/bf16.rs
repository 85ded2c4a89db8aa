//! The bf16 weight format (`kiln compile --weights bf16`, op `kiln::MatMulBF16`): a row is its
//! `k` weights as little-endian bfloat16 (f32's top 16 bits), rounded to nearest (ties to even),
//! half of f32's bytes. bf16 keeps f32's range but only 8 significant bits, under f16's 11.
//! The layout has no blocks, but `k` is still a multiple of [`BLOCK`]: the dot takes A a block
//! at a time, and the compiler only converts such weights.

use super::lanes::{self, LaneDot, Lanes, GROUPS};
use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;
use half::bf16;

/// Op type in the `kiln` domain.
pub const MATMUL_BF16: &str = "MatMulBF16";

/// The bf16 format.
pub struct BF16;

impl BlockFormat for BF16 {
    const OP: &'static str = MATMUL_BF16;
    const NAME: &'static str = "bf16";

    fn row_bytes(k: usize) -> usize {
        2 * k
    }

    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
            d.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
        }
    }

    fn dequantize_row(row: &[u8], dst: &mut [f32]) {
        for (x, h) in dst.iter_mut().zip(row.as_chunks::<2>().0) {
            *x = bf16::from_le_bytes(*h).to_f32();
        }
    }

    fn dot_rows(a: &[f32], rows: &[u8], out: &mut [f32]) {
        lanes::dot_rows::<Self>(a, rows, out)
    }
}

impl LaneDot for BF16 {
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
        lanes::half_block(a, &row[b], V::bf16s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::check_nearest_16;

    #[test]
    fn the_simd_multi_row_dot_equals_the_portable_one_row_dot_bit_for_bit() {
        lanes::check_dot_rows::<BF16>();
    }

    #[test]
    fn weights_round_to_the_nearest_bf16() {
        check_nearest_16::<BF16>(|h| bf16::from_bits(h).to_f32());
        let mut row = vec![0u8; BF16::row_bytes(32)];
        BF16::quantize_row(&[1e30; 32], &mut row);
        let mut back = [0f32; 32];
        BF16::dequantize_row(&row, &mut back);
        assert!(back.iter().all(|&v| (v / 1e30 - 1.0).abs() < 1.0 / 256.0), "within f32's range: {back:?}");
    }
}
