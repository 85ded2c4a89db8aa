//! The dense matrix-product core shared by MatMul, Gemm and Attention:
//! `C = alpha * A·B (+ C)` over strided A and B and a row-major C.
//!
//! Floats are computed in their accumulator type (f32 for f32/f16/bf16, f64 for f64). Large
//! products are cache-blocked BLIS-style: B is packed into `kc × NR` panels, A into `MR × kc`
//! panels (converting f16/bf16 on the fly), and an `MR × NR` register-tile micro-kernel runs
//! over them. On x86-64 the micro-kernel is chosen at run time: 12 × 32 tiles in AVX-512
//! intrinsics, else the portable 6 × 16 body compiled a second time for AVX2+FMA. Threads take
//! column slabs of C (and row blocks when there are few columns), each packing its own part of
//! B: a serial B packing before the parallel part cost as much as the products at prefill sizes.

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

/// `s` as f32 when `T` is f32: the AVX-512 kernel, the transposing packer and fused
/// attention's few-query products are f32-only.
pub(crate) fn f32s<T: 'static>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32, so the slice is one of f32.
    is_f32::<T>().then(|| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
}

/// [`f32s`] for a mutable slice.
pub(crate) fn f32s_mut<T: 'static>(s: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: T is f32, so the slice is one of f32.
    is_f32::<T>().then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) })
}

fn is_f32<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
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
/// Rows of A packed per block (a multiple of every MR: 6 and 12).
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
    } else {
        blocked_with(Micro::detect(), m, n, k, alpha, a, &b, c, accumulate, parallel);
    }
}

/// `C[m×n] = A[m×k]·B[k×n]` in f32 with B from `b`, packed by the blocked product whatever the
/// size (the caller picks this path for enough rows of A to amortize the packing).
pub(crate) fn gemm_from<S: BSource<f32>>(m: usize, n: usize, k: usize, a: &[f32], b: &S, c: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    let parallel = m * n * k >= PAR_WORK && rayon::current_num_threads() > 1;
    blocked_with(Micro::detect(), m, n, k, 1.0, Mat { data: a, rs: k, cs: 1 }, b, c, false, parallel);
}

/// The packed product with micro-kernel `micro` (tests run each one the CPU has).
#[allow(clippy::too_many_arguments)]
fn blocked_with<T: Float, S: BSource<T::Acc>>(
    micro: Micro,
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: Mat<T>,
    b: &S,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) where
    T::Acc: GAcc,
{
    match (std::mem::size_of::<T::Acc>(), micro) {
        (8, micro) => blocked::<T, S, 6, 8>(m, n, k, alpha, a, b, c, accumulate, parallel, micro),
        (_, Micro::Avx512) => blocked::<T, S, 12, 32>(m, n, k, alpha, a, b, c, accumulate, parallel, Micro::Avx512),
        (_, micro) => blocked::<T, S, 6, 16>(m, n, k, alpha, a, b, c, accumulate, parallel, micro),
    }
}

#[inline(always)]
fn put<T: Float>(dst: &mut T, v: T::Acc, accumulate: bool) {
    *dst = T::from_acc(if accumulate { v + dst.to_acc() } else { v });
}

/// Row-at-a-time product for small sizes (decode's attention over a group of heads, among
/// others): each row is [`gemv`]'s product, dot products when B's columns are contiguous (a
/// transposed B such as a key cache, which read row by row would be a strided gather per element:
/// 14% of SmolLM2's q8 decode).
#[allow(clippy::too_many_arguments)]
fn small<T: Float>(m: usize, n: usize, k: usize, alpha: T::Acc, a: Mat<T>, b: Mat<T>, c: &mut [T], accumulate: bool)
where
    T::Acc: GAcc,
{
    for (i, crow) in c.chunks_exact_mut(n).enumerate().take(m) {
        let row = Mat { data: &a.data[i * a.rs..], rs: a.rs, cs: a.cs };
        gemv(n, k, alpha, row, b, crow, accumulate, false);
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
        if b.rs == 1 && a.cs == 1 {
            let arow = &a.data[..k];
            let col = |j: usize| &b.data[j * b.cs..j * b.cs + k];
            // One column after another: the weight's rows are read as one sequential stream. (Four
            // columns interleaved hid the add latency but measured 56 against 67 tokens/s on
            // SmolLM2 f32 decode: four streams defeat the hardware prefetcher.)
            for (jj, d) in cs.iter_mut().enumerate() {
                put(d, alpha * dot1(arow, col(j0 + jj)), accumulate);
            }
        } else {
            for (jj, d) in cs.iter_mut().enumerate() {
                let mut s = T::Acc::ZERO;
                for kk in 0..k {
                    s += a.at(0, kk).to_acc() * b.at(kk, j0 + jj).to_acc();
                }
                put(d, alpha * s, accumulate);
            }
        }
    }
}

