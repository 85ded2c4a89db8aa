//! Many rows of A times bf16 or f16 weights on Intel AMX tiles (`tdpbf16ps`, Sapphire Rapids
//! and later): prefill's products with `--weights bf16|f16`. A tile instruction multiplies
//! 16 × 32 bf16 by 32 × 16 into 16 × 16 f32 sums, 8192 multiply-adds, where an AVX-512 FMA does
//! 16; the f32 panels the other CPUs take bound 16-bit prefill at 0.7–0.8 of onnxruntime's fp32 on
//! such a machine.
//!
//! - **bf16:** A is rounded to bf16 (nearest, ties to even), as llama.cpp's BF16 products do; the
//!   sums are f32. W is read where it lies: the tile instruction's first operand is 16 rows of
//!   32 k each, at any row stride, which is W's stored rows as they are (so `C = W · Aᵀ`,
//!   transposed into `y` sixteen by sixteen).
//! - **f16:** bf16's 8 significant bits would throw away 3 of each weight's 11 and most of A's,
//!   which users pick f16 over bf16 to keep. So both are split into a high and a low bf16 part:
//!   a weight is exactly `hi + lo` (its low 3 bits fit `lo`), A is `hi + lo` within 2⁻¹⁷ of
//!   itself, and `W·A ≈ Wh·Ah + Wh·Al + Wl·Ah` (the missing `Wl·Al` is within 2⁻¹⁸ of the
//!   product), three tile products where bf16 takes one. W's groups are split per task, once per
//!   product, into a buffer the task keeps. An infinite value would meet a zero part of the other
//!   operand (`∞ · 0`, NaN) where the f32 product gives ±∞: the caller keeps A with one off the
//!   tiles, and the compiler keeps such weights f32.
//!
//! A is packed once per product into the second operand's layout: for each pair of k, the pair
//! of every row of a group of 16 side by side.
//!
//! The tiles are Linux's to save and restore only once the process asks for them
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] asks, once.

use super::int_gemm::SharedC;
use super::kept::with_kept;
use rayon::prelude::*;
use std::arch::asm;
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows of a tile (W rows, or A rows as lanes), and the bytes of each tile row over 4.
const TILE: usize = 16;
/// k per tile instruction.
const KSTEP: usize = 32;

/// Whether the CPU has AMX-TILE and AMX-BF16 and the kernel lets this process use the tiles.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
        #[allow(unused_unsafe)]
        // SAFETY: `cpuid` is present on every x86-64 CPU; leaf 7 is read only when it exists.
        let (max, leaf7) = unsafe { (__get_cpuid_max(0).0, __cpuid_count(7, 0)) };
        let (tile, bf16) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 22 & 1 == 1);
        max >= 7 && tile && bf16 && request_tile_data()
    })
}

/// Asks Linux to save and restore the tile registers for this process (`arch_prctl`, whose
/// answer is 0 when granted). Written as the system call itself: the workspace has no libc
/// binding, and this is its only call.
fn request_tile_data() -> bool {
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let answer: i64;
    // SAFETY: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` reads no memory and changes
    // only which state the kernel saves for this process; `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL => answer,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        )
    };
    answer == 0
}

/// How a format's stored weights become bf16 tile operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Weights {
    /// bf16 rows, multiplied as they are by A rounded to bf16.
    Bf16,
    /// f16 rows, each weight and each value of A split into a high and a low bf16.
    F16,
}

impl Weights {
    /// The bf16 parts a weight, and a value of A, is split into.
    fn parts(self) -> usize {
        match self {
            Weights::Bf16 => 1,
            Weights::F16 => 2,
        }
    }

    /// The (W part, A part) tile products summed, largest first; the one f16 leaves out
    /// (`Wl·Al`) is within 2⁻¹⁸ of the product.
    fn terms(self) -> &'static [(usize, usize)] {
        match self {
            Weights::Bf16 => &[(0, 0)],
            Weights::F16 => &[(0, 0), (0, 1), (1, 0)],
        }
    }
}

thread_local! {
    /// A packed, kept per calling thread as prefill runs hundreds of products.
    static PACKED: RefCell<Vec<[u32; TILE]>> = const { RefCell::new(Vec::new()) };
}

