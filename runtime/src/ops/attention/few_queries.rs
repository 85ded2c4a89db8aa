//! Attention's two products for a few f32 query rows that share one K/V matrix: decode's one
//! query per head, times the query heads of a grouped-query group. Each key and value row is
//! loaded once for all the rows (the dense product reads it once per row), and the rows' sums
//! are independent chains, where one row's dot is a single chain of dependent adds.
//!
//! The arithmetic is the dense product's one-row path (`gemm` with one row of A), element for
//! element and in the same order, so results keep their bits whichever path a row takes and
//! whatever the CPU: plain multiplies and adds, never fused. Keys and values may be an f16
//! cache's, widened as they are loaded: the results are then those of the f32 path over the
//! rounded values.
//!
//! On x86 with AVX2 the lanes are written as vector intrinsics: left to the auto-vectoriser, the
//! eight-lane sums came out mostly scalar (20 cycles per 64-element dot).

use half::f16;

/// Rows one call takes at most (more go to the dense product).
pub(super) const MAX_ROWS: usize = 8;
/// Rows one pass keeps in registers.
const PASS_ROWS: usize = 4;

/// Key or value rows as the cache stores them.
#[derive(Clone, Copy)]
pub(super) enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> KvRows<'a> {
    /// `s` as rows the kernels take, when its elements are f32 or f16.
    pub(super) fn of<C: 'static>(s: &'a [C]) -> Option<Self> {
        use std::any::TypeId;
        let id = TypeId::of::<C>();
        // SAFETY: C is the type the slice is reinterpreted as.
        unsafe {
            if id == TypeId::of::<f32>() {
                return Some(KvRows::F32(std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len())));
            }
            if id == TypeId::of::<f16>() {
                return Some(KvRows::F16(std::slice::from_raw_parts(s.as_ptr() as *const f16, s.len())));
            }
        }
        None
    }

    fn len(&self) -> usize {
        match self {
            KvRows::F32(x) => x.len(),
            KvRows::F16(x) => x.len(),
        }
    }
}

/// An element of a key or value row: f32, or f16 widened exactly.
trait Widen: Copy + 'static {
    fn widen(self) -> f32;
    /// Eight elements from `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` points at eight readable elements, and the CPU has AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Widen for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Whether the intrinsic paths run here.
#[cfg(target_arch = "x86_64")]
fn vector() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
}

/// `scores[r·t + j] = q_r · k_j` for `rows` rows of `q` (`d` apart) and `t` rows of `k` (`d`
/// apart): per dot, eight lanes over whole chunks of 8, then the tail in order, then the lanes
/// in order.
pub(super) fn scores(q: &[f32], rows: usize, d: usize, k: KvRows, t: usize, out: &mut [f32]) {
    assert!(rows <= MAX_ROWS && q.len() >= rows * d && k.len() >= t * d && out.len() >= rows * t);
    #[cfg(target_arch = "x86_64")]
    if vector() {
        // SAFETY: the CPU has AVX2 and F16C; the sizes were checked above.
        return unsafe {
            match k {
                KvRows::F32(k) => x86::scores(q, rows, d, k, t, out),
                KvRows::F16(k) => x86::scores(q, rows, d, k, t, out),
            }
        };
    }
    match k {
        KvRows::F32(k) => scores_in(q, rows, d, k, t, out),
        KvRows::F16(k) => scores_in(q, rows, d, k, t, out),
    }
}

/// `y[r·dv + c] = Σ_j p[r·t + j] · v[j·dv + c]` over `j` in order, from zero, for `rows` rows of
/// `p`.
pub(super) fn weighted_values(p: &[f32], rows: usize, t: usize, v: KvRows, dv: usize, y: &mut [f32]) {
    assert!(rows <= MAX_ROWS && p.len() >= rows * t && v.len() >= t * dv && y.len() >= rows * dv);
    #[cfg(target_arch = "x86_64")]
    if vector() {
        // SAFETY: the CPU has AVX2 and F16C; the sizes were checked above.
        return unsafe {
            match v {
                KvRows::F32(v) => x86::values(p, rows, t, v, dv, y),
                KvRows::F16(v) => x86::values(p, rows, t, v, dv, y),
            }
        };
    }
    match v {
        KvRows::F32(v) => values_in(p, rows, t, v, dv, y),
        KvRows::F16(v) => values_in(p, rows, t, v, dv, y),
    }
}

