//! The arithmetic of every weight format's dot product, over eight f32 lanes. A format writes its
//! dot once, generically over [`Lanes`] ([`LaneDot`]); it runs as plain Rust or in AVX2
//! intrinsics with the same operations in the same order (lane `l` of a vector is lane `l` of
//! the portable sums; multiplies and adds separate, never fused), so both give the same bits.
//!
//! q8 and q4 multiply in integers: A is quantized once per product to 15 bits per block
//! ([`QuantizedA`]), each block's dot is exact integer arithmetic (`vpdpbusd` where the CPU has
//! VNNI, `vpmaddubsw` otherwise), and only its lanes' sums are scaled in f32. Converting every
//! weight to f32 instead bounded q8 at 27 GB/s on one core with the weights in cache (37 now) and
//! q4 at 14 (18 now): `dot_rows_speed` below measures each path.
//!
//! [`dot_rows`] is the decode driver: [`ROWS`] rows of W against one row of A per pass. Each
//! row's running sums stay one chain of adds, as with one row at a time (so every output keeps
//! its bits), but A's block is loaded once for all the rows, and the rows' chains are
//! independent.

use super::quantized::{BlockFormat, BLOCK};
#[cfg(doc)]
use super::quantized_a::QuantizedA;

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
    /// Eight little-endian f16 weights.
    fn f16s(q: &[u8; 16]) -> Self;
    /// Eight little-endian bf16 weights.
    fn bf16s(q: &[u8; 16]) -> Self;
    fn to_array(self) -> [f32; 8];
    /// A block of A quantized to 15 bits ([`QuantizedA`]'s two byte halves), as the integer dots
    /// read it.
    type Int: Copy;
    fn load_int(hi: &[i8; BLOCK], lo: &[i8; BLOCK]) -> Self::Int;
    /// `Σ w·x` over a block of int8 weights: lane `l` the exact sum over elements `4l..4l + 4`.
    fn i8_dot(x: &Self::Int, w: &[u8; BLOCK]) -> Self;
    /// `Σ q·x` over a block of 4-bit levels (byte `j` holds element `j` in its low half and
    /// `j + 16` in its high half), lanes as [`Lanes::i8_dot`]'s.
    fn u4_dot(x: &Self::Int, w: &[u8; BLOCK / 2]) -> Self;
}

/// A weight format's dot product, block by block, over any [`Lanes`]. Per row, a pass adds each
/// block's eight partial sums into the row's eight running sums, in block order.
pub(crate) trait LaneDot: BlockFormat {
    /// What a block of A gives every row's block: its lanes (and whatever else of A the format
    /// needs), computed once per block for all the rows of a pass.
    type A<V: Lanes>: Copy;
    /// A stored row split into its parts, once per pass.
    type Row<'a>;
    /// Block `b` of a prepared row of A ([`BlockFormat::prepare`]).
    fn a_block<V: Lanes>(a: &Self::Prepared, b: usize) -> Self::A<V>;
    /// The values of A the dot multiplies (tests' references).
    #[cfg(test)]
    fn a_as_read(a: &Self::Prepared) -> Vec<f32>;
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

/// `out[r]` = A (prepared, `k` long) · stored row `r` of `rows` (`out.len()` rows of
/// `F::row_bytes(k)` bytes). Takes [`ROWS`] rows per pass and the rest one at a time; every
/// output has the bits of a one-row portable pass, whatever the CPU.
pub(crate) fn dot_rows<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some((_, _, path)) = simd_paths::<F>().into_iter().find(|p| p.1) {
        // SAFETY: the CPU has every target feature the path is compiled for (`simd_paths`).
        return unsafe { path(a, k, rows, out) };
    }
    dot_rows_in::<Portable, F, ROWS>(a, k, rows, out)
}

/// A compiled body of [`dot_rows`].
#[cfg(target_arch = "x86_64")]
type DotPath<F> = unsafe fn(&<F as BlockFormat>::Prepared, usize, &[u8], &mut [f32]);

/// The SIMD bodies of [`dot_rows`], best first, each with whether this CPU has every target
/// feature it is compiled for (so calling one marked `true` is sound) and a name for tests.
#[cfg(target_arch = "x86_64")]
fn simd_paths<F: LaneDot>() -> [(&'static str, bool, DotPath<F>); 3] {
    let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c");
    let avx512_vnni = std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl");
    [
        ("AVX-VNNI", avx2 && std::is_x86_feature_detected!("avxvnni"), dot_rows_avx_vnni::<F>),
        ("AVX-512 VNNI", avx2 && avx512_vnni, dot_rows_avx512_vnni::<F>),
        ("AVX2", avx2, dot_rows_avx2::<F>),
    ]
}

/// [`dot_rows`] in AVX2 (and F16C for f16) intrinsics, integer dots by `vpmaddubsw`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn dot_rows_avx2<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<avx2::Avx2<{ avx2::MADD }>, F, ROWS>(a, k, rows, out)
}