/// `y[m×n] = A[m×k] · Wᵀ` with W's `n` rows of `k` little-endian 16-bit floats (`2k` bytes
/// each, `k` a multiple of 32) in `w`, stored as `weights` says. Call only when [`available`].
pub(crate) fn product(weights: Weights, a: &[f32], w: &[u8], k: usize, n: usize, y: &mut [f32]) {
    let m = a.len() / k;
    assert!(k.is_multiple_of(KSTEP) && w.len() >= n * 2 * k && y.len() >= m * n, "product shapes");
    assert!(available(), "AMX tiles");
    with_kept(&PACKED, |packed| {
        pack_a(a, k, weights.parts(), packed);
        let (groups, packed, c) = (n.div_ceil(TILE), &packed[..], SharedC(y.as_mut_ptr()));
        // Pairs of W's groups of 16 rows per task, a few tasks per thread.
        let pairs = groups.div_ceil(2);
        let per = pairs.div_ceil(rayon::current_num_threads() * 4).max(1);
        (0..pairs.div_ceil(per)).into_par_iter().for_each(|task| {
            let first = task * per * 2;
            let last = ((task + 1) * per * 2).min(groups);
            // SAFETY: `available` found the tiles and the kernel's permission; the task writes
            // only y's columns of W's groups `first..last`, which no other task writes.
            unsafe { groups_times_a(weights, w, k, n, first..last, packed, m, c) };
        });
    });
}

/// A value of A as the tile products multiply it: the sum of its parts.
#[cfg(test)]
pub(crate) fn a_as_multiplied(weights: Weights, v: f32) -> f32 {
    let parts = a_parts(v);
    parts[..weights.parts()].iter().map(|&p| f32::from_bits(p << 16)).sum()
}

/// A's rows in groups of 16 as `tdpbf16ps`' second operand, each of its `parts` (high, then
/// low) after the other: for part `q`, group `g` and pair `p` of k, `out[(q·groups + g)·k/2 + p]`
/// holds in lane `r` row `16g + r`'s elements `2p` (low half) and `2p + 1` (high half) as bf16,
/// zero past A's rows.
fn pack_a(a: &[f32], k: usize, parts: usize, out: &mut Vec<[u32; TILE]>) {
    let m = a.len() / k;
    let (pairs, groups) = (k / 2, m.div_ceil(TILE));
    out.clear();
    out.resize(parts * groups * pairs, [0; TILE]);
    out.par_chunks_mut(pairs).enumerate().for_each(|(c, group)| {
        let (q, g) = (c / groups, c % groups);
        for r in 0..TILE.min(m - g * TILE) {
            // SAFETY: the CPU has AMX, so AVX-512 F and BW (every AMX CPU has them; `available`
            // was checked by the caller).
            unsafe { pack_row(&a[(g * TILE + r) * k..][..k], r, q, group) };
        }
    });
}

/// Part `q` of row `r` of a group into its lane of `group` (one `[u32; 16]` per pair of k), 32
/// elements at a time: converted in vector registers, then stored 16 lanes apart. Element by
/// element through `half`'s conversion this was half of bf16 prefill's product time.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_row(row: &[f32], r: usize, q: usize, group: &mut [[u32; TILE]]) {
    for (src, dst) in row.as_chunks::<32>().0.iter().zip(group.chunks_exact_mut(TILE)) {
        let part = |v: f32| if q == 0 { bf16_bits(v) } else { a_parts(v)[1] };
        let words: [u32; TILE] = std::array::from_fn(|p| part(src[2 * p]) | part(src[2 * p + 1]) << 16);
        for (d, w) in dst.iter_mut().zip(words) {
            d[r] = w;
        }
    }
}

/// `v` as the bf16 bits of its high part (`v` rounded) and of its low part (what that rounding
/// left, rounded).
#[inline(always)]
fn a_parts(v: f32) -> [u32; 2] {
    let high = bf16_bits(v);
    [high, bf16_bits(v - f32::from_bits(high << 16))]
}

