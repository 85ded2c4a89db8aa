//! Attention's two products for a few f32 query rows that share one K/V matrix: decode's one
//! query per head, times the query heads of a grouped-query group. Each key and value row is
//! loaded once for all the rows (the dense product reads it once per row), and the rows' sums
//! are independent chains, where one row's dot is a single chain of dependent adds.
//!
//! The arithmetic is the dense product's one-row path (`gemm` with one row of A), element for
//! element and in the same order, so results keep their bits whichever path a row takes and
//! whatever the CPU: plain multiplies and adds, never fused.

/// Rows one call takes at most (more go to the dense product).
pub(super) const MAX_ROWS: usize = 8;
/// Rows one pass keeps in registers.
const PASS_ROWS: usize = 4;
/// Value columns one pass of [`weighted_values`] keeps in registers.
const COLUMNS: usize = 32;

/// `scores[r·t + j] = q_r · k_j` for `rows` rows of `q` (`d` apart) and `t` rows of `k` (`d`
/// apart): per dot, eight lanes over whole chunks of 8, then the tail in order, then the lanes
/// in order.
pub(super) fn scores(q: &[f32], rows: usize, d: usize, k: &[f32], t: usize, out: &mut [f32]) {
    assert!(rows <= MAX_ROWS && q.len() >= rows * d && k.len() >= t * d && out.len() >= rows * t);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F.
            return unsafe { scores_avx512(q, rows, d, k, t, out) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { scores_avx2(q, rows, d, k, t, out) };
        }
    }
    scores_in(q, rows, d, k, t, out)
}

