//! Softmax, LogSoftmax and Hardmax. Before opset 13 the input is coerced to 2-D at `axis`
//! (`[prod(dims < axis), prod(dims >= axis)]`, default axis 1) and each row is normalised;
//! from opset 13 the op works along the one axis given (default -1).

use super::PAR_MIN;
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::ops::reduce::split_axis;
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

/// One contiguous row.
pub(crate) fn row<T: Float>(x: &[T], y: &mut [T], mode: Mode) {
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
