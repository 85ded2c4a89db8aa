//! The arithmetic of every weight format's dot product, over eight f32 lanes per block. A format
//! writes its dot once, generically over [`Lanes`] ([`LaneDot`]); it runs as plain Rust, in AVX2
//! intrinsics a block at a time, or in AVX-512 two blocks at a time, with the same operations on
//! each lane in the same order (lane `l` of a block is lane `l` of the portable sums; a scaled
//! block's sums fused into its running sums by one multiply-add, every other multiply and add
//! separate), so all give the same bits.
//!
//! q8 and q4 multiply in integers: A is quantized once per product to 15 bits per block
//! ([`QuantizedA`]), each block's dot is exact integer arithmetic (`vpdpwssd` where the CPU has
//! VNNI, `vpmaddwd` otherwise, on A as 16-bit integers, [`I16Pair`], and the weights widened to
//! words), and only its lanes' sums are scaled in f32. Converting every
//! weight to f32 instead bounded q8 at 27 GB/s on one core with the weights in cache (42 now) and
//! q4 at 14 (21 now): `dot_rows_speed` below measures each path.
//!
//! [`dot_rows`] is the decode driver: [`ROWS`] rows of W against one row of A per pass. Each
//! row's running sums stay two chains of adds (even and odd blocks), as with one row at a time
//! (so every output keeps its bits), but A's blocks are loaded once for all the rows, and the
//! rows' chains are independent.

use super::quantized::{BlockFormat, BLOCK};
use super::quantized_a::{Block as ABlock, QuantizedA};

/// Rows of W one pass over A takes. Measured with SmolLM2's decode products (every layer's and
/// the head, weights streamed from memory, 2 threads of a Zen 5), tokens/s of the products alone
/// with 1, 2, 4 and 8 rows per pass: q4 109, 119, 129, 130 (88 before, one row at a time); q8
/// 152, 114, 147, 155 (148 before); f16 102, 83, 99, 104; bf16 100, 82, 100, 113. On one core
/// with the weights in cache, 8 rows fall behind 4 (q4 13.3 against 13.7 GB/s: their sums and
/// decoded weights outgrow AVX2's 16 registers).
const ROWS: usize = 4;

/// Vectors of eight lanes in a block of A.
pub(crate) const GROUPS: usize = BLOCK / 8;

/// Eight f32 lanes per block, over [`Lanes::BLOCKS`] consecutive blocks, and the operations a
/// format's dot is made of. Block `i` of a value is its lanes `8i..8i + 8`; methods that read
/// something per block take it as `[block 0's, block 1's]` (from [`blocks`]), of which a
/// one-block value reads the first. (No closures: one the inliner declines would hold the
/// intrinsics outside the target features that let them inline, 40 times slower measured.)
pub(crate) trait Lanes: Copy {
    /// Blocks one value covers: 1, or 2 in a 512-bit register.
    const BLOCKS: usize;
    /// The same lanes over one block, for a row's last block when `BLOCKS` does not divide its
    /// blocks.
    type One: Lanes;
    /// `self` with `one` added to its first block's lanes (the others untouched).
    fn add_first(self, one: Self::One) -> Self;
    fn zero() -> Self;
    /// Blocks' scales held in one register, for up to [`Lanes::SCALE_BLOCKS`] consecutive blocks.
    type Scales: Copy;
    /// Blocks one [`Lanes::Scales`] holds: a multiple of 2.
    const SCALE_BLOCKS: usize;
    /// `s[i] · d[i]` (`s[i]` a little-endian f16) for the first `SCALE_BLOCKS` blocks, or as many
    /// as `s` and `d` hold (the rest zero).
    fn scales(s: &[[u8; 2]], d: &[f32]) -> Self::Scales;
    /// Every lane of block `j` set to `scales`' block `i + j` (`i` a multiple of `BLOCKS`).
    fn scale_at(scales: &Self::Scales, i: usize) -> Self;
    /// `self · m + acc`, rounded once.
    fn mul_add(self, m: Self, acc: Self) -> Self;
    /// `self` with `dot · m` added to its first block's lanes, rounded once (the others
    /// untouched).
    fn mul_add_first(self, dot: Self::One, m: Self::One) -> Self;
    /// Block `i`'s lanes read from `v[i]`.
    fn load(v: [&[f32; 8]; 2]) -> Self;
    fn add(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    /// Block `i`'s lanes: eight little-endian f16 weights from `q[i]`.
    fn f16s(q: [&[u8; 16]; 2]) -> Self;
    /// Block `i`'s lanes: eight little-endian bf16 weights from `q[i]`.
    fn bf16s(q: [&[u8; 16]; 2]) -> Self;
    /// A row's running sums folded to eight: lane `l` is `Σ` of lane `l` of both accumulators
    /// (even blocks' and odd blocks', see [`pass`]).
    fn fold(acc: [Self; 2]) -> [f32; 8];
    /// A pair of blocks of A as 16-bit integers `x`, split in two halves as the
    /// format's weights are stored ([`I16Pair`]), as the integer dots read them.
    type Int16: Copy;
    /// Block `which` of `pair` (both blocks when `BLOCKS` is 2, whose `which` is 0).
    fn load_i16(pair: &I16Pair, which: usize) -> Self::Int16;
    /// `Σ w·x` over blocks of int8 weights, each block's first 16 elements from `lo` and last
    /// 16 from `hi` (16 bytes per block, the blocks' side by side): lane `l` of a block the exact
    /// sum over its elements `2l`, `2l + 1`, `16 + 2l` and `17 + 2l`.
    fn i8_dot(x: &Self::Int16, lo: &[u8], hi: &[u8]) -> Self;
    /// `Σ q·x` over blocks of 4-bit levels (block `i` from `w[i]`, `w` holding `BLOCKS` or more;
    /// byte `2l + e` holds element `4l + e` in its low half and `4l + 2 + e` in its high half):
    /// lane `l` of a block the exact sum over its elements `4l..4l + 4`.
    fn u4_dot(x: &Self::Int16, w: &[[u8; BLOCK / 2]]) -> Self;
}

/// Two blocks of A as 16-bit integers, each block's elements split in two halves as the format
/// stores its weights (`halves(j)`: the elements word `j` of each half holds): words `0..16` are
/// block 0's first half, `16..32` block 1's, `32..48` block 0's second half, `48..64` block 1's.
/// A 512-bit register then takes the first halves of both blocks in one load and the second
/// halves in another, matching the weights a byte-to-word widening of 32 stored bytes gives.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct I16Pair(pub [i16; 4 * BLOCK / 2]);

impl I16Pair {
    /// A's blocks in pairs (a last odd block beside zeros; no `x` is -32768, so no word pair is
    /// -32768 · -32768, the one `vpmaddwd` cannot take).
    pub(crate) fn row(a: &QuantizedA, halves: impl Fn(usize) -> (usize, usize)) -> Vec<I16Pair> {
        let pair = |blocks: &[ABlock]| {
            let mut w = [0i16; 4 * BLOCK / 2];
            for (i, block) in blocks.iter().enumerate() {
                for j in 0..BLOCK / 2 {
                    let (first, second) = halves(j);
                    w[BLOCK / 2 * i + j] = block.x[first];
                    w[BLOCK + BLOCK / 2 * i + j] = block.x[second];
                }
            }
            I16Pair(w)
        };
        a.0.chunks(2).map(pair).collect()
    }