/// One dot product: eight lanes over whole chunks of 8, the tail, then the lanes in order.
#[inline(always)]
fn dot1<T: Float>(a: &[T], c: &[T]) -> T::Acc
where
    T::Acc: GAcc,
{
    let mut lanes = [T::Acc::ZERO; 8];
    let (ca, cc) = (a.chunks_exact(8), c.chunks_exact(8));
    let (ra, rc) = (ca.remainder(), cc.remainder());
    for (x, y) in ca.zip(cc) {
        for l in 0..8 {
            lanes[l] += x[l].to_acc() * y[l].to_acc();
        }
    }
    let mut s = T::Acc::ZERO;
    for (x, y) in ra.iter().zip(rc) {
        s += x.to_acc() * y.to_acc();
    }
    for l in lanes {
        s += l;
    }
    s
}

/// C's rows and columns handed to one thread: it packs its own B panels and A blocks, so no
/// thread waits for another's packing.
#[derive(Clone, Copy)]
struct Task {
    rows: (usize, usize),
    cols: (usize, usize),
}

/// Splits C into tasks for `threads` threads: column slabs first (each thread then packs only
/// the weights it multiplies), row blocks too when there are fewer column panels than threads.
/// Slabs are at most `slab_max` columns where the panels allow, their count is a multiple of
/// `threads`, and panels are dealt out evenly: three equal slabs on two threads had one thread
/// idle for a third of GPT-2's widest products.
fn tasks(m: usize, n: usize, threads: usize, mr: usize, nr: usize, slab_max: usize) -> Vec<Task> {
    let threads = threads.max(1);
    let panels = n.div_ceil(nr);
    let col_tasks = (n.div_ceil(slab_max).div_ceil(threads) * threads).min(panels).max(1);
    let row_blocks = m.div_ceil(mr);
    let row_tasks = if col_tasks < threads { threads.div_ceil(col_tasks).min(row_blocks).max(1) } else { 1 };
    // The `i`th of `parts` near-equal shares of `total` units of `unit` elements, cut at `end`.
    let share = |total: usize, parts: usize, i: usize, unit: usize, end: usize| {
        ((i * total / parts * unit).min(end), ((i + 1) * total / parts * unit).min(end))
    };
    let mut out = Vec::with_capacity(row_tasks * col_tasks);
    for r in 0..row_tasks {
        for c in 0..col_tasks {
            let task = Task { rows: share(row_blocks, row_tasks, r, mr, m), cols: share(panels, col_tasks, c, nr, n) };
            if task.rows.0 < task.rows.1 && task.cols.0 < task.cols.1 {
                out.push(task);
            }
        }
    }
    out
}

/// C shared by the tasks, which write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct SharedC<T>(*mut T);
// SAFETY: tasks write disjoint elements (`tasks` partitions C) and finish before `blocked` returns.
unsafe impl<T: Send> Send for SharedC<T> {}
// SAFETY: as above: no element is written by two tasks or read while written.
unsafe impl<T: Send> Sync for SharedC<T> {}

