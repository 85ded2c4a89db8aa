//! Products over weights converted at compile time (`kiln compile --weights q8|q4|f16|bf16`):
//! `A · Wᵀ` with W's `n` rows of `k` weights stored in blocks of [`BLOCK`], each row one
//! contiguous run of bytes in the format's layout ([`BlockFormat`]). The kernel reads that form
//! directly: decode (a few rows of A) takes dot products block by block; longer inputs take the
//! format's own product where it has one and the CPU runs it (q8 and q4 with AVX-512 VNNI,
//! `int_gemm`; bf16 on AMX tiles, `amx`), else dequantize a panel of W's rows at a time and hand
//! it to the dense product.

use super::epilogue::{self, Epilogue};
use super::gemm::{gemm_from, pack_b, BSource, Mat};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};
use rayon::prelude::*;
use std::marker::PhantomData;

/// Weights per block.
pub const BLOCK: usize = 32;
/// Rows of A from which the panel path beats block-by-block dot products.
const PANEL_ROWS: usize = 4;

/// A weight format: how a row of `k` weights is stored, and its two readers.
pub trait BlockFormat: Send + Sync + 'static {
    /// Op type of its product in the `kiln` domain.
    const OP: &'static str;
    /// The `--weights` name, also the suffix of quantized weights' names.
    const NAME: &'static str;
    /// Version of the op, and so of the row layout: a bundle whose op has another version stores
    /// rows this build would misread, so it is refused at load.
    const VERSION: i64 = 1;
    /// The row layout of this version, for errors.
    const LAYOUT: &'static str;
    /// Bytes of one stored row of `k` weights (`k` a multiple of [`BLOCK`]).
    fn row_bytes(k: usize) -> usize;
    /// Whether the format holds every one of `w` (finite, and for q8 and q4 within their
    /// half-float block parameters' range, for f16 within its own): the compiler keeps any
    /// other weight in f32.
    fn fits(_w: &[f32]) -> bool {
        true
    }
    /// Stores one row of weights (`src.len()` a multiple of [`BLOCK`]) into `row_bytes` bytes.
    fn quantize_row(src: &[f32], dst: &mut [u8]);
    /// The f32 weights of one stored row.
    fn dequantize_row(row: &[u8], dst: &mut [f32]) {
        Self::dequantize_blocks(row, dst.len(), 0, dst)
    }
    /// Weights `first * BLOCK..first * BLOCK + dst.len()` of one stored row of `k` weights
    /// (`dst.len()` a multiple of [`BLOCK`]): what the packed product expands one block of k at a
    /// time.
    fn dequantize_blocks(row: &[u8], k: usize, first: usize, dst: &mut [f32]);
    /// A row of A as [`BlockFormat::dot_rows`] reads it, made once for all of W's rows.
    type Prepared: Sync;
    /// Prepares one row of A (`k` values, a multiple of [`BLOCK`]).
    fn prepare(a: &[f32]) -> Self::Prepared;
    /// One prepared row of A (`k` values) times `out.len()` consecutive stored rows
    /// (`row_bytes(k)` bytes each): `out[r]` is the dot product with row `r`, the same bits
    /// whichever SIMD the CPU has and however many rows a call takes.
    fn dot_rows(a: &Self::Prepared, k: usize, rows: &[u8], out: &mut [f32]);
    /// `y = A · Wᵀ` for many rows of A (`m × k`) and `n` stored rows by the format's own product,
    /// when it has one the CPU runs (q8 and q4: integer dots on AVX-512 VNNI; bf16 and f16: AMX
    /// tiles); `false` (and `y` untouched) otherwise.
    fn native_product(_a: &[f32], _w: &[u8], _k: usize, _n: usize, _y: &mut [f32]) -> bool {
        false
    }
    /// A value of A as the many-row product multiplies it (tests' references).
    #[cfg(test)]
    fn a_as_multiplied(a: f32) -> f32 {
        a
    }
}

