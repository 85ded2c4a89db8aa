//! A row of A quantized for integer dot products with q8 and q4 weights: per block of
//! [`BLOCK`], one f32 scale `d` and integers `x` with `a ≈ d·x`, `|x| ≤` [`X_MAX`] (15 bits, so
//! the quantization adds about `2⁻¹⁶` of the block's largest `|a|` to each element, far below the
//! weights' own error). Each `x` is a 16-bit integer, never -32768, the one word `vpmaddwd`
//! cannot multiply by itself: decode's dots (`vpdpwssd`, `vpmaddwd`) take them whole. The prefill
//! product quantizes A to the same `x` (`int_gemm`), split into the bytes its byte dots take.
//!
//! A weight block's dot is then exact in 32-bit integers, in any order, and exact again in f32
//! (every lane's sum stays below 2²⁴), so every CPU's path gives the same bits.

use super::lanes::I16Pair;
use super::quantized::BLOCK;

/// Largest `|x|`: `255 · 127 + 127`, what `int_gemm`'s byte split and decode's 16-bit words
/// both hold.
pub(crate) const X_MAX: i32 = 255 * 127 + 127;

/// One block of a row of A.
pub(crate) struct Block {
    /// `d` (zero for an all-zero block, NaN for one holding a NaN or an infinity).
    pub scale: f32,
    /// Its `x`.
    pub x: [i16; BLOCK],
    /// `Σ x` over the block (exact in f32), for formats whose weights have an offset (q4's
    /// minimum).
    pub sum: f32,
}

/// One row of A, block by block (one allocation per product: decode makes one per layer's
/// product per token).
pub struct QuantizedA(pub(crate) Vec<Block>);

/// A row of A as decode's integer dots read it (q8's and q4's prepared A): quantized, its blocks'
/// `d` side by side (as a pass converts the weights' scales, many blocks at a time), and its `x`
/// again as 16-bit integers in pairs of blocks, in the order the format stores its weights.
pub struct DotA {
    pub(crate) x: QuantizedA,
    pub(crate) d: Vec<f32>,
    pub(crate) pairs: Vec<I16Pair>,
}

impl DotA {
    /// Quantizes `a` (`a.len()` a multiple of [`BLOCK`]); `halves(j)` are the elements word `j`
    /// of each half of a block holds ([`I16Pair`]).
    pub(crate) fn new(a: &[f32], halves: impl Fn(usize) -> (usize, usize)) -> DotA {
        let x = QuantizedA::new(a);
        let d = x.0.iter().map(|b| b.scale).collect();
        let pairs = I16Pair::row(&x, halves);
        DotA { x, d, pairs }
    }
}

/// Adding then subtracting this rounds an f32 below 2²² in magnitude to the nearest integer (ties
/// to even) in two vector instructions; `f32::round` is a libm call on baseline x86-64, which
/// measured 8% of SmolLM2's q8 decode.
const ROUNDER: f32 = 12_582_912.0;

#[inline(always)]
pub(super) fn round(v: f32) -> f32 {
    (v + ROUNDER) - ROUNDER
}

impl QuantizedA {
    /// Quantizes `a` (`a.len()` a multiple of [`BLOCK`]). A block holding a NaN or an infinity
    /// gets a NaN scale, so the products it enters are NaN, as with f32 arithmetic.
    pub(crate) fn new(a: &[f32]) -> QuantizedA {
        QuantizedA(a.as_chunks::<BLOCK>().0.iter().map(Block::new).collect())
    }

    /// The values the integer dots multiply, `d·x` (for tests' references).
    #[cfg(test)]
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.0.len() * BLOCK);
        for b in &self.0 {
            out.extend(b.x.iter().map(|&x| b.scale * x as f32));
        }
        out
    }
}

