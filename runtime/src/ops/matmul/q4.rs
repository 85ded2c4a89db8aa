//! The q4 weight format (`kiln compile --weights q4`, op `kiln::MatMulQ4`): 4-bit in blocks of
//! [`BLOCK`] with an f32 scale and an f32 minimum per block (`w ≈ q · scale + min`, q in 0..=15,
//! as llama.cpp's Q4_1). A row is stored as its `k / BLOCK` scales, then its `k / BLOCK` minimums
//! (little-endian f32), then `k / 2` bytes of 4-bit values: byte `j` of block `b` holds weight
//! `32b + j` in its low half and `32b + 16 + j` in its high half, so a block unpacks with two
//! masks. A row is `k / 2 + k / 4` bytes, under a fifth of f32's.

use super::quantized::BlockFormat;
pub use super::quantized::BLOCK;

/// Op type in the `kiln` domain.
pub const MATMUL_Q4: &str = "MatMulQ4";

/// The q4 format.
pub struct Q4;

impl BlockFormat for Q4 {
    const OP: &'static str = MATMUL_Q4;
    const NAME: &'static str = "q4";

    fn row_bytes(k: usize) -> usize {
        k / BLOCK * 8 + k / 2
    }

    fn quantize_row(src: &[f32], dst: &mut [u8]) {
        let blocks = src.len() / BLOCK;
        let (params, quants) = dst.split_at_mut(blocks * 8);
        let (scales, mins) = params.split_at_mut(blocks * 4);
        for (b, (w, q)) in src.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK / 2)).enumerate() {
            let lo = w.iter().fold(f32::INFINITY, |m, &v| m.min(v));
            let hi = w.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let (min, scale) = match (lo.is_finite() && hi.is_finite(), (hi - lo) / 15.0) {
                (true, s) if s > 0.0 && s.is_finite() => (lo, s),
                (true, _) => (lo, 0.0),
                (false, _) => (0.0, 0.0),
            };
            scales[b * 4..b * 4 + 4].copy_from_slice(&scale.to_le_bytes());
            mins[b * 4..b * 4 + 4].copy_from_slice(&min.to_le_bytes());
            let level = |v: f32| if scale > 0.0 { ((v - min) / scale).round().clamp(0.0, 15.0) as u8 } else { 0 };
            for (j, byte) in q.iter_mut().enumerate() {
                *byte = level(w[j]) | (level(w[j + BLOCK / 2]) << 4);
            }
        }
    }

    fn dequantize_row(row: &[u8], dst: &mut [f32]) {
        let blocks = dst.len() / BLOCK;
        for (b, d) in dst.chunks_exact_mut(BLOCK).enumerate() {
            let (scale, min) = params(row, blocks, b);
            let q = &row[blocks * 8 + b * BLOCK / 2..blocks * 8 + (b + 1) * BLOCK / 2];
            for (j, &byte) in q.iter().enumerate() {
                d[j] = (byte & 15) as f32 * scale + min;
                d[j + BLOCK / 2] = (byte >> 4) as f32 * scale + min;
            }
        }
    }

    fn dot(a: &[f32], row: &[u8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above).
            return unsafe { dot_avx2(a, row) };
        }
        dot_portable(a, row)
    }
}

/// Block `b`'s scale and minimum.
#[inline(always)]
fn params(row: &[u8], blocks: usize, b: usize) -> (f32, f32) {
    let f = |at: usize| f32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
    (f(b * 4), f(blocks * 4 + b * 4))
}

