//! ArgMax and ArgMin: the index of the extreme element along one axis, as int64.

use super::split_axis;
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};

struct Arg {
    max: bool,
    axis: i64,
    keepdims: bool,
    select_last: bool,
}

pub(super) fn build(spec: &OpSpec, max: bool) -> Result<Box<dyn Kernel>, KernelError> {
    Ok(Box::new(Arg {
        max,
        axis: spec.attrs.int("axis", 0)?,
        keepdims: spec.attrs.int("keepdims", 1)? != 0,
        select_last: spec.attrs.int("select_last_index", 0)? != 0,
    }))
}

impl Kernel for Arg {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !(x.dtype.is_float() || x.dtype.is_int()) {
            return Err(KernelError::input(0, format!("{} is not supported", x.dtype)));
        }
        let axis = normalize_axis(self.axis, x.shape.len())?;
        if x.shape[axis] == Dim::Known(0) {
            return Err(KernelError::input(0, "cannot take the arg of an empty axis"));
        }
        let mut shape = x.shape.to_vec();
        if self.keepdims {
            shape[axis] = Dim::Known(1);
        } else {
            shape.remove(axis);
        }
        Ok(vec![OutputInfo::new(DType::I64, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let (outer, n, inner) = split_axis(x.shape, axis);
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?.typed::<i64>()?;
        if out.len() != outer * inner || (n == 0 && !out.is_empty()) {
            return Err(KernelError::invalid("output size does not match the input"));
        }
        let (max, last) = (self.max, self.select_last);
        crate::with_float!(x.dtype, T => arg(x.typed::<T>()?, out, n, inner, max, last), _ => {
            crate::with_int!(x.dtype, T => arg::<T>(bytemuck::cast_slice(x.data), out, n, inner, max, last),
                _ => return Err(KernelError::unsupported(format!("ArgMax on {}", x.dtype))))
        });
        Ok(())
    }
}

/// NaN counts as larger than every number, as numpy's argmax/argmin treat it as the extreme.
fn arg<T: PartialOrd + Copy>(x: &[T], out: &mut [i64], n: usize, inner: usize, max: bool, last: bool) {
    #[allow(clippy::eq_op)]
    let nan = |v: T| v != v;
    // Whether `v` should replace `best`.
    let better = |v: T, best: T| -> bool {
        match (nan(v), nan(best)) {
            (_, true) => last && nan(v),
            (true, false) => true,
            _ => {
                if max {
                    if last {
                        v >= best
                    } else {
                        v > best
                    }
                } else if last {
                    v <= best
                } else {
                    v < best
                }
            }
        }
    };
    for (o, dst) in out.iter_mut().enumerate() {
        let (oi, ii) = (o / inner.max(1), o % inner.max(1));
        let base = oi * n * inner + ii;
        let mut bi = 0;
        let mut best = x[base];
        for j in 1..n {
            let v = x[base + j * inner];
            if better(v, best) {
                best = v;
                bi = j;
            }
        }
        *dst = bi as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::{DType, Dim, Tensor};

    #[test]
    fn argmax_axes_and_ties() {
        let x = Tensor::from_vec(&[2, 3], vec![1f32, 5., 5., 7., 2., 7.]);
        let y = run1("ArgMax", 13, &[int("axis", 1)], vec![Some(x.clone())]);
        assert_eq!(y.shape, vec![2, 1]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[1, 0]);
        let y = run1(
            "ArgMax",
            13,
            &[int("axis", 1), int("select_last_index", 1), int("keepdims", 0)],
            vec![Some(x.clone())],
        );
        assert_eq!((y.shape.clone(), y.as_slice::<i64>().unwrap()), (vec![2], &[2i64, 2][..]));
        let y = run1("ArgMin", 13, &[int("axis", 0)], vec![Some(x)]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[0, 1, 0]);
        let x = Tensor::from_vec(&[3], vec![1i64, 9, 3]);
        let y = run1("ArgMax", 13, &[], vec![Some(x)]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[1]);
        let x = Tensor::from_vec(&[3], vec![1f32, f32::NAN, 3.]);
        let y = run1("ArgMax", 13, &[], vec![Some(x)]);
        assert_eq!(y.as_slice::<i64>().unwrap(), &[1]);
    }

    #[test]
    fn argmax_infer() {
        let s = [Dim::sym("b"), Dim::Known(4)];
        let o =
            infer1("ArgMax", 13, &[int("axis", -1), int("keepdims", 0)], &[Some((DType::F32, &s[..], None))]).unwrap();
        assert_eq!(o[0].shape, vec![Dim::sym("b")]);
        assert_eq!(o[0].dtype, DType::I64);
        assert!(infer1("ArgMax", 13, &[int("axis", 2)], &[Some((DType::F32, &s[..], None))]).is_err());
    }
}