/// `v` as bf16 bits, rounded to nearest, ties to even (NaN stays a quiet NaN): `half`'s
/// conversion, written without branches so that it vectorizes.
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + (b >> 16 & 1)) >> 16;
    let nan = b & 0x7fff_ffff > 0x7f80_0000;
    if nan {
        b >> 16 | 0x40
    } else {
        rounded
    }
}

/// W's rows `rows` (at most 16 of `k` values, `2k` bytes each) as the tile operands' 16 rows of
/// each part, one part after the other in `out` (`2k` bytes a row), zero past the given rows.
/// f16 weights split exactly: the high part is the weight's top 8 significant bits, the low one
/// the 3 left, which bf16 holds exactly at any f16 exponent.
fn split_group(weights: Weights, rows: &[u8], k: usize, out: &mut [u8]) {
    let stride = 2 * k;
    out[rows.len()..TILE * stride].fill(0);
    match weights {
        Weights::Bf16 => out[..rows.len()].copy_from_slice(rows),
        Weights::F16 => {
            let (high, low) = out.split_at_mut(TILE * stride);
            low[rows.len()..].fill(0);
            // SAFETY: the CPU has AMX, so AVX-512 F (every AMX CPU has it; `available` was
            // checked by the product's caller).
            unsafe { split_f16(rows, &mut high[..rows.len()], &mut low[..rows.len()]) };
        }
    }
}

/// Splits little-endian f16 `src` into the bf16 `high` and `low` parts (as many bytes each), 16
/// at a time: widened (exactly), the top 16 bits are the high part, the difference is exact and
/// fits the low part's 16.
#[target_feature(enable = "avx512f")]
unsafe fn split_f16(src: &[u8], high: &mut [u8], low: &mut [u8]) {
    use std::arch::x86_64::*;
    let top = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let chunks = src.as_chunks::<32>().0.iter().zip(high.as_chunks_mut::<32>().0).zip(low.as_chunks_mut::<32>().0);
    for ((s, h), l) in chunks {
        // SAFETY: each access is one 32-byte chunk of its slice.
        unsafe {
            let v = _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast()));
            let hi = _mm512_and_si512(_mm512_castps_si512(v), top);
            let lo = _mm512_castps_si512(_mm512_sub_ps(v, _mm512_castsi512_ps(hi)));
            _mm256_storeu_si256(h.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(hi)));
            _mm256_storeu_si256(l.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(lo)));
        }
    }
}

/// The tile configuration: palette 1, tiles 0–7 all 16 rows of 64 bytes (C: 16 × 16 f32; W: 16
/// rows × 32 bf16; A: 16 pairs of k × 16 rows' bf16 pairs).
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn all_full() -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = TILE as u8;
        }
        Config(c)
    }
}

/// Loads tile `$t` from 16 rows of 64 bytes at `$p`, `$s` bytes apart.
macro_rules! tile_load {
    ($t:literal, $p:expr, $s:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"), p = in(reg) $p, s = in(reg) $s,
            options(nostack, readonly, preserves_flags))
    };
}

/// Tile `$c` += tile `$a` (W) times tile `$b` (A).
macro_rules! tile_dot {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b), options(nomem, nostack, preserves_flags))
    };
}

/// Stores tile `$t` as 16 rows of 64 bytes at `$p`.
macro_rules! tile_store {
    ($t:literal, $p:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], tmm", $t), p = in(reg) $p, s = in(reg) 64usize,
            options(nostack, preserves_flags))
    };
}

