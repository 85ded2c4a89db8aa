//! Many rows of A times q8 or q4 weights in integer arithmetic, on CPUs with AVX-512 VNNI
//! (prefill's products). Expanding the weights to f32 panels bound this at f32 FMA throughput,
//! 16 multiply-adds per instruction; `vpdpbusd` does 64 byte multiply-adds.
//!
//! A is quantized per block of [`BLOCK`] exactly as decode quantizes it ([`QuantizedA`]: one f32
//! scale per row and block, integers `|x| ≤` [`X_MAX`]), so prefill and decode multiply the same
//! values. Each `x` enters the dot as the two bytes of `u = x + 32768` (`0 < u < 65536`):
//! `vpdpbusd` multiplies unsigned bytes by signed ones, and A's bytes are the unsigned side, W's
//! the signed one, so W's stored bytes are used as they are. Per block, one 32-bit accumulator
//! starts at `-128 · Σw`, takes the high bytes' dots, is shifted left by 8 and takes the low
//! bytes': `256 · (Σ hi·w - 128 · Σw) + Σ lo·w = Σ u·w - 32768 · Σw = Σ x·w`, exact. Only that
//! block sum is converted to f32, scaled by both scales and added to the f32 result.
//!
//! The vectors run along A's rows: a 32-bit lane is one row of A, so W's four bytes per lane
//! are one broadcast read straight from the stored row (W needs no transposed copy), and A is
//! packed once per product into [`Slab`]s as it is quantized. Threads split W's rows (C's
//! columns); each copies a tile of [`NC`] rows of W into a [`WTile`] (with its blocks' sums and
//! scales, q4's levels unpacked to bytes) and runs it against all of A.

// Elsewhere only the fallback answer of `product` is reached; the packing stays compiled (and
// its tests built) on every target.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::quantized::BLOCK;
#[cfg(doc)]
use super::quantized_a::QuantizedA;
use super::quantized_a::{block_scale, round, X_MAX};
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of A in one vector of 32-bit lanes.
pub(crate) const LANES: usize = 16;
/// Groups of four k per block: the dots per block for each byte of `u`.
pub(crate) const QUADS: usize = BLOCK / 4;
/// Columns of C (rows of W) per tile: with [`RG`] row groups, 12 integer and 12 f32 accumulators
/// stay in registers beside two vectors of A and a broadcast of W.
pub(crate) const NC: usize = 6;
/// Groups of [`LANES`] rows of A per tile.
const RG: usize = 2;

/// One block of k of [`LANES`] rows of A, as the kernel reads it.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Slab {
    /// Vector `t`'s 32-bit lane `r` holds the high bytes of `u` of elements `4t..4t + 4` of row `r`.
    hi: [[u8; 4 * LANES]; QUADS],
    /// The low bytes, laid out as `hi`.
    lo: [[u8; 4 * LANES]; QUADS],
    /// Each row's scale (zero for rows past A's end; NaN for a block holding a NaN or infinity).
    scale: [f32; LANES],
    /// Each row's `Σ x` over the block (exact in f32), for q4's minimum.
    sums: [f32; LANES],
}

const EMPTY: Slab =
    Slab { hi: [[128; 4 * LANES]; QUADS], lo: [[0; 4 * LANES]; QUADS], scale: [0.0; LANES], sums: [0.0; LANES] };

impl Slab {
    /// Quantizes row `r`'s block (the same `x` and scale as [`QuantizedA`]'s).
    fn set_row(&mut self, r: usize, block: &[f32; BLOCK]) {
        let Some((scale, inv)) = block_scale(block) else {
            self.clear_row(r);
            self.scale[r] = f32::NAN;
            return;
        };
        // Whole arrays per step, so that each step vectorizes.
        let xs: [i32; BLOCK] = std::array::from_fn(|j| {
            let x = round(block[j] * inv).clamp(-X_MAX as f32, X_MAX as f32);
            // SAFETY: x is a finite integer (the block is not poisoned) with |x| ≤ X_MAX, in
            // range of i32.
            unsafe { x.to_int_unchecked::<i32>() }
        });
        let hi: [u8; BLOCK] = std::array::from_fn(|j| ((xs[j] + 32768) >> 8) as u8);
        let lo: [u8; BLOCK] = std::array::from_fn(|j| xs[j] as u8);
        for t in 0..QUADS {
            self.hi[t][4 * r..4 * r + 4].copy_from_slice(&hi[4 * t..4 * t + 4]);
            self.lo[t][4 * r..4 * r + 4].copy_from_slice(&lo[4 * t..4 * t + 4]);
        }
        self.scale[r] = scale;
        self.sums[r] = xs.iter().sum::<i32>() as f32;
    }