#[allow(clippy::too_many_arguments)]
fn blocked<T: Float, S: BSource<T::Acc>, const MR: usize, const NR: usize>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: Mat<T>,
    b: &S,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
    micro: Micro,
) where
    T::Acc: GAcc,
{
    // Low-precision outputs are written once: no partial sums rounded to f16 between k blocks.
    let exact_store = std::mem::size_of::<T>() == std::mem::size_of::<T::Acc>();
    let kc_max = if exact_store { KC.min(k) } else { k };
    let nc_max = ((B_PACK / kc_max).max(NR) / NR * NR).min(n.div_ceil(NR) * NR);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let shared = SharedC(c.as_mut_ptr());
    let avx512 = micro == Micro::Avx512 && MR == 12 && NR == 32 && is_f32::<T::Acc>();
    // f32 A in rows is read in place by the AVX-512 kernel: no packing of A at all.
    let a_rows = f32s(a.data).filter(|_| avx512 && a.cs == 1);
    // Nor of B when it is stored as that kernel's panels.
    let b_stored = avx512 && b.prepacked(0, 0).is_some();
    let run = |t: Task| {
        let (i0, i1) = t.rows;
        let b_len = if b_stored { 0 } else { kc_max * nc_max.min((t.cols.1 - t.cols.0).div_ceil(NR) * NR) };
        let a_len = if a_rows.is_some() { 0 } else { MC * kc_max };
        let (mut b_buf, mut a_buf) = (scratch::take(&scratch::B, b_len), scratch::take(&scratch::A, a_len));
        let (bpack, apack): (&mut [T::Acc], &mut [T::Acc]) = (b_buf.get(), a_buf.get());
        for jc in (t.cols.0..t.cols.1).step_by(nc_max) {
            let nc = nc_max.min(t.cols.1 - jc);
            for pc in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - pc);
                let stored = if b_stored { b.prepacked(pc, jc) } else { None };
                if stored.is_none() {
                    b.pack::<NR>(pc, kc, jc, nc, bpack);
                }
                for ic in (i0..i1).step_by(MC) {
                    let rows = MC.min(i1 - ic);
                    let blk = Block { rows, nc, kc, ldc: n, row0: ic, jc, alpha, keep: accumulate || pc > 0 };
                    #[cfg(target_arch = "x86_64")]
                    if avx512 {
                        let (bp, b_step) = stored.or(f32s(bpack).map(|p| (p, kc * 32))).expect("f32 panels");
                        let a_in = match a_rows {
                            Some(data) => avx512::AIn::Rows { data, lda: a.rs, pc },
                            None => {
                                pack_a::<T, MR>(a, ic, rows, pc, kc, apack);
                                avx512::AIn::Packed(f32s(apack).expect("f32 accumulators"))
                            }
                        };
                        // SAFETY: AVX-512F detected (`Micro::Avx512`); this task owns rows
                        // i0..i1 and columns jc..jc + nc of C (`tasks`).
                        unsafe { avx512::macro_12x32::<T>(&blk, a_in, bp, b_step, shared) };
                        continue;
                    }
                    pack_a::<T, MR>(a, ic, rows, pc, kc, apack);
                    // SAFETY: this task owns rows i0..i1 and columns jc..jc + nc of C (`tasks`).
                    unsafe { macro_kernel::<T, MR, NR>(&blk, apack, bpack, shared, micro) };
                }
            }
        }
    };
    let plan = tasks(m, n, threads, MR, NR, nc_max);
    if plan.len() > 1 {
        plan.into_par_iter().for_each(run);
    } else {
        plan.into_iter().for_each(run);
    }
}

/// Packing buffers kept per thread: prefill runs hundreds of products, and a fresh zeroed
/// buffer of B's panels (about 300 KB) per product and thread was a memset each time.
mod scratch {
    use std::cell::RefCell;

    thread_local! {
        pub(super) static B: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
        pub(super) static A: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of `len` accumulators, eight bytes each (f32 or f64): taken from this thread's
    /// slot `key` (a new one if that is in use) and handed back when dropped.
    pub(super) fn take(key: &'static std::thread::LocalKey<RefCell<Vec<u64>>>, len: usize) -> Buf {
        let mut data = key.with(|cell| cell.try_borrow_mut().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default());
        if data.len() < len {
            data.resize(len, 0);
        }
        Buf { data, key: Some(key), len }
    }

    /// A taken buffer.
    pub(super) struct Buf {
        data: Vec<u64>,
        key: Option<&'static std::thread::LocalKey<RefCell<Vec<u64>>>>,
        len: usize,
    }

    impl Buf {
        /// The first `len` elements as accumulators (f32 or f64: any bits are a valid value).
        pub(super) fn get<A: super::GAcc>(&mut self) -> &mut [A] {
            assert!(std::mem::size_of::<A>() <= 8 && std::mem::align_of::<A>() <= 8, "f32 or f64 accumulators");
            // SAFETY: the buffer holds `len` u64s, at least `len` elements of A (at most 8 bytes,
            // alignment at most 8); A is f32 or f64, for which every bit pattern is a value.
            unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr() as *mut A, self.len) }
        }
    }

    impl Drop for Buf {
        fn drop(&mut self) {
            if let Some(key) = self.key.take() {
                let data = std::mem::take(&mut self.data);
                key.with(|cell| {
                    if let Ok(mut slot) = cell.try_borrow_mut() {
                        if slot.capacity() < data.capacity() {
                            *slot = data;
                        }
                    }
                });
            }
        }
    }
}

/// Where the packed product's B comes from: a strided matrix ([`Mat`]), or weights stored in a
/// compressed format that are expanded straight into the panels.
pub(crate) trait BSource<A>: Sync {
    /// Writes B[pc..pc+kc, jc..jc+nc] into `out` as NR-wide panels, each kc rows of NR (zero
    /// padded). `pc` is a multiple of [`KC`] and `kc` is [`KC`] unless the block ends at k.
    fn pack<const NR: usize>(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [A]);

