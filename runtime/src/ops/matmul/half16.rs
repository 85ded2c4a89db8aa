//! The 16-bit float weight formats (`kiln compile --weights f16|bf16`, ops `kiln::MatMulF16` /
//! `kiln::MatMulBF16`): a row is its `k` weights as little-endian half floats, rounded to
//! nearest (ties to even), half of f32's bytes.
//! - f16 keeps 11 significant bits but only magnitudes up to 65504 (a product with a weight
//!   beyond, or a non-finite one, stays f32) and down to 6e-8.
//! - bf16 (f32's top 16 bits) keeps f32's range but only 8 significant bits.
//!
//! The layout has no blocks, but `k` is still a multiple of [`BLOCK`]: the dot takes A a block
//! at a time, and the compiler only converts such weights.

use super::lanes::{self, LaneDot, Lanes, GROUPS};
use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::marker::PhantomData;

/// A 16-bit float type weights are stored as.
pub trait Half16: bytemuck::Pod + Send + Sync + 'static {
    /// Op type of its product in the `kiln` domain.
    const OP: &'static str;
    /// The `--weights` name.
    const NAME: &'static str;
    fn from_f32(v: f32) -> Self;
    fn from_le_bytes(b: [u8; 2]) -> Self;
    fn to_le_bytes(self) -> [u8; 2];
    /// Widens a slice (eight at a time with F16C, for f16).
    fn widen_slice(src: &[Self], dst: &mut [f32]);
    /// bf16 (widened by a shift), not f16 (widened by F16C).
    const BRAIN: bool;
}

impl Half16 for f16 {
    const OP: &'static str = "MatMulF16";
    const NAME: &'static str = "f16";
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn from_le_bytes(b: [u8; 2]) -> Self {
        f16::from_le_bytes(b)
    }
    fn to_le_bytes(self) -> [u8; 2] {
        f16::to_le_bytes(self)
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
    const BRAIN: bool = false;
}

impl Half16 for bf16 {
    const OP: &'static str = "MatMulBF16";
    const NAME: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn from_le_bytes(b: [u8; 2]) -> Self {
        bf16::from_le_bytes(b)
    }
    fn to_le_bytes(self) -> [u8; 2] {
        bf16::to_le_bytes(self)
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
    const BRAIN: bool = true;
}

/// Weights stored as `H`.
pub struct Half<H>(PhantomData<H>);

/// The f16 format.
pub type F16 = Half<f16>;
/// The bf16 format.
pub type BF16 = Half<bf16>;

impl<H: Half16> BlockFormat for Half<H> {
    const OP: &'static str = H::OP;
    const NAME: &'static str = H::NAME;
    const LAYOUT: &'static str = "k little-endian 16-bit floats";

    fn row_bytes(k: usize) -> usize {
        2 * k
    }

    /// Finite weights that stay finite as `H`: an infinite weight (f16's beyond 65504) would be
    /// stored wrong, and in the AMX split product it would meet zero parts of A (`∞ · 0`).
    fn fits(w: &[f32]) -> bool {
        w.iter().all(|&v| {
            let mut wide = [0f32];
            H::widen_slice(&[H::from_f32(v)], &mut wide);
            wide[0].is_finite()
        })
    }

    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
            d.copy_from_slice(&H::from_f32(v).to_le_bytes());
        }
    }

    fn dequantize_blocks(row: &[u8], _k: usize, first: usize, dst: &mut [f32]) {
        let row = &row[2 * BLOCK * first..];
        // `half`'s slice conversion takes eight at a time with F16C (one at a time, SmolLM2's
        // prefill ran at 350 tokens/s instead of 420); it needs the row 2-aligned (bundle rows
        // are) and in native order.
        #[cfg(target_endian = "little")]
        if let Ok(halves) = bytemuck::try_cast_slice::<u8, H>(&row[..2 * dst.len()]) {
            return H::widen_slice(halves, dst);
        }
        let mut one = [0f32];
        for (x, h) in dst.iter_mut().zip(row.as_chunks::<2>().0) {
            H::widen_slice(&[H::from_le_bytes(*h)], &mut one);
            *x = one[0];
        }
    }

    /// On AMX tiles where the CPU has them (A rounded to bf16 for bf16, split in two bf16s for
    /// f16; see `amx`). f16's split would turn an infinite A into NaN sums (`∞ · 0` against a
    /// zero low part), so such an A takes the f32 panels.
    fn native_product(a: &[f32], w: &[u8], k: usize, n: usize, y: &mut [f32]) -> bool {
        if on_tiles() && (H::BRAIN || a.iter().all(|v| v.is_finite())) {
            // `on_tiles` is never true where the `amx` module is not built.
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            super::amx::product(tile_weights::<H>(), a, w, k, n, y);
            return true;
        }
        let _ = (a, w, k, n, y);
        false
    }

    #[cfg(test)]
    fn a_as_multiplied(a: f32) -> f32 {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if on_tiles() {
            return super::amx::a_as_multiplied(tile_weights::<H>(), a);
        }
        a
    }