    /// Block `which`'s low-half and high-half elements.
    #[inline(always)]
    fn halves(&self, which: usize) -> (&[i16; BLOCK / 2], &[i16; BLOCK / 2]) {
        let h = self.0.as_chunks::<{ BLOCK / 2 }>().0;
        (&h[which], &h[2 + which])
    }
}

/// Items `b` and `b + 1` of `s` when `V` covers two blocks, else item `b` twice: what [`Lanes`]'
/// per-block arguments take.
#[inline(always)]
pub(crate) fn blocks<V: Lanes, T>(s: &[T], b: usize) -> [&T; 2] {
    [&s[b], &s[b + V::BLOCKS - 1]]
}

/// A weight format's dot product, over any [`Lanes`]: per row, a pass adds `V::BLOCKS` blocks'
/// partial sums at a time into the row's running sums.
pub(crate) trait LaneDot: BlockFormat {
    /// What blocks of A give every row's blocks: their lanes (and whatever else of A the format
    /// needs), computed once for all the rows of a pass.
    type A<V: Lanes>: Copy;
    /// A stored row split into its parts, once per pass.
    type Row<'a>;
    /// Blocks `b..b + V::BLOCKS` of a prepared row of A ([`BlockFormat::prepare`]).
    fn a_block<V: Lanes>(a: &Self::Prepared, b: usize) -> Self::A<V>;
    /// The values of A the dot multiplies (tests' references).
    #[cfg(test)]
    fn a_as_read(a: &Self::Prepared) -> Vec<f32>;
    fn row(bytes: &[u8], blocks: usize) -> Self::Row<'_>;
    /// Blocks `b..b + V::BLOCKS` of `row` times A's: their lanes' partial sums.
    fn block<V: Lanes>(a: &Self::A<V>, row: &Self::Row<'_>, b: usize) -> V;
    /// Whether each block's partial sums ([`LaneDot::block`]) are multiplied by the row's block
    /// scale ([`LaneDot::row_scales`]) times A's ([`LaneDot::a_scales`]) as they are added in:
    /// q8's and q4's, whose blocks' integer sums are scaled in f32. A pass converts the scales
    /// [`Lanes::SCALE_BLOCKS`] blocks at a time and multiplies each block's sums by its scale in
    /// the add, rounded once: one permute and one fused multiply-add per block and row, where a
    /// conversion, a permute and two multiplies measured a third of q4's instructions.
    const SCALED: bool = false;
    /// A stored row's block scales (little-endian f16), when [`LaneDot::SCALED`].
    fn row_scales<'r>(_row: &Self::Row<'r>) -> &'r [[u8; 2]] {
        &[]
    }
    /// A's block scales, when [`LaneDot::SCALED`].
    fn a_scales(_a: &Self::Prepared) -> &[f32] {
        &[]
    }
    /// Whether the format adds [`LaneDot::row_term`] to each row's blocks' sum.
    const ROW_TERM: bool = false;
    /// A term of a row's dot that is not block by block (q4's minimums times A's block sums).
    fn row_term<V: Lanes>(_a: &Self::Prepared, _row: &Self::Row<'_>) -> f32 {
        0.0
    }
}

