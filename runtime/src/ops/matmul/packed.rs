//! f32 weights packed at compile time (`kiln::MatMulPacked(A, P)`, attribute `n`): `A · W` with
//! W (`k × n`) stored as `⌈n / 32⌉` column panels, each `k` rows of [`PANEL`] consecutive floats
//! (`P[p][kk][j] = W[kk][32·p + j]`, zeros past column n). That is the layout the AVX-512
//! micro-kernel reads B in, so a prefill product packs nothing (packing a transposed weight cost
//! about as much per call as a tenth of the product); decode reads each panel as one sequential
//! stream.

use super::epilogue::{self, Epilogue};
use super::gemm::{gemm_from, has_avx2, BSource};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

/// Op type in the `kiln` domain.
pub const MATMUL_PACKED: &str = "MatMulPacked";
/// Columns of one stored panel.
pub const PANEL: usize = 32;
/// Rows of A from which the blocked product beats a pass over the panels per row.
const BLOCKED_ROWS: usize = 4;
/// Multiply-adds from which a product of few rows is split across threads.
const PAR_WORK: usize = 1 << 16;

/// Packs `w` (`k` rows of `n`, row-major) into `out` (`⌈n / 32⌉ · k · 32` floats) as
/// [`MatMulPacked`](self) stores it.
pub fn pack(w: &[f32], k: usize, n: usize, out: &mut [f32]) {
    assert!(w.len() == k * n && out.len() == n.div_ceil(PANEL) * k * PANEL, "pack: sizes");
    for (p, panel) in out.chunks_exact_mut(k * PANEL).enumerate() {
        let (j0, width) = (p * PANEL, PANEL.min(n - p * PANEL));
        for (kk, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
            dst[..width].copy_from_slice(&w[kk * n + j0..kk * n + j0 + width]);
            dst[width..].iter_mut().for_each(|d| *d = 0.0);
        }
    }
}

/// Prepares the kernel when `spec` is [`MATMUL_PACKED`].
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == MATMUL_PACKED).then(|| {
        let n = spec.attrs.req_int("n")?;
        match usize::try_from(n) {
            Ok(n) if n > 0 => Ok(Box::new(MatMulPacked { n }) as Box<dyn Kernel>),
            _ => Err(KernelError::attr("n", format!("{n} is not a positive column count"))),
        }
    })
}

struct MatMulPacked {
    n: usize,
}

impl MatMulPacked {
    /// `k` from the panels' shape, after checking it against `n`.
    fn panels_k(&self, shape: &[usize]) -> Result<usize, KernelError> {
        match shape {
            [p, k, w] if *p == self.n.div_ceil(PANEL) && *w == PANEL => Ok(*k),
            _ => Err(KernelError::input(
                1,
                format!("panels {shape:?} are not [{}, k, {PANEL}] for n = {}", self.n.div_ceil(PANEL), self.n),
            )),
        }
    }
}