thread_local! {
    /// W's two groups of a step as split tile operands, kept per thread.
    static SPLIT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// W's groups `range` (16 rows each, the last possibly fewer) times every group of packed A, two
/// W groups and two A groups at a time in the four accumulator tiles, each of `weights`' terms
/// in turn.
///
/// # Safety
/// [`available`] is true, and no other thread writes y's columns of these W groups meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn groups_times_a(
    weights: Weights,
    w: &[u8],
    k: usize,
    n: usize,
    range: std::ops::Range<usize>,
    packed: &[[u32; TILE]],
    m: usize,
    c: SharedC,
) {
    let stride = 2 * k;
    let (pairs, a_groups, parts) = (k / 2, m.div_ceil(TILE), weights.parts());
    let part_bytes = TILE * stride;
    with_kept(&SPLIT, |split| {
        split.resize(2 * parts * part_bytes, 0);
        let (split0, split1) = split.split_at_mut(parts * part_bytes);
        // Each part's 16 rows of W group `g`: in place when bf16 and whole, else split (or
        // copied beside zero rows) into `buf`.
        let group_rows = |g: usize, buf: &mut [u8]| -> *const u8 {
            let rows = TILE.min(n - g * TILE);
            let src = &w[g * TILE * stride..(g * TILE + rows) * stride];
            if rows == TILE && weights == Weights::Bf16 {
                return src.as_ptr();
            }
            split_group(weights, src, k, buf);
            buf.as_ptr()
        };
        let config = Config::all_full();
        let mut out = [[0f32; TILE * TILE]; 4];
        // SAFETY: the tiles are available; every load reads 16 rows of 64 bytes inside `w` (a
        // whole group), inside a part of `split`, or inside `packed` (a part's group's 16 pairs
        // of k from `kk`); every store writes one `out` tile.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly, preserves_flags));
            for g in range.clone().step_by(2) {
                let two_w = g + 1 < range.end;
                let w0 = group_rows(g, split0);
                let w1 = if two_w { group_rows(g + 1, split1) } else { w0 };
                // The next pair's rows in this task's range, fetched toward the cache a step's
                // columns at a time while this pair meets the first two groups of A.
                let next = (g + 2) * TILE..((g + 4).min(range.end) * TILE).min(n);
                for ag in (0..a_groups).step_by(2) {
                    let two_a = ag + 1 < a_groups;
                    let a_at = |q: usize, g: usize| packed[(q * a_groups + g) * pairs..].as_ptr() as *const u8;
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nomem, nostack));
                    // Each term's tiles loaded only where the previous term's differ: f16's
                    // three terms take 10 loads per step where 12 dots need 12 operands, and a
                    // tile load here costs three dots' time.
                    for kk in 0..k / KSTEP {
                        let (wo, ao) = (kk * 2 * KSTEP, kk * TILE * 4 * TILE);
                        if ag == 0 {
                            for row in next.clone() {
                                _mm_prefetch::<_MM_HINT_T1>(w.as_ptr().add(row * stride + wo).cast());
                            }
                        }
                        let mut loaded = (usize::MAX, usize::MAX);
                        for &(wq, aq) in weights.terms() {
                            if loaded.0 != wq {
                                tile_load!(4, w0.add(wq * part_bytes + wo), stride);
                                if two_w {
                                    tile_load!(5, w1.add(wq * part_bytes + wo), stride);
                                }
                            }
                            if loaded.1 != aq {
                                tile_load!(6, a_at(aq, ag).add(ao), 4 * TILE);
                                if two_a {
                                    tile_load!(7, a_at(aq, ag + 1).add(ao), 4 * TILE);
                                }
                            }
                            loaded = (wq, aq);
                            tile_dot!(0, 4, 6);
                            if two_a {
                                tile_dot!(1, 4, 7);
                            }
                            if two_w {
                                tile_dot!(2, 5, 6);
                                if two_a {
                                    tile_dot!(3, 5, 7);
                                }
                            }
                        }
                    }
                    tile_store!(0, out[0].as_mut_ptr());
                    tile_store!(1, out[1].as_mut_ptr());
                    tile_store!(2, out[2].as_mut_ptr());
                    tile_store!(3, out[3].as_mut_ptr());
                    for (t, tile) in out.iter().enumerate() {
                        let (wg, a_g) = (g + t / 2, ag + t % 2);
                        if (t / 2 == 1 && !two_w) || (t % 2 == 1 && !two_a) {
                            continue;
                        }
                        let (w_rows, a_rows) = (TILE.min(n - wg * TILE), TILE.min(m - a_g * TILE));
                        store_transposed(tile, w_rows, a_rows, c, a_g * TILE * n + wg * TILE, n);
                    }
                }
            }
            asm!("tilerelease", options(nomem, nostack));
        }
    })
}