/// `Σ w[b]·x[b]` over the little-endian f16s `w` and the f32s `x` (the shorter's length), in the
/// order every [`Lanes`] gives: eight lanes over whole chunks of 8, even and odd chunks apart as
/// in [`pass`], then the rest one by one.
#[inline(always)]
pub(crate) fn dot_f16<V: Lanes>(w: &[[u8; 2]], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (chunks, xs) = (n / 8, x.as_chunks::<8>().0);
    let ws = w.as_flattened().as_chunks::<16>().0;
    let mut acc = [V::zero(); 2];
    for c in (0..chunks & !1).step_by(2) {
        if V::BLOCKS == 2 {
            acc[0] = acc[0].add(V::f16s([&ws[c], &ws[c + 1]]).mul(V::load([&xs[c], &xs[c + 1]])));
        } else {
            for (slot, c) in [(0, c), (1, c + 1)] {
                acc[slot] = acc[slot].add(V::f16s([&ws[c], &ws[c]]).mul(V::load([&xs[c], &xs[c]])));
            }
        }
    }
    if chunks % 2 == 1 {
        let c = chunks - 1;
        acc[0] = acc[0].add_first(V::One::f16s([&ws[c], &ws[c]]).mul(V::One::load([&xs[c], &xs[c]])));
    }
    let mut s = sum_lanes(V::fold(acc));
    for b in chunks * 8..n {
        s += half::f16::from_le_bytes(w[b]).to_f32() * x[b];
    }
    s
}

/// Blocks `b..b + V::BLOCKS` of A as [`GROUPS`] vectors (element `8t + l` of block `i` in lane
/// `l` of block `i` of vector `t`).
#[inline(always)]
pub(crate) fn load_blocks<V: Lanes>(a: &[[f32; BLOCK]], b: usize) -> [V; GROUPS] {
    let [x, y] = blocks::<V, _>(a, b);
    let (x, y) = (x.as_chunks::<8>().0, y.as_chunks::<8>().0);
    let mut out = [V::zero(); GROUPS];
    for (t, v) in out.iter_mut().enumerate() {
        *v = V::load([&x[t], &y[t]]);
    }
    out
}

/// Blocks of [`BLOCK`] little-endian 16-bit floats (block `i` from `w[i]`, bf16 when `brain`,
/// else f16) times A's blocks: lane `l` adds `a[8t + l] · w[8t + l]` for `t` in order, from zero.
#[inline(always)]
pub(crate) fn half_block<V: Lanes>(a: &[V; GROUPS], w: [&[u8; 2 * BLOCK]; 2], brain: bool) -> V {
    let (x, y) = (w[0].as_chunks::<16>().0, w[1].as_chunks::<16>().0);
    let mut sum = V::zero();
    for (t, &a) in a.iter().enumerate() {
        let w = if brain { V::bf16s([&x[t], &y[t]]) } else { V::f16s([&x[t], &y[t]]) };
        sum = sum.add(a.mul(w));
    }
    sum
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
fn simd_paths<F: LaneDot>() -> [(&'static str, bool, DotPath<F>); 4] {
    let avx2 = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("f16c")
        && std::is_x86_feature_detected!("fma");
    let avx512_vnni = std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl");
    let avx512 = std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq");
    [
        ("AVX-512 VNNI, 512-bit", avx2 && avx512_vnni && avx512, dot_rows_avx512::<F>),
        ("AVX-VNNI", avx2 && std::is_x86_feature_detected!("avxvnni"), dot_rows_avx_vnni::<F>),
        ("AVX-512 VNNI", avx2 && avx512_vnni, dot_rows_avx512_vnni::<F>),
        ("AVX2", avx2, dot_rows_avx2::<F>),
    ]
}

/// [`dot_rows`] in AVX2 (F16C for half floats, FMA for block scales) intrinsics, integer dots
/// by `vpmaddwd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,fma")]
unsafe fn dot_rows_avx2<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<x86::Avx2<{ x86::MADD }>, F, ROWS>(a, k, rows, out)
}

/// [`dot_rows`] with integer dots by AVX-VNNI's `vpdpwssd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,fma,avxvnni")]
unsafe fn dot_rows_avx_vnni<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<x86::Avx2<{ x86::AVX_VNNI }>, F, ROWS>(a, k, rows, out)
}

/// [`dot_rows`] with integer dots by AVX-512 VNNI's `vpdpwssd` on 256-bit registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,fma,avx512vnni,avx512vl")]
unsafe fn dot_rows_avx512_vnni<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<x86::Avx2<{ x86::AVX512_VNNI }>, F, ROWS>(a, k, rows, out)
}

