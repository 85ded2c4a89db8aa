//! The q8 weight format (`kiln compile --weights q8`, op `kiln::MatMulQ8`): int8 in blocks of
//! [`BLOCK`], one f32 scale per block (`scale = max |w| / 127`). Each row is stored as its
//! `k / BLOCK` little-endian f32 scales followed by its `k` int8 values, so a row is one
//! contiguous read of `k + k / 8` bytes, a quarter of f32's.

use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;

/// The q8 format.
pub struct Q8;

impl BlockFormat for Q8 {
    const OP: &'static str = MATMUL_Q8;
    const NAME: &'static str = "q8";

    fn row_bytes(k: usize) -> usize {
        row_bytes(k)
    }

    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        quantize_row(src, dst)
    }

    fn dequantize_row(row: &[u8], dst: &mut [f32]) {
        dequantize_row(row, dst)
    }

    fn dot(a: &[f32], row: &[u8]) -> f32 {
        dot(a, row)
    }
}

/// Op type in the `kiln` domain.
pub const MATMUL_Q8: &str = "MatMulQ8";

/// Bytes of one stored row of `k` weights.
pub fn row_bytes(k: usize) -> usize {
    k / BLOCK * 4 + k
}

/// Quantizes one row of `k` weights (a multiple of [`BLOCK`]) into `dst` (`row_bytes(k)` bytes).
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
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

/// One row of A times one stored row of W.
fn dot(a: &[f32], row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { dot_avx2(a, row) };
    }
    dot_portable(a, row)
}

/// [`dot_portable`] in AVX2 intrinsics: the same multiplies and adds in the same order (lane `l`
/// of a vector is lane `l` of the portable sums), so the results are the same bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], row: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = a.len() / BLOCK;
    let (scales, quants) = row.split_at(blocks * 4);
    assert!(quants.len() >= a.len() && scales.len() >= blocks * 4);
    let mut total = _mm256_setzero_ps();
    for b in 0..blocks {
        let scale = f32::from_le_bytes([scales[b * 4], scales[b * 4 + 1], scales[b * 4 + 2], scales[b * 4 + 3]]);
        let mut lanes = _mm256_setzero_ps();
        for t in 0..BLOCK / 8 {
            let at = b * BLOCK + t * 8;
            // SAFETY: `at + 8 <= a.len() <= quants.len()` (asserted above); unaligned loads.
            let q =
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(quants.as_ptr().add(at) as *const __m128i)));
            let x = _mm256_loadu_ps(a.as_ptr().add(at));
            lanes = _mm256_add_ps(lanes, _mm256_mul_ps(x, q));
        }
        total = _mm256_add_ps(total, _mm256_mul_ps(lanes, _mm256_set1_ps(scale)));
    }
    let mut t = [0f32; 8];
    _mm256_storeu_ps(t.as_mut_ptr(), total);
    ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]))
}

/// Eight partial sums per block, scaled into eight running sums, added up once at the end.
/// (Plain multiplies and adds, not fused: results must not depend on the CPU.)
#[inline(always)]
fn dot_portable(a: &[f32], row: &[u8]) -> f32 {
    let blocks = a.len() / BLOCK;
    let (scales, quants) = row.split_at(blocks * 4);
    let mut total = [0f32; 8];
    for ((av, q), s) in a.chunks_exact(BLOCK).zip(quants.chunks_exact(BLOCK)).zip(scales.chunks_exact(4)) {
        let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let mut lanes = [0f32; 8];
        for (a8, q8) in av.chunks_exact(8).zip(q.chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += a8[l] * (q8[l] as i8) as f32;
            }
        }
        for l in 0..8 {
            total[l] += lanes[l] * scale;
        }
    }
    ((total[0] + total[4]) + (total[1] + total[5])) + ((total[2] + total[6]) + (total[3] + total[7]))
}

/// The f32 weights of one stored row.
pub fn dequantize_row(row: &[u8], dst: &mut [f32]) {
    let blocks = dst.len() / BLOCK;
    let (scales, quants) = row.split_at(blocks * 4);
    for ((d, q), s) in dst.chunks_exact_mut(BLOCK).zip(quants.chunks_exact(BLOCK)).zip(scales.chunks_exact(4)) {
        let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        for (x, &v) in d.iter_mut().zip(q) {
            *x = (v as i8) as f32 * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::test_weights;

    #[test]
    fn the_avx2_dot_equals_the_portable_one_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            let (_, q) = test_weights::<Q8>(5, 96);
            let a: Vec<f32> = (0..96).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
            for r in 0..5 {
                let row = &q[r * row_bytes(96)..(r + 1) * row_bytes(96)];
                // SAFETY: AVX2 checked above.
                assert_eq!(unsafe { dot_avx2(&a, row) }.to_bits(), dot_portable(&a, row).to_bits());
            }
        }
    }

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let (w, q) = test_weights::<Q8>(3, 64);
        let mut back = vec![0f32; 64];
        for r in 0..3 {
            dequantize_row(&q[r * row_bytes(64)..(r + 1) * row_bytes(64)], &mut back);
            for (b, (x, y)) in w[r * 64..(r + 1) * 64].chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() <= step / 2.0 + 1e-7, "row {r} block {b}: {u} vs {v}");
                }
            }
        }
        let mut zero = vec![0u8; row_bytes(32)];
        quantize_row(&[0.0; 32], &mut zero);
        dequantize_row(&zero, &mut back[..32]);
        assert!(back[..32].iter().all(|&v| v == 0.0));
    }
}
