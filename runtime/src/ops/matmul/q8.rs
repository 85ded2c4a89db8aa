//! `kiln::MatMulQ8(A, W)`: `A · Wᵀ` with W's `n` rows of `k` weights quantized at compile time
//! (`kiln compile --weights q8`) to int8 in blocks of [`BLOCK`], one f32 scale per block
//! (`scale = max |w| / 127`). Each row of W is stored as its `k / BLOCK` little-endian f32 scales
//! followed by its `k` int8 values, so a row is one contiguous read of `k + k / 8` bytes, a
//! quarter of f32's. The kernel reads that form directly: decode (a few rows of A) takes dot
//! products block by block; longer inputs dequantize a panel of W's rows at a time and hand it to
//! the dense product.

use super::gemm::{gemm, Mat};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

/// Weights per block (and per scale).
pub const BLOCK: usize = 32;
/// Op type in the `kiln` domain.
pub const MATMUL_Q8: &str = "MatMulQ8";
/// Rows of W dequantized together for a product of many rows of A.
const PANEL: usize = 64;
/// Rows of A from which the panel path beats block-by-block dot products.
const PANEL_ROWS: usize = 4;

/// Bytes of one stored row of `k` weights.
pub fn row_bytes(k: usize) -> usize {
    k / BLOCK * 4 + k
}

/// Quantizes one row of `k` weights (a multiple of [`BLOCK`]) into `dst` (`row_bytes(k)` bytes).
pub fn quantize_row(src: &[f32], dst: &mut [u8]) {
    let blocks = src.len() / BLOCK;
    let (scales, quants) = dst.split_at_mut(blocks * 4);
    for (b, (w, q)) in src.chunks_exact(BLOCK).zip(quants.chunks_exact_mut(BLOCK)).enumerate() {
        let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 && max.is_finite() { max / 127.0 } else { 0.0 };
        scales[b * 4..b * 4 + 4].copy_from_slice(&scale.to_le_bytes());
        for (d, &v) in q.iter_mut().zip(w) {
            let x = if scale > 0.0 { (v / scale).round().clamp(-127.0, 127.0) } else { 0.0 };
            *d = (x as i8) as u8;
        }
    }
}

pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == MATMUL_Q8).then(|| {
        let k = spec.attrs.req_int("k")?;
        match usize::try_from(k) {
            Ok(k) if k > 0 && k % BLOCK == 0 => Ok(Box::new(MatMulQ8 { k }) as Box<dyn Kernel>),
            _ => Err(KernelError::attr("k", format!("{k} is not a positive multiple of {BLOCK}"))),
        }
    })
}

struct MatMulQ8 {
    k: usize,
}

