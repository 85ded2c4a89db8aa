//! Softmax, LogSoftmax and Hardmax. Before opset 13 the input is coerced to 2-D at `axis`
//! (`[prod(dims < axis), prod(dims >= axis)]`, default axis 1) and each row is normalised;
//! from opset 13 the op works along the one axis given (default -1).

use super::PAR_MIN;
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
#[cfg(target_arch = "x86_64")]
use crate::ops::matmul::gemm::has_avx2;
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::ops::reduce::split_axis;
use crate::ops::unary::expf::exp;
use crate::view::{TensorMut, TensorRef};
use rayon::prelude::*;

/// Which of the three ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Soft,
    Log,
    Hard,
}

struct Softmax {
    mode: Mode,
    axis: i64,
    coerce_2d: bool,
}

pub(super) fn build(spec: &OpSpec, mode: Mode) -> Result<Box<dyn Kernel>, KernelError> {
    let coerce_2d = spec.opset < 13;
    Ok(Box::new(Softmax { mode, axis: spec.attrs.int("axis", if coerce_2d { 1 } else { -1 })?, coerce_2d }))
}

impl Softmax {
    /// (outer, n, inner) for the op's view of `rank` dims.
    fn layout(&self, shape: &[usize]) -> Result<(usize, usize, usize), KernelError> {
        if self.coerce_2d {
            // Opset < 13 accepts axis == rank (an empty second dim set, product 1).
            let r = shape.len() as i64;
            let a = if self.axis < 0 { self.axis + r } else { self.axis };
            if a < 0 || a > r {
                return Err(KernelError::attr("axis", format!("{} is out of range for rank {r}", self.axis)));
            }
            let a = a as usize;
            Ok((shape[..a].iter().product(), shape[a..].iter().product(), 1))
        } else {
            Ok(split_axis(shape, normalize_axis(self.axis, shape.len())?))
        }
    }
}

impl Kernel for Softmax {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !x.dtype.is_float() {
            return Err(KernelError::input(0, format!("{} is not supported", x.dtype)));
        }
        // Only the axis range matters here; sizes are irrelevant.
        self.layout(&vec![1; x.shape.len()])?;
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let dims = self.layout(x.shape)?;
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != x.dtype || out.data.len() != x.data.len() {
            return Err(KernelError::invalid("output does not match the input"));
        }
        let mode = self.mode;
        crate::with_float!(x.dtype, T => softmax(x.typed::<T>()?, out.typed::<T>()?, dims, mode),
            _ => return Err(KernelError::unsupported(format!("Softmax on {}", x.dtype))));
        Ok(())
    }
}

fn softmax<T: Float>(x: &[T], y: &mut [T], (outer, n, inner): (usize, usize, usize), mode: Mode) {
    if n == 0 || outer == 0 || inner == 0 {
        return;
    }
    if inner == 1 {
        if x.len() >= PAR_MIN && outer > 1 {
            x.par_chunks(n).zip(y.par_chunks_mut(n)).for_each(|(xr, yr)| row(xr, yr, mode));
        } else {
            for (xr, yr) in x.chunks(n).zip(y.chunks_mut(n)) {
                row(xr, yr, mode);
            }
        }
        return;
    }
    let block = n * inner;
    let body = |xb: &[T], yb: &mut [T]| columns(xb, yb, n, inner, mode);
    if x.len() >= PAR_MIN && outer > 1 {
        x.par_chunks(block).zip(y.par_chunks_mut(block)).for_each(|(xb, yb)| body(xb, yb));
    } else {
        for (xb, yb) in x.chunks(block).zip(y.chunks_mut(block)) {
            body(xb, yb);
        }
    }
}

/// One contiguous row. f32 rows take [`row_f32`]; other types (and Hardmax, which needs the
/// arg max) the generic loop.
pub(crate) fn row<T: Float>(x: &[T], y: &mut [T], mode: Mode) {
    if mode != Mode::Hard {
        if let Some((xf, yf)) = as_f32(x, y) {
            return row_f32(xf, yf, mode);
        }
    }
    let mut m = <T::Acc as AccFloat>::neg_infinity();
    let mut arg = 0;
    for (i, v) in x.iter().enumerate() {
        let v = v.to_acc();
        if v > m {
            m = v;
            arg = i;
        }
    }
    match mode {
        Mode::Hard => {
            for (i, d) in y.iter_mut().enumerate() {
                *d = T::from_acc(if i == arg { T::Acc::ONE } else { T::Acc::ZERO });
            }
        }
        Mode::Soft => {
            let mut s = T::Acc::ZERO;
            for (v, d) in x.iter().zip(y.iter_mut()) {
                let e = (v.to_acc() - m).exp();
                s += e;
                *d = T::from_acc(e);
            }
            let inv = T::Acc::ONE / s;
            for d in y.iter_mut() {
                *d = T::from_acc(d.to_acc() * inv);
            }
        }
        Mode::Log => {
            let mut s = T::Acc::ZERO;
            for v in x {
                s += (v.to_acc() - m).exp();
            }
            let ls = s.ln();
            for (v, d) in x.iter().zip(y.iter_mut()) {
                *d = T::from_acc(v.to_acc() - m - ls);
            }
        }
    }
}

