//! TopK: the k largest (or smallest) elements along an axis and their int64 indices. Equal values
//! keep the lower index first; NaN counts as larger than every number.

use super::split_axis;
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};
use std::cmp::Ordering;

struct TopK {
    /// The attribute form (opset 1); later opsets read input 1.
    k_attr: Option<i64>,
    axis: i64,
    largest: bool,
}

pub(super) fn build(spec: &OpSpec) -> Result<Box<dyn Kernel>, KernelError> {
    let k_attr = if spec.opset < 10 { Some(spec.attrs.req_int("k")?) } else { None };
    Ok(Box::new(TopK { k_attr, axis: spec.attrs.int("axis", -1)?, largest: spec.attrs.int("largest", 1)? != 0 }))
}

fn check_k(k: i64, dim: &Dim) -> Result<(), KernelError> {
    if k < 0 || dim.known().is_some_and(|d| k > d) {
        return Err(KernelError::input(1, format!("k={k} is outside 0..={dim}")));
    }
    Ok(())
}

impl Kernel for TopK {
    fn value_inputs(&self) -> &[usize] {
        if self.k_attr.is_some() {
            &[]
        } else {
            &[1]
        }
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !(x.dtype.is_float() || x.dtype.is_int()) {
            return Err(KernelError::input(0, format!("{} is not supported", x.dtype)));
        }
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let k = match self.k_attr {
            Some(k) => {
                check_k(k, &x.shape[axis])?;
                Dim::Known(k)
            }
            None => {
                let kin = required(inputs, 1)?;
                if kin.shape.len() > 1 || kin.shape.first().is_some_and(|d| *d != Dim::Known(1)) {
                    return Err(KernelError::input(1, "K must hold one value"));
                }
                match kin.value.and_then(|v| v.first()) {
                    Some(Dim::Known(k)) => {
                        check_k(*k, &x.shape[axis])?;
                        Dim::Known(*k)
                    }
                    Some(d) => d.clone(),
                    None => cx.fresh("topk")?,
                }
            }
        };
        let mut shape = x.shape.to_vec();
        shape[axis] = k;
        Ok(vec![OutputInfo::new(x.dtype, shape.clone()), OutputInfo::new(DType::I64, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let k = match self.k_attr {
            Some(k) => k,
            None => match required(inputs, 1)?.to_i64_vec()?[..] {
                [k] => k,
                _ => return Err(KernelError::input(1, "K must hold one value")),
            },
        };
        let (outer, n, inner) = split_axis(x.shape, axis);
        if k < 0 || k as usize > n {
            return Err(KernelError::input(1, format!("k={k} is outside 0..={n}")));
        }
        let k = k as usize;
        let [vals, idx, ..] = outputs else {
            return Err(KernelError::invalid("TopK needs both outputs"));
        };
        if vals.dtype != x.dtype || vals.numel() != outer * k * inner {
            return Err(KernelError::invalid("values output does not match"));
        }
        let idx = idx.typed::<i64>()?;
        if idx.len() != outer * k * inner {
            return Err(KernelError::invalid("indices output does not match"));
        }
        let largest = self.largest;
        let shape = (outer, n, inner, k);
        crate::with_float!(x.dtype, T => topk(x.typed::<T>()?, vals.typed::<T>()?, idx, shape, largest), _ => {
            crate::with_int!(x.dtype, T => topk::<T>(bytemuck::cast_slice(x.data), bytemuck::cast_slice_mut(vals.data), idx, shape, largest),
                _ => return Err(KernelError::unsupported(format!("TopK on {}", x.dtype))))
        });
        Ok(())
    }
}

/// Total order with NaN above every number.
#[inline]
fn cmp_nan<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    #[allow(clippy::eq_op)]
    match a.partial_cmp(b) {
        Some(o) => o,
        None => (a != a).cmp(&(b != b)),
    }
}

fn topk<T: PartialOrd + Copy>(
    x: &[T],
    vals: &mut [T],
    idx: &mut [i64],
    (outer, n, inner, k): (usize, usize, usize, usize),
    largest: bool,
) {
    if k == 0 {
        return;
    }
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| x[(o * n + j) * inner + i];
            order.clear();
            order.extend(0..n);
            let cmp = |a: &usize, b: &usize| {
                let c = cmp_nan(&at(*a), &at(*b));
                let c = if largest { c.reverse() } else { c };
                c.then(a.cmp(b))
            };
            if k < n {
                order.select_nth_unstable_by(k - 1, cmp);
            }
            order[..k].sort_unstable_by(cmp);
            for (r, &j) in order[..k].iter().enumerate() {
                let d = (o * k + r) * inner + i;
                vals[d] = at(j);
                idx[d] = j as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::{DType, Dim, Tensor};

    #[test]
    fn topk_largest_smallest_ties() {
        let x = Tensor::from_vec(&[2, 4], vec![1f32, 3., 3., 2., 5., 0., 5., 5.]);
        let k = || Some(Tensor::from_vec(&[1], vec![2i64]));
        let out = try_run("TopK", 11, &[], vec![Some(x.clone()), k()]).unwrap();
        assert_eq!(out[0].shape, vec![2, 2]);
        assert_eq!(f32s(&out[0]), vec![3., 3., 5., 5.]);
        assert_eq!(out[1].as_slice::<i64>().unwrap(), &[1, 2, 0, 2]);
        let out = try_run("TopK", 11, &[int("largest", 0)], vec![Some(x.clone()), k()]).unwrap();
        assert_eq!(f32s(&out[0]), vec![1., 2., 0., 5.]);
        assert_eq!(out[1].as_slice::<i64>().unwrap(), &[0, 3, 1, 0]);
        let out = try_run("TopK", 1, &[int("k", 1), int("axis", 0)], vec![Some(x.clone())]).unwrap();
        assert_eq!(f32s(&out[0]), vec![5., 3., 5., 5.]);
        assert_eq!(out[1].as_slice::<i64>().unwrap(), &[1, 0, 1, 1]);
        let bad = try_run("TopK", 11, &[], vec![Some(x), Some(Tensor::from_vec(&[1], vec![5i64]))]);
        assert!(bad.is_err());
    }

    #[test]
    fn topk_infer_unknown_k() {
        let s = [Dim::sym("b"), Dim::Known(10)];
        let one = [Dim::Known(1)];
        let o =
            infer1("TopK", 11, &[], &[Some((DType::F32, &s[..], None)), Some((DType::I64, &one[..], None))]).unwrap();
        assert!(!o[0].shape[1].is_known());
        assert_eq!(o[1].dtype, DType::I64);
        let k = [Dim::Known(3)];
        let o =
            infer1("TopK", 11, &[], &[Some((DType::F32, &s[..], None)), Some((DType::I64, &one[..], Some(&k[..])))])
                .unwrap();
        assert_eq!(o[0].shape, vec![Dim::sym("b"), Dim::Known(3)]);
    }
}