/// `y[r·dv + c] = Σ_j p[r·t + j] · v[j·dv + c]` over `j` in order, from zero, for `rows` rows of
/// `p`.
pub(super) fn weighted_values(p: &[f32], rows: usize, t: usize, v: &[f32], dv: usize, y: &mut [f32]) {
    assert!(rows <= MAX_ROWS && p.len() >= rows * t && v.len() >= t * dv && y.len() >= rows * dv);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F.
            return unsafe { values_avx512(p, rows, t, v, dv, y) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { values_avx2(p, rows, t, v, dv, y) };
        }
    }
    values_in(p, rows, t, v, dv, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scores_avx512(q: &[f32], rows: usize, d: usize, k: &[f32], t: usize, out: &mut [f32]) {
    scores_in(q, rows, d, k, t, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scores_avx2(q: &[f32], rows: usize, d: usize, k: &[f32], t: usize, out: &mut [f32]) {
    scores_in(q, rows, d, k, t, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn values_avx512(p: &[f32], rows: usize, t: usize, v: &[f32], dv: usize, y: &mut [f32]) {
    values_in(p, rows, t, v, dv, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn values_avx2(p: &[f32], rows: usize, t: usize, v: &[f32], dv: usize, y: &mut [f32]) {
    values_in(p, rows, t, v, dv, y)
}

/// [`scores`], [`PASS_ROWS`] rows at a time.
#[inline(always)]
fn scores_in(q: &[f32], rows: usize, d: usize, k: &[f32], t: usize, out: &mut [f32]) {
    let mut r0 = 0;
    while r0 < rows {
        let (q, out) = (&q[r0 * d..], &mut out[r0 * t..]);
        match rows - r0 {
            1 => scores_pass::<1>(q, d, k, t, out),
            2 => scores_pass::<2>(q, d, k, t, out),
            3 => scores_pass::<3>(q, d, k, t, out),
            _ => scores_pass::<PASS_ROWS>(q, d, k, t, out),
        }
        r0 += PASS_ROWS;
    }
}

/// `R` rows against every key.
#[inline(always)]
fn scores_pass<const R: usize>(q: &[f32], d: usize, k: &[f32], t: usize, out: &mut [f32]) {
    let whole = d / 8 * 8;
    let qs: [&[f32]; R] = std::array::from_fn(|r| &q[r * d..(r + 1) * d]);
    for (j, key) in k.chunks_exact(d).take(t).enumerate() {
        let mut lanes = [[0f32; 8]; R];
        for (c, kc) in key[..whole].chunks_exact(8).enumerate() {
            for r in 0..R {
                let qc = &qs[r][c * 8..c * 8 + 8];
                for l in 0..8 {
                    lanes[r][l] += qc[l] * kc[l];
                }
            }
        }
        for r in 0..R {
            let mut s = 0f32;
            for (x, y) in qs[r][whole..].iter().zip(&key[whole..]) {
                s += x * y;
            }
            for l in lanes[r] {
                s += l;
            }
            out[r * t + j] = s;
        }
    }
}

/// [`weighted_values`], [`PASS_ROWS`] rows and [`COLUMNS`] columns at a time.
#[inline(always)]
fn values_in(p: &[f32], rows: usize, t: usize, v: &[f32], dv: usize, y: &mut [f32]) {
    let mut r0 = 0;
    while r0 < rows {
        let (p, y) = (&p[r0 * t..], &mut y[r0 * dv..]);
        for c0 in (0..dv).step_by(COLUMNS) {
            let width = COLUMNS.min(dv - c0);
            match (rows - r0, width) {
                (1, COLUMNS) => values_pass::<1, COLUMNS>(p, t, v, dv, c0, y),
                (2, COLUMNS) => values_pass::<2, COLUMNS>(p, t, v, dv, c0, y),
                (3, COLUMNS) => values_pass::<3, COLUMNS>(p, t, v, dv, c0, y),
                (_, COLUMNS) => values_pass::<PASS_ROWS, COLUMNS>(p, t, v, dv, c0, y),
                (n, _) => values_ragged(p, n.min(PASS_ROWS), t, v, dv, c0, width, y),
            }
        }
        r0 += PASS_ROWS;
    }
}

/// Columns `c0..c0 + W` of `R` rows' weighted values.
#[inline(always)]
fn values_pass<const R: usize, const W: usize>(p: &[f32], t: usize, v: &[f32], dv: usize, c0: usize, y: &mut [f32]) {
    let mut acc = [[0f32; W]; R];
    for j in 0..t {
        let vr = &v[j * dv + c0..j * dv + c0 + W];
        for r in 0..R {
            let pj = p[r * t + j];
            for c in 0..W {
                acc[r][c] += pj * vr[c];
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        y[r * dv + c0..r * dv + c0 + W].copy_from_slice(a);
    }
}

/// [`values_pass`] for a last block of fewer than [`COLUMNS`] columns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn values_ragged(p: &[f32], rows: usize, t: usize, v: &[f32], dv: usize, c0: usize, width: usize, y: &mut [f32]) {
    for r in 0..rows {
        let out = &mut y[r * dv + c0..r * dv + c0 + width];
        out.fill(0.0);
        for j in 0..t {
            let pj = p[r * t + j];
            for (o, &x) in out.iter_mut().zip(&v[j * dv + c0..j * dv + c0 + width]) {
                *o += pj * x;
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
        for (d, dv, t) in [(64, 64, 37), (12, 40, 5), (72, 96, 130), (8, 8, 1)] {
            for rows in 1..=MAX_ROWS {
                let (q, k, v) = (values(rows * d, 1), values(t * d, 2), values(t * dv, 3));
                let mut got = vec![f32::NAN; rows * t];
                scores(&q, rows, d, &k, t, &mut got);
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
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    unsafe { scores_avx2(&q, rows, d, &k, t, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "AVX2 scores d={d} t={t} rows={rows}");
                }

                let p = values(rows * t, 4);
                let mut got = vec![f32::NAN; rows * dv];
                weighted_values(&p, rows, t, &v, dv, &mut got);
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
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    unsafe { values_avx2(&p, rows, t, &v, dv, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "AVX2 values dv={dv} t={t} rows={rows}");
                }
            }
        }
    }
}