impl Kernel for MatMulPacked {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let a = required(inputs, 0)?;
        let p = required(inputs, 1)?;
        if a.dtype != DType::F32 || p.dtype != DType::F32 {
            return Err(KernelError::invalid(format!("expects f32 A and panels, got {} and {}", a.dtype, p.dtype)));
        }
        let last = a.shape.last().ok_or_else(|| KernelError::input(0, "A needs at least one dim"))?;
        let known: Option<Vec<usize>> = p.shape.iter().map(|d| d.known().map(|v| v as usize)).collect();
        if let Some(shape) = known {
            let k = self.panels_k(&shape)?;
            if last.known().is_some_and(|d| d != k as i64) {
                return Err(KernelError::input(0, format!("last dim {last} is not the panels' k = {k}")));
            }
        }
        epilogue::infer(inputs, &Dim::Known(self.n as i64))?;
        let mut shape: Vec<Dim> = a.shape[..a.shape.len() - 1].to_vec();
        shape.push(Dim::Known(self.n as i64));
        Ok(vec![OutputInfo::new(DType::F32, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let a = required(inputs, 0)?;
        let p = required(inputs, 1)?;
        let k = self.panels_k(p.shape)?;
        if a.shape.last() != Some(&k) {
            return Err(KernelError::invalid(format!("A {:?} does not end in the panels' k = {k}", a.shape)));
        }
        let (a, panels) = (a.typed::<f32>()?, p.typed::<f32>()?);
        if panels.len() != self.n.div_ceil(PANEL) * k * PANEL {
            return Err(KernelError::input(1, format!("{} floats are not the panels' shape", panels.len())));
        }
        let n = self.n;
        let y = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?.typed::<f32>()?;
        let m = a.len().checked_div(k).unwrap_or(y.len() / n);
        if y.len() != m * n {
            return Err(KernelError::invalid("output does not match the product"));
        }
        let epilogue = Epilogue::new(inputs, m, n)?;
        if k == 0 {
            y.iter_mut().for_each(|v| *v = 0.0);
            epilogue.apply_rows(y);
            return Ok(());
        }
        if m == 0 {
            return Ok(());
        }
        if m >= BLOCKED_ROWS {
            gemm_from(m, n, k, a, &Panels { data: panels, k }, y);
            epilogue.apply_rows(y);
        } else {
            for (i, (ar, yr)) in a.chunks_exact(k).zip(y.chunks_exact_mut(n)).enumerate() {
                row(ar, panels, k, |first, ys| epilogue.apply(i, first, ys), yr);
            }
        }
        Ok(())
    }
}

/// Stored panels as the blocked product's B.
pub(crate) struct Panels<'a> {
    /// `⌈n / 32⌉ · k · 32` floats.
    pub data: &'a [f32],
    pub k: usize,
}

impl BSource<f32> for Panels<'_> {
    fn pack<const NR: usize>(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [f32]) {
        // Micro-kernels of another width copy rows of the stored panels into theirs.
        let k = self.k;
        for (q, panel) in out.chunks_exact_mut(kc * NR).take(nc.div_ceil(NR)).enumerate() {
            let j0 = jc + q * NR;
            let width = NR.min(jc + nc - j0);
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                for (jj, d) in dst.iter_mut().enumerate() {
                    let j = j0 + jj;
                    *d = if jj < width {
                        self.data[(j / PANEL) * k * PANEL + (pc + kk) * PANEL + j % PANEL]
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    fn prepacked(&self, pc: usize, jc: usize) -> Option<(&[f32], usize)> {
        jc.is_multiple_of(PANEL).then(|| (&self.data[(jc / PANEL) * self.k * PANEL + pc * PANEL..], self.k * PANEL))
    }
}

/// One row of A times every panel: `y[j] = Σ_kk a[kk] · W[kk][j]`, each output summed over k in
/// order with plain multiplies and adds, so every CPU (and the AVX2 build) gives the same bits;
/// then `finish(first, outputs)` on each chunk of outputs (the epilogue, while they are in cache).
fn row(a: &[f32], panels: &[f32], k: usize, finish: impl Fn(usize, &mut [f32]) + Sync, y: &mut [f32]) {
    let n = y.len();
    let per_panel = k * PANEL;
    let products = |ys: &mut [f32], ps: &[f32]| {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2.
            return unsafe { row_panels_avx2(a, ps, k, ys) };
        }
        row_panels(a, ps, k, ys)
    };
    let body = |(first, (ys, ps)): (usize, (&mut [f32], &[f32]))| {
        products(ys, ps);
        finish(first, ys);
    };
    if n * k >= PAR_WORK && rayon::current_num_threads() > 1 {
        // Whole panels per chunk, about four chunks per thread.
        let chunk = n.div_ceil(PANEL).div_ceil(rayon::current_num_threads() * 4).max(1) * PANEL;
        y.par_chunks_mut(chunk)
            .zip(panels.par_chunks(chunk / PANEL * per_panel))
            .enumerate()
            .for_each(|(i, pair)| body((i * chunk, pair)));
    } else {
        body((0, (y, panels)));
    }
}

/// [`row_panels`] compiled for AVX2: the same operations in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_panels_avx2(a: &[f32], panels: &[f32], k: usize, y: &mut [f32]) {
    row_panels(a, panels, k, y)
}

/// Outputs `y` (`⌈y.len() / 32⌉` panels of `panels`).
#[inline(always)]
fn row_panels(a: &[f32], panels: &[f32], k: usize, y: &mut [f32]) {
    for (ys, panel) in y.chunks_mut(PANEL).zip(panels.chunks_exact(k * PANEL)) {
        let mut acc = [0f32; PANEL];
        for (&av, w) in a.iter().zip(panel.chunks_exact(PANEL)) {
            for (s, &wv) in acc.iter_mut().zip(w) {
                *s += av * wv;
            }
        }
        ys.copy_from_slice(&acc[..ys.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Attrs;
    use kiln_formats::program::Attribute;

    fn run(a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>, KernelError> {
        run_with(a, w, None, None, m, k, n)
    }

    fn run_with(
        a: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let mut p = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
        pack(w, k, n, &mut p);
        let attrs = [Attribute::int("n", n as i64)];
        let spec = OpSpec { op: MATMUL_PACKED, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: Attrs(&attrs) };
        let kernel = build_kiln(&spec).unwrap()?;
        let mut y = vec![f32::NAN; m * n];
        let (a_shape, p_shape, y_shape) = ([m, k], [n.div_ceil(PANEL), k, PANEL], [m, n]);
        let (b_shape, r_shape) = ([bias.map_or(0, <[f32]>::len)], [m, n]);
        kernel.run(
            &[
                Some(TensorRef { dtype: DType::F32, shape: &a_shape, data: bytemuck::cast_slice(a) }),
                Some(TensorRef { dtype: DType::F32, shape: &p_shape, data: bytemuck::cast_slice(&p) }),
                bias.map(|b| TensorRef { dtype: DType::F32, shape: &b_shape, data: bytemuck::cast_slice(b) }),
                residual.map(|r| TensorRef { dtype: DType::F32, shape: &r_shape, data: bytemuck::cast_slice(r) }),
            ],
            &mut [TensorMut { dtype: DType::F32, shape: &y_shape, data: bytemuck::cast_slice_mut(&mut y) }],
        )?;
        Ok(y)
    }

    fn data(len: usize, s: f32) -> Vec<f32> {
        (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * s).collect()
    }

    #[test]
    fn the_bias_and_residual_are_added_to_each_finished_sum() {
        // One row serially and across threads' panel chunks (n·k over PAR_WORK), a few rows, and
        // the blocked product with enough outputs to add them across threads.
        for (m, k, n) in [(1, 70, 300), (1, 576, 300), (3, 33, 65), (4, 5, 7), (130, 64, 300)] {
            let (a, w) = (data(m * k, 0.01), data(k * n, 0.02));
            let (bias, residual) = (data(n, 0.3), data(m * n, 0.07));
            let plain = run(&a, &w, m, k, n).unwrap();
            for (b, r) in [(Some(&bias[..]), None), (None, Some(&residual[..])), (Some(&bias), Some(&residual))] {
                let want = epilogue::reference(&plain, b, r);
                assert_eq!(run_with(&a, &w, b, r, m, k, n).unwrap(), want, "{m}x{k}x{n}");
            }
        }
        let err = run_with(&[0.0; 8], &[0.0; 8 * 40], Some(&[0.0; 39]), None, 1, 8, 40).unwrap_err();
        assert!(err.to_string().contains("bias"), "{err}");
    }

    #[test]
    fn packed_products_equal_the_reference_on_ragged_sizes() {
        // One row (decode), a few, many (the blocked path, k over several depth blocks).
        for (m, k, n) in [(1, 70, 300), (1, 576, 33), (3, 33, 65), (4, 5, 7), (13, 600, 70), (130, 64, 96)] {
            let (a, w) = (data(m * k, 0.01), data(k * n, 0.02));
            let got = run(&a, &w, m, k, n).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let e: f64 = (0..k).map(|t| a[i * k + t] as f64 * w[t * n + j] as f64).sum();
                    let g = got[i * n + j] as f64;
                    assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{m}x{k}x{n} [{i},{j}]: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn the_row_path_is_the_same_bits_with_and_without_avx2() {
        let (k, n) = (100, 70);
        let (a, w) = (data(k, 0.01), data(k * n, 0.02));
        let mut p = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
        pack(&w, k, n, &mut p);
        let mut portable = vec![0f32; n];
        row_panels(&a, &p, k, &mut portable);
        let mut dispatched = vec![0f32; n];
        row(&a, &p, k, |_, _| {}, &mut dispatched);
        assert_eq!(portable, dispatched);
    }

    #[test]
    fn every_micro_kernel_reads_the_stored_panels() {
        let (m, k, n) = (29, 300, 80);
        let (a, w) = (data(m * k, 0.01), data(k * n, 0.02));
        let mut p = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
        pack(&w, k, n, &mut p);
        for (how, got) in super::super::gemm::gemm_from_each(m, n, k, &a, &Panels { data: &p, k }) {
            for (x, g) in got.iter().enumerate() {
                let (i, j) = (x / n, x % n);
                let e: f64 = (0..k).map(|t| a[i * k + t] as f64 * w[t * n + j] as f64).sum();
                assert!((*g as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()), "{how} [{i},{j}]: {g} vs {e}");
            }
        }
    }

    #[test]
    fn panels_of_the_wrong_shape_are_refused() {
        let attrs = [Attribute::int("n", 40)];
        let spec = OpSpec { op: MATMUL_PACKED, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: Attrs(&attrs) };
        let kernel = build_kiln(&spec).unwrap().unwrap();
        let (a, p) = (vec![0f32; 8], vec![0f32; 3 * 8 * PANEL]);
        let mut y = vec![0f32; 40];
        let err = kernel
            .run(
                &[
                    Some(TensorRef { dtype: DType::F32, shape: &[1, 8], data: bytemuck::cast_slice(&a) }),
                    Some(TensorRef { dtype: DType::F32, shape: &[3, 8, PANEL], data: bytemuck::cast_slice(&p) }),
                ],
                &mut [TensorMut { dtype: DType::F32, shape: &[1, 40], data: bytemuck::cast_slice_mut(&mut y) }],
            )
            .unwrap_err();
        assert!(err.to_string().contains("[2, k, 32]"), "{err}");
        let zero = [Attribute::int("n", 0)];
        assert!(build_kiln(&OpSpec { attrs: Attrs(&zero), ..spec }).unwrap().is_err());
    }
}

#[cfg(test)]
mod speed_probe {
    use super::*;

    #[test]
    #[ignore]
    fn packed_prefill_speed() {
        // (m, n, k, products per layer) of one 128-token SmolLM2 prefill and one GPT-2 prefill.
        type Shapes = &'static [(usize, usize, usize, f64)];
        let models: [(&str, Shapes); 2] = [
            ("smollm2", &[(128, 576, 576, 2.0), (128, 192, 576, 2.0), (128, 1536, 576, 2.0), (128, 576, 1536, 1.0)]),
            ("gpt2", &[(128, 2304, 768, 1.0), (128, 768, 768, 1.0), (128, 3072, 768, 1.0), (128, 768, 3072, 1.0)]),
        ];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (name, shapes) in models {
                let mut total = 0.0;
                for &(m, n, k, per_layer) in shapes {
                    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
                    let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
                    let mut p = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
                    pack(&w, k, n, &mut p);
                    let mut c = vec![0f32; m * n];
                    let mut best = f64::MAX;
                    pool.install(|| {
                        for _ in 0..40 {
                            let t = std::time::Instant::now();
                            gemm_from(m, n, k, &a, &Panels { data: &p, k }, &mut c);
                            best = best.min(t.elapsed().as_secs_f64());
                        }
                    });
                    total += best * per_layer;
                    let gflops = 2. * (m * n * k) as f64 / best / 1e9;
                    println!("{name} threads={threads} {m}x{n}x{k}: {:.3} ms {gflops:.1} GFLOP/s", best * 1e3);
                }
                println!("{name} threads={threads} one layer: {:.3} ms", total * 1e3);
            }
        }
    }
}