/// [`dot_rows`] two blocks at a time in 512-bit registers, integer dots by `vpdpwssd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
unsafe fn dot_rows_avx512<F: LaneDot>(a: &F::Prepared, k: usize, rows: &[u8], out: &mut [f32]) {
    dot_rows_in::<x86::Avx512, F, ROWS>(a, k, rows, out)
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

/// A times `R` stored rows: one pass over A's blocks. Each row keeps two running sums, one over
/// its even blocks and one over its odd blocks, each a chain of adds (fused multiply-adds for a
/// scaled format) in block order, added together at the end: that is the order a 512-bit
/// register holding two blocks adds in, so every [`Lanes`] gives the same bits. Scaled formats'
/// block scales are converted [`Lanes::SCALE_BLOCKS`] at a time per row. A's blocks are loaded
/// once for all the rows, and the rows' chains are independent. With `ahead > 0`, each block
/// also prefetches the same share of the row `ahead` bytes on (the address may lie past `rows`:
/// a prefetch never faults).
#[inline(always)]
fn pass<V: Lanes, F: LaneDot, const R: usize>(a: &F::Prepared, k: usize, rows: [&[u8]; R], ahead: usize) -> [f32; R] {
    let blocks = k / BLOCK;
    let views: [F::Row<'_>; R] = std::array::from_fn(|r| F::row(rows[r], blocks));
    let step = rows[0].len() / blocks.max(1);
    let d = F::a_scales(a);
    let mut totals = [[V::zero(); 2]; R];
    let even = blocks & !1;
    for first in (0..even).step_by(V::SCALE_BLOCKS) {
        let scales: Option<[V::Scales; R]> =
            F::SCALED.then(|| std::array::from_fn(|r| V::scales(&F::row_scales(&views[r])[first..], &d[first..])));
        let scale = |r: usize, b: usize| scales.as_ref().map(|s| V::scale_at(&s[r], b - first));
        for b in (first..even.min(first + V::SCALE_BLOCKS)).step_by(2) {
            prefetch_rows(&rows, ahead, b * step, step, 2);
            if V::BLOCKS == 2 {
                let ab = F::a_block::<V>(a, b);
                for (r, (total, row)) in totals.iter_mut().zip(&views).enumerate() {
                    total[0] = add_block(total[0], F::block(&ab, row, b), scale(r, b));
                }
            } else {
                for (slot, b) in [(0, b), (1, b + 1)] {
                    let ab = F::a_block::<V>(a, b);
                    for (r, (total, row)) in totals.iter_mut().zip(&views).enumerate() {
                        total[slot] = add_block(total[slot], F::block(&ab, row, b), scale(r, b));
                    }
                }
            }
        }
    }
    if blocks % 2 == 1 {
        let b = blocks - 1;
        prefetch_rows(&rows, ahead, b * step, step, 1);
        let ab = F::a_block::<V::One>(a, b);
        for (total, row) in totals.iter_mut().zip(&views) {
            let dot = F::block(&ab, row, b);
            total[0] = if F::SCALED {
                let scales = V::One::scales(&F::row_scales(row)[b..], &d[b..]);
                total[0].mul_add_first(dot, V::One::scale_at(&scales, 0))
            } else {
                total[0].add_first(dot)
            };
        }
    }
    let mut sums = [0f32; R];
    for ((s, t), row) in sums.iter_mut().zip(totals).zip(&views) {
        *s = sum_lanes(V::fold(t));
        if F::ROW_TERM {
            *s += F::row_term::<V>(a, row);
        }
    }
    sums
}

/// `total` plus a block's partial sums, times its scale when the format has one.
#[inline(always)]
fn add_block<V: Lanes>(total: V, dot: V, scale: Option<V>) -> V {
    match scale {
        Some(scale) => dot.mul_add(scale, total),
        None => total.add(dot),
    }
}

/// With `ahead > 0`, prefetches `count` blocks of `step` bytes from byte `at` of each row,
/// `ahead` bytes on: one address per block, as a block is at most a cache line (f16's).
#[inline(always)]
fn prefetch_rows(rows: &[&[u8]], ahead: usize, at: usize, step: usize, count: usize) {
    if ahead > 0 {
        for row in rows {
            for i in 0..count {
                prefetch(row.as_ptr().wrapping_add(ahead + at + i * step));
            }
        }
    }
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
    const BLOCKS: usize = 1;
    type One = Portable;

    #[inline(always)]
    fn add_first(self, one: Self) -> Self {
        self.add(one)
    }

    #[inline(always)]
    fn zero() -> Self {
        Portable([0.0; 8])
    }

    type Scales = [f32; 8];
    const SCALE_BLOCKS: usize = 8;

    #[inline(always)]
    fn scales(s: &[[u8; 2]], d: &[f32]) -> [f32; 8] {
        let mut out = [0f32; 8];
        for ((o, &s), &d) in out.iter_mut().zip(s).zip(d) {
            *o = half::f16::from_le_bytes(s).to_f32() * d;
        }
        out
    }

    #[inline(always)]
    fn scale_at(scales: &[f32; 8], i: usize) -> Self {
        Portable([scales[i]; 8])
    }

    #[inline(always)]
    fn mul_add(self, m: Self, acc: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l].mul_add(m.0[l], acc.0[l])))
    }

    #[inline(always)]
    fn mul_add_first(self, dot: Self, m: Self) -> Self {
        dot.mul_add(m, self)
    }

    #[inline(always)]
    fn load(v: [&[f32; 8]; 2]) -> Self {
        Portable(*v[0])
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
    fn f16s(q: [&[u8; 16]; 2]) -> Self {
        let q = q[0];
        Portable(std::array::from_fn(|l| half::f16::from_le_bytes([q[2 * l], q[2 * l + 1]]).to_f32()))
    }

    #[inline(always)]
    fn bf16s(q: [&[u8; 16]; 2]) -> Self {
        let q = q[0];
        Portable(std::array::from_fn(|l| f32::from_bits((u16::from_le_bytes([q[2 * l], q[2 * l + 1]]) as u32) << 16)))
    }

    #[inline(always)]
    fn fold([even, odd]: [Self; 2]) -> [f32; 8] {
        even.add(odd).0
    }

    type Int16 = ([i16; BLOCK / 2], [i16; BLOCK / 2]);

    #[inline(always)]
    fn load_i16(pair: &I16Pair, which: usize) -> Self::Int16 {
        let (lo, hi) = pair.halves(which);
        (*lo, *hi)
    }

    #[inline(always)]
    fn i8_dot(x: &Self::Int16, lo: &[u8], hi: &[u8]) -> Self {
        let (lo, hi): (&[u8; BLOCK / 2], &[u8; BLOCK / 2]) =
            (lo.first_chunk().expect("a half block"), hi.first_chunk().expect("a half block"));
        int_lanes(x, |j| lo[j] as i8 as i32, |j| hi[j] as i8 as i32)
    }

    #[inline(always)]
    fn u4_dot(x: &Self::Int16, w: &[[u8; BLOCK / 2]]) -> Self {
        let w = &w[0];
        int_lanes(x, |j| (w[j] & 15) as i32, |j| (w[j] >> 4) as i32)
    }
}

