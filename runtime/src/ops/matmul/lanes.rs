//! The arithmetic of every weight format's dot product, over eight f32 lanes. A format writes its
//! dot once, generically over [`Lanes`] ([`LaneDot`]); it runs as plain Rust or in AVX2
//! intrinsics with the same operations in the same order (lane `l` of a vector is lane `l` of
//! the portable sums; multiplies and adds separate, never fused), so both give the same bits.
//!
//! [`dot_rows`] is the decode driver: [`ROWS`] rows of W against one row of A per pass. Each
//! row's running sums stay one chain of adds, as with one row at a time (so every output keeps
//! its bits), but A's block is loaded (and for q4 summed) once for all the rows, and the rows'
//! chains are independent. That pays where the arithmetic bounds the dot (q4); q8's is bound by
//! its conversions' throughput rather than by its adds' latency, and f16's by memory, and they
//! gain little.

use super::quantized::{BlockFormat, BLOCK};

/// Rows of W one pass over A takes. Measured with SmolLM2's decode products (every layer's and
/// the head, weights streamed from memory, 2 threads of a Zen 5), tokens/s of the products alone
/// with 1, 2, 4 and 8 rows per pass: q4 109, 119, 129, 130 (88 before, one row at a time); q8
/// 152, 114, 147, 155 (148 before); f16 102, 83, 99, 104; bf16 100, 82, 100, 113. On one core
/// with the weights in cache, 8 rows fall behind 4 (q4 13.3 against 13.7 GB/s: their sums and
/// decoded weights outgrow AVX2's 16 registers).
const ROWS: usize = 4;

/// Vectors of eight lanes in a block of A.
pub(crate) const GROUPS: usize = BLOCK / 8;

/// Eight f32 lanes and the operations a format's dot is made of.
pub(crate) trait Lanes: Copy {
    fn zero() -> Self;
    fn splat(x: f32) -> Self;
    fn load(a: &[f32; 8]) -> Self;
    fn add(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    /// Eight int8 weights.
    fn i8s(q: &[u8; 8]) -> Self;
    /// The low four bits of eight bytes, or with `HIGH` their high four bits.
    fn nibbles<const HIGH: bool>(q: &[u8; 8]) -> Self;
    /// Eight little-endian f16 weights.
    fn f16s(q: &[u8; 16]) -> Self;
    /// Eight little-endian bf16 weights.
    fn bf16s(q: &[u8; 16]) -> Self;
    fn to_array(self) -> [f32; 8];
}

/// A weight format's dot product, block by block, over any [`Lanes`]. Per row, a pass adds each
/// block's eight partial sums into the row's eight running sums, in block order.
pub(crate) trait LaneDot: BlockFormat {
    /// What a block of A gives every row's block: its lanes (and whatever else of A the format
    /// needs), computed once per block for all the rows of a pass.
    type A<V: Lanes>: Copy;
    /// A stored row split into its parts, once per pass.
    type Row<'a>;
    fn a_block<V: Lanes>(a: &[f32; BLOCK]) -> Self::A<V>;
    fn row(bytes: &[u8], blocks: usize) -> Self::Row<'_>;
    /// Block `b` of `row` times A's block: eight partial sums.
    fn block<V: Lanes>(a: &Self::A<V>, row: &Self::Row<'_>, b: usize) -> V;
}

/// A block of A as [`GROUPS`] vectors (element `8t + l` in lane `l` of vector `t`).
#[inline(always)]
pub(crate) fn load_block<V: Lanes>(a: &[f32; BLOCK]) -> [V; GROUPS] {
    let (groups, _) = a.as_chunks::<8>();
    std::array::from_fn(|t| V::load(&groups[t]))
}

/// `Σ a·w` of a block in eight lanes: lane `l` adds `a[8t + l] · w[8t + l]` for `t` in order,
/// from zero.
#[inline(always)]
pub(crate) fn dot_block<V: Lanes>(a: &[V; GROUPS], w: [V; GROUPS]) -> V {
    a.iter().zip(w).fold(V::zero(), |sum, (&x, w)| sum.add(x.mul(w)))
}

/// A block of [`BLOCK`] little-endian 16-bit floats times A's block, `widen` reading eight of
/// them into lanes.
#[inline(always)]
pub(crate) fn half_block<V: Lanes>(a: &[V; GROUPS], w: &[u8; 2 * BLOCK], widen: impl Fn(&[u8; 16]) -> V) -> V {
    let (w, _) = w.as_chunks::<16>();
    dot_block(a, std::array::from_fn(|t| widen(&w[t])))
}

/// `out[r]` = A · stored row `r` of `rows` (`out.len()` rows of `F::row_bytes(a.len())` bytes).
/// Takes [`ROWS`] rows per pass and the rest one at a time; every output has the bits of a
/// one-row portable pass, whatever the CPU.
pub(crate) fn dot_rows<F: LaneDot>(a: &[f32], rows: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU supports AVX2 and F16C (checked above).
        return unsafe { dot_rows_avx2::<F>(a, rows, out) };
    }
    dot_rows_in::<Portable, F, ROWS>(a, rows, out)
}

/// [`dot_rows`] in AVX2 (and F16C for f16) intrinsics.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn dot_rows_avx2<F: LaneDot>(a: &[f32], rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<avx2::Avx2, F, ROWS>(a, rows, out)
}

