//! The dense matrix-product core shared by MatMul, Gemm and Attention:
//! `C = alpha * A·B (+ C)` over strided A and B and a row-major C.
//!
//! Floats are computed in their accumulator type (f32 for f32/f16/bf16, f64 for f64). Large
//! products are cache-blocked BLIS-style: B is packed into `kc × NR` panels, A into `MR × kc`
//! panels (converting f16/bf16 on the fly), and an `MR × NR` register-tile micro-kernel runs
//! over them; on x86-64 with AVX2+FMA the same code is compiled a second time for those
//! features and chosen at run time. Row blocks of C run in parallel.

use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use rayon::prelude::*;

/// Accumulator types the micro-kernel computes in.
pub(crate) trait GAcc: AccFloat + Default + 'static {
    /// `a * b + c`, fused when compiled with FMA.
    fn fma(a: Self, b: Self, c: Self) -> Self;
}

impl GAcc for f32 {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl GAcc for f64 {
    #[inline(always)]
    fn fma(a: f64, b: f64, c: f64) -> f64 {
        a.mul_add(b, c)
    }
}

/// A strided read-only matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<T: Copy> Mat<'_, T> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
}

/// Products with fewer multiply-adds than this skip packing.
const SMALL: usize = 48 * 48 * 48;
/// Rows of A packed per block (a multiple of every MR).
const MC: usize = 72;
/// Depth of a packed block.
const KC: usize = 256;
/// Elements of packed B kept at once.
const B_PACK: usize = 256 * 1024;
/// Multiply-adds above which one product is split across threads.
const PAR_WORK: usize = 1 << 18;

/// `C[m×n] = alpha * A[m×k]·B[k×n] (+ C when accumulate)`; C is row-major with n columns.
/// Panics only if the slices are shorter than the dimensions say (callers check).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) where
    T::Acc: GAcc,
{
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|v| *v = T::from_acc(T::Acc::ZERO));
        }
        return;
    }
    let alpha = T::Acc::from_f64(alpha);
    let parallel = parallel && m * n * k >= PAR_WORK && rayon::current_num_threads() > 1;
    if m == 1 {
        gemv(n, k, alpha, a, b, c, accumulate, parallel);
    } else if m * n * k <= SMALL {
        small(m, n, k, alpha, a, b, c, accumulate);
    } else if std::mem::size_of::<T::Acc>() == 8 {
        blocked::<T, 6, 8>(m, n, k, alpha, a, b, c, accumulate, parallel);
    } else {
        blocked::<T, 6, 16>(m, n, k, alpha, a, b, c, accumulate, parallel);
    }
}

#[inline(always)]
fn put<T: Float>(dst: &mut T, v: T::Acc, accumulate: bool) {
    *dst = T::from_acc(if accumulate { v + dst.to_acc() } else { v });
}

/// Row-at-a-time product for small sizes: k-outer over contiguous rows of B.
#[allow(clippy::too_many_arguments)]
fn small<T: Float>(m: usize, n: usize, k: usize, alpha: T::Acc, a: Mat<T>, b: Mat<T>, c: &mut [T], accumulate: bool)
where
    T::Acc: GAcc,
{
    let mut acc = vec![T::Acc::ZERO; n];
    for (i, crow) in c.chunks_exact_mut(n).enumerate().take(m) {
        acc.iter_mut().for_each(|v| *v = T::Acc::ZERO);
        for kk in 0..k {
            let av = a.at(i, kk).to_acc();
            if b.cs == 1 {
                let row = &b.data[kk * b.rs..kk * b.rs + n];
                for (s, bv) in acc.iter_mut().zip(row) {
                    *s += av * bv.to_acc();
                }
            } else {
                for (j, s) in acc.iter_mut().enumerate() {
                    *s += av * b.at(kk, j).to_acc();
                }
            }
        }
        for (d, s) in crow.iter_mut().zip(&acc) {
            put(d, alpha * *s, accumulate);
        }
    }
}