    /// A as it is: the 16-bit weights are widened to f32.
    type Prepared = Vec<f32>;

    fn prepare(a: &[f32]) -> Vec<f32> {
        a.to_vec()
    }

    fn dot_rows(a: &Vec<f32>, k: usize, rows: &[u8], out: &mut [f32]) {
        lanes::dot_rows::<Self>(a, k, rows, out)
    }
}

/// Whether the 16-bit formats' many-row products run on AMX tiles here: on a CPU and kernel that
/// let them.
fn on_tiles() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    return super::amx::available();
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// How the tile product takes `H`'s weights.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn tile_weights<H: Half16>() -> super::amx::Weights {
    if H::BRAIN {
        super::amx::Weights::Bf16
    } else {
        super::amx::Weights::F16
    }
}

impl<H: Half16> LaneDot for Half<H> {
    type A<V: Lanes> = [V; GROUPS];
    type Row<'a> = &'a [[u8; 2 * BLOCK]];

    #[inline(always)]
    fn a_block<V: Lanes>(a: &Vec<f32>, b: usize) -> [V; GROUPS] {
        lanes::load_blocks(a.as_chunks::<BLOCK>().0, b)
    }

    #[cfg(test)]
    fn a_as_read(a: &Vec<f32>) -> Vec<f32> {
        a.clone()
    }

    #[inline(always)]
    fn row(bytes: &[u8], _blocks: usize) -> Self::Row<'_> {
        bytes.as_chunks().0
    }

    #[inline(always)]
    fn block<V: Lanes>(a: &[V; GROUPS], row: &Self::Row<'_>, b: usize) -> V {
        lanes::half_block(a, lanes::blocks::<V, _>(row, b), H::BRAIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::test_weights;

    /// Checks that a 16-bit float format `F` (`widen` reads one value's bits) stores weights as the
    /// nearest value, ties to even, and reads back what it stored: no neighbour of the stored bits
    /// lies closer to the weight (so it is within half a step of either side).
    fn check_nearest_16<F: BlockFormat>(widen: fn(u16) -> f32) {
        let (mut w, _) = test_weights::<F>(1, 64);
        w.extend([0.0, -0.0, 1.0, -2.5, 1e-3, -3e-7, 1e-30, 0.1, 1.0 / 3.0, 65504.0, -1234.567, 3.0 * 2f32.powi(-12)]);
        w.resize(w.len().next_multiple_of(BLOCK), 0.7);
        let mut row = vec![0u8; F::row_bytes(w.len())];
        F::quantize_row(&w, &mut row);
        let mut back = vec![0f32; w.len()];
        F::dequantize_row(&row, &mut back);
        for ((&v, &b), h) in w.iter().zip(&back).zip(row.as_chunks::<2>().0) {
            let h = u16::from_le_bytes(*h);
            assert_eq!(b.to_bits(), widen(h).to_bits(), "{} reads {h:#06x} back as {b}", F::NAME);
            let d = (v - b).abs();
            for n in [h.wrapping_sub(1), h.wrapping_add(1)].map(widen) {
                let dn = (v - n).abs();
                assert!(
                    d < dn || (d == dn && h % 2 == 0) || dn.is_nan(),
                    "{}: {v} stored as {b}, {n} is closer",
                    F::NAME
                );
            }
        }
    }

    #[test]
    fn the_simd_multi_row_dot_equals_the_portable_one_row_dot_bit_for_bit() {
        lanes::check_dot_rows::<F16>();
        lanes::check_dot_rows::<BF16>();
    }

    /// 32 copies of `v` stored and read back.
    fn round_trip<H: Half16>(v: f32) -> [f32; 32] {
        let mut row = vec![0u8; Half::<H>::row_bytes(32)];
        Half::<H>::quantize_row(&[v; 32], &mut row);
        let mut back = [0f32; 32];
        Half::<H>::dequantize_row(&row, &mut back);
        back
    }

    #[test]
    fn weights_round_to_the_nearest_f16_and_bf16() {
        check_nearest_16::<F16>(|h| f16::from_bits(h).to_f32());
        check_nearest_16::<BF16>(|h| bf16::from_bits(h).to_f32());
        assert!(round_trip::<f16>(1e5).iter().all(|&v| v == f32::INFINITY), "beyond f16's range");
        let back = round_trip::<bf16>(1e30);
        assert!(back.iter().all(|&v| (v / 1e30 - 1.0).abs() < 1.0 / 256.0), "within f32's range: {back:?}");
    }

    #[test]
    fn a_misaligned_row_reads_the_same_values() {
        let (_, q) = test_weights::<F16>(1, 64);
        let mut buf = vec![0u16; q.len() / 2 + 1];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        bytes[1..=q.len()].copy_from_slice(&q);
        let (mut aligned, mut odd) = (vec![0f32; 64], vec![0f32; 64]);
        F16::dequantize_row(&q, &mut aligned);
        F16::dequantize_row(&bytes[1..=q.len()], &mut odd);
        assert_eq!(aligned, odd);
    }
}