    /// B already stored as the AVX-512 micro-kernel's 32-wide panels: the block at (pc, jc) and
    /// the distance in floats from one panel to the next, or `None` (the default) to pack.
    fn prepacked(&self, _pc: usize, _jc: usize) -> Option<(&[f32], usize)> {
        None
    }
}

impl<T: Float> BSource<T::Acc> for Mat<'_, T> {
    fn pack<const NR: usize>(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [T::Acc]) {
        pack_b::<T, NR>(*self, pc, kc, jc, nc, out)
    }
}

/// Packs B[pc..pc+kc, jc..jc+nc] into NR-wide panels, each kc rows of NR (zero padded).
pub(crate) fn pack_b<T: Float, const NR: usize>(
    b: Mat<T>,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    out: &mut [T::Acc],
) {
    for p in 0..nc.div_ceil(NR) {
        let j0 = jc + p * NR;
        let w = NR.min(jc + nc - j0);
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        if b.cs == 1 {
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let r = pc + kk;
                let src = &b.data[r * b.rs + j0..r * b.rs + j0 + w];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s.to_acc();
                }
                dst[w..].iter_mut().for_each(|d| *d = T::Acc::ZERO);
            }
        } else {
            // A transposed weight (rows of W along k): 8 × 8 blocks transposed in registers,
            // then each of the panel's columns read as one contiguous run.
            #[cfg(target_arch = "x86_64")]
            let done = transpose::pack_f32::<T, NR>(b, pc, kc, j0, w, panel);
            #[cfg(not(target_arch = "x86_64"))]
            let done = (0, 0);
            for jj in 0..NR {
                // Columns the transposes covered still need their k steps past the last whole 8.
                let k0 = if jj < done.1 { done.0 } else { 0 };
                if jj >= w {
                    (k0..kc).for_each(|kk| panel[kk * NR + jj] = T::Acc::ZERO);
                } else if b.rs == 1 {
                    let col = &b.data[(j0 + jj) * b.cs + pc..(j0 + jj) * b.cs + pc + kc];
                    (k0..kc).for_each(|kk| panel[kk * NR + jj] = col[kk].to_acc());
                } else {
                    (k0..kc).for_each(|kk| panel[kk * NR + jj] = b.at(pc + kk, j0 + jj).to_acc());
                }
            }
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
    row0: usize,
    jc: usize,
    alpha: A,
    keep: bool,
}

/// The register-tile micro-kernel a product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Micro {
    /// Portable Rust, auto-vectorized for the baseline target.
    Portable,
    /// The portable body compiled for AVX2 and FMA.
    Fma,
    /// 12 × 32 f32 tiles in AVX-512 intrinsics (24 of the 32 vector registers hold C); other
    /// accumulator types take [`Micro::Fma`].
    Avx512,
}

impl Micro {
    fn detect() -> Micro {
        #[cfg(target_arch = "x86_64")]
        {
            if has_fma() {
                return if std::is_x86_feature_detected!("avx512f") { Micro::Avx512 } else { Micro::Fma };
            }
        }
        Micro::Portable
    }
}

/// Whether the CPU has AVX2 (x86-64 only).
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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