/// [`dot_rows`] over lanes `V`, `R` neighbouring rows per pass, the last `out.len() % R` rows one
/// per pass. A pass reads its rows side by side, `R` short streams the hardware prefetcher does
/// not follow, so it prefetches the rows [`AHEAD`] passes on itself (measured on SmolLM2's
/// decode shapes, 2 threads: q4 87 → 128 tokens/s of products with the prefetch, 72 without).
#[inline(always)]
fn dot_rows_in<V: Lanes, F: LaneDot, const R: usize>(a: &[f32], rows: &[u8], out: &mut [f32]) {
    let rb = F::row_bytes(a.len());
    assert!(rows.len() >= out.len() * rb, "{} rows need {} bytes", out.len(), out.len() * rb);
    let whole = out.len() / R * R;
    let (groups, rest) = out.split_at_mut(whole);
    for (o, w) in groups.chunks_exact_mut(R).zip(rows.chunks_exact(R * rb)) {
        o.copy_from_slice(&pass::<V, F, R>(a, std::array::from_fn(|r| &w[r * rb..(r + 1) * rb]), AHEAD * R * rb));
    }
    for (o, w) in rest.iter_mut().zip(rows[whole * rb..].chunks_exact(rb)) {
        *o = pass::<V, F, 1>(a, [w], 0)[0];
    }
}

/// Passes ahead whose rows a pass prefetches: 2 and 4 measured alike, 1 falls short.
const AHEAD: usize = 2;

/// A times `R` stored rows: one pass over A's blocks, each row's running sums their own chain.
/// With `ahead > 0`, each block also prefetches the same share of the row `ahead` bytes on (the
/// address may lie past `rows`: a prefetch never faults).
#[inline(always)]
fn pass<V: Lanes, F: LaneDot, const R: usize>(a: &[f32], rows: [&[u8]; R], ahead: usize) -> [f32; R] {
    let (blocks, _) = a.as_chunks::<BLOCK>();
    let views: [F::Row<'_>; R] = std::array::from_fn(|r| F::row(rows[r], blocks.len()));
    let step = rows[0].len() / blocks.len().max(1);
    let mut totals = [V::zero(); R];
    for (b, block) in blocks.iter().enumerate() {
        if ahead > 0 {
            for row in &rows {
                prefetch(row.as_ptr().wrapping_add(ahead + b * step));
            }
        }
        let ab = F::a_block::<V>(block);
        for (total, row) in totals.iter_mut().zip(&views) {
            *total = total.add(F::block(&ab, row, b));
        }
    }
    let mut sums = [0f32; R];
    for (s, t) in sums.iter_mut().zip(totals) {
        *s = sum_lanes(t.to_array());
    }
    sums
}

/// Asks for the cache line at `p` (any address: nothing is read).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; it neither reads memory nor faults, whatever `p`.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The eight running sums added up, in the one order every dot uses.
#[inline(always)]
fn sum_lanes(t: [f32; 8]) -> f32 {
    ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]))
}

/// Lanes as a plain array: the reference, and the path on CPUs without AVX2.
#[derive(Clone, Copy)]
struct Portable([f32; 8]);

impl Lanes for Portable {
    #[inline(always)]
    fn zero() -> Self {
        Portable([0.0; 8])
    }

    #[inline(always)]
    fn splat(x: f32) -> Self {
        Portable([x; 8])
    }