/// `x` and `y` as f32 slices when `T` is f32.
fn as_f32<'a, T: Float>(x: &'a [T], y: &'a mut [T]) -> Option<(&'a [f32], &'a mut [f32])> {
    // The type check matters: f16 pairs would cast to f32 just as readily.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| (bytemuck::cast_slice(x), bytemuck::cast_slice_mut(y)))
}

/// Independent accumulators for the f32 max and sum: enough for one AVX2 register, and a fixed
/// count (not the CPU's vector width) so the sum's rounding is the same on every machine.
const LANES: usize = 8;

/// Softmax or LogSoftmax of an f32 row: the max and the sum in [`LANES`] lanes, exps with the
/// branch-free [`exp`] (libm's `expf` is a scalar call, and dominated attention's softmax).
/// As in the generic loop, a NaN anywhere (or an all -inf row, or +inf) makes the whole row NaN.
fn row_f32(x: &[f32], y: &mut [f32], mode: Mode) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { row_f32_avx2(x, y, mode) };
    }
    row_f32_body(x, y, mode)
}

/// [`row_f32_body`] compiled for AVX2: the same operations in the same order (no FMA, which
/// Rust never contracts to anyway), so the bits do not depend on the CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_f32_avx2(x: &[f32], y: &mut [f32], mode: Mode) {
    row_f32_body(x, y, mode)
}

/// The body of [`row_f32`], inlined into the AVX2 and the baseline build.
#[inline(always)]
fn row_f32_body(x: &[f32], y: &mut [f32], mode: Mode) {
    let m = max_lanes(x);
    // Written to y first, in a loop of its own, because that is the loop LLVM vectorizes.
    for (d, &v) in y.iter_mut().zip(x) {
        let t = v - m;
        // exp is 0 below -104 anyway, but computing it there multiplies down into the subnormal
        // range, which the CPU handles in microcode at many times the cost: masked (-inf) scores
        // made that the common case and doubled attention's softmax time. So those lanes take
        // exp(0) and are then set to 0.
        let far = t < UNDERFLOW;
        let e = exp(if far { 0.0 } else { t });
        *d = if far { 0.0 } else { e };
    }
    let s = sum_lanes(y);
    if mode == Mode::Log {
        let ls = s.ln();
        for (d, &v) in y.iter_mut().zip(x) {
            *d = v - m - ls;
        }
    } else {
        let inv = 1.0 / s;
        for d in y.iter_mut() {
            *d *= inv;
        }
    }
}

/// Below this, [`exp`] returns 0 (its own clamp).
const UNDERFLOW: f32 = -104.0;

/// The largest non-NaN value (-inf if none), like the generic loop's `v > m` scan: NaNs are
/// skipped here and surface through `exp(NaN - m)` instead.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let pick = |m: f32, v: f32| if v > m { v } else { m };
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in m.iter_mut().zip(c) {
            *a = pick(*a, v);
        }
    }
    for (a, &v) in m.iter_mut().zip(chunks.remainder()) {
        *a = pick(*a, v);
    }
    m.into_iter().fold(f32::NEG_INFINITY, pick)
}

/// Σ x with element i added into lane i mod [`LANES`] and the lanes combined pairwise.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut s = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in s.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in s.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    let h: [f32; 4] = std::array::from_fn(|i| s[i] + s[i + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Columns that keep their running max and sum together.
const COLS: usize = 64;