/// One row of A times B: streams B once, in column chunks across threads, compiled for AVX2 where
/// the CPU has it. (Plain multiply-adds, not `mul_add`: the results must not depend on the CPU.)
#[allow(clippy::too_many_arguments)]
fn gemv<T: Float>(
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) where
    T::Acc: GAcc,
{
    let chunk = if parallel { n.div_ceil(rayon::current_num_threads() * 4).max(64) } else { n };
    let wide = has_fma();
    let body = |ci: usize, cs: &mut [T]| {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: the CPU supports AVX2 and FMA (checked by `has_fma`).
            unsafe { gemv_cols_avx2(k, alpha, a, b, ci * chunk, cs, accumulate) };
            return;
        }
        let _ = wide;
        gemv_cols(k, alpha, a, b, ci * chunk, cs, accumulate);
    };
    if parallel {
        c.par_chunks_mut(chunk).enumerate().for_each(|(ci, cs)| body(ci, cs));
    } else {
        body(0, c);
    }
}

/// [`gemv_cols`] compiled for AVX2 (8 floats per instruction instead of SSE2's 4). The same
/// arithmetic in the same order, so the same results bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_cols_avx2<T: Float>(
    k: usize,
    alpha: T::Acc,
    a: Mat<T>,
    b: Mat<T>,
    j0: usize,
    cs: &mut [T],
    accumulate: bool,
) where
    T::Acc: GAcc,
{
    gemv_cols(k, alpha, a, b, j0, cs, accumulate)
}

/// Columns `j0..j0 + cs.len()` of one row of A times B.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemv_cols<T: Float>(k: usize, alpha: T::Acc, a: Mat<T>, b: Mat<T>, j0: usize, cs: &mut [T], accumulate: bool)
where
    T::Acc: GAcc,
{
    let w = cs.len();
    if b.cs == 1 {
        let mut acc = vec![T::Acc::ZERO; w];
        for kk in 0..k {
            let av = a.at(0, kk).to_acc();
            let row = &b.data[kk * b.rs + j0..kk * b.rs + j0 + w];
            for (s, bv) in acc.iter_mut().zip(row) {
                *s += av * bv.to_acc();
            }
        }
        for (d, s) in cs.iter_mut().zip(acc) {
            put(d, alpha * s, accumulate);
        }
    } else {
        // Columns of B contiguous along k (a transposed weight): dot products.
        for (jj, d) in cs.iter_mut().enumerate() {
            let j = j0 + jj;
            let mut s = T::Acc::ZERO;
            if b.rs == 1 && a.cs == 1 {
                let col = &b.data[j * b.cs..j * b.cs + k];
                let arow = &a.data[..k];
                let mut lanes = [T::Acc::ZERO; 8];
                let (ca, cb) = (arow.chunks_exact(8), col.chunks_exact(8));
                let (ra, rb) = (ca.remainder(), cb.remainder());
                for (x, y) in ca.zip(cb) {
                    for l in 0..8 {
                        lanes[l] += x[l].to_acc() * y[l].to_acc();
                    }
                }
                for (x, y) in ra.iter().zip(rb) {
                    s += x.to_acc() * y.to_acc();
                }
                for l in lanes {
                    s += l;
                }
            } else {
                for kk in 0..k {
                    s += a.at(0, kk).to_acc() * b.at(kk, j).to_acc();
                }
            }
            put(d, alpha * s, accumulate);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn blocked<T: Float, const MR: usize, const NR: usize>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) where
    T::Acc: GAcc,
{
    // Low-precision outputs are written once: no partial sums rounded to f16 between k blocks.
    let exact_store = std::mem::size_of::<T>() == std::mem::size_of::<T::Acc>();
    let kc_max = if exact_store { KC.min(k) } else { k };
    let nc_max = ((B_PACK / kc_max).max(NR) / NR * NR).min(n.div_ceil(NR) * NR);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let mc = if threads > 1 { m.div_ceil(threads).div_ceil(MR) * MR } else { MC }.clamp(MR, MC);
    let mut bpack = vec![T::Acc::ZERO; kc_max * nc_max];
    let fma = has_fma();
    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        for pc in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - pc);
            pack_b::<T, NR>(b, pc, kc, jc, nc, &mut bpack);
            let keep = accumulate || pc > 0;
            let bp = &bpack[..];
            let task = |bi: usize, cblk: &mut [T]| {
                let rows = cblk.len() / n;
                let mut apack = vec![T::Acc::ZERO; rows.div_ceil(MR) * MR * kc];
                pack_a::<T, MR>(a, bi * mc, rows, pc, kc, &mut apack);
                let blk = Block { rows, nc, kc, ldc: n, jc, alpha, keep };
                macro_kernel::<T, MR, NR>(&blk, &apack, bp, cblk, fma);
            };
            if threads > 1 && m > mc {
                c.par_chunks_mut(mc * n).enumerate().for_each(|(bi, cb)| task(bi, cb));
            } else {
                for (bi, cb) in c.chunks_mut(mc * n).enumerate() {
                    task(bi, cb);
                }
            }
        }
    }
}

