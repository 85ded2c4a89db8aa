//! CumSum: running sums along an axis given as an input, optionally exclusive and/or reversed.

use super::{split_axis, IntEl};
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;

struct CumSum {
    exclusive: bool,
    reverse: bool,
}

pub(super) fn build(spec: &OpSpec) -> Result<Box<dyn Kernel>, KernelError> {
    Ok(Box::new(CumSum {
        exclusive: spec.attrs.int("exclusive", 0)? != 0,
        reverse: spec.attrs.int("reverse", 0)? != 0,
    }))
}

/// Columns summed together so the running sums stay in registers (and in f32 for f16 data).
const COLS: usize = 64;

impl Kernel for CumSum {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let a = required(inputs, 1)?;
        if !(x.dtype.is_float() || x.dtype.is_int()) {
            return Err(KernelError::input(0, format!("{} is not supported", x.dtype)));
        }
        if !a.dtype.is_int() || a.shape.len() > 1 || a.shape.first().is_some_and(|d| *d != Dim::Known(1)) {
            return Err(KernelError::input(1, "axis must be an integer scalar"));
        }
        if x.shape.is_empty() {
            return Err(KernelError::input(0, "CumSum needs at least one dimension"));
        }
        if let Some(d) = a.data {
            if let Some(v) = kiln_formats::tensor::read_i64(a.dtype, d, 0) {
                normalize_axis(v, x.shape.len())?;
            }
        }
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let a = required(inputs, 1)?.to_i64_vec()?;
        let [axis] = a[..] else {
            return Err(KernelError::input(1, "axis must hold one value"));
        };
        let axis = normalize_axis(axis, x.shape.len())?;
        let dims = split_axis(x.shape, axis);
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.data.len() != x.data.len() || out.dtype != x.dtype {
            return Err(KernelError::invalid("output does not match the input"));
        }
        let (ex, rev) = (self.exclusive, self.reverse);
        crate::with_float!(x.dtype, T => cumsum(x.typed::<T>()?, out.typed::<T>()?, dims, ex, rev,
            |v: T| v.to_acc(), T::from_acc, <T as Float>::Acc::ZERO, |a, b| a + b), _ => {
            crate::with_int!(x.dtype, T => cumsum::<T, i128>(bytemuck::cast_slice(x.data), bytemuck::cast_slice_mut(out.data),
                dims, ex, rev, |v| v.to_i128(), T::from_i128, 0, i128::wrapping_add),
                _ => return Err(KernelError::unsupported(format!("CumSum on {}", x.dtype))))
        });
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn cumsum<E: Copy, A: Copy>(
    x: &[E],
    out: &mut [E],
    (outer, n, inner): (usize, usize, usize),
    exclusive: bool,
    reverse: bool,
    load: impl Fn(E) -> A,
    store: impl Fn(A) -> E,
    zero: A,
    add: impl Fn(A, A) -> A,
) {
    for o in 0..outer {
        let mut c0 = 0;
        while c0 < inner {
            let w = COLS.min(inner - c0);
            let mut acc = [zero; COLS];
            for step in 0..n {
                let j = if reverse { n - 1 - step } else { step };
                let off = (o * n + j) * inner + c0;
                let (src, dst) = (&x[off..off + w], &mut out[off..off + w]);
                for ((a, &v), d) in acc.iter_mut().zip(src).zip(dst) {
                    if exclusive {
                        *d = store(*a);
                        *a = add(*a, load(v));
                    } else {
                        *a = add(*a, load(v));
                        *d = store(*a);
                    }
                }
            }
            c0 += w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::Tensor;

    #[test]
    fn cumsum_modes() {
        let x = Tensor::from_vec(&[5], vec![1f64, 2., 3., 4., 5.]);
        let ax = || Some(Tensor::from_vec(&[], vec![0i32]));
        let y = run1("CumSum", 14, &[], vec![Some(x.clone()), ax()]);
        assert_eq!(y.as_slice::<f64>().unwrap(), &[1., 3., 6., 10., 15.]);
        let y = run1("CumSum", 14, &[int("exclusive", 1)], vec![Some(x.clone()), ax()]);
        assert_eq!(y.as_slice::<f64>().unwrap(), &[0., 1., 3., 6., 10.]);
        let y = run1("CumSum", 14, &[int("reverse", 1)], vec![Some(x.clone()), ax()]);
        assert_eq!(y.as_slice::<f64>().unwrap(), &[15., 14., 12., 9., 5.]);
        let y = run1("CumSum", 14, &[int("reverse", 1), int("exclusive", 1)], vec![Some(x), ax()]);
        assert_eq!(y.as_slice::<f64>().unwrap(), &[14., 12., 9., 5., 0.]);
    }

    #[test]
    fn cumsum_2d_and_errors() {
        let x = Tensor::from_vec(&[2, 3], vec![1i64, 2, 3, 4, 5, 6]);
        let y = run1("CumSum", 14, &[], vec![Some(x.clone()), Some(Tensor::from_vec(&[1], vec![1i64]))]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[1, 3, 6, 4, 9, 15]);
        let y = run1("CumSum", 14, &[], vec![Some(x.clone()), Some(Tensor::from_vec(&[], vec![-2i64]))]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[1, 2, 3, 5, 7, 9]);
        let bad = try_run("CumSum", 14, &[], vec![Some(x), Some(Tensor::from_vec(&[], vec![2i64]))]);
        assert!(bad.is_err());
    }
}