impl Kernel for MatMulQ8 {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let a = required(inputs, 0)?;
        let w = required(inputs, 1)?;
        if a.dtype != DType::F32 || w.dtype != DType::U8 {
            return Err(KernelError::invalid(format!("expects f32 A and u8 weights, got {} and {}", a.dtype, w.dtype)));
        }
        let last = a.shape.last().ok_or_else(|| KernelError::input(0, "A needs at least one dim"))?;
        if last.known().is_some_and(|d| d != self.k as i64) {
            return Err(KernelError::input(0, format!("last dim {last} is not k = {}", self.k)));
        }
        let [n, bytes] = w.shape else {
            return Err(KernelError::input(1, format!("weights must be 2-D, got {:?}", w.shape)));
        };
        if bytes.known().is_some_and(|b| b != row_bytes(self.k) as i64) {
            return Err(KernelError::input(1, format!("rows of {bytes} bytes do not hold k = {} weights", self.k)));
        }
        let mut shape: Vec<Dim> = a.shape[..a.shape.len() - 1].to_vec();
        shape.push(n.clone());
        Ok(vec![OutputInfo::new(DType::F32, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let a = required(inputs, 0)?;
        let w = required(inputs, 1)?;
        let k = self.k;
        let rb = row_bytes(k);
        let (&[n, bytes], Some(&last)) = (w.shape, a.shape.last()) else {
            return Err(KernelError::invalid("weights must be 2-D and A at least 1-D"));
        };
        if last != k || bytes != rb || w.data.len() != n * rb {
            return Err(KernelError::invalid(format!(
                "A {:?} and weights {:?} do not match k = {k}",
                a.shape, w.shape
            )));
        }
        let a = a.typed::<f32>()?;
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        let m = a.len() / k;
        let y = out.typed::<f32>()?;
        if y.len() != m * n {
            return Err(KernelError::invalid("output does not match the product"));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if m < PANEL_ROWS {
            dot_rows(a, w.data, k, n, y);
        } else {
            panels(a, w.data, k, n, y);
        }
        Ok(())
    }
}

/// Few rows of A (decode's one): every output is a dot product over blocks, W streamed once per
/// row of A in column chunks across threads.
fn dot_rows(a: &[f32], w: &[u8], k: usize, n: usize, y: &mut [f32]) {
    let rb = row_bytes(k);
    let chunk = n.div_ceil(rayon::current_num_threads() * 4).max(16);
    for (ar, yr) in a.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        yr.par_chunks_mut(chunk).enumerate().for_each(|(ci, out)| {
            for (jj, v) in out.iter_mut().enumerate() {
                let j = ci * chunk + jj;
                *v = dot(ar, &w[j * rb..(j + 1) * rb]);
            }
        });
    }
}

/// One row of A times one stored row of W.
fn dot(a: &[f32], row: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { dot_avx2(a, row) };
    }
    dot_portable(a, row)
}

/// [`dot_portable`] in AVX2 intrinsics: the same multiplies and adds in the same order (lane `l`
/// of a vector is lane `l` of the portable sums), so the results are the same bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], row: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = a.len() / BLOCK;
    let (scales, quants) = row.split_at(blocks * 4);
    assert!(quants.len() >= a.len() && scales.len() >= blocks * 4);
    let mut total = _mm256_setzero_ps();
    for b in 0..blocks {
        let scale = f32::from_le_bytes([scales[b * 4], scales[b * 4 + 1], scales[b * 4 + 2], scales[b * 4 + 3]]);
        let mut lanes = _mm256_setzero_ps();
        for t in 0..BLOCK / 8 {
            let at = b * BLOCK + t * 8;
            // SAFETY: `at + 8 <= a.len() <= quants.len()` (asserted above); unaligned loads.
            let q =
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(quants.as_ptr().add(at) as *const __m128i)));
            let x = _mm256_loadu_ps(a.as_ptr().add(at));
            lanes = _mm256_add_ps(lanes, _mm256_mul_ps(x, q));
        }
        total = _mm256_add_ps(total, _mm256_mul_ps(lanes, _mm256_set1_ps(scale)));
    }
    let mut t = [0f32; 8];
    _mm256_storeu_ps(t.as_mut_ptr(), total);
    ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]))
}

/// Eight partial sums per block, scaled into eight running sums, added up once at the end.
/// (Plain multiplies and adds, not fused: results must not depend on the CPU.)
#[inline(always)]
fn dot_portable(a: &[f32], row: &[u8]) -> f32 {
    let blocks = a.len() / BLOCK;
    let (scales, quants) = row.split_at(blocks * 4);
    let mut total = [0f32; 8];
    for ((av, q), s) in a.chunks_exact(BLOCK).zip(quants.chunks_exact(BLOCK)).zip(scales.chunks_exact(4)) {
        let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let mut lanes = [0f32; 8];
        for (a8, q8) in av.chunks_exact(8).zip(q.chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += a8[l] * (q8[l] as i8) as f32;
            }
        }
        for l in 0..8 {
            total[l] += lanes[l] * scale;
        }
    }
    ((total[0] + total[4]) + (total[1] + total[5])) + ((total[2] + total[6]) + (total[3] + total[7]))
}

/// Many rows of A: a panel of W's rows is dequantized once and multiplied with all of A by the
/// dense product, panels in parallel.
fn panels(a: &[f32], w: &[u8], k: usize, n: usize, y: &mut [f32]) {
    let m = a.len() / k;
    let rb = row_bytes(k);
    let results: Vec<Vec<f32>> = (0..n.div_ceil(PANEL))
        .into_par_iter()
        .map(|p| {
            let rows = PANEL.min(n - p * PANEL);
            let mut panel = vec![0f32; rows * k];
            for (r, dst) in panel.chunks_exact_mut(k).enumerate() {
                dequantize_row(&w[(p * PANEL + r) * rb..(p * PANEL + r + 1) * rb], dst);
            }
            let mut c = vec![0f32; m * rows];
            let (am, bm) = (Mat { data: a, rs: k, cs: 1 }, Mat { data: &panel, rs: 1, cs: k });
            gemm(m, rows, k, 1.0, am, bm, &mut c, false, false);
            c
        })
        .collect();
    for (p, c) in results.iter().enumerate() {
        let rows = c.len() / m;
        for i in 0..m {
            y[i * n + p * PANEL..i * n + p * PANEL + rows].copy_from_slice(&c[i * rows..(i + 1) * rows]);
        }
    }
}