/// Packs B[pc..pc+kc, jc..jc+nc] into NR-wide panels, each kc rows of NR (zero padded).
fn pack_b<T: Float, const NR: usize>(b: Mat<T>, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [T::Acc]) {
    for p in 0..nc.div_ceil(NR) {
        let j0 = jc + p * NR;
        let w = NR.min(jc + nc - j0);
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            let r = pc + kk;
            if b.cs == 1 {
                let src = &b.data[r * b.rs + j0..r * b.rs + j0 + w];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s.to_acc();
                }
            } else {
                for (jj, d) in dst[..w].iter_mut().enumerate() {
                    *d = b.at(r, j0 + jj).to_acc();
                }
            }
            dst[w..].iter_mut().for_each(|d| *d = T::Acc::ZERO);
        }
    }
}

/// Packs A[i0..i0+rows, pc..pc+kc] into MR-tall panels, each kc columns of MR (zero padded).
fn pack_a<T: Float, const MR: usize>(a: Mat<T>, i0: usize, rows: usize, pc: usize, kc: usize, out: &mut [T::Acc]) {
    for q in 0..rows.div_ceil(MR) {
        let r0 = i0 + q * MR;
        let h = MR.min(i0 + rows - r0);
        let panel = &mut out[q * kc * MR..(q + 1) * kc * MR];
        if a.cs == 1 {
            for ii in 0..h {
                let src = &a.data[(r0 + ii) * a.rs + pc..(r0 + ii) * a.rs + pc + kc];
                for (kk, s) in src.iter().enumerate() {
                    panel[kk * MR + ii] = s.to_acc();
                }
            }
        } else {
            for kk in 0..kc {
                for ii in 0..h {
                    panel[kk * MR + ii] = a.at(r0 + ii, pc + kk).to_acc();
                }
            }
        }
        if h < MR {
            for col in panel.chunks_exact_mut(MR) {
                col[h..].iter_mut().for_each(|d| *d = T::Acc::ZERO);
            }
        }
    }
}

/// Geometry of one packed block of C.
struct Block<A> {
    rows: usize,
    nc: usize,
    kc: usize,
    ldc: usize,
    jc: usize,
    alpha: A,
    keep: bool,
}

fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn macro_kernel<T: Float, const MR: usize, const NR: usize>(
    blk: &Block<T::Acc>,
    ap: &[T::Acc],
    bp: &[T::Acc],
    c: &mut [T],
    fma: bool,
) where
    T::Acc: GAcc,
{
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: the CPU supports AVX2 and FMA (checked by `has_fma`).
        unsafe { macro_fma::<T, MR, NR>(blk, ap, bp, c) };
        return;
    }
    let _ = fma;
    macro_body::<T, MR, NR, false>(blk, ap, bp, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn macro_fma<T: Float, const MR: usize, const NR: usize>(
    blk: &Block<T::Acc>,
    ap: &[T::Acc],
    bp: &[T::Acc],
    c: &mut [T],
) where
    T::Acc: GAcc,
{
    macro_body::<T, MR, NR, true>(blk, ap, bp, c);
}

#[inline(always)]
fn macro_body<T: Float, const MR: usize, const NR: usize, const FMA: bool>(
    blk: &Block<T::Acc>,
    ap: &[T::Acc],
    bp: &[T::Acc],
    c: &mut [T],
) where
    T::Acc: GAcc,
{
    let kc = blk.kc;
    for p in 0..blk.nc.div_ceil(NR) {
        let bpanel = &bp[p * kc * NR..(p + 1) * kc * NR];
        let w = NR.min(blk.nc - p * NR);
        for q in 0..blk.rows.div_ceil(MR) {
            let apanel = &ap[q * kc * MR..(q + 1) * kc * MR];
            let h = MR.min(blk.rows - q * MR);
            let mut acc = [[T::Acc::ZERO; NR]; MR];
            for (av, bv) in apanel.chunks_exact(MR).zip(bpanel.chunks_exact(NR)) {
                let av: &[T::Acc; MR] = av.try_into().expect("MR-wide");
                let bv: &[T::Acc; NR] = bv.try_into().expect("NR-wide");
                for i in 0..MR {
                    for j in 0..NR {
                        acc[i][j] = if FMA { T::Acc::fma(av[i], bv[j], acc[i][j]) } else { acc[i][j] + av[i] * bv[j] };
                    }
                }
            }
            for (i, arow) in acc.iter().enumerate().take(h) {
                let off = (q * MR + i) * blk.ldc + blk.jc + p * NR;
                for (d, v) in c[off..off + w].iter_mut().zip(arow) {
                    put(d, blk.alpha * *v, blk.keep);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for kk in 0..k {
                    c[i * n + j] += a[i * k + kk] as f64 * b[kk * n + j] as f64;
                }
            }
        }
        c
    }

    fn check(m: usize, n: usize, k: usize, trans_b: bool, parallel: bool) {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.) * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.) * 0.1).collect();
        let want = reference(m, n, k, &a, &b);
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let bm = if trans_b { Mat { data: &bt[..], rs: 1, cs: k } } else { Mat { data: &b[..], rs: n, cs: 1 } };
        let mut c = vec![1f32; m * n];
        let am = Mat { data: &a[..], rs: k, cs: 1 };
        gemm(m, n, k, 1.0, am, bm, &mut c, false, parallel);
        for (i, (x, y)) in c.iter().zip(&want).enumerate() {
            assert!((*x as f64 - y).abs() < 1e-3 * (1. + y.abs()), "{m}x{n}x{k} [{i}]: {x} vs {y}");
        }
        // Accumulate with alpha: C = 1 + 0.5 * AB.
        let mut c = vec![1f32; m * n];
        gemm(m, n, k, 0.5, am, bm, &mut c, true, parallel);
        for (x, y) in c.iter().zip(&want) {
            assert!((*x as f64 - (1. + 0.5 * y)).abs() < 1e-3 * (1. + y.abs()));
        }
    }

    #[test]
    fn gemm_shapes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 300, 70),
            (3, 5, 7),
            (7, 17, 300),
            (100, 33, 65),
            (73, 129, 513),
            (150, 40, 20),
            (2, 1000, 0),
        ] {
            for tb in [false, true] {
                for par in [false, true] {
                    check(m, n, k, tb, par);
                }
            }
        }
    }

    #[test]
    fn gemm_f16_and_f64() {
        let (m, n, k) = (40, 50, 600);
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.) * 0.05).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 5) as f32 - 2.) * 0.05).collect();
        let want = reference(m, n, k, &a, &b);
        let ah: Vec<half::f16> = a.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bh: Vec<half::f16> = b.iter().map(|&v| half::f16::from_f32(v)).collect();
        let mut c = vec![half::f16::ZERO; m * n];
        gemm(
            m,
            n,
            k,
            1.0,
            Mat { data: &ah[..], rs: k, cs: 1 },
            Mat { data: &bh[..], rs: n, cs: 1 },
            &mut c,
            false,
            true,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x.to_f64() - y).abs() < 1e-2 * (1. + y.abs()));
        }
        let ad: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        let bd: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        let mut c = vec![0f64; m * n];
        gemm(
            m,
            n,
            k,
            1.0,
            Mat { data: &ad[..], rs: k, cs: 1 },
            Mat { data: &bd[..], rs: n, cs: 1 },
            &mut c,
            false,
            false,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-9 * (1. + y.abs()));
        }
    }

    /// Rough speed check: `cargo test -p kiln-runtime --release gemm_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gemm_speed() {
        for &(m, n, k) in &[(512, 512, 512), (1024, 1024, 1024), (1, 4096, 4096), (64, 4096, 1024)] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            let t = std::time::Instant::now();
            let reps = 3;
            for _ in 0..reps {
                gemm(
                    m,
                    n,
                    k,
                    1.0,
                    Mat { data: &a[..], rs: k, cs: 1 },
                    Mat { data: &b[..], rs: n, cs: 1 },
                    &mut c,
                    false,
                    true,
                );
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!("{m}x{n}x{k}: {:.2} ms, {:.1} GFLOP/s", s * 1e3, 2. * (m * n * k) as f64 / s / 1e9);
        }
    }
}