    /// Row `r` as zeros (`u = 32768`) with scale zero.
    fn clear_row(&mut self, r: usize) {
        for t in 0..QUADS {
            self.hi[t][4 * r..4 * r + 4].fill(128);
            self.lo[t][4 * r..4 * r + 4].fill(0);
        }
        self.scale[r] = 0.0;
        self.sums[r] = 0.0;
    }
}

/// [`NC`] rows of W as the kernel reads them, block by block. Rows past W's end are zeros.
pub(crate) struct WTile {
    /// Block `b` of row `c`'s weights (signed bytes, in four-byte groups) at
    /// `(2b + half) * NC + c`, the same for `half` 0 and 1: the high bytes' pass reads one copy
    /// and the low bytes' the other. From a single copy the compiler kept all 48 broadcasts of a
    /// block in registers from one pass to the next, and spilled them.
    pub quads: Vec<[u8; BLOCK]>,
    /// `-128 · Σw` of block `b` of row `c` at `b * NC + c`: the accumulator's start.
    pub start: Vec<i32>,
    /// The weights' scale per block and row, indexed as `start`.
    pub scale: Vec<f32>,
    /// The weights' offset per block and row (q4's minimum; unused for q8), indexed as `start`.
    pub min: Vec<f32>,
}

impl WTile {
    /// Sizes the tile for `blocks` blocks; rows `width..` zero (the rest are about to be filled).
    fn reset(&mut self, blocks: usize, width: usize) {
        self.quads.resize(blocks * 2 * NC, [0; BLOCK]);
        self.start.resize(blocks * NC, 0);
        self.scale.resize(blocks * NC, 0.0);
        self.min.resize(blocks * NC, 0.0);
        for c in width..NC {
            for b in 0..blocks {
                self.set_block(c, b, &[0; BLOCK], 0.0, 0.0);
            }
        }
    }

    /// Sets block `b` of row `c` from its weights (signed bytes), their scale and offset.
    #[inline(always)]
    pub fn set_block(&mut self, c: usize, b: usize, w: &[u8; BLOCK], scale: f32, min: f32) {
        self.quads[2 * b * NC + c] = *w;
        self.quads[(2 * b + 1) * NC + c] = *w;
        // Σ (w + 128) over unsigned bytes, which compilers reduce with `psadbw`.
        let offset: u32 = w.iter().map(|&v| (v ^ 0x80) as u32).sum();
        self.start[b * NC + c] = -128 * (offset as i32 - 128 * BLOCK as i32);
        self.scale[b * NC + c] = scale;
        self.min[b * NC + c] = min;
    }
}

/// A weight format the integer product takes.
pub(crate) trait IntWeights {
    /// Whether weights are `q · scale + min` (else `q · scale`).
    const MIN: bool;
    /// Copies stored row `row` (of `blocks` blocks) into row `c` of `tile`.
    fn fill(row: &[u8], blocks: usize, tile: &mut WTile, c: usize);
}

/// Whether this CPU runs the integer product.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    /// A packed, kept per calling thread: prefill runs hundreds of products, and a fresh
    /// allocation of this size is an mmap and its page faults each time.
    static PACKED: RefCell<Vec<Slab>> = const { RefCell::new(Vec::new()) };
    /// Each worker's tile of W.
    static TILE: RefCell<WTile> = const { RefCell::new(WTile { quads: Vec::new(), start: Vec::new(), scale: Vec::new(), min: Vec::new() }) };
}