/// A block's scale `d` and `1 / d` (both zero for an all-zero block), or `None` when it holds a
/// NaN or an infinity. Written lane-wise so that it vectorizes: a max folded element by element
/// is one dependent chain. Decode's and prefill's quantizers share it, so both make the same `x`.
#[inline(always)]
pub(crate) fn block_scale(block: &[f32; BLOCK]) -> Option<(f32, f32)> {
    let (mut max8, mut poison8) = ([0f32; 8], [0f32; 8]);
    for c in block.as_chunks::<8>().0 {
        for l in 0..8 {
            max8[l] = max8[l].max(c[l].abs());
            // NaN exactly when the block holds a NaN or an infinity.
            poison8[l] += c[l] * 0.0;
        }
    }
    if poison8.iter().sum::<f32>().is_nan() {
        return None;
    }
    let max = max8.iter().fold(0f32, |m, &v| m.max(v));
    Some(if max > 0.0 { (max / X_MAX as f32, X_MAX as f32 / max) } else { (0.0, 0.0) })
}

impl Block {
    /// Written lane-wise so that it vectorizes: a max or a sum folded element by element is one
    /// dependent chain, which measured 4% of SmolLM2's q8 decode.
    fn new(block: &[f32; BLOCK]) -> Block {
        let Some((scale, inv)) = block_scale(block) else {
            return Block { scale: f32::NAN, x: [0; BLOCK], sum: 0.0 };
        };
        let mut out = Block { scale, x: [0; BLOCK], sum: 0.0 };
        let mut xs = [0i32; BLOCK];
        for (j, &v) in block.iter().enumerate() {
            let x = round(v * inv).clamp(-X_MAX as f32, X_MAX as f32);
            // SAFETY: x is a finite integer (v is finite: the block is not poisoned) with |x| ≤
            // X_MAX, in range of i32. (`as` checks every element for NaN and overflow, one at a
            // time: half this function's time.)
            xs[j] = unsafe { x.to_int_unchecked::<i32>() };
            out.x[j] = xs[j] as i16;
        }
        out.sum = xs.iter().sum::<i32>() as f32;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_within_half_a_step_and_the_words_stay_off_minus_32768() {
        let a: Vec<f32> =
            (0..4 * BLOCK).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.0123 * (1 + i / BLOCK) as f32).collect();
        let q = QuantizedA::new(&a);
        let back = q.dequantized();
        for (b, (x, y)) in a.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let step = q.0[b].scale;
            assert!(step > 0.0);
            for (u, v) in x.iter().zip(y) {
                assert!((u - v).abs() <= step * 0.5001 + 1e-7, "block {b}: {u} vs {v}");
            }
        }
        for b in &q.0 {
            assert!(b.x.iter().all(|&v| v != i16::MIN && v.unsigned_abs() <= X_MAX as u16));
            let x: i32 = b.x.iter().map(|&v| v as i32).sum();
            assert_eq!(b.sum, x as f32);
        }
    }

    /// `cargo test -p kiln-runtime --release quantize_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn quantize_speed() {
        let a: Vec<f32> = (0..1536).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.0123).collect();
        let t = std::time::Instant::now();
        let reps = 100_000;
        for _ in 0..reps {
            std::hint::black_box(QuantizedA::new(std::hint::black_box(&a)));
        }
        println!("{:.2} ns per element", t.elapsed().as_secs_f64() * 1e9 / (reps * a.len()) as f64);
    }

    #[test]
    fn extremes_zeros_and_non_finite_blocks() {
        let mut a = vec![0f32; 4 * BLOCK];
        a[0] = -2.5;
        a[1] = 2.5;
        a[BLOCK + 3] = f32::NAN;
        a[3 * BLOCK + 1] = f32::NEG_INFINITY;
        let q = QuantizedA::new(&a);
        let x = |b: usize, j: usize| q.0[b].x[j] as i32;
        assert_eq!((x(0, 0), x(0, 1)), (-X_MAX, X_MAX));
        assert!(q.0[1].scale.is_nan() && q.0[3].scale.is_nan());
        assert_eq!(q.0[2].scale, 0.0);
        assert!(q.0[2].x.iter().all(|&v| v == 0));
    }
}