/// The f32 weights of one stored row.
pub fn dequantize_row(row: &[u8], dst: &mut [f32]) {
    let blocks = dst.len() / BLOCK;
    let (scales, quants) = row.split_at(blocks * 4);
    for ((d, q), s) in dst.chunks_exact_mut(BLOCK).zip(quants.chunks_exact(BLOCK)).zip(scales.chunks_exact(4)) {
        let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        for (x, &v) in d.iter_mut().zip(q) {
            *x = (v as i8) as f32 * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Attrs;
    use kiln_formats::program::Attribute;

    fn weights(n: usize, k: usize) -> (Vec<f32>, Vec<u8>) {
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let mut q = vec![0u8; n * row_bytes(k)];
        for (src, dst) in w.chunks_exact(k).zip(q.chunks_exact_mut(row_bytes(k))) {
            quantize_row(src, dst);
        }
        (w, q)
    }

    fn product(a: &[f32], q: &[u8], m: usize, k: usize, n: usize) -> Vec<f32> {
        let attrs = [Attribute::int("k", k as i64)];
        let spec = OpSpec { op: MATMUL_Q8, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: Attrs(&attrs) };
        let kernel = build_kiln(&spec).unwrap().unwrap();
        let mut y = vec![0f32; m * n];
        let (a_shape, w_shape, y_shape) = ([m, k], [n, row_bytes(k)], [m, n]);
        kernel
            .run(
                &[
                    Some(TensorRef { dtype: DType::F32, shape: &a_shape, data: bytemuck::cast_slice(a) }),
                    Some(TensorRef { dtype: DType::U8, shape: &w_shape, data: q }),
                ],
                &mut [TensorMut { dtype: DType::F32, shape: &y_shape, data: bytemuck::cast_slice_mut(&mut y) }],
            )
            .unwrap();
        y
    }

    #[test]
    fn the_avx2_dot_equals_the_portable_one_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            let (_, q) = weights(5, 96);
            let a: Vec<f32> = (0..96).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
            for r in 0..5 {
                let row = &q[r * row_bytes(96)..(r + 1) * row_bytes(96)];
                // SAFETY: AVX2 checked above.
                assert_eq!(unsafe { dot_avx2(&a, row) }.to_bits(), dot_portable(&a, row).to_bits());
            }
        }
    }

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let (w, q) = weights(3, 64);
        let mut back = vec![0f32; 64];
        for r in 0..3 {
            dequantize_row(&q[r * row_bytes(64)..(r + 1) * row_bytes(64)], &mut back);
            for (b, (x, y)) in w[r * 64..(r + 1) * 64].chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (u, v) in x.iter().zip(y) {
                    assert!((u - v).abs() <= step / 2.0 + 1e-7, "row {r} block {b}: {u} vs {v}");
                }
            }
        }
        let mut zero = vec![0u8; row_bytes(32)];
        quantize_row(&[0.0; 32], &mut zero);
        dequantize_row(&zero, &mut back[..32]);
        assert!(back[..32].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn dot_and_panel_paths_equal_the_dequantized_product() {
        // Ragged sizes: n not a multiple of the panel or the thread chunks, k of several blocks.
        for (m, k, n) in [(1, 96, 37), (3, 64, 130), (9, 160, 70), (17, 32, 129)] {
            let (_, q) = weights(n, k);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
            let mut wd = vec![0f32; n * k];
            for (r, dst) in wd.chunks_exact_mut(k).enumerate() {
                dequantize_row(&q[r * row_bytes(k)..(r + 1) * row_bytes(k)], dst);
            }
            let expect: Vec<f32> = (0..m * n)
                .map(|x| (0..k).map(|t| a[(x / n) * k + t] as f64 * wd[(x % n) * k + t] as f64).sum::<f64>() as f32)
                .collect();
            let got = product(&a, &q, m, k, n);
            for (g, e) in got.iter().zip(&expect) {
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "m={m} k={k} n={n}: {g} vs {e}");
            }
        }
    }
}
