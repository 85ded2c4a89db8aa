//! A row of A quantized for integer dot products with q8 and q4 weights: per block of
//! [`BLOCK`], one f32 scale `d` and integers `x` with `a ≈ d·x`, `|x| ≤` [`X_MAX`] (15 bits, so
//! the quantization adds about `2⁻¹⁶` of the block's largest `|a|` to each element, far below the
//! weights' own error). Each `x` is kept as two signed bytes, `x = 255·hi + lo` with `|hi|, |lo| ≤
//! 127`: byte operands are what the CPUs' integer dot instructions (`vpdpbusd`, `vpmaddubsw`)
//! multiply, and neither byte is ever -128, so the sign trick those need is exact.
//!
//! A weight block's dot is then two byte dots, combined as `255·H + L` in 32-bit integers: exact,
//! in any order, and exact again in f32 (every lane's sum stays below 2²⁴), so every CPU's path
//! gives the same bits.

use super::quantized::BLOCK;

/// Largest `|x|`: `255 · 127 + 127`.
pub(crate) const X_MAX: i32 = 255 * 127 + 127;

/// One row of A, block by block.
pub struct QuantizedA {
    /// Per block, `d` (zero for an all-zero block).
    pub(crate) scales: Vec<f32>,
    /// Per block, the high bytes of its `x`.
    pub(crate) hi: Vec<[i8; BLOCK]>,
    /// Per block, the low bytes of its `x`.
    pub(crate) lo: Vec<[i8; BLOCK]>,
    /// Per block, lane `l` holds `Σ x` over elements `4l..4l + 4` (exact in f32), for formats
    /// whose weights have an offset (q4's minimum).
    pub(crate) sums: Vec<[f32; 8]>,
}

impl QuantizedA {
    /// Quantizes `a` (`a.len()` a multiple of [`BLOCK`]). A block holding a NaN or an infinity
    /// gets a NaN scale, so the products it enters are NaN, as with f32 arithmetic.
    pub(crate) fn new(a: &[f32]) -> QuantizedA {
        let blocks = a.len() / BLOCK;
        let mut q = QuantizedA {
            scales: Vec::with_capacity(blocks),
            hi: Vec::with_capacity(blocks),
            lo: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
        };
        for block in a.as_chunks::<BLOCK>().0 {
            let max = block.iter().fold(0f32, |m, v| if v.abs() > m || v.is_nan() { v.abs() } else { m });
            let (scale, inv) = match max {
                0.0 => (0.0, 0.0),
                m if m.is_finite() => (m / X_MAX as f32, X_MAX as f32 / m),
                _ => (f32::NAN, 0.0),
            };
            let x: [i32; BLOCK] = std::array::from_fn(|j| ((block[j] * inv).round() as i32).clamp(-X_MAX, X_MAX));
            let hi: [i32; BLOCK] = x.map(|x| (x as f32 / 255.0).round() as i32);
            q.scales.push(scale);
            q.hi.push(hi.map(|h| h as i8));
            q.lo.push(std::array::from_fn(|j| (x[j] - 255 * hi[j]) as i8));
            q.sums.push(std::array::from_fn(|l| x[4 * l..4 * l + 4].iter().sum::<i32>() as f32));
        }
        q
    }

    /// The values the integer dots multiply, `d·x` (for tests' references).
    #[cfg(test)]
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.scales.len() * BLOCK);
        for ((d, hi), lo) in self.scales.iter().zip(&self.hi).zip(&self.lo) {
            out.extend(hi.iter().zip(lo).map(|(&h, &l)| d * (255 * h as i32 + l as i32) as f32));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_is_within_half_a_step_and_the_bytes_stay_off_minus_128() {
        let a: Vec<f32> =
            (0..4 * BLOCK).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.0123 * (1 + i / BLOCK) as f32).collect();
        let q = QuantizedA::new(&a);
        let back = q.dequantized();
        for (b, (x, y)) in a.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let step = q.scales[b];
            assert!(step > 0.0);
            for (u, v) in x.iter().zip(y) {
                assert!((u - v).abs() <= step * 0.5001 + 1e-7, "block {b}: {u} vs {v}");
            }
        }
        for (hi, lo) in q.hi.iter().zip(&q.lo) {
            assert!(hi.iter().chain(lo).all(|&v| v != i8::MIN));
        }
        for (b, sums) in q.sums.iter().enumerate() {
            for (l, &s) in sums.iter().enumerate() {
                let x: i32 = (4 * l..4 * l + 4).map(|j| 255 * q.hi[b][j] as i32 + q.lo[b][j] as i32).sum();
                assert_eq!(s, x as f32);
            }
        }
    }

    #[test]
    fn extremes_zeros_and_non_finite_blocks() {
        let mut a = vec![0f32; 3 * BLOCK];
        a[0] = -2.5;
        a[1] = 2.5;
        a[BLOCK + 3] = f32::NAN;
        let q = QuantizedA::new(&a);
        assert_eq!(255 * q.hi[0][0] as i32 + q.lo[0][0] as i32, -X_MAX);
        assert_eq!(255 * q.hi[0][1] as i32 + q.lo[0][1] as i32, X_MAX);
        assert!(q.scales[1].is_nan());
        assert_eq!(q.scales[2], 0.0);
        assert!(q.hi[2].iter().chain(&q.lo[2]).all(|&v| v == 0));
    }
}