/// Lane `l`: the exact `Σ first(j)·x.0[j] + second(j)·x.1[j]` over `j` in `2l`, `2l + 1`, in f32
/// (the word pairs `vpmaddwd` sums). Written as whole-half multiplies, then lane sums, so it
/// vectorizes (NEON on aarch64, where this is the path).
#[inline(always)]
fn int_lanes(
    (lo, hi): &([i16; BLOCK / 2], [i16; BLOCK / 2]),
    first: impl Fn(usize) -> i32,
    second: impl Fn(usize) -> i32,
) -> Portable {
    let a: [i32; BLOCK / 2] = std::array::from_fn(|j| first(j) * lo[j] as i32);
    let b: [i32; BLOCK / 2] = std::array::from_fn(|j| second(j) * hi[j] as i32);
    Portable(std::array::from_fn(|l| (a[2 * l] + a[2 * l + 1] + b[2 * l] + b[2 * l + 1]) as f32))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{I16Pair, Lanes, BLOCK};
    use std::arch::x86_64::*;

    /// Integer dots by `vpmaddwd` (AVX2 alone).
    pub(super) const MADD: u8 = 0;
    /// Integer dots by AVX-VNNI's `vpdpwssd`.
    pub(super) const AVX_VNNI: u8 = 1;
    /// Integer dots by AVX-512 VNNI's `vpdpwssd` (256-bit form, AVX512VL).
    pub(super) const AVX512_VNNI: u8 = 2;

    /// One block's lanes in an AVX2 register, integer dots by instruction `DOT`. Private to this
    /// module's parent, which makes and uses them only inside its `dot_rows_*` functions, each
    /// reached only on CPUs with AVX2, F16C, FMA and `DOT`'s extension: that is what the methods'
    /// `SAFETY` comments rely on. They are inlined into those functions, whose target features
    /// let the intrinsics inline too.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2<const DOT: u8>(__m256);

    /// `acc` plus, per 32-bit lane, `Σ a·b` over its two 16-bit pairs (exact for the callers'
    /// operands, which never pair -32768 with -32768).
    #[inline(always)]
    unsafe fn dot2<const DOT: u8>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the caller's target features include `DOT`'s extension (see `Avx2`).
        unsafe {
            match DOT {
                AVX_VNNI => _mm256_dpwssd_avx_epi32(acc, a, b),
                AVX512_VNNI => _mm256_dpwssd_epi32(acc, a, b),
                _ => _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)),
            }
        }
    }

    impl<const DOT: u8> Lanes for Avx2<DOT> {
        const BLOCKS: usize = 1;
        type One = Self;

        #[inline(always)]
        fn add_first(self, one: Self) -> Self {
            self.add(one)
        }

        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Self(unsafe { _mm256_setzero_ps() })
        }

        type Scales = __m256;
        const SCALE_BLOCKS: usize = 8;

        /// Eight blocks' in one conversion and one multiply (a ragged end through a padded copy).
        #[inline(always)]
        fn scales(s: &[[u8; 2]], d: &[f32]) -> __m256 {
            let (mut s8, mut d8) = ([[0u8; 2]; 8], [0f32; 8]);
            let (s, d): (&[[u8; 2]; 8], &[f32; 8]) = match (s.first_chunk(), d.first_chunk()) {
                (Some(s), Some(d)) => (s, d),
                _ => {
                    let n = s.len().min(d.len()).min(8);
                    s8[..n].copy_from_slice(&s[..n]);
                    d8[..n].copy_from_slice(&d[..n]);
                    (&s8, &d8)
                }
            };
            // SAFETY: AVX2 and F16C are present (see `Avx2`); the loads read the 16 bytes of `s`
            // and the 8 floats of `d`. The conversion is exact, as `half`'s.
            unsafe {
                let s = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr() as *const __m128i));
                _mm256_mul_ps(s, _mm256_loadu_ps(d.as_ptr()))
            }
        }

        #[inline(always)]
        fn scale_at(scales: &__m256, i: usize) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`).
            Self(unsafe { _mm256_permutevar8x32_ps(*scales, _mm256_set1_epi32(i as i32)) })
        }

        #[inline(always)]
        fn mul_add(self, m: Self, acc: Self) -> Self {
            // SAFETY: FMA is present (see `Avx2`).
            Self(unsafe { _mm256_fmadd_ps(self.0, m.0, acc.0) })
        }

        #[inline(always)]
        fn mul_add_first(self, dot: Self, m: Self) -> Self {
            dot.mul_add(m, self)
        }

        #[inline(always)]
        fn load(v: [&[f32; 8]; 2]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); an unaligned load of the 8 floats of `v[0]`.
            Self(unsafe { _mm256_loadu_ps(v[0].as_ptr()) })
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
        fn f16s(q: [&[u8; 16]; 2]) -> Self {
            // SAFETY: AVX2 and F16C are present (see `Avx2`); the load reads the 16 bytes of
            // `q[0]`. The conversion is exact, as `half`'s.
            Self(unsafe { _mm256_cvtph_ps(_mm_loadu_si128(q[0].as_ptr() as *const __m128i)) })
        }

        #[inline(always)]
        fn bf16s(q: [&[u8; 16]; 2]) -> Self {
            // SAFETY: AVX2 is present (see `Avx2`); the load reads the 16 bytes of `q[0]`.
            // bf16 is f32's top half: widened into the high 16 bits of each lane.
            Self(unsafe {
                let halves = _mm256_cvtepu16_epi32(_mm_loadu_si128(q[0].as_ptr() as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(halves, 16))
            })
        }

        #[inline(always)]
        fn fold([even, odd]: [Self; 2]) -> [f32; 8] {
            let mut t = [0f32; 8];
            // SAFETY: AVX2 is present (see `Avx2`); an unaligned store of 8 floats into `t`.
            unsafe { _mm256_storeu_ps(t.as_mut_ptr(), even.add(odd).0) };
            t
        }

        type Int16 = (__m256i, __m256i);

        #[inline(always)]
        fn load_i16(pair: &I16Pair, which: usize) -> Self::Int16 {
            let (lo, hi) = pair.halves(which);
            // SAFETY: AVX2 is present (see `Avx2`); unaligned loads of the 32 bytes of each.
            unsafe {
                (_mm256_loadu_si256(lo.as_ptr() as *const __m256i), _mm256_loadu_si256(hi.as_ptr() as *const __m256i))
            }
        }

        #[inline(always)]
        fn i8_dot(&(x_lo, x_hi): &Self::Int16, lo: &[u8], hi: &[u8]) -> Self {
            let (lo, hi): (&[u8; 16], &[u8; 16]) =
                (lo.first_chunk().expect("a half block"), hi.first_chunk().expect("a half block"));
            // SAFETY: AVX2 and `DOT`'s extension are present (see `Avx2`); the loads read the 16
            // bytes of each. Each word pair's products are at most 2·128·32512, far inside i32.
            Self(unsafe {
                let lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(lo.as_ptr() as *const __m128i));
                let hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(hi.as_ptr() as *const __m128i));
                _mm256_cvtepi32_ps(dot2::<DOT>(dot2::<DOT>(_mm256_setzero_si256(), lo, x_lo), hi, x_hi))
            })
        }

        #[inline(always)]
        fn u4_dot(&(lo, hi): &Self::Int16, w: &[[u8; BLOCK / 2]]) -> Self {
            // SAFETY: AVX2 and `DOT`'s extension are present (see `Avx2`); the load reads the 16
            // bytes of `w[0]`. Each word pair's products are at most 2·15·32512, far inside i32.
            Self(unsafe {
                let words = _mm256_cvtepu8_epi16(_mm_loadu_si128(w[0].as_ptr() as *const __m128i));
                let low = _mm256_and_si256(words, _mm256_set1_epi16(15));
                let high = _mm256_srli_epi16(words, 4);
                _mm256_cvtepi32_ps(dot2::<DOT>(dot2::<DOT>(_mm256_setzero_si256(), low, lo), high, hi))
            })
        }
    }

    /// Two blocks' lanes in a 512-bit register (the first block in the low half), integer dots
    /// by `vpdpwssd`: half the instructions per block of [`Avx2`]'s, which bounded q8 and q4
    /// decode. Made and used only inside `dot_rows_avx512`, reached only on CPUs with AVX2, F16C,
    /// FMA, AVX-512 F, BW, DQ, VL and VNNI: that is what the methods' `SAFETY` comments rely on.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    /// `acc` plus, per 32-bit lane, `Σ a·b` over its two 16-bit pairs: `vpdpwssd`, written out
    /// because LLVM's generic x86 tuning splits the intrinsic into `vpmaddwd` and `vpaddd`, one
    /// instruction more per block pair and row.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        let mut acc = acc;
        // SAFETY: AVX-512 VNNI is present (see `Avx512`); the instruction reads and writes
        // registers only.
        unsafe {
            std::arch::asm!(
                "vpdpwssd {acc}, {a}, {b}",
                acc = inout(zmm_reg) acc,
                a = in(zmm_reg) a,
                b = in(zmm_reg) b,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        acc
    }

    /// A 512-bit register from two 256-bit halves.
    #[inline(always)]
    unsafe fn join_ps(lo: __m256, hi: __m256) -> __m512 {
        // SAFETY: AVX-512 F is present (see `Avx512`).
        unsafe { _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1) }
    }

    /// A 256-bit register from the 16 bytes at each of `lo` and `hi`.
    #[inline(always)]
    unsafe fn join_halves(lo: &[u8; 16], hi: &[u8; 16]) -> __m256i {
        // SAFETY: AVX2 is present (see `Avx512`); unaligned loads of 16 bytes from each.
        unsafe {
            let lo = _mm_loadu_si128(lo.as_ptr() as *const __m128i);
            _mm256_set_m128i(_mm_loadu_si128(hi.as_ptr() as *const __m128i), lo)
        }
    }

    impl Lanes for Avx512 {
        const BLOCKS: usize = 2;
        type One = Avx2<AVX512_VNNI>;

        #[inline(always)]
        fn add_first(self, one: Self::One) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`). The mask adds the low half only.
            Self(unsafe { _mm512_mask_add_ps(self.0, 0x00ff, self.0, _mm512_castps256_ps512(one.0)) })
        }

        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`).
            Self(unsafe { _mm512_setzero_ps() })
        }

        type Scales = __m512;
        const SCALE_BLOCKS: usize = 16;

        /// Sixteen blocks' in one conversion and one multiply; masked loads at a ragged end.
        #[inline(always)]
        fn scales(s: &[[u8; 2]], d: &[f32]) -> __m512 {
            let n = s.len().min(d.len()).min(16);
            let mask = ((1u32 << n) - 1) as u16;
            // SAFETY: AVX-512 F, BW and VL are present (see `Avx512`); the masked loads read the
            // first `n` values of `s` and of `d` only (masked-off elements are neither read nor
            // faulted on). The conversion is exact, as `half`'s.
            unsafe {
                let s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, s.as_ptr() as *const i16));
                _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mask, d.as_ptr()))
            }
        }

        /// One permute: lanes `0..8` from block `i`, `8..16` from block `i + 1`.
        #[inline(always)]
        fn scale_at(scales: &__m512, i: usize) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`).
            Self(unsafe {
                let pair = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
                _mm512_permutexvar_ps(_mm512_add_epi32(pair, _mm512_set1_epi32(i as i32)), *scales)
            })
        }

        #[inline(always)]
        fn mul_add(self, m: Self, acc: Self) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`).
            Self(unsafe { _mm512_fmadd_ps(self.0, m.0, acc.0) })
        }

        /// The mask takes the low half's lanes from the fused multiply-add, the rest from `self`.
        #[inline(always)]
        fn mul_add_first(self, dot: Self::One, m: Self::One) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`).
            Self(unsafe {
                _mm512_mask3_fmadd_ps(_mm512_castps256_ps512(dot.0), _mm512_castps256_ps512(m.0), self.0, 0x00ff)
            })
        }

        #[inline(always)]
        fn load(v: [&[f32; 8]; 2]) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`); unaligned loads of 8 floats each.
            Self(unsafe { join_ps(_mm256_loadu_ps(v[0].as_ptr()), _mm256_loadu_ps(v[1].as_ptr())) })
        }

        #[inline(always)]
        fn add(self, other: Self) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`).
            Self(unsafe { _mm512_add_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn mul(self, other: Self) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`).
            Self(unsafe { _mm512_mul_ps(self.0, other.0) })
        }

        #[inline(always)]
        fn f16s(q: [&[u8; 16]; 2]) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`); the loads read the 16 bytes of `q[0]`
            // and `q[1]`. The conversion is exact, as `half`'s.
            Self(unsafe { _mm512_cvtph_ps(join_halves(q[0], q[1])) })
        }

        #[inline(always)]
        fn bf16s(q: [&[u8; 16]; 2]) -> Self {
            // SAFETY: AVX-512 F is present (see `Avx512`); the loads read the 16 bytes of `q[0]`
            // and `q[1]`. bf16 is f32's top half: widened into the high 16 bits of each lane.
            Self(unsafe {
                let halves = join_halves(q[0], q[1]);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16))
            })
        }

        /// Even blocks sit in the low half, odd blocks in the high half; the second accumulator
        /// is never written (`pass` adds two blocks at a time into the first).
        #[inline(always)]
        fn fold([acc, _]: [Self; 2]) -> [f32; 8] {
            let mut t = [0f32; 8];
            // SAFETY: AVX-512 F is present (see `Avx512`); an unaligned store of 8 floats.
            unsafe {
                let sum = _mm256_add_ps(_mm512_castps512_ps256(acc.0), _mm512_extractf32x8_ps(acc.0, 1));
                _mm256_storeu_ps(t.as_mut_ptr(), sum)
            };
            t
        }

        type Int16 = (__m512i, __m512i);

        #[inline(always)]
        fn load_i16(pair: &I16Pair, _which: usize) -> Self::Int16 {
            let (lo, hi) = pair.0.split_at(BLOCK);
            // SAFETY: AVX-512 F is present (see `Avx512`); unaligned loads of 64 bytes from each
            // half, which holds 32 words.
            unsafe { (_mm512_loadu_si512(lo.as_ptr() as *const _), _mm512_loadu_si512(hi.as_ptr() as *const _)) }
        }

        /// Each half's 32 bytes (both blocks' 16) widened to words: one `vpdpwssd` per half.
        #[inline(always)]
        fn i8_dot(&(x_lo, x_hi): &Self::Int16, lo: &[u8], hi: &[u8]) -> Self {
            let (lo, hi): (&[u8; 32], &[u8; 32]) =
                (lo.first_chunk().expect("two half blocks"), hi.first_chunk().expect("two half blocks"));
            // SAFETY: AVX-512 F, BW and VNNI are present (see `Avx512`); the loads read the 32
            // bytes of each. Each word pair's products are at most 2·128·32512, far inside i32.
            Self(unsafe {
                let lo = _mm512_cvtepi8_epi16(_mm256_loadu_si256(lo.as_ptr() as *const __m256i));
                let hi = _mm512_cvtepi8_epi16(_mm256_loadu_si256(hi.as_ptr() as *const __m256i));
                _mm512_cvtepi32_ps(dpwssd(_mm512_madd_epi16(lo, x_lo), hi, x_hi))
            })
        }

        /// Widening the pair's 32 bytes to words puts block 0's in the low half and block 1's in
        /// the high half, each byte's low level and high level then a mask and a shift apart:
        /// one `vpdpwssd` takes the low levels of both blocks, a second the high ones.
        #[inline(always)]
        fn u4_dot(&(lo, hi): &Self::Int16, w: &[[u8; BLOCK / 2]]) -> Self {
            let pair: &[[u8; BLOCK / 2]; 2] = w.first_chunk().expect("two blocks of weights");
            // SAFETY: AVX-512 F, BW and VNNI are present (see `Avx512`); the load reads the 32
            // bytes of `pair`. Each word pair's products are at most 2·15·32512, far inside i32.
            Self(unsafe {
                let words = _mm512_cvtepu8_epi16(_mm256_loadu_si256(pair.as_ptr() as *const __m256i));
                let low = _mm512_and_si512(words, _mm512_set1_epi16(15));
                let high = _mm512_srli_epi16(words, 4);
                _mm512_cvtepi32_ps(dpwssd(_mm512_madd_epi16(low, lo), high, hi))
            })
        }
    }
}

/// Checks `F`'s dot on every row count from 1 to 11 (whole passes and ragged tails): every SIMD
/// multi-row path the CPU has equals the portable one-row pass bit for bit, and that is the dot of
/// the dequantized row with A as the format reads it, to float rounding. Rows of 3 blocks and of
/// 37 (two whole runs of 16 block scales, then a ragged one ending on an odd block), each block
/// of W and of A at its own magnitude, so that a block scaled by a neighbour's scale shows.
#[cfg(test)]
pub(crate) fn check_dot_rows<F: LaneDot>() {
    for blocks in [3, 37] {
        let (k, n) = (blocks * BLOCK, 11);
        let magnitude = |i: usize, m: usize| (1 + i / BLOCK % m) as f32;
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * magnitude(i % k, 7)).collect();
        let mut q = vec![0u8; n * F::row_bytes(k)];
        for (src, dst) in w.chunks_exact(k).zip(q.chunks_exact_mut(F::row_bytes(k))) {
            F::quantize_row(src, dst);
        }
        let a: Vec<f32> = (0..k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05 * magnitude(i, 5)).collect();
        check_dot_rows_on::<F>(&a, &q);
    }
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