/// C shared by the column tasks, which write disjoint columns of it.
#[derive(Clone, Copy)]
pub(super) struct SharedC(pub(super) *mut f32);
// SAFETY: tasks write disjoint elements (each its own columns) and finish before `product`
// returns.
unsafe impl Send for SharedC {}
// SAFETY: as above: no element is written by two tasks or read while written.
unsafe impl Sync for SharedC {}

impl SharedC {
    /// Element `i` (a method, so closures capture the whole wrapper and not its pointer).
    pub(super) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `y[m×n] = A[m×k] · Wᵀ` with W's `n` stored rows in `w` (`row_bytes` each), or `false` (and
/// `y` untouched) when the CPU lacks AVX-512 VNNI.
pub(crate) fn product<F: IntWeights>(a: &[f32], w: &[u8], k: usize, n: usize, row_bytes: usize, y: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if available() {
        super::kept::with_kept(&PACKED, |packed| run::<F>(a, w, k, n, row_bytes, y, packed));
        return true;
    }
    let _ = (a, w, k, n, row_bytes, y);
    false
}

#[cfg(target_arch = "x86_64")]
fn run<F: IntWeights>(
    a: &[f32],
    w: &[u8],
    k: usize,
    n: usize,
    row_bytes: usize,
    y: &mut [f32],
    packed: &mut Vec<Slab>,
) {
    let m = a.len() / k;
    let blocks = k / BLOCK;
    assert!(k.is_multiple_of(BLOCK) && w.len() >= n * row_bytes && y.len() >= m * n, "product shapes");
    let groups = m.div_ceil(LANES);
    packed.clear();
    packed.resize(groups * blocks, EMPTY);
    packed.par_chunks_mut(blocks).enumerate().for_each(|(g, slabs)| {
        for r in 0..LANES {
            let i = g * LANES + r;
            for (b, slab) in slabs.iter_mut().enumerate() {
                if i < m {
                    slab.set_row(r, a[i * k + b * BLOCK..][..BLOCK].try_into().expect("a block"));
                } else {
                    slab.clear_row(r);
                }
            }
        }
    });
    let packed = &packed[..];
    let tiles = n.div_ceil(NC);
    let tasks = (rayon::current_num_threads() * 4).min(tiles).max(1);
    let per = tiles.div_ceil(tasks);
    let c = SharedC(y.as_mut_ptr());
    (0..tiles.div_ceil(per)).into_par_iter().for_each(|task| {
        TILE.with_borrow_mut(|tile| {
            for t in task * per..((task + 1) * per).min(tiles) {
                let j0 = t * NC;
                let width = NC.min(n - j0);
                tile.reset(blocks, width);
                for cc in 0..width {
                    F::fill(&w[(j0 + cc) * row_bytes..(j0 + cc + 1) * row_bytes], blocks, tile, cc);
                }
                // The next tile's rows, fetched while this one multiplies: in a profile, filling
                // a tile stalled on its first reads of each line of W.
                let next = &w[((j0 + NC) * row_bytes).min(w.len())..((j0 + 2 * NC) * row_bytes).min(w.len())];
                for line in next.chunks(64) {
                    prefetch(line.as_ptr());
                }
                let mut g0 = 0;
                while g0 < groups {
                    let rg = RG.min(groups - g0);
                    let mut out = [[[0f32; LANES]; NC]; RG];
                    let slabs = &packed[g0 * blocks..(g0 + rg) * blocks];
                    // SAFETY: `available` found AVX-512F, BW and VNNI.
                    unsafe {
                        match (rg, F::MIN) {
                            (2, false) => avx512::tile::<2, false>(slabs, blocks, tile, &mut out),
                            (2, true) => avx512::tile::<2, true>(slabs, blocks, tile, &mut out),
                            (_, false) => avx512::tile::<1, false>(slabs, blocks, tile, &mut out),
                            (_, true) => avx512::tile::<1, true>(slabs, blocks, tile, &mut out),
                        }
                    }
                    for (g, cols) in out.iter().enumerate().take(rg) {
                        for r in 0..LANES.min(m.saturating_sub((g0 + g) * LANES)) {
                            let i = (g0 + g) * LANES + r;
                            for (cc, col) in cols.iter().enumerate().take(width) {
                                // SAFETY: i < m and j0 + cc < n: inside y (asserted above), in
                                // this task's columns, which no other task writes.
                                unsafe { *c.at(i * n + j0 + cc) = col[r] };
                            }
                        }
                    }
                    g0 += rg;
                }
            }
        })
    });
}

/// Asks for the cache line at `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: a prefetch only hints the cache; it neither reads memory nor faults.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Slab, WTile, LANES, NC, QUADS};
    use std::arch::x86_64::*;