/// The dot of one query row with one key row, in [`scores`]' order.
#[inline(always)]
fn dot<E: Widen>(q: &[f32], key: &[E]) -> f32 {
    let whole = q.len() / 8 * 8;
    let mut lanes = [0f32; 8];
    for (qc, kc) in q[..whole].chunks_exact(8).zip(key[..whole].chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += qc[l] * kc[l].widen();
        }
    }
    tail_and_lanes(&q[whole..], &key[whole..], lanes)
}

/// A dot's tail in order, then its lanes in order.
#[inline(always)]
fn tail_and_lanes<E: Widen>(q: &[f32], key: &[E], lanes: [f32; 8]) -> f32 {
    let mut s = 0f32;
    for (x, y) in q.iter().zip(key) {
        s += x * y.widen();
    }
    for l in lanes {
        s += l;
    }
    s
}

/// [`scores`] without intrinsics.
fn scores_in<E: Widen>(q: &[f32], rows: usize, d: usize, k: &[E], t: usize, out: &mut [f32]) {
    for (j, key) in k.chunks_exact(d).take(t).enumerate() {
        for r in 0..rows {
            out[r * t + j] = dot(&q[r * d..(r + 1) * d], key);
        }
    }
}

/// [`weighted_values`] without intrinsics.
fn values_in<E: Widen>(p: &[f32], rows: usize, t: usize, v: &[E], dv: usize, y: &mut [f32]) {
    for r in 0..rows {
        let out = &mut y[r * dv..(r + 1) * dv];
        out.fill(0.0);
        for j in 0..t {
            let pj = p[r * t + j];
            for (o, x) in out.iter_mut().zip(&v[j * dv..(j + 1) * dv]) {
                *o += pj * x.widen();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{tail_and_lanes, Widen, PASS_ROWS};
    use std::arch::x86_64::*;

    /// [`super::scores`], [`PASS_ROWS`] rows at a time. A pass takes several keys at once, so the
    /// CPU has rows × keys independent chains of adds in flight: four keys for one or two rows,
    /// two for three or four, which keeps the accumulators within sixteen registers.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn scores<E: Widen>(q: &[f32], rows: usize, d: usize, k: &[E], t: usize, out: &mut [f32]) {
        let mut r0 = 0;
        while r0 < rows {
            let (q, out) = (&q[r0 * d..], &mut out[r0 * t..]);
            match rows - r0 {
                1 => scores_pass::<E, 1, 4>(q, d, k, t, out),
                2 => scores_pass::<E, 2, 4>(q, d, k, t, out),
                3 => scores_pass::<E, 3, 2>(q, d, k, t, out),
                _ => scores_pass::<E, PASS_ROWS, 2>(q, d, k, t, out),
            }
            r0 += PASS_ROWS;
        }
    }

    /// `R` rows against every key, `K` keys at a time, then the keys left one at a time.
    #[inline(always)]
    unsafe fn scores_pass<E: Widen, const R: usize, const K: usize>(
        q: &[f32],
        d: usize,
        k: &[E],
        t: usize,
        out: &mut [f32],
    ) {
        let whole = t / K * K;
        for j in (0..whole).step_by(K) {
            scores_keys::<E, R, K>(q, d, &k[j * d..(j + K) * d], t, &mut out[j..]);
        }
        for j in whole..t {
            scores_keys::<E, R, 1>(q, d, &k[j * d..(j + 1) * d], t, &mut out[j..]);
        }
    }

    /// The dots of `R` rows with the `K` keys of `keys`, into `out[r·t + i]`.
    #[inline(always)]
    unsafe fn scores_keys<E: Widen, const R: usize, const K: usize>(
        q: &[f32],
        d: usize,
        keys: &[E],
        t: usize,
        out: &mut [f32],
    ) {
        let whole = d / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); K]; R];
        for c in (0..whole).step_by(8) {
            let kv: [__m256; K] = std::array::from_fn(|i| E::load8(keys.as_ptr().add(i * d + c)));
            for (r, row) in acc.iter_mut().enumerate() {
                let qv = _mm256_loadu_ps(q.as_ptr().add(r * d + c));
                for (a, k) in row.iter_mut().zip(kv) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, k));
                }
            }
        }
        for r in 0..R {
            for i in 0..K {
                let lanes: [f32; 8] = std::mem::transmute(acc[r][i]);
                let (qt, kt) = (&q[r * d + whole..(r + 1) * d], &keys[i * d + whole..(i + 1) * d]);
                out[r * t + i] = tail_and_lanes(qt, kt, lanes);
            }
        }
    }

    /// [`super::weighted_values`], [`PASS_ROWS`] rows at a time: columns in blocks of 32 (one or
    /// two rows) or 16 (three or four), then of 8, then one at a time.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn values<E: Widen>(p: &[f32], rows: usize, t: usize, v: &[E], dv: usize, y: &mut [f32]) {
        let mut r0 = 0;
        while r0 < rows {
            let (p, y) = (&p[r0 * t..], &mut y[r0 * dv..]);
            match rows - r0 {
                1 => values_rows::<E, 1, 4>(p, t, v, dv, y),
                2 => values_rows::<E, 2, 4>(p, t, v, dv, y),
                3 => values_rows::<E, 3, 2>(p, t, v, dv, y),
                _ => values_rows::<E, PASS_ROWS, 2>(p, t, v, dv, y),
            }
            r0 += PASS_ROWS;
        }
    }

    #[inline(always)]
    unsafe fn values_rows<E: Widen, const R: usize, const V: usize>(
        p: &[f32],
        t: usize,
        v: &[E],
        dv: usize,
        y: &mut [f32],
    ) {
        let mut c0 = 0;
        while c0 + 8 * V <= dv {
            values_block::<E, R, V>(p, t, v, dv, c0, y);
            c0 += 8 * V;
        }
        while c0 + 8 <= dv {
            values_block::<E, R, 1>(p, t, v, dv, c0, y);
            c0 += 8;
        }
        for r in 0..R {
            for c in c0..dv {
                let mut s = 0f32;
                for j in 0..t {
                    s += p[r * t + j] * v[j * dv + c].widen();
                }
                y[r * dv + c] = s;
            }
        }
    }

    /// Columns `c0..c0 + 8·V` of `R` rows' weighted values.
    #[inline(always)]
    unsafe fn values_block<E: Widen, const R: usize, const V: usize>(
        p: &[f32],
        t: usize,
        v: &[E],
        dv: usize,
        c0: usize,
        y: &mut [f32],
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        for j in 0..t {
            let row = v.as_ptr().add(j * dv + c0);
            let vv: [__m256; V] = std::array::from_fn(|i| E::load8(row.add(8 * i)));
            for (r, row) in acc.iter_mut().enumerate() {
                let pj = _mm256_set1_ps(*p.get_unchecked(r * t + j));
                for (a, v) in row.iter_mut().zip(vv) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(pj, v));
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (i, &a) in row.iter().enumerate() {
                _mm256_storeu_ps(y.as_mut_ptr().add(r * dv + c0 + 8 * i), a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::gemm::{gemm, Mat};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 - 1001.0) * 1e-3).collect()
    }

    /// Every row count up to [`MAX_ROWS`], head sizes with and without a tail of 8, value widths
    /// on and off [`COLUMNS`]: the bits of the dense product's one-row path, row by row.
    #[test]
    fn both_products_have_the_bits_of_the_one_row_dense_product() {
        for (d, dv, t) in [(64, 64, 37), (12, 40, 5), (72, 96, 130), (8, 8, 1), (64, 20, 9), (3, 3, 4)] {
            for rows in 1..=MAX_ROWS {
                let (q, k, v) = (values(rows * d, 1), values(t * d, 2), values(t * dv, 3));
                let mut got = vec![f32::NAN; rows * t];
                scores(&q, rows, d, KvRows::F32(&k), t, &mut got);
                let mut want = vec![f32::NAN; rows * t];
                for r in 0..rows {
                    let qm = Mat { data: &q[r * d..], rs: d, cs: 1 };
                    let km = Mat { data: &k[..], rs: 1, cs: d };
                    gemm(1, t, d, 1.0, qm, km, &mut want[r * t..], false, false);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "scores d={d} t={t} rows={rows}");
                scores_in(&q, rows, d, &k, t, &mut got);
                assert_eq!(bits(&got), bits(&want), "portable scores d={d} t={t} rows={rows}");
                #[cfg(target_arch = "x86_64")]
                if vector() {
                    // SAFETY: the CPU has AVX2 and F16C.
                    unsafe { x86::scores(&q, rows, d, &k, t, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "AVX2 scores d={d} t={t} rows={rows}");
                }

                let p = values(rows * t, 4);
                let mut got = vec![f32::NAN; rows * dv];
                weighted_values(&p, rows, t, KvRows::F32(&v), dv, &mut got);
                let mut want = vec![f32::NAN; rows * dv];
                for r in 0..rows {
                    let pm = Mat { data: &p[r * t..], rs: t, cs: 1 };
                    let vm = Mat { data: &v[..], rs: dv, cs: 1 };
                    gemm(1, dv, t, 1.0, pm, vm, &mut want[r * dv..], false, false);
                }
                assert_eq!(bits(&got), bits(&want), "values dv={dv} t={t} rows={rows}");
                values_in(&p, rows, t, &v, dv, &mut got);
                assert_eq!(bits(&got), bits(&want), "portable values dv={dv} t={t} rows={rows}");
                #[cfg(target_arch = "x86_64")]
                if vector() {
                    // SAFETY: the CPU has AVX2 and F16C.
                    unsafe { x86::values(&p, rows, t, &v, dv, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "AVX2 values dv={dv} t={t} rows={rows}");
                }
            }
        }
    }

    /// An f16 cache's rows, on the vector and portable paths: the bits of the f32 path over the
    /// rounded values.
    #[test]
    fn f16_rows_read_as_their_rounded_values() {
        for (d, dv, t) in [(64, 64, 37), (12, 40, 5), (72, 96, 130), (64, 20, 9)] {
            for rows in 1..=MAX_ROWS {
                let q = values(rows * d, 1);
                let (k, v) = (values(t * d, 2), values(t * dv, 3));
                let (kh, vh): (Vec<f16>, Vec<f16>) =
                    (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
                let (kr, vr): (Vec<f32>, Vec<f32>) =
                    (kh.iter().map(|x| x.to_f32()).collect(), vh.iter().map(|x| x.to_f32()).collect());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let (mut want, mut got) = (vec![0f32; rows * t], vec![f32::NAN; rows * t]);
                scores(&q, rows, d, KvRows::F32(&kr), t, &mut want);
                scores(&q, rows, d, KvRows::F16(&kh), t, &mut got);
                assert_eq!(bits(&got), bits(&want), "scores d={d} t={t} rows={rows}");
                scores_in(&q, rows, d, &kh[..], t, &mut got);
                assert_eq!(bits(&got), bits(&want), "portable scores d={d} t={t} rows={rows}");
                let p = values(rows * t, 4);
                let (mut want, mut got) = (vec![0f32; rows * dv], vec![f32::NAN; rows * dv]);
                weighted_values(&p, rows, t, KvRows::F32(&vr), dv, &mut want);
                weighted_values(&p, rows, t, KvRows::F16(&vh), dv, &mut got);
                assert_eq!(bits(&got), bits(&want), "values dv={dv} t={t} rows={rows}");
                values_in(&p, rows, t, &vh[..], dv, &mut got);
                assert_eq!(bits(&got), bits(&want), "portable values dv={dv} t={t} rows={rows}");
            }
        }
    }
}