/// # Safety
/// The caller owns rows `blk.row0..blk.row0 + blk.rows` and columns `blk.jc..blk.jc + blk.nc`
/// of the `ldc`-wide C behind `c`.
unsafe fn macro_kernel<T: Float, const MR: usize, const NR: usize>(
    blk: &Block<T::Acc>,
    ap: &[T::Acc],
    bp: &[T::Acc],
    c: SharedC<T>,
    micro: Micro,
) where
    T::Acc: GAcc,
{
    #[cfg(target_arch = "x86_64")]
    {
        if micro == Micro::Avx512 && MR == 12 && NR == 32 {
            if let (Some(ap), Some(bp)) = (f32s(ap), f32s(bp)) {
                // SAFETY: AVX-512F detected (`Micro::detect`); C ownership passed on.
                return unsafe { avx512::macro_12x32::<T>(blk, avx512::AIn::Packed(ap), bp, blk.kc * 32, c) };
            }
        }
        if micro != Micro::Portable {
            // SAFETY: the CPU supports AVX2 and FMA (`Micro::detect`); C ownership passed on.
            return unsafe { macro_fma::<T, MR, NR>(blk, ap, bp, c) };
        }
    }
    let _ = micro;
    // SAFETY: C ownership passed on.
    unsafe { macro_body::<T, MR, NR, false>(blk, ap, bp, c) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn macro_fma<T: Float, const MR: usize, const NR: usize>(
    blk: &Block<T::Acc>,
    ap: &[T::Acc],
    bp: &[T::Acc],
    c: SharedC<T>,
) where
    T::Acc: GAcc,
{
    // SAFETY: C ownership passed on.
    unsafe { macro_body::<T, MR, NR, true>(blk, ap, bp, c) };
}

/// Writes one finished `h × w` tile (rows of `acc`) into C at (`row`, `col`).
///
/// # Safety
/// The caller owns those elements of C.
#[inline(always)]
unsafe fn store_tile<T: Float, const NR: usize>(
    blk: &Block<T::Acc>,
    acc: &[[T::Acc; NR]],
    row: usize,
    col: usize,
    w: usize,
    c: SharedC<T>,
) {
    for (i, arow) in acc.iter().enumerate() {
        // SAFETY: (row + i, col..col + w) lies in the caller's rectangle of C.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.0.add((row + i) * blk.ldc + col), w) };
        for (d, v) in dst.iter_mut().zip(arow) {
            put(d, blk.alpha * *v, blk.keep);
        }
    }
}

/// # Safety
/// As [`macro_kernel`].
#[inline(always)]
unsafe fn macro_body<T: Float, const MR: usize, const NR: usize, const FMA: bool>(
    blk: &Block<T::Acc>,
    ap: &[T::Acc],
    bp: &[T::Acc],
    c: SharedC<T>,
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
            // SAFETY: the tile lies in the block, which the caller owns.
            unsafe { store_tile(blk, &acc[..h], blk.row0 + q * MR, blk.jc + p * NR, w, c) };
        }
    }
}

/// Packing a transposed f32 weight with AVX2 8 × 8 transposes: the strided scalar copy costs
/// about as much as the products it feeds at prefill sizes.
#[cfg(target_arch = "x86_64")]
mod transpose {
    use super::{f32s, f32s_mut, Mat};
    use crate::ops::num::Float;
    use std::arch::x86_64::*;

    /// Packs the whole 8 × 8 blocks of panel columns `0..w` and k steps `0..kc` when T is f32
    /// and the CPU has AVX2; returns (k steps, columns) covered, the rest left to the caller.
    pub(super) fn pack_f32<T: Float, const NR: usize>(
        b: Mat<T>,
        pc: usize,
        kc: usize,
        j0: usize,
        w: usize,
        panel: &mut [T::Acc],
    ) -> (usize, usize) {
        let (k8, w8) = (kc / 8 * 8, w / 8 * 8);
        let (Some(src), Some(dst)) = (f32s(b.data), f32s_mut(panel)) else { return (0, 0) };
        if b.rs != 1 || k8 == 0 || w8 == 0 || !std::is_x86_feature_detected!("avx2") {
            return (0, 0);
        }
        let last = (j0 + w8 - 1) * b.cs + pc + k8;
        assert!(last <= src.len() && dst.len() >= kc * NR, "packing outside B or the panel");
        let (src, dst) = (src.as_ptr(), dst.as_mut_ptr());
        for jj in (0..w8).step_by(8) {
            for kk in (0..k8).step_by(8) {
                // SAFETY: AVX2 detected, and the 8 × 8 block read
                // (columns j0 + jj.., k steps pc + kk..) and written (panel rows kk.., columns
                // jj..) lie within the bounds asserted above.
                unsafe { block(src.add((j0 + jj) * b.cs + pc + kk), b.cs, dst.add(kk * NR + jj), NR) };
            }
        }
        (k8, w8)
    }

    /// Writes the transpose of the 8 × 8 block at `src` (rows `stride` apart) to `dst`.
    #[target_feature(enable = "avx2")]
    unsafe fn block(src: *const f32, stride: usize, dst: *mut f32, dst_stride: usize) {
        // SAFETY (all loads and stores): the caller guarantees 8 rows of 8 floats at both ends.
        let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * stride)) });
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for i in 0..4 {
            unsafe {
                _mm256_storeu_ps(dst.add(i * dst_stride), _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]));
                _mm256_storeu_ps(dst.add((i + 4) * dst_stride), _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]));
            }
        }
    }
}