/// Writes a stored accumulator tile (row `i` W's row, column `j` A's row) into `y` at `at`, row
/// `j` of `y` from column `j`: the first `w_rows` values of each of the first `a_rows` rows of
/// `y`. A 16 × 16 transpose in registers and one masked store per row, where an element at a
/// time measured a third of the product's time.
///
/// # Safety
/// AVX-512 F is present, and `y`'s elements `at + j·n + i` (`j < a_rows`, `i < w_rows`) are
/// this task's to write.
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(tile: &[f32; TILE * TILE], w_rows: usize, a_rows: usize, c: SharedC, at: usize, n: usize) {
    use std::arch::x86_64::*;
    let r: [__m512; TILE] = std::array::from_fn(|i| {
        // SAFETY: row i of the tile is 16 floats inside `tile`.
        unsafe { _mm512_loadu_ps(tile.as_ptr().add(i * TILE)) }
    });
    // Pairs of rows interleaved, then fours: `u[4k + q]`'s 128-bit lane `l` holds column 4l + q
    // of rows 4k..4k + 4.
    let t: [__m512; TILE] = std::array::from_fn(|x| {
        let (a, b) = (r[x & !1], r[x | 1]);
        if x % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; TILE] = std::array::from_fn(|x| {
        let (k, q) = (x / 4, x % 4);
        let (a, b) = (_mm512_castps_pd(t[4 * k + q / 2]), _mm512_castps_pd(t[4 * k + 2 + q / 2]));
        _mm512_castpd_ps(if q % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
    });
    let mask = ((1u32 << w_rows) - 1) as u16;
    for q in 0..4 {
        let [a, b, cc, d] = [u[q], u[4 + q], u[8 + q], u[12 + q]];
        let (p0, p1) = (_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
        let (q0, q1) = (_mm512_shuffle_f32x4::<0x44>(cc, d), _mm512_shuffle_f32x4::<0xEE>(cc, d));
        let rows = [
            _mm512_shuffle_f32x4::<0x88>(p0, q0),
            _mm512_shuffle_f32x4::<0xDD>(p0, q0),
            _mm512_shuffle_f32x4::<0x88>(p1, q1),
            _mm512_shuffle_f32x4::<0xDD>(p1, q1),
        ];
        for (l, row) in rows.into_iter().enumerate() {
            let j = 4 * l + q;
            if j < a_rows {
                // SAFETY: the caller's: y's row j from `at`, its first `w_rows` elements.
                unsafe { _mm512_mask_storeu_ps(c.at(at + j * n), mask, row) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// The tile product of `weights`' values `wf` (widened to f32) against an f64 product, on
    /// ragged shapes: m and n off multiples of 16 (and of the 2 × 2 groups), a single group, k of
    /// one and of many steps. A is taken as `a_as` makes it; the sums may be off by `tolerance`
    /// of the size of the terms.
    fn check_tile_product(weights: Weights, store: fn(f32) -> [u8; 2], a_as: fn(f32) -> f64, tolerance: f64) {
        for (m, n, k) in [(1, 1, 32), (5, 17, 64), (16, 16, 96), (17, 33, 576), (40, 50, 160), (33, 7, 32)] {
            let a: Vec<f32> =
                (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.0517 * (1 + i / k % 3) as f32).collect();
            let w: Vec<u8> = (0..n * k).flat_map(|i| store(((i * 37 % 101) as f32 - 50.0) * 0.0131)).collect();
            let wf: Vec<f64> = w.as_chunks::<2>().0.iter().map(|b| widen(weights, *b)).collect();
            let mut y = vec![f32::NAN; m * n];
            product(weights, &a, &w, k, n, &mut y);
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|t| a_as(a[i * k + t]) * wf[j * k + t]);
                    let (exact, size) = terms.fold((0.0, 0.0), |(s, z), v| (s + v, z + v.abs()));
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= tolerance * (1.0 + size),
                        "{weights:?} m={m} n={n} k={k} [{i},{j}]: {got} vs {exact}"
                    );
                }
            }
        }
    }

    fn widen(weights: Weights, b: [u8; 2]) -> f64 {
        match weights {
            Weights::Bf16 => bf16::from_le_bytes(b).to_f64(),
            Weights::F16 => f16::from_le_bytes(b).to_f64(),
        }
    }

    #[test]
    fn the_bf16_tile_product_equals_the_bf16_rounded_product() {
        if !available() {
            eprintln!("no AMX-BF16 here: tile product not run");
            return;
        }
        let a_as = |v: f32| bf16::from_f32(v).to_f64();
        check_tile_product(Weights::Bf16, |v| bf16::from_f32(v).to_le_bytes(), a_as, 1e-6);
    }

    /// f16 weights against the f64 product with A as it is: the split leaves at most about 2⁻¹⁶
    /// of each term (bf16 alone: 2⁻⁹, so a term left out fails this).
    #[test]
    fn the_f16_tile_product_is_within_2_to_the_minus_16_of_the_exact_one() {
        if !available() {
            eprintln!("no AMX-BF16 here: tile product not run");
            return;
        }
        check_tile_product(Weights::F16, |v| f16::from_f32(v).to_le_bytes(), |v| v as f64, 2e-5);
    }

    /// Every finite f16 is its two bf16 parts' sum, exactly; rows past the given ones are zero.
    #[test]
    fn f16_weights_split_exactly_into_two_bf16() {
        if !available() {
            return;
        }
        let k = 32;
        let finite: Vec<u16> = (0..=u16::MAX).filter(|&b| f16::from_bits(b).is_finite()).collect();
        for rows in finite.chunks(TILE * k) {
            let bytes: Vec<u8> = rows.iter().flat_map(|b| b.to_le_bytes()).collect();
            let bytes = &bytes[..bytes.len() / (2 * k) * 2 * k];
            let mut out = vec![0xAAu8; 2 * TILE * 2 * k];
            split_group(Weights::F16, bytes, k, &mut out);
            let (high, low) = out.split_at(TILE * 2 * k);
            for (i, b) in bytes.as_chunks::<2>().0.iter().enumerate() {
                let parts = [&high[2 * i..], &low[2 * i..]].map(|p| bf16::from_le_bytes([p[0], p[1]]).to_f64());
                let v = f16::from_le_bytes(*b).to_f64();
                assert_eq!(parts[0] + parts[1], v, "{:#06x}: {parts:?}", u16::from_le_bytes(*b));
            }
            assert!(high[bytes.len()..].iter().chain(&low[bytes.len()..]).all(|&b| b == 0));
        }
    }

    #[test]
    fn a_rounds_to_bf16_as_half_does() {
        let specials = [0.0, -0.0, 1.0, -2.5, 1e-40, f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        let pattern = (0..100_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)));
        for v in specials.into_iter().chain(pattern) {
            assert_eq!(bf16_bits(v), bf16::from_f32(v).to_bits() as u32, "{v:e} ({:#x})", v.to_bits());
        }
    }

    #[test]
    fn a_packs_pairs_of_k_side_by_side_and_zeros_past_its_rows() {
        if !available() {
            return;
        }
        let (m, k) = (18, 64);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.37 + 0.1).collect();
        let mut out = Vec::new();
        pack_a(&a, k, 2, &mut out);
        assert_eq!(out.len(), 2 * 2 * k / 2);
        let lane = |g: usize, p: usize, r: usize| {
            let v = out[g * k / 2 + p][r];
            (bf16::from_bits(v as u16).to_f32(), bf16::from_bits((v >> 16) as u16).to_f32())
        };
        let expect = |i: usize, t: usize| bf16::from_f32(a[i * k + t]).to_f32();
        assert_eq!(lane(0, 5, 3), (expect(3, 10), expect(3, 11)));
        assert_eq!(lane(1, 31, 1), (expect(17, 62), expect(17, 63)));
        assert_eq!(lane(1, 7, 2), (0.0, 0.0));
        // The low parts, after the high ones: what rounding to bf16 left.
        let low = |i: usize, t: usize| bf16::from_f32(a[i * k + t] - expect(i, t)).to_f32();
        assert_eq!(lane(2, 5, 3), (low(3, 10), low(3, 11)));
        assert_eq!(lane(3, 31, 1), (low(17, 62), low(17, 63)));
        assert_eq!(lane(3, 7, 2), (0.0, 0.0));
    }
}