    #[inline(always)]
    fn load(a: &[f32; 8]) -> Self {
        Portable(*a)
    }

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] + other.0[l]))
    }

    #[inline(always)]
    fn mul(self, other: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] * other.0[l]))
    }

    #[inline(always)]
    fn i8s(q: &[u8; 8]) -> Self {
        Portable(q.map(|v| v as i8 as f32))
    }

    #[inline(always)]
    fn nibbles<const HIGH: bool>(q: &[u8; 8]) -> Self {
        Portable(q.map(|v| if HIGH { v >> 4 } else { v & 15 } as f32))
    }

    #[inline(always)]
    fn f16s(q: &[u8; 16]) -> Self {
        Portable(std::array::from_fn(|l| half::f16::from_le_bytes([q[2 * l], q[2 * l + 1]]).to_f32()))
    }

    #[inline(always)]
    fn bf16s(q: &[u8; 16]) -> Self {
        Portable(std::array::from_fn(|l| f32::from_bits((u16::from_le_bytes([q[2 * l], q[2 * l + 1]]) as u32) << 16)))
    }

    #[inline(always)]
    fn to_array(self) -> [f32; 8] {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// Lanes in an AVX2 register. Private to this module's parent, which makes and uses them
    /// only inside [`super::dot_rows_avx2`], reached only on CPUs with AVX2 and F16C: that is
    /// what the methods' `SAFETY` comments rely on. They are inlined into that function, whose
    /// target features let the intrinsics inline too.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    impl Lanes for Avx2 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Avx2(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Avx2(unsafe { _mm256_set1_ps(x) })
        }

        #[inline(always)]
        fn load(a: &[f32; 8]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); an unaligned load of the 8 floats of `a`.
            Avx2(unsafe { _mm256_loadu_ps(a.as_ptr()) })
        }

        #[inline(always)]
        fn add(self, other: Self) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Avx2(unsafe { _mm256_add_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn mul(self, other: Self) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Avx2(unsafe { _mm256_mul_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn i8s(q: &[u8; 8]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); the load reads the 8 bytes of `q`.
            Avx2(unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr() as *const __m128i))) })
        }

        #[inline(always)]
        fn nibbles<const HIGH: bool>(q: &[u8; 8]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); the load reads the 8 bytes of `q`.
            Avx2(unsafe {
                let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.as_ptr() as *const __m128i));
                let levels =
                    if HIGH { _mm256_srli_epi32(bytes, 4) } else { _mm256_and_si256(bytes, _mm256_set1_epi32(15)) };
                _mm256_cvtepi32_ps(levels)
            })
        }

        #[inline(always)]
        fn f16s(q: &[u8; 16]) -> Self {
            // SAFETY: AVX2 and F16C are present (see `Avx2`); the load reads the 16 bytes of `q`.
            // The conversion is exact, as `half`'s.
            Avx2(unsafe { _mm256_cvtph_ps(_mm_loadu_si128(q.as_ptr() as *const __m128i)) })
        }

        #[inline(always)]
        fn bf16s(q: &[u8; 16]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); the load reads the 16 bytes of `q`.
            // bf16 is f32's top half: widened into the high 16 bits of each lane.
            Avx2(unsafe {
                let halves = _mm256_cvtepu16_epi32(_mm_loadu_si128(q.as_ptr() as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(halves, 16))
            })
        }

        #[inline(always)]
        fn to_array(self) -> [f32; 8] {
            let mut t = [0f32; 8];
            // SAFETY: AVX2 is present (see `Avx2`); an unaligned store of 8 floats into `t`.
            unsafe { _mm256_storeu_ps(t.as_mut_ptr(), self.0) };
            t
        }
    }
}

/// Checks `F`'s dot on every row count from 1 to 11 (whole passes and ragged tails): the SIMD
/// multi-row path equals the portable one-row pass bit for bit, and the dot of the dequantized
/// row to float rounding.
#[cfg(test)]
pub(crate) fn check_dot_rows<F: LaneDot>() {
    let (k, n) = (96, 11);
    let rb = F::row_bytes(k);
    let (_, q) = super::quantized::test_weights::<F>(n, k);
    let a: Vec<f32> = (0..k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
    let portable: Vec<f32> = q.chunks_exact(rb).map(|row| pass::<Portable, F, 1>(&a, [row], 0)[0]).collect();
    let mut w = vec![0f32; k];
    for (row, &p) in q.chunks_exact(rb).zip(&portable) {
        F::dequantize_row(row, &mut w);
        let exact: f64 = a.iter().zip(&w).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((p as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()), "{}: {p} vs {exact}", F::NAME);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for rows in 1..=n {
        let mut out = vec![f32::NAN; rows];
        dot_rows_in::<Portable, F, ROWS>(&a, &q[..rows * rb], &mut out);
        assert_eq!(bits(&out), bits(&portable[..rows]), "{} with {rows} rows", F::NAME);
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
            out.fill(f32::NAN);
            // SAFETY: AVX2 and F16C checked above.
            unsafe { dot_rows_avx2::<F>(&a, &q[..rows * rb], &mut out) };
            assert_eq!(bits(&out), bits(&portable[..rows]), "{} AVX2 with {rows} rows", F::NAME);
        }
    }
}