/// Per block, eight lanes of `Σ a·q` and of `Σ a` (lane `l` takes elements `8t + l`), scaled by
/// the block's scale and minimum into eight running sums, added up once at the end. Plain
/// multiplies and adds, not fused, so [`dot_avx2`] gives the same bits.
#[inline(always)]
fn dot_portable(a: &[f32], row: &[u8]) -> f32 {
    let blocks = a.len() / BLOCK;
    let mut total = [0f32; 8];
    for (b, av) in a.chunks_exact(BLOCK).enumerate() {
        let (scale, min) = params(row, blocks, b);
        let q = &row[blocks * 8 + b * BLOCK / 2..blocks * 8 + (b + 1) * BLOCK / 2];
        let (mut lanes, mut sums) = ([0f32; 8], [0f32; 8]);
        for t in 0..4 {
            for l in 0..8 {
                let byte = q[(t % 2) * 8 + l];
                let level = if t < 2 { byte & 15 } else { byte >> 4 };
                lanes[l] += av[t * 8 + l] * level as f32;
                sums[l] += av[t * 8 + l];
            }
        }
        for l in 0..8 {
            total[l] += lanes[l] * scale + sums[l] * min;
        }
    }
    ((total[0] + total[4]) + (total[1] + total[5])) + ((total[2] + total[6]) + (total[3] + total[7]))
}

/// [`dot_portable`] in AVX2 intrinsics, lane for lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], row: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = a.len() / BLOCK;
    assert!(row.len() >= blocks * 8 + a.len() / 2);
    let low = _mm256_set1_epi32(15);
    let mut total = _mm256_setzero_ps();
    for b in 0..blocks {
        let (scale, min) = params(row, blocks, b);
        let q = row.as_ptr().add(blocks * 8 + b * BLOCK / 2);
        let (mut lanes, mut sums) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for t in 0..4 {
            // SAFETY: 8 bytes at `q + (t % 2) * 8` lie within the block's 16 (length asserted).
            let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add((t % 2) * 8) as *const __m128i));
            let levels = if t < 2 { _mm256_and_si256(bytes, low) } else { _mm256_srli_epi32(bytes, 4) };
            // SAFETY: `b * BLOCK + t * 8 + 8 <= a.len()`.
            let x = _mm256_loadu_ps(a.as_ptr().add(b * BLOCK + t * 8));
            lanes = _mm256_add_ps(lanes, _mm256_mul_ps(x, _mm256_cvtepi32_ps(levels)));
            sums = _mm256_add_ps(sums, x);
        }
        let block =
            _mm256_add_ps(_mm256_mul_ps(lanes, _mm256_set1_ps(scale)), _mm256_mul_ps(sums, _mm256_set1_ps(min)));
        total = _mm256_add_ps(total, block);
    }
    let mut t = [0f32; 8];
    _mm256_storeu_ps(t.as_mut_ptr(), total);
    ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::test_weights;

    #[test]
    fn the_avx2_dot_equals_the_portable_one_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            let (_, q) = test_weights::<Q4>(5, 96);
            let a: Vec<f32> = (0..96).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
            for r in 0..5 {
                let row = &q[r * Q4::row_bytes(96)..(r + 1) * Q4::row_bytes(96)];
                // SAFETY: AVX2 checked above.
                assert_eq!(unsafe { dot_avx2(&a, row) }.to_bits(), dot_portable(&a, row).to_bits());
            }
        }
    }

    #[test]
    fn rows_round_trip_within_half_a_step_and_constant_blocks_exactly() {
        let (w, q) = test_weights::<Q4>(3, 64);
        let mut back = vec![0f32; 64];
        for r in 0..3 {
            Q4::dequantize_row(&q[r * Q4::row_bytes(64)..(r + 1) * Q4::row_bytes(64)], &mut back);
            for (b, (x, y)) in w[r * 64..(r + 1) * 64].chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let step = (hi - lo) / 15.0;
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() <= step / 2.0 + 1e-6, "row {r} block {b}: {u} vs {v}");
                }
            }
        }
        let mut row = vec![0u8; Q4::row_bytes(32)];
        Q4::quantize_row(&[0.75; 32], &mut row);
        Q4::dequantize_row(&row, &mut back[..32]);
        assert!(back[..32].iter().all(|&v| v == 0.75));
    }
}