/// One `[n, inner]` block, normalised along n, a chunk of columns at a time.
fn columns<T: Float>(x: &[T], y: &mut [T], n: usize, inner: usize, mode: Mode) {
    let mut c0 = 0;
    while c0 < inner {
        let w = COLS.min(inner - c0);
        let mut m = [<T::Acc as AccFloat>::neg_infinity(); COLS];
        let mut arg = [0usize; COLS];
        for j in 0..n {
            let r = &x[j * inner + c0..][..w];
            for (c, v) in r.iter().enumerate() {
                let v = v.to_acc();
                if v > m[c] {
                    m[c] = v;
                    arg[c] = j;
                }
            }
        }
        let mut s = [T::Acc::ZERO; COLS];
        if mode != Mode::Hard {
            for j in 0..n {
                let r = &x[j * inner + c0..][..w];
                for (c, v) in r.iter().enumerate() {
                    s[c] += (v.to_acc() - m[c]).exp();
                }
            }
        }
        for j in 0..n {
            let r = &x[j * inner + c0..][..w];
            let d = &mut y[j * inner + c0..][..w];
            for (c, (v, o)) in r.iter().zip(d.iter_mut()).enumerate() {
                let v = v.to_acc();
                *o = T::from_acc(match mode {
                    Mode::Soft => (v - m[c]).exp() / s[c],
                    Mode::Log => v - m[c] - s[c].ln(),
                    Mode::Hard => {
                        if arg[c] == j {
                            T::Acc::ONE
                        } else {
                            T::Acc::ZERO
                        }
                    }
                });
            }
        }
        c0 += w;
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::reduce::testutil::*;
    use kiln_formats::{DType, Dim, Tensor};

    fn sm(v: &[f32]) -> Vec<f32> {
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = v.iter().map(|x| (x - m).exp()).sum();
        v.iter().map(|x| (x - m).exp() / s).collect()
    }

    #[test]
    fn softmax_last_axis_and_middle_axis() {
        let v: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin() * 3.).collect();
        let x = Tensor::from_vec(&[2, 3, 4], v.clone());
        let y = run1("Softmax", 13, &[], vec![Some(x.clone())]);
        let want: Vec<f32> = v.chunks(4).flat_map(sm).collect();
        assert_close(&f32s(&y), &want, 1e-6);
        // Axis 1 of [2, 3, 4]: columns of 3 elements with stride 4.
        let y = run1("Softmax", 13, &[int("axis", 1)], vec![Some(x.clone())]);
        let mut want = vec![0f32; 24];
        for o in 0..2 {
            for i in 0..4 {
                let col: Vec<f32> = (0..3).map(|j| v[o * 12 + j * 4 + i]).collect();
                for (j, s) in sm(&col).into_iter().enumerate() {
                    want[o * 12 + j * 4 + i] = s;
                }
            }
        }
        assert_close(&f32s(&y), &want, 1e-6);
        let y = run1("LogSoftmax", 13, &[int("axis", 1)], vec![Some(x.clone())]);
        let lw: Vec<f32> = want.iter().map(|w| w.ln()).collect();
        assert_close(&f32s(&y), &lw, 1e-5);
        let y = run1("Hardmax", 13, &[int("axis", 1)], vec![Some(x)]);
        assert_eq!(f32s(&y).iter().sum::<f32>(), 8.);
    }

    #[test]
    fn softmax_opset11_coerces_to_2d() {
        let v: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).cos()).collect();
        let x = Tensor::from_vec(&[2, 3, 4], v.clone());
        let y = run1("Softmax", 11, &[], vec![Some(x.clone())]);
        let want: Vec<f32> = v.chunks(12).flat_map(sm).collect();
        assert_close(&f32s(&y), &want, 1e-6);
        let y = run1("LogSoftmax", 11, &[int("axis", 0)], vec![Some(x)]);
        let want: Vec<f32> = sm(&v).iter().map(|w| w.ln()).collect();
        assert_close(&f32s(&y), &want, 1e-5);
    }

    #[test]
    fn softmax_large_and_half() {
        let x = Tensor::from_vec(&[3], vec![1000f32, 1000., -1000.]);
        assert_close(&f32s(&run1("Softmax", 13, &[], vec![Some(x)])), &[0.5, 0.5, 0.], 1e-6);
        let h: Vec<half::f16> = [1f32, 2., 3.].iter().map(|&v| half::f16::from_f32(v)).collect();
        let y = run1("Softmax", 13, &[], vec![Some(Tensor::from_vec(&[3], h))]);
        assert_close(&f32s(&y), &sm(&[1., 2., 3.]), 1e-3);
    }

    /// Softmax and LogSoftmax of `x` in f64.
    fn reference(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
        (x.iter().map(|&v| (v as f64 - m).exp() / s).collect(), x.iter().map(|&v| v as f64 - m - s.ln()).collect())
    }

    #[test]
    fn f32_rows_match_f64() {
        use super::{row, Mode};
        for n in [1usize, 7, 8, 9, 64, 129, 1000] {
            let mut cases: Vec<Vec<f32>> = Vec::new();
            cases.push((0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect());
            // Causal-mask rows: the first k entries kept, the rest -inf (k = n: no mask).
            for k in [1, n.div_ceil(2), n] {
                cases.push(
                    (0..n).map(|i| if i < k { (i as f32 * 0.71).sin() * 8.0 } else { f32::NEG_INFINITY }).collect(),
                );
            }
            // One entry left, and entries so far below the max that their exps underflow.
            let mut one = vec![f32::NEG_INFINITY; n];
            one[n / 2] = -3.5;
            cases.push(one);
            cases.push((0..n).map(|i| if i % 3 == 0 { -1e30 } else { 50.0 - i as f32 }).collect());
            for x in &cases {
                let (want, want_log) = reference(x);
                let mut y = vec![0f32; n];
                row(x, &mut y, Mode::Soft);
                for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
                    // exp is within 2 ulp and the sum and the scaling add a few roundings more;
                    // subnormal outputs have ulps of a fixed size, hence the floor.
                    let tol = 8.0 * f32::EPSILON as f64 * w.max(f32::MIN_POSITIVE as f64);
                    assert!((g as f64 - w).abs() <= tol, "n {n} [{i}]: {g} vs {w}, {x:?}");
                }
                let total: f64 = y.iter().map(|&v| v as f64).sum();
                assert!((total - 1.0).abs() < 1e-5, "n {n}: sums to {total}");
                row(x, &mut y, Mode::Log);
                for (i, (&g, &w)) in y.iter().zip(&want_log).enumerate() {
                    if w == f64::NEG_INFINITY {
                        assert_eq!(g, f32::NEG_INFINITY, "n {n} [{i}]");
                    } else {
                        assert!(
                            (g as f64 - w).abs() <= 4.0 * f32::EPSILON as f64 * w.abs().max(1.0),
                            "n {n} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f32_rows_that_cannot_normalise_are_nan_as_in_the_generic_loop() {
        use super::{row, Mode};
        use half::f16;
        for n in [1usize, 7, 9, 64] {
            let base: Vec<f32> = (0..n).map(|i| i as f32 * 0.25).collect();
            let mut nan = base.clone();
            nan[n - 1] = f32::NAN;
            let mut inf = base.clone();
            inf[n / 2] = f32::INFINITY;
            for x in [nan, inf, vec![f32::NEG_INFINITY; n]] {
                for mode in [Mode::Soft, Mode::Log] {
                    let mut y = vec![0f32; n];
                    row(&x, &mut y, mode);
                    assert!(y.iter().all(|v| v.is_nan()), "{mode:?} {x:?}: {y:?}");
                    // f16 goes through the generic loop: the same outcome.
                    let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                    let mut hy = vec![f16::ZERO; n];
                    row(&h, &mut hy, mode);
                    assert!(hy.iter().all(|v| v.is_nan()), "{mode:?} f16 {x:?}");
                }
            }
        }
    }

    #[test]
    fn exp_is_zero_where_rows_skip_it() {
        use super::{exp, UNDERFLOW};
        // exp clamps its argument at UNDERFLOW, so everything below gives exp(UNDERFLOW).
        for t in [UNDERFLOW, -104.0001, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp(t).to_bits(), 0, "{t}");
        }
    }

    #[test]
    fn f32_rows_are_the_same_bits_with_and_without_avx2() {
        use super::{row_f32, row_f32_body, Mode};
        for n in [1usize, 7, 8, 9, 64, 129, 1000] {
            let x: Vec<f32> =
                (0..n).map(|i| if i % 11 == 5 { f32::NEG_INFINITY } else { (i as f32 * 1.37).sin() * 30.0 }).collect();
            for mode in [Mode::Soft, Mode::Log] {
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                row_f32(&x, &mut a, mode);
                row_f32_body(&x, &mut b, mode);
                assert_eq!(
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn softmax_infer() {
        let s = [Dim::sym("b"), Dim::Known(4)];
        let o = infer1("Softmax", 13, &[], &[Some((DType::F32, &s[..], None))]).unwrap();
        assert_eq!(o[0].shape, s.to_vec());
        assert!(infer1("Softmax", 13, &[int("axis", 2)], &[Some((DType::F32, &s[..], None))]).is_err());
        assert!(infer1("Softmax", 11, &[int("axis", 2)], &[Some((DType::F32, &s[..], None))]).is_ok());
        assert!(infer1("Softmax", 13, &[], &[Some((DType::I32, &s[..], None))]).is_err());
    }
}