/// [`dot_rows`] with integer dots by AVX-VNNI's `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,avxvnni")]
unsafe fn dot_rows_avx_vnni<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<avx2::Avx2<{ avx2::AVX_VNNI }>, F, ROWS>(a, k, rows, out)
}

/// [`dot_rows`] with integer dots by AVX-512 VNNI's `vpdpbusd` on 256-bit registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
unsafe fn dot_rows_avx512_vnni<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<avx2::Avx2<{ avx2::AVX512_VNNI }>, F, ROWS>(a, k, rows, out)
}

/// [`dot_rows`] over lanes `V`, `R` neighbouring rows per pass, the last `out.len() % R` rows one
/// per pass. A pass reads its rows side by side, `R` short streams the hardware prefetcher does
/// not follow, so it prefetches the rows [`AHEAD`] passes on itself (measured on SmolLM2's
/// decode shapes, 2 threads: q4 87 → 128 tokens/s of products with the prefetch, 72 without).
#[inline(always)]
fn dot_rows_in<V: Lanes, F: LaneDot, const R: usize>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    let rb = F::row_bytes(k);
    assert!(rows.len() >= out.len() * rb, "{} rows need {} bytes", out.len(), out.len() * rb);
    let whole = out.len() / R * R;
    let (groups, rest) = out.split_at_mut(whole);
    for (o, w) in groups.chunks_exact_mut(R).zip(rows.chunks_exact(R * rb)) {
        o.copy_from_slice(&pass::<V, F, R>(a, k, std::array::from_fn(|r| &w[r * rb..(r + 1) * rb]), AHEAD * R * rb));
    }
    for (o, w) in rest.iter_mut().zip(rows[whole * rb..].chunks_exact(rb)) {
        *o = pass::<V, F, 1>(a, k, [w], 0)[0];
    }
}

/// Passes ahead whose rows a pass prefetches: 2 and 4 measured alike, 1 falls short.
const AHEAD: usize = 2;