    /// `R` row groups of A (`slabs`: group `g`'s block `b` at `g * blocks + b`) times the tile's
    /// [`NC`] rows of W: `out[g][c][r]` is row `16g + r` of A times row `c` of the tile.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, AVX-512BW and AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    // Accumulators indexed by row group and column together, for every t.
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn tile<const R: usize, const MIN: bool>(
        slabs: &[Slab],
        blocks: usize,
        w: &WTile,
        out: &mut [[[f32; LANES]; NC]; 2],
    ) {
        assert!(R <= 2 && slabs.len() >= R * blocks, "A slabs");
        assert!(w.quads.len() >= blocks * 2 * NC && w.start.len() >= blocks * NC, "W tile");
        assert!(w.scale.len() >= blocks * NC && w.min.len() >= blocks * NC, "W tile");
        let (sp, qp) = (slabs.as_ptr(), w.quads.as_ptr() as *const i32);
        let (start, scale, min) = (w.start.as_ptr(), w.scale.as_ptr(), w.min.as_ptr());
        let mut facc = [[_mm512_setzero_ps(); NC]; R];
        for b in 0..blocks {
            let mut acc = [[_mm512_setzero_si512(); NC]; R];
            for c in 0..NC {
                // SAFETY (every read of the tile's vectors): b < blocks and c < NC (asserted above).
                let start = _mm512_set1_epi32(unsafe { *start.add(b * NC + c) });
                for row in acc.iter_mut() {
                    row[c] = start;
                }
            }
            // SAFETY (the slab and quad reads): g < R and b < blocks lie in `slabs`; b < blocks,
            // t < QUADS and c < NC in `quads` (asserted above).
            for t in 0..QUADS {
                let av: [__m512i; R] = std::array::from_fn(|g| unsafe {
                    _mm512_load_si512((*sp.add(g * blocks + b)).hi[t].as_ptr() as *const _)
                });
                for c in 0..NC {
                    let wv = _mm512_set1_epi32(unsafe { *qp.add((2 * b * NC + c) * QUADS + t) });
                    for g in 0..R {
                        acc[g][c] = _mm512_dpbusd_epi32(acc[g][c], av[g], wv);
                    }
                }
            }
            for row in acc.iter_mut() {
                for v in row.iter_mut() {
                    *v = _mm512_slli_epi32::<8>(*v);
                }
            }
            for t in 0..QUADS {
                let av: [__m512i; R] = std::array::from_fn(|g| unsafe {
                    _mm512_load_si512((*sp.add(g * blocks + b)).lo[t].as_ptr() as *const _)
                });
                for c in 0..NC {
                    let wv = _mm512_set1_epi32(unsafe { *qp.add(((2 * b + 1) * NC + c) * QUADS + t) });
                    for g in 0..R {
                        acc[g][c] = _mm512_dpbusd_epi32(acc[g][c], av[g], wv);
                    }
                }
            }
            for g in 0..R {
                // SAFETY: as above.
                let slab = unsafe { &*sp.add(g * blocks + b) };
                let sa = _mm512_loadu_ps(slab.scale.as_ptr());
                let sums = _mm512_loadu_ps(slab.sums.as_ptr());
                for c in 0..NC {
                    let d = _mm512_cvtepi32_ps(acc[g][c]);
                    let sw = _mm512_set1_ps(unsafe { *scale.add(b * NC + c) });
                    facc[g][c] = if MIN {
                        let t = _mm512_fmadd_ps(
                            sums,
                            _mm512_set1_ps(unsafe { *min.add(b * NC + c) }),
                            _mm512_mul_ps(d, sw),
                        );
                        _mm512_fmadd_ps(t, sa, facc[g][c])
                    } else {
                        _mm512_fmadd_ps(d, _mm512_mul_ps(sa, sw), facc[g][c])
                    };
                }
            }
        }
        for (o, f) in out.iter_mut().zip(&facc) {
            for (col, v) in o.iter_mut().zip(f) {
                // SAFETY: `col` holds 16 floats.
                unsafe { _mm512_storeu_ps(col.as_mut_ptr(), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::quantized::{test_weights, BlockFormat};
    use crate::ops::matmul::quantized_a::QuantizedA;
    use crate::ops::matmul::{q4::Q4, q8::Q8};

    /// Test activations: mixed signs and magnitudes, a different range per row.
    fn activations(m: usize, k: usize) -> Vec<f32> {
        (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05 * (1 + (i / k) % 5) as f32).collect()
    }

    /// W's stored rows expanded to f32.
    fn dequantized<F: BlockFormat>(q: &[u8], n: usize, k: usize) -> Vec<f32> {
        let mut wd = vec![0f32; n * k];
        for (r, dst) in wd.chunks_exact_mut(k).enumerate() {
            F::dequantize_row(&q[r * F::row_bytes(k)..(r + 1) * F::row_bytes(k)], dst);
        }
        wd
    }

    /// The integer product, or `None` on a CPU without it.
    fn int_product<F: BlockFormat + IntWeights>(a: &[f32], q: &[u8], k: usize, n: usize) -> Option<Vec<f32>> {
        let mut y = vec![f32::NAN; a.len() / k * n];
        product::<F>(a, q, k, n, F::row_bytes(k), &mut y).then_some(y)
    }

    /// Against f64 sums over the values both sides multiply (A as [`QuantizedA`] rounds it, W
    /// dequantized), on ragged shapes: rows off the 16-row groups and the two-group tiles,
    /// columns off the tile width, k of one block and more.
    fn equals_the_f64_product_of_the_quantized_operands<F: BlockFormat + IntWeights>() {
        for (m, k, n) in
            [(5, 32, 7), (17, 64, 13), (33, 96, 70), (40, 576, 37), (16, 32, 6), (47, 576, 1), (64, 96, 12)]
        {
            let (_, q) = test_weights::<F>(n, k);
            let a = activations(m, k);
            let Some(got) = int_product::<F>(&a, &q, k, n) else {
                eprintln!("no AVX-512 VNNI: the integer product is not tested");
                return;
            };
            let wd = dequantized::<F>(&q, n, k);
            for i in 0..m {
                let aq = QuantizedA::new(&a[i * k..(i + 1) * k]).dequantized();
                for j in 0..n {
                    let terms = aq.iter().zip(&wd[j * k..(j + 1) * k]).map(|(&x, &w)| x as f64 * w as f64);
                    let (e, mag) = terms.fold((0f64, 0f64), |(s, m), t| (s + t, m + t.abs()));
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - e).abs() <= 1e-6 * mag + 1e-30,
                        "{} m={m} k={k} n={n} ({i}, {j}): {g} vs {e}",
                        F::NAME
                    );
                }
            }
        }
    }

    #[test]
    fn q8_equals_the_f64_product_of_the_quantized_operands() {
        equals_the_f64_product_of_the_quantized_operands::<Q8>();
    }

    #[test]
    fn q4_equals_the_f64_product_of_the_quantized_operands() {
        equals_the_f64_product_of_the_quantized_operands::<Q4>();
    }

    /// Within A's quantization error of the f32 product over dequantized weights (the path CPUs
    /// without VNNI take): half a step of each block's scale per element.
    fn stays_within_a_s_rounding_of_the_f32_product<F: BlockFormat + IntWeights>() {
        let (m, k, n) = (37, 576, 45);
        let (_, q) = test_weights::<F>(n, k);
        let a = activations(m, k);
        let Some(got) = int_product::<F>(&a, &q, k, n) else { return };
        let wd = dequantized::<F>(&q, n, k);
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            let steps: Vec<f64> = QuantizedA::new(row).0.iter().map(|b| b.scale as f64).collect();
            for j in 0..n {
                let w = &wd[j * k..(j + 1) * k];
                let exact: f64 = row.iter().zip(w).map(|(&x, &w)| x as f64 * w as f64).sum();
                let bound: f64 = w.iter().enumerate().map(|(t, &w)| 0.5 * steps[t / BLOCK] * (w as f64).abs()).sum();
                let g = got[i * n + j] as f64;
                assert!(
                    (g - exact).abs() <= bound * 1.001 + 1e-6,
                    "{} ({i}, {j}): {g} vs {exact} (bound {bound})",
                    F::NAME
                );
            }
        }
    }

    #[test]
    fn q8_stays_within_a_s_rounding_of_the_f32_product() {
        stays_within_a_s_rounding_of_the_f32_product::<Q8>();
    }

    #[test]
    fn q4_stays_within_a_s_rounding_of_the_f32_product() {
        stays_within_a_s_rounding_of_the_f32_product::<Q4>();
    }

    /// A's integers are [`QuantizedA`]'s, element for element, and its bytes are `x + 32768`'s.
    #[test]
    fn a_quantizes_as_decode_does() {
        let k = 96;
        let a = activations(3, k);
        for (i, row) in a.chunks_exact(k).enumerate() {
            let expect = QuantizedA::new(row);
            for (b, block) in row.as_chunks::<BLOCK>().0.iter().enumerate() {
                let mut slab = EMPTY;
                slab.set_row(i, block);
                assert_eq!(slab.scale[i], expect.0[b].scale);
                let mut sum = 0;
                for j in 0..BLOCK {
                    let (t, e) = (j / 4, 4 * i + j % 4);
                    let x = 256 * slab.hi[t][e] as i32 + slab.lo[t][e] as i32 - 32768;
                    assert_eq!(x, expect.0[b].x[j] as i32, "row {i} block {b} [{j}]");
                    sum += x;
                }
                assert_eq!(slab.sums[i], sum as f32);
            }
        }
    }

    /// Stored q8 rows need not come from `quantize_row`: a byte of -128 (which it never writes)
    /// multiplies exactly too.
    #[test]
    fn every_q8_byte_value_multiplies_exactly() {
        let (m, k, n) = (19, 64, 9);
        let q = crate::ops::matmul::q8::rows_of_every_byte(n, k);
        let a = activations(m, k);
        let Some(got) = int_product::<Q8>(&a, &q, k, n) else { return };
        let wd = dequantized::<Q8>(&q, n, k);
        for i in 0..m {
            let aq = QuantizedA::new(&a[i * k..(i + 1) * k]).dequantized();
            for j in 0..n {
                let terms = aq.iter().zip(&wd[j * k..(j + 1) * k]).map(|(&x, &w)| x as f64 * w as f64);
                let (e, mag) = terms.fold((0f64, 0f64), |(s, m), t| (s + t, m + t.abs()));
                assert!((got[i * n + j] as f64 - e).abs() <= 1e-6 * mag, "({i}, {j}): {} vs {e}", got[i * n + j]);
            }
        }
    }

    /// A NaN or infinity in a row of A makes that row's outputs NaN and leaves the others.
    #[test]
    fn non_finite_activations_poison_only_their_row() {
        let (m, k, n) = (20, 64, 8);
        let (_, q) = test_weights::<Q8>(n, k);
        let mut a = activations(m, k);
        a[3 * k + 40] = f32::INFINITY;
        a[17 * k + 2] = f32::NAN;
        let Some(got) = int_product::<Q8>(&a, &q, k, n) else { return };
        for (i, row) in got.chunks_exact(n).enumerate() {
            assert!(row.iter().all(|v| v.is_nan() == (i == 3 || i == 17)), "row {i}: {row:?}");
        }
    }
}