/// Prepares `F`'s product when `spec` is its op.
pub fn build_kiln<F: BlockFormat>(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == F::OP).then(|| {
        if spec.opset != F::VERSION {
            return Err(KernelError::invalid(format!(
                "{}::{} version {}: this kiln reads version {} only, whose rows differ ({}); recompile the bundle",
                spec.domain,
                F::OP,
                spec.opset,
                F::VERSION,
                F::LAYOUT
            )));
        }
        let k = spec.attrs.req_int("k")?;
        match usize::try_from(k) {
            Ok(k) if k > 0 && k % BLOCK == 0 => {
                Ok(Box::new(MatMulQuantized::<F> { k, format: PhantomData }) as Box<dyn Kernel>)
            }
            _ => Err(KernelError::attr("k", format!("{k} is not a positive multiple of {BLOCK}"))),
        }
    })
}

struct MatMulQuantized<F> {
    k: usize,
    format: PhantomData<F>,
}

impl<F: BlockFormat> Kernel for MatMulQuantized<F> {
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
        if bytes.known().is_some_and(|b| b != F::row_bytes(self.k) as i64) {
            return Err(KernelError::input(1, format!("rows of {bytes} bytes do not hold k = {} weights", self.k)));
        }
        epilogue::infer(inputs, n)?;
        let mut shape: Vec<Dim> = a.shape[..a.shape.len() - 1].to_vec();
        shape.push(n.clone());
        Ok(vec![OutputInfo::new(DType::F32, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let a = required(inputs, 0)?;
        let w = required(inputs, 1)?;
        let k = self.k;
        let rb = F::row_bytes(k);
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
        let epilogue = Epilogue::new(inputs, m, n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if m < PANEL_ROWS {
            dot_rows::<F>(a, w.data, k, n, &epilogue, y);
        } else {
            if !F::native_product(a, w.data, k, n, y) {
                panels::<F>(a, w.data, k, n, y);
            }
            epilogue.apply_rows(y);
        }
        Ok(())
    }
}

/// Few rows of A (decode's one): every output is a dot product over blocks (then its bias and
/// residual), W streamed once per row of A in column chunks across threads.
fn dot_rows<F: BlockFormat>(a: &[f32], w: &[u8], k: usize, n: usize, epilogue: &Epilogue, y: &mut [f32]) {
    let rb = F::row_bytes(k);
    // A multiple of 8 rows per chunk: whole multi-row passes, a ragged one only at the end.
    let chunk = n.div_ceil(rayon::current_num_threads() * 4).max(16).next_multiple_of(8);
    for (row, (ar, yr)) in a.chunks_exact(k).zip(y.chunks_exact_mut(n)).enumerate() {
        let ar = F::prepare(ar);
        yr.par_chunks_mut(chunk).zip(w.par_chunks(chunk * rb)).enumerate().for_each(|(i, (out, rows))| {
            F::dot_rows(&ar, k, rows, out);
            epilogue.apply(row, i * chunk, out);
        });
    }
}

/// Many rows of A: the blocked dense product, with each thread expanding the rows of W it
/// multiplies straight into its packed panels (one block of k at a time), so no dequantized
/// copy of W is made and nothing is packed twice.
fn panels<F: BlockFormat>(a: &[f32], w: &[u8], k: usize, n: usize, y: &mut [f32]) {
    let m = a.len() / k;
    gemm_from(m, n, k, a, &Stored::<F> { w, k, format: PhantomData }, y);
}

/// W's `n` stored rows as the product's B (`k × n`: column `j` is row `j` of W).
struct Stored<'a, F> {
    w: &'a [u8],
    k: usize,
    format: PhantomData<F>,
}

thread_local! {
    /// One panel's rows of W expanded to f32 before they are transposed into the packed panel:
    /// kept per thread, as prefill calls this hundreds of times.
    static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<F: BlockFormat> BSource<f32> for Stored<'_, F> {
    fn pack<const NR: usize>(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [f32]) {
        assert!(pc.is_multiple_of(BLOCK) && kc.is_multiple_of(BLOCK), "k blocks of whole weight blocks");
        let rb = F::row_bytes(self.k);
        ROWS.with_borrow_mut(|rows| {
            if rows.len() < NR * kc {
                rows.resize(NR * kc, 0.0);
            }
            for (p, panel) in out.chunks_exact_mut(kc * NR).take(nc.div_ceil(NR)).enumerate() {
                let j0 = jc + p * NR;
                let width = NR.min(jc + nc - j0);
                for (r, dst) in rows.chunks_exact_mut(kc).take(width).enumerate() {
                    F::dequantize_blocks(&self.w[(j0 + r) * rb..(j0 + r + 1) * rb], self.k, pc / BLOCK, dst);
                }
                let expanded = Mat { data: &rows[..width * kc], rs: 1, cs: kc };
                pack_b::<f32, NR>(expanded, 0, kc, 0, width, panel);
            }
        });
    }
}

/// `n` rows of `k` deterministic test weights, and their rows stored in format `F`.
#[cfg(test)]
pub(crate) fn test_weights<F: BlockFormat>(n: usize, k: usize) -> (Vec<f32>, Vec<u8>) {
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
    let mut q = vec![0u8; n * F::row_bytes(k)];
    for (src, dst) in w.chunks_exact(k).zip(q.chunks_exact_mut(F::row_bytes(k))) {
        F::quantize_row(src, dst);
    }
    (w, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Attrs;
    use crate::ops::matmul::{half16::BF16, half16::F16, q4::Q4, q8::Q8};
    use kiln_formats::program::Attribute;

    fn product<F: BlockFormat>(a: &[f32], q: &[u8], m: usize, k: usize, n: usize) -> Vec<f32> {
        product_with::<F>(a, q, None, None, m, k, n).unwrap()
    }

    fn product_with<F: BlockFormat>(
        a: &[f32],
        q: &[u8],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let attrs = [Attribute::int("k", k as i64)];
        let spec = OpSpec { op: F::OP, domain: crate::ops::KILN_DOMAIN, opset: F::VERSION, attrs: Attrs(&attrs) };
        let kernel = build_kiln::<F>(&spec).unwrap().unwrap();
        let mut y = vec![0f32; m * n];
        let (a_shape, w_shape, y_shape) = ([m, k], [n, F::row_bytes(k)], [m, n]);
        let (b_shape, r_shape) = ([bias.map_or(0, <[f32]>::len)], [m, n]);
        kernel.run(
            &[
                Some(TensorRef { dtype: DType::F32, shape: &a_shape, data: bytemuck::cast_slice(a) }),
                Some(TensorRef { dtype: DType::U8, shape: &w_shape, data: q }),
                bias.map(|b| TensorRef { dtype: DType::F32, shape: &b_shape, data: bytemuck::cast_slice(b) }),
                residual.map(|r| TensorRef { dtype: DType::F32, shape: &r_shape, data: bytemuck::cast_slice(r) }),
            ],
            &mut [TensorMut { dtype: DType::F32, shape: &y_shape, data: bytemuck::cast_slice_mut(&mut y) }],
        )?;
        Ok(y)
    }

    #[test]
    fn the_bias_and_residual_are_added_to_each_finished_sum_in_every_format() {
        fn check<F: BlockFormat>() {
            // Decode's row and its thread chunks (n = 300), a few rows, and the many-row paths.
            for (m, k, n) in [(1, 64, 300), (3, 96, 37), (5, 64, 130), (40, 128, 300)] {
                let (_, q) = test_weights::<F>(n, k);
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
                let bias: Vec<f32> = (0..n).map(|j| (j % 17) as f32 * 0.25 - 2.0).collect();
                let residual: Vec<f32> = (0..m * n).map(|j| (j % 11) as f32 * 0.5 - 3.0).collect();
                let plain = product::<F>(&a, &q, m, k, n);
                for (b, r) in [(Some(&bias[..]), None), (None, Some(&residual[..])), (Some(&bias), Some(&residual))] {
                    let want = epilogue::reference(&plain, b, r);
                    let got = product_with::<F>(&a, &q, b, r, m, k, n).unwrap();
                    assert_eq!(got, want, "{} m={m} k={k} n={n}", F::NAME);
                }
            }
            let (_, q) = test_weights::<F>(8, 32);
            let err = product_with::<F>(&[0.0; 32], &q, Some(&[0.0; 7]), None, 1, 32, 8).unwrap_err();
            assert!(err.to_string().contains("bias"), "{err}");
        }
        check::<Q8>();
        check::<Q4>();
        check::<F16>();
        check::<BF16>();
    }

    fn dot_and_panel_paths_equal_the_dequantized_product<F: BlockFormat>() {
        // Ragged sizes: n not a multiple of the panel or the thread chunks, k of several blocks.
        for (m, k, n) in [(1, 96, 37), (3, 64, 130), (9, 160, 70), (17, 32, 129)] {
            let (_, q) = test_weights::<F>(n, k);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
            let mut wd = vec![0f32; n * k];
            for (r, dst) in wd.chunks_exact_mut(k).enumerate() {
                F::dequantize_row(&q[r * F::row_bytes(k)..(r + 1) * F::row_bytes(k)], dst);
            }
            // The many-row paths may round A first (bf16 and f16 on AMX tiles).
            let read: Vec<f32> =
                if m < PANEL_ROWS { a.clone() } else { a.iter().map(|&v| F::a_as_multiplied(v)).collect() };
            let expect: Vec<f32> = (0..m * n)
                .map(|x| (0..k).map(|t| read[(x / n) * k + t] as f64 * wd[(x % n) * k + t] as f64).sum::<f64>() as f32)
                .collect();
            let got = product::<F>(&a, &q, m, k, n);
            for (g, e) in got.iter().zip(&expect) {
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{} m={m} k={k} n={n}: {g} vs {e}", F::NAME);
            }
        }
    }

    /// The packed product over stored rows, with every micro-kernel the CPU has: k of several
    /// blocks of the product's depth (the expansion starts mid-row), n off the panel width.
    fn stored_rows_pack_like_their_dequantized_copy<F: BlockFormat>() {
        for (m, k, n) in [(13, 544, 70), (30, 96, 33), (5, 288, 64)] {
            let (_, q) = test_weights::<F>(n, k);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
            let mut wd = vec![0f32; n * k];
            for (r, dst) in wd.chunks_exact_mut(k).enumerate() {
                F::dequantize_row(&q[r * F::row_bytes(k)..(r + 1) * F::row_bytes(k)], dst);
            }
            let expect: Vec<f64> = (0..m * n)
                .map(|x| (0..k).map(|t| a[(x / n) * k + t] as f64 * wd[(x % n) * k + t] as f64).sum::<f64>())
                .collect();
            let stored = Stored::<F> { w: &q, k, format: PhantomData };
            for (how, got) in super::super::gemm::gemm_from_each(m, n, k, &a, &stored) {
                for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
                    let ok = (*g as f64 - e).abs() <= 1e-4 * (1.0 + e.abs());
                    assert!(ok, "{} {how} m={m} k={k} n={n} [{i}]: {g} vs {e}", F::NAME);
                }
            }
        }
    }

    /// q8's and q4's version 1 rows held f32 block parameters: a bundle holding them is refused
    /// when its kernels are built, naming the version and what to do, not misread.
    #[test]
    fn an_older_row_layout_is_refused_by_version() {
        fn refused<F: BlockFormat>() -> String {
            let attrs = [Attribute::int("k", 64)];
            let spec = OpSpec { op: F::OP, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: Attrs(&attrs) };
            match build_kiln::<F>(&spec) {
                Some(Err(e)) => e.to_string(),
                _ => panic!("{} version 1 was accepted", F::OP),
            }
        }
        for msg in [refused::<Q8>(), refused::<Q4>()] {
            assert!(msg.contains("version 1") && msg.contains("version 2"), "{msg}");
            assert!(msg.ends_with("recompile the bundle"), "{msg}");
        }
    }

    #[test]
    fn stored_rows_of_every_format_pack_like_their_dequantized_copy() {
        stored_rows_pack_like_their_dequantized_copy::<Q8>();
        stored_rows_pack_like_their_dequantized_copy::<Q4>();
        stored_rows_pack_like_their_dequantized_copy::<F16>();
        stored_rows_pack_like_their_dequantized_copy::<BF16>();
    }

    #[test]
    fn blocks_of_a_row_expand_as_the_whole_row_does() {
        fn check<F: BlockFormat>() {
            let k = 160;
            let (_, q) = test_weights::<F>(1, k);
            let mut whole = vec![0f32; k];
            F::dequantize_row(&q, &mut whole);
            for (first, count) in [(0, 5), (1, 2), (4, 1), (2, 3)] {
                let mut part = vec![0f32; count * BLOCK];
                F::dequantize_blocks(&q, k, first, &mut part);
                assert_eq!(part, whole[first * BLOCK..(first + count) * BLOCK], "{} {first}+{count}", F::NAME);
            }
        }
        check::<Q8>();
        check::<Q4>();
        check::<F16>();
        check::<BF16>();
    }

    /// `cargo test -p kiln-runtime --release prefill_product_speed -- --ignored --nocapture`:
    /// SmolLM2's prefill shapes (128 rows of A), the f32 panels against the format's native
    /// product (with `KILN_INT_ONLY` set, the native product alone, for profiling it).
    #[test]
    #[ignore]
    fn prefill_product_speed() {
        fn time(reps: usize, mut f: impl FnMut()) -> f64 {
            f();
            let t = std::time::Instant::now();
            (0..reps).for_each(|_| f());
            t.elapsed().as_secs_f64() / reps as f64
        }
        fn shapes<F: BlockFormat>() {
            if std::env::var("KILN_FORMAT").is_ok_and(|f| f != F::NAME) {
                return;
            }
            for (k, n) in [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)] {
                let m = 128;
                let (_, q) = test_weights::<F>(n, k);
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05).collect();
                let mut y = vec![0f32; m * n];
                let reps = (2_000_000_000 / (m * n * k)).max(2);
                let panel = if std::env::var_os("KILN_INT_ONLY").is_some() {
                    f64::NAN
                } else {
                    time(reps, || panels::<F>(&a, &q, k, n, &mut y))
                };
                let mut int = f64::NAN;
                if F::native_product(&a, &q, k, n, &mut y) {
                    int = time(reps, || assert!(F::native_product(&a, &q, k, n, &mut y)));
                }
                let gflops = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
                println!(
                    "{} k={k} n={n}: panels {:.3} ms ({:.0} GFLOP/s), native {:.3} ms ({:.0} GFLOP/s), {:.2}x",
                    F::NAME,
                    panel * 1e3,
                    gflops(panel),
                    int * 1e3,
                    gflops(int),
                    panel / int
                );
            }
        }
        shapes::<Q8>();
        shapes::<Q4>();
        shapes::<F16>();
        shapes::<BF16>();
    }