/// The AVX-512 micro-kernel.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{f32s, f32s_mut, is_f32, store_tile, Block, GAcc, SharedC};
    use crate::ops::num::num_like::AccFloat;
    use crate::ops::num::Float;
    use std::arch::x86_64::*;

    /// How the micro-kernel reads A.
    #[derive(Clone, Copy)]
    pub(super) enum AIn<'a> {
        /// The block packed into 12-tall panels (`pack_a`).
        Packed(&'a [f32]),
        /// A's rows where they are: element (r, kk) of the block is `data[(row0 + r) * lda + pc + kk]`.
        /// Prefill's A is row-major f32, and packing it cost every thread a pass over all of A
        /// per block of k.
        Rows { data: &'a [f32], lda: usize, pc: usize },
    }

    /// Every 12 × 32 tile of a packed block ([`tile`]). Each element sums over k in order with
    /// FMA, as the AVX2 kernel does. B's panels start `b_step` floats apart (`kc · 32` packed,
    /// `k · 32` stored at compile time).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the caller owns the block's rectangle of C.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn macro_12x32<T: Float>(blk: &Block<T::Acc>, a: AIn, bp: &[f32], b_step: usize, c: SharedC<T>)
    where
        T::Acc: GAcc,
    {
        match a {
            // SAFETY: the CPU supports AVX-512F; C ownership passed on.
            AIn::Packed(_) => unsafe { tiles::<T, 12>(blk, a, bp, b_step, c) },
            // SAFETY: as above.
            AIn::Rows { .. } => unsafe { tiles::<T, 1>(blk, a, bp, b_step, c) },
        }
    }

    /// [`macro_12x32`] with A's k steps `STEP` floats apart: 12 packed, 1 for rows in place.
    ///
    /// # Safety
    /// As [`macro_12x32`].
    #[target_feature(enable = "avx512f")]
    unsafe fn tiles<T: Float, const STEP: usize>(blk: &Block<T::Acc>, a: AIn, bp: &[f32], b_step: usize, c: SharedC<T>)
    where
        T::Acc: GAcc,
    {
        let kc = blk.kc;
        match a {
            AIn::Packed(ap) => assert!(STEP == 12 && ap.len() >= blk.rows.div_ceil(12) * 12 * kc, "A panel"),
            AIn::Rows { data, lda, pc } => {
                assert!(STEP == 1 && data.len() >= (blk.row0 + blk.rows - 1) * lda + pc + kc, "A rows")
            }
        }
        let panels = blk.nc.div_ceil(32);
        assert!(b_step >= kc * 32 && bp.len() >= (panels - 1) * b_step + kc * 32, "B panel");
        for p in 0..panels {
            let bpanel = &bp[p * b_step..p * b_step + kc * 32];
            let w = 32.min(blk.nc - p * 32);
            for q in 0..blk.rows.div_ceil(12) {
                let h = 12.min(blk.rows - q * 12);
                // Where each of the tile's rows of A starts; a ragged tile's missing rows repeat
                // its last one (computed, never stored).
                let rows: [*const f32; 12] = std::array::from_fn(|i| match a {
                    AIn::Packed(ap) => ap[q * kc * 12 + i..].as_ptr(),
                    AIn::Rows { data, lda, pc } => data[(blk.row0 + q * 12 + i.min(h - 1)) * lda + pc..].as_ptr(),
                });
                let at = (blk.row0 + q * 12, blk.jc + p * 32);
                // A ragged tile runs as 4 or 8 rows: a 128-token prompt's last tile is 8 rows of
                // 12, a thirtieth of the product computed for nothing.
                // SAFETY: the B panel holds kc steps of 32 floats; each A row pointer has
                // (kc - 1) * STEP + 1 floats behind it (asserted above); the tile lies in the
                // block, which the caller owns.
                unsafe {
                    match h {
                        9.. => finish::<T, 12>(blk, &tile::<12, STEP>(&rows, kc, bpanel), at, h, w, c),
                        5..=8 => finish::<T, 8>(blk, &tile::<8, STEP>(&rows, kc, bpanel), at, h, w, c),
                        _ => finish::<T, 4>(blk, &tile::<4, STEP>(&rows, kc, bpanel), at, h, w, c),
                    }
                }
            }
        }
    }

    /// One `H × 32` tile summed over the block's k: per step of k, two vectors of B and `H`
    /// broadcasts of A feed `2H` fused multiply-adds into accumulators held in registers.
    ///
    /// # Safety
    /// AVX-512F; `bpanel` holds `kc` steps of 32 floats and each of the first `H` row pointers has
    /// `(kc - 1) * STEP + 1` floats behind it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const H: usize, const STEP: usize>(
        rows: &[*const f32; 12],
        kc: usize,
        bpanel: &[f32],
    ) -> [[__m512; 2]; H] {
        let mut acc = [[_mm512_setzero_ps(); 2]; H];
        for kk in 0..kc {
            // SAFETY: as the caller promises.
            let (b0, b1) = unsafe {
                (_mm512_loadu_ps(bpanel.as_ptr().add(kk * 32)), _mm512_loadu_ps(bpanel.as_ptr().add(kk * 32 + 16)))
            };
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let ai = _mm512_set1_ps(unsafe { *rows[i].add(kk * STEP) });
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
        acc
    }

    /// Writes the first `h` rows and `w` columns of a finished tile into C at `at`: whole tiles of
    /// f32 C straight from the registers, others through [`store_tile`].
    ///
    /// # Safety
    /// AVX-512F; the caller owns those elements of C.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish<T: Float, const H: usize>(
        blk: &Block<T::Acc>,
        acc: &[[__m512; 2]; H],
        at: (usize, usize),
        h: usize,
        w: usize,
        c: SharedC<T>,
    ) where
        T::Acc: GAcc,
    {
        if is_f32::<T>() && h == H && w == 32 {
            // SAFETY: T is f32 and the whole tile lies in the caller's part of C.
            return unsafe { store_f32(blk, acc, at.0, at.1, c.0 as *mut f32) };
        }
        let mut tile = [[T::Acc::ZERO; 32]; H];
        for (dst, row) in tile.iter_mut().zip(acc) {
            let dst = f32s_mut(dst).expect("f32 accumulators");
            // SAFETY: `dst` holds 32 floats.
            unsafe {
                _mm512_storeu_ps(dst.as_mut_ptr(), row[0]);
                _mm512_storeu_ps(dst.as_mut_ptr().add(16), row[1]);
            }
        }
        // SAFETY: the tile lies in the block, which the caller owns.
        unsafe { store_tile(blk, &tile[..h], at.0, at.1, w, c) };
    }

    /// Stores a whole `acc.len()` × 32 tile of f32 C: `alpha · acc (+ C)`, the same operations as
    /// [`super::put`].
    ///
    /// # Safety
    /// AVX-512F; C is f32 and the caller owns the tile's elements at (`row`, `col`).
    #[target_feature(enable = "avx512f")]
    unsafe fn store_f32<A: GAcc>(blk: &Block<A>, acc: &[[__m512; 2]], row: usize, col: usize, c: *mut f32) {
        let alpha = _mm512_set1_ps(f32s(std::slice::from_ref(&blk.alpha)).expect("f32 accumulators")[0]);
        for (i, halves) in acc.iter().enumerate() {
            for (h, &v) in halves.iter().enumerate() {
                // SAFETY: within the caller's tile.
                unsafe {
                    let at = c.add((row + i) * blk.ldc + col + h * 16);
                    let v = _mm512_mul_ps(v, alpha);
                    _mm512_storeu_ps(at, if blk.keep { _mm512_add_ps(v, _mm512_loadu_ps(at)) } else { v });
                }
            }
        }
    }
}