/// A times `R` stored rows: one pass over A's blocks, each row's running sums their own chain.
/// With `ahead > 0`, each block also prefetches the same share of the row `ahead` bytes on (the
/// address may lie past `rows`: a prefetch never faults).
#[inline(always)]
fn pass<V: Lanes, F: LaneDot, const R: usize>(a: &F::Prepared, k: usize, rows: [&[u8]; R], ahead: usize) -> [f32; R] {
    let blocks = k / BLOCK;
    let views: [F::Row<'_>; R] = std::array::from_fn(|r| F::row(rows[r], blocks));
    let step = rows[0].len() / blocks.max(1);
    let mut totals = [V::zero(); R];
    for b in 0..blocks {
        if ahead > 0 {
            for row in &rows {
                prefetch(row.as_ptr().wrapping_add(ahead + b * step));
            }
        }
        let ab = F::a_block::<V>(a, b);
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

    type Int = ([i8; BLOCK], [i8; BLOCK]);

    #[inline(always)]
    fn load_int(hi: &[i8; BLOCK], lo: &[i8; BLOCK]) -> Self::Int {
        (*hi, *lo)
    }

    #[inline(always)]
    fn i8_dot((hi, lo): &Self::Int, w: &[u8; BLOCK]) -> Self {
        int_lanes(|j| w[j] as i8 as i32, hi, lo)
    }

    #[inline(always)]
    fn u4_dot((hi, lo): &Self::Int, w: &[u8; BLOCK / 2]) -> Self {
        int_lanes(|j| if j < BLOCK / 2 { w[j] & 15 } else { w[j - BLOCK / 2] >> 4 } as i32, hi, lo)
    }
}

/// Lane `l`: the exact `Σ weight(j) · (255·hi[j] + lo[j])` over elements `4l..4l + 4`, in f32.
/// Written as whole-block multiplies of the two byte halves, then lane sums, so it vectorizes
/// (NEON on aarch64, where this is the path).
#[inline(always)]
fn int_lanes(weight: impl Fn(usize) -> i32, hi: &[i8; BLOCK], lo: &[i8; BLOCK]) -> Portable {
    let w: [i32; BLOCK] = std::array::from_fn(weight);
    let h: [i32; BLOCK] = std::array::from_fn(|j| w[j] * hi[j] as i32);
    let l: [i32; BLOCK] = std::array::from_fn(|j| w[j] * lo[j] as i32);
    let four = |v: &[i32; BLOCK], i: usize| v[4 * i] + v[4 * i + 1] + v[4 * i + 2] + v[4 * i + 3];
    Portable(std::array::from_fn(|i| (255 * four(&h, i) + four(&l, i)) as f32))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Lanes, BLOCK};
    use std::arch::x86_64::*;

    /// Integer dots by `vpmaddubsw` + `vpmaddwd` (AVX2 alone).
    pub(super) const MADD: u8 = 0;
    /// Integer dots by AVX-VNNI's `vpdpbusd`.
    pub(super) const AVX_VNNI: u8 = 1;
    /// Integer dots by AVX-512 VNNI's `vpdpbusd` (256-bit form, AVX512VL).
    pub(super) const AVX512_VNNI: u8 = 2;

    /// Lanes in an AVX2 register, integer dots by instruction `DOT`. Private to this module's
    /// parent, which makes and uses them only inside its `dot_rows_*` functions, each reached only
    /// on CPUs with AVX2, F16C and `DOT`'s extension: that is what the methods' `SAFETY` comments
    /// rely on. They are inlined into those functions, whose target features let the intrinsics
    /// inline too.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2<const DOT: u8>(__m256);

    /// Per 32-bit lane, `Σ u·s` over its four byte pairs (`u` unsigned, `s` signed), exact for
    /// the operands the callers pass (`|u·s| ≤ 127²` per pair, so `vpmaddubsw` cannot saturate).
    #[inline(always)]
    unsafe fn dot4<const DOT: u8>(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the caller's target features include `DOT`'s extension (see `Avx2`).
        unsafe {
            match DOT {
                AVX_VNNI => _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s),
                AVX512_VNNI => _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
                _ => _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
            }
        }
    }

    /// `255·hi + lo` per lane, in f32 (exact: the callers' sums stay below 2²⁴).
    #[inline(always)]
    unsafe fn combine(hi: __m256i, lo: __m256i) -> __m256 {
        // SAFETY: AVX2 is present (see `Avx2`).
        unsafe { _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_sub_epi32(_mm256_slli_epi32(hi, 8), hi), lo)) }
    }

    impl<const DOT: u8> Lanes for Avx2<DOT> {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Self(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        fn splat(x: f32) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Self(unsafe { _mm256_set1_ps(x) })
        }

        #[inline(always)]
        fn load(a: &[f32; 8]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); an unaligned load of the 8 floats of `a`.
            Self(unsafe { _mm256_loadu_ps(a.as_ptr()) })
        }

        #[inline(always)]
        fn add(self, other: Self) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Self(unsafe { _mm256_add_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn mul(self, other: Self) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Self(unsafe { _mm256_mul_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn f16s(q: &[u8; 16]) -> Self {
            // SAFETY: AVX2 and F16C are present (see `Avx2`); the load reads the 16 bytes of `q`.
            // The conversion is exact, as `half`'s.
            Self(unsafe { _mm256_cvtph_ps(_mm_loadu_si128(q.as_ptr() as *const __m128i)) })
        }

        #[inline(always)]
        fn bf16s(q: &[u8; 16]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); the load reads the 16 bytes of `q`.
            // bf16 is f32's top half: widened into the high 16 bits of each lane.
            Self(unsafe {
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

        type Int = (__m256i, __m256i);

        #[inline(always)]
        fn load_int(hi: &[i8; BLOCK], lo: &[i8; BLOCK]) -> Self::Int {
            // SAFETY: AVX2 is present (see `Avx2`); unaligned loads of the 32 bytes of each.
            unsafe {
                (_mm256_loadu_si256(hi.as_ptr() as *const __m256i), _mm256_loadu_si256(lo.as_ptr() as *const __m256i))
            }
        }

        #[inline(always)]
        fn i8_dot(&(hi, lo): &Self::Int, w: &[u8; BLOCK]) -> Self {
            // SAFETY: AVX2 and `DOT`'s extension are present (see `Avx2`); the load reads the 32
            // bytes of `w`. The byte dots take |w| and x's bytes with w's sign: |w| ≤ 128 and
            // |hi|, |lo| ≤ 127 (never -128, so negating them is exact).
            Self(unsafe {
                let w = _mm256_loadu_si256(w.as_ptr() as *const __m256i);
                let u = _mm256_abs_epi8(w);
                combine(dot4::<DOT>(u, _mm256_sign_epi8(hi, w)), dot4::<DOT>(u, _mm256_sign_epi8(lo, w)))
            })
        }

        #[inline(always)]
        fn u4_dot(&(hi, lo): &Self::Int, w: &[u8; BLOCK / 2]) -> Self {
            // SAFETY: AVX2 and `DOT`'s extension are present (see `Avx2`); the load reads the 16
            // bytes of `w`. Levels are 0..=15, so every pair's product fits.
            Self(unsafe {
                let bytes = _mm_loadu_si128(w.as_ptr() as *const __m128i);
                let mask = _mm_set1_epi8(15);
                let u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), _mm_and_si128(bytes, mask));
                combine(dot4::<DOT>(u, hi), dot4::<DOT>(u, lo))
            })
        }
    }
}

/// Checks `F`'s dot on every row count from 1 to 11 (whole passes and ragged tails): every SIMD
/// multi-row path the CPU has equals the portable one-row pass bit for bit, and that is the dot of
/// the dequantized row with A as the format reads it, to float rounding.
#[cfg(test)]
pub(crate) fn check_dot_rows<F: LaneDot>() {
    let (k, n) = (96, 11);
    let (_, q) = super::quantized::test_weights::<F>(n, k);
    let a: Vec<f32> = (0..k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
    check_dot_rows_on::<F>(&a, &q);
}

/// [`check_dot_rows`] on given A and stored rows.
#[cfg(test)]
pub(crate) fn check_dot_rows_on<F: LaneDot>(a: &[f32], q: &[u8]) {
    let k = a.len();
    let rb = F::row_bytes(k);
    let n = q.len() / rb;
    let prepared = F::prepare(a);
    let read = F::a_as_read(&prepared);
    let portable: Vec<f32> = q.chunks_exact(rb).map(|row| pass::<Portable, F, 1>(&prepared, k, [row], 0)[0]).collect();
    let mut w = vec![0f32; k];
    for (row, &p) in q.chunks_exact(rb).zip(&portable) {
        F::dequantize_row(row, &mut w);
        let exact: f64 = read.iter().zip(&w).map(|(&x, &y)| x as f64 * y as f64).sum();
        let size: f64 = read.iter().zip(&w).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum();
        assert!((p as f64 - exact).abs() <= 1e-6 * (1.0 + size), "{}: {p} vs {exact}", F::NAME);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for rows in 1..=n {
        let mut out = vec![f32::NAN; rows];
        dot_rows_in::<Portable, F, ROWS>(&prepared, k, &q[..rows * rb], &mut out);
        assert_eq!(bits(&out), bits(&portable[..rows]), "{} with {rows} rows", F::NAME);
        #[cfg(target_arch = "x86_64")]
        for (name, _, path) in simd_paths::<F>().into_iter().filter(|p| p.1) {
            out.fill(f32::NAN);
            // SAFETY: the CPU has the path's target features (`simd_paths`).
            unsafe { path(&prepared, k, &q[..rows * rb], &mut out) };
            assert_eq!(bits(&out), bits(&portable[..rows]), "{} {name} with {rows} rows", F::NAME);
        }
    }
}

/// Speed of every dot path on one thread, weights in cache (a 256 KB panel) and streamed from
/// memory (64 MB): `cargo test -p kiln-runtime --release dot_rows_speed -- --ignored --nocapture`.
#[cfg(all(test, target_arch = "x86_64"))]
mod speed {
    use super::*;
    use crate::ops::matmul::{half16::F16, q4::Q4, q8::Q8};
    use std::time::Instant;

    fn gbs<F: LaneDot>(path: DotPath<F>, bytes: usize) -> f64 {
        let k = 576;
        let n = bytes / F::row_bytes(k);
        let (_, q) = crate::ops::matmul::quantized::test_weights::<F>(n, k);
        let a: Vec<f32> = (0..k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
        let p = F::prepare(&a);
        let mut out = vec![0f32; n];
        let reps = (256 << 20) / bytes.max(1) + 2;
        // SAFETY: only called with paths the CPU supports (checked by the caller).
        unsafe { path(&p, k, &q, &mut out) };
        let t = Instant::now();
        for _ in 0..reps {
            // SAFETY: as above.
            unsafe { path(&p, k, &q, &mut out) };
        }
        (reps * q.len()) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    fn report<F: LaneDot>() {
        let portable: DotPath<F> = |p, k, q, o| dot_rows_in::<Portable, F, ROWS>(p, k, q, o);
        for (name, _, path) in [("portable", true, portable)].into_iter().chain(simd_paths::<F>()).filter(|p| p.1) {
            let (cached, streamed) = (gbs::<F>(path, 256 << 10), gbs::<F>(path, 64 << 20));
            println!("{:>4} {name:>12}: {cached:6.1} GB/s in cache, {streamed:6.1} GB/s streamed", F::NAME);
        }
    }

    #[test]
    #[ignore]
    fn dot_rows_speed() {
        report::<Q8>();
        report::<Q4>();
        report::<F16>();
    }
}