    /// An infinite input gives the f32 product's infinite sums whichever path takes it (f16's
    /// split tile product would give NaN, so it hands such an A to the panels).
    #[test]
    fn an_infinite_input_gives_infinite_sums_with_16_bit_weights() {
        fn check<F: BlockFormat>() {
            let (m, k, n) = (16, 32, 16);
            let mut row = vec![0u8; F::row_bytes(k)];
            F::quantize_row(&[0.5; 32], &mut row);
            let w = row.repeat(n);
            let mut a = vec![1.0f32; m * k];
            a[3 * k + 4] = f32::INFINITY;
            let y = product::<F>(&a, &w, m, k, n);
            assert!(y[3 * n..4 * n].iter().all(|&v| v == f32::INFINITY), "{}: {:?}", F::NAME, &y[3 * n..4 * n]);
            assert!(y[..3 * n].iter().all(|&v| v == 16.0), "{}", F::NAME);
        }
        check::<F16>();
        check::<BF16>();
    }

    #[test]
    fn q8_dot_and_panel_paths_equal_the_dequantized_product() {
        dot_and_panel_paths_equal_the_dequantized_product::<Q8>();
    }

    #[test]
    fn q4_dot_and_panel_paths_equal_the_dequantized_product() {
        dot_and_panel_paths_equal_the_dequantized_product::<Q4>();
    }

    #[test]
    fn f16_dot_and_panel_paths_equal_the_dequantized_product() {
        dot_and_panel_paths_equal_the_dequantized_product::<F16>();
    }

    #[test]
    fn bf16_dot_and_panel_paths_equal_the_dequantized_product() {
        dot_and_panel_paths_equal_the_dequantized_product::<BF16>();
    }
}