/// The micro-kernels this CPU can run.
#[cfg(test)]
fn micros() -> Vec<Micro> {
    let mut all = vec![Micro::Portable];
    if has_fma() {
        all.push(Micro::Fma);
    }
    if Micro::detect() == Micro::Avx512 {
        all.push(Micro::Avx512);
    }
    all
}

/// [`gemm_from`] with each micro-kernel this CPU can run, serial and split across threads:
/// (what ran, C) for tests to compare with a reference.
#[cfg(test)]
pub(crate) fn gemm_from_each<S: BSource<f32>>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &S,
) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for micro in micros() {
        for parallel in [false, true] {
            let mut c = vec![f32::NAN; m * n];
            blocked_with(micro, m, n, k, 1.0, Mat { data: a, rs: k, cs: 1 }, b, &mut c, false, parallel);
            out.push((format!("{micro:?} parallel={parallel}"), c));
        }
    }
    out
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

    #[test]
    fn tasks_cover_c_once_with_even_work_per_thread() {
        // GPT-2's widest products used to be three slabs on two threads.
        for &(m, n, threads, slab_max) in
            &[(128, 2304, 2, 1024), (128, 3072, 2, 1024), (128, 576, 2, 1024), (128, 40, 4, 1024), (5, 3000, 3, 256)]
        {
            let plan = tasks(m, n, threads, 12, 32, slab_max);
            let mut seen = vec![0u8; m * n];
            for t in &plan {
                assert_eq!(t.cols.0 % 32, 0, "slabs start on a panel");
                for i in t.rows.0..t.rows.1 {
                    seen[i * n + t.cols.0..i * n + t.cols.1].iter_mut().for_each(|s| *s += 1);
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{m}x{n}: every element in exactly one task");
            let work: Vec<usize> = plan.iter().map(|t| (t.rows.1 - t.rows.0) * (t.cols.1 - t.cols.0)).collect();
            if plan.len() >= threads {
                assert_eq!(plan.len() % threads, 0, "{m}x{n} on {threads}: {} tasks", plan.len());
            }
            let (lo, hi) = (work.iter().min().unwrap(), work.iter().max().unwrap());
            assert!(hi - lo <= 32 * m.max(12), "{m}x{n}: task sizes {work:?}");
            assert!(plan.iter().all(|t| t.cols.1 - t.cols.0 <= slab_max.max(32)), "{m}x{n}: slab over {slab_max}");
        }
    }

    #[test]
    fn every_micro_kernel_matches_the_reference_on_ragged_sizes() {
        // Sizes off every tile, panel and block multiple, in both B layouts, serial and split.
        for &(m, n, k) in &[
            (13, 33, 9),
            (25, 65, 257),
            (73, 129, 513),
            (150, 40, 20),
            (12, 32, 8),
            (16, 64, 40),
            (20, 70, 30),
            (23, 96, 300),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.) * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.) * 0.1).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let want = reference(m, n, k, &a, &b);
            for micro in micros() {
                for (trans_b, parallel) in [(false, false), (true, false), (true, true), (false, true)] {
                    let bm =
                        if trans_b { Mat { data: &bt[..], rs: 1, cs: k } } else { Mat { data: &b[..], rs: n, cs: 1 } };
                    let mut c = vec![1f32; m * n];
                    blocked_with(micro, m, n, k, 0.5, Mat { data: &a[..], rs: k, cs: 1 }, &bm, &mut c, true, parallel);
                    for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                        let e = 1. + 0.5 * y;
                        assert!((*x as f64 - e).abs() < 1e-4 * (1. + y.abs()), "{m}x{n}x{k} [{i}]: {x} vs {e}");
                    }
                }
            }
        }
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
        for &(m, n, k) in &[
            (512, 512, 512),
            (1024, 1024, 1024),
            (1, 4096, 4096),
            (64, 4096, 1024),
            (128, 576, 576),
            (128, 1536, 576),
            (128, 576, 1536),
            (128, 192, 576),
        ] {
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

/// Speed of SmolLM2's prefill products and of the AVX-512 micro-kernel alone:
/// `cargo test -p kiln-runtime --release prefill_speed -- --ignored --nocapture`.
#[cfg(test)]
mod speed_probe {
    use super::*;

    #[test]
    #[ignore]
    fn prefill_speed() {
        // (m, n, k, products per layer) of one 128-token prefill: q, k, v, o; gate, up; down.
        let shapes = [(128, 576, 576, 2.0), (128, 192, 576, 2.0), (128, 1536, 576, 2.0), (128, 576, 1536, 1.0)];
        for par in [false, true] {
            let mut total = 0.0;
            for &(m, n, k, per_layer) in &shapes {
                let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
                let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
                let mut c = vec![0f32; m * n];
                let mut best = f64::MAX;
                for _ in 0..30 {
                    let t = std::time::Instant::now();
                    let (am, bm) = (Mat { data: &a[..], rs: k, cs: 1 }, Mat { data: &b[..], rs: 1, cs: k });
                    gemm(m, n, k, 1.0, am, bm, &mut c, false, par);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                total += best * per_layer;
                let gflops = 2. * (m * n * k) as f64 / best / 1e9;
                println!("threads={par} {m}x{n}x{k}: {:.3} ms {gflops:.1} GFLOP/s", best * 1e3);
            }
            println!("threads={par} one layer: {:.3} ms, 30 layers {:.1} ms", total * 1e3, total * 30e3);
        }
        if Micro::detect() != Micro::Avx512 {
            return;
        }
        // The micro-kernel alone on one packed block in cache, on one thread and on two at once.
        let (kc, rows, nc) = (256, 72, 256);
        let ap = vec![0.5f32; MC * kc];
        let bp = vec![0.25f32; kc * nc];
        let blk = Block { rows, nc, kc, ldc: nc, row0: 0, jc: 0, alpha: 1.0f32, keep: true };
        let reps = 2000;
        let one = || {
            let mut c = vec![0f32; rows * nc];
            let shared = SharedC(c.as_mut_ptr());
            let t = std::time::Instant::now();
            for _ in 0..reps {
                // SAFETY: AVX-512 checked above; `c` is the block's whole C.
                unsafe { macro_kernel::<f32, 12, 32>(&blk, &ap, &bp, shared, Micro::Avx512) };
            }
            std::hint::black_box(&c);
            2. * (rows * nc * kc) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        println!("micro-kernel in cache, one thread: {:.1} GFLOP/s", one());
        let (x, y) = rayon::join(one, one);
        println!("micro-kernel in cache, two threads at once: {x:.1} + {y:.1} GFLOP/s");
    }
}
