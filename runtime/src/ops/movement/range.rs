//! Range: `start, start + delta, ...` up to (not including) `limit`, with
//! `max(ceil((limit - start) / delta), 0)` elements, for integer and float scalars.

use super::common::{check_data, elems_mut, out0};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OutputInfo, ShapeInput};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use crate::{with_float, with_int};
use kiln_formats::tensor::read_f64;
use kiln_formats::{DType, Dim};

pub struct Range;

/// Element count for integer bounds.
fn int_len(start: i64, limit: i64, delta: i64) -> Result<i64, KernelError> {
    if delta == 0 {
        return Err(KernelError::input(2, "delta must not be 0"));
    }
    let (s, l, d) = (start as i128, limit as i128, delta as i128);
    // Ceiling division: truncation rounds up exactly when the true quotient is positive.
    let a = l - s;
    let n = a / d + i128::from(a % d != 0 && (a < 0) == (d < 0));
    Ok(n.clamp(0, i64::MAX as i128) as i64)
}

/// Element count for float bounds: the difference in the type's own precision, the division
/// in f64, as onnxruntime computes it.
fn float_len(dtype: DType, bytes: [&[u8]; 3]) -> Result<i64, KernelError> {
    let [s, l, d] = bytes.map(|b| read_f64(dtype, b, 0));
    if d == 0.0 {
        return Err(KernelError::input(2, "delta must not be 0"));
    }
    let diff = with_float!(dtype, T => {
        (T::from_acc(<T as Float>::Acc::from_f64(l)).to_acc()
            - T::from_acc(<T as Float>::Acc::from_f64(s)).to_acc()).to_f64()
    }, _ => l - s);
    let n = (diff / d).ceil();
    if !n.is_finite() {
        return Err(KernelError::invalid(format!("Range({s}, {l}, {d}) has no finite length")));
    }
    Ok(n.max(0.0) as i64)
}

/// Symbolic element count for integer bounds with a known step; bounds are assumed to describe
/// a non-negative count (position ids and the like), checked exactly at run time.
fn sym_len(s: &Dim, l: &Dim, d: i64) -> Result<Dim, KernelError> {
    if let (Dim::Known(s), Dim::Known(l)) = (s, l) {
        return Ok(Dim::Known(int_len(*s, *l, d)?));
    }
    if d == 0 {
        return Err(KernelError::input(2, "delta must not be 0"));
    }
    let (span, by) = if d > 0 { (l.sub(s), d) } else { (s.sub(l), -d) };
    let n =
        if by == 1 { span } else { span.add(&Dim::Known(by - 1)).floor_div(&Dim::Known(by)).unwrap_or(Dim::Known(0)) };
    Ok(match n {
        Dim::Known(v) => Dim::Known(v.max(0)),
        n => n,
    })
}

impl Kernel for Range {
    fn value_inputs(&self) -> &[usize] {
        &[0, 1, 2]
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let ins = [required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?];
        let dt = ins[0].dtype;
        for (i, x) in ins.iter().enumerate() {
            if x.dtype != dt {
                return Err(KernelError::input(i, format!("is {} but start is {dt}", x.dtype)));
            }
            if Dim::product(x.shape).known().is_some_and(|n| n != 1) {
                return Err(KernelError::input(i, "must be a scalar"));
            }
        }
        if dt == DType::Bool || !(dt.is_int() || dt.is_float()) {
            return Err(KernelError::unsupported(format!("Range on {dt}")));
        }
        let n = if dt.is_float() {
            match (ins[0].data, ins[1].data, ins[2].data) {
                (Some(s), Some(l), Some(d)) if s.len() >= dt.size() => Dim::Known(float_len(dt, [s, l, d])?),
                _ => cx.fresh("range")?,
            }
        } else {
            let first = |x: &ShapeInput| x.value.and_then(|v| v.first().cloned());
            match (first(&ins[0]), first(&ins[1]), first(&ins[2])) {
                (Some(s), Some(l), Some(Dim::Known(d))) => sym_len(&s, &l, d)?,
                _ => cx.fresh("range")?,
            }
        };
        Ok(vec![OutputInfo::new(dt, vec![n])])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let (s, _l, d) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?);
        check_data(&s, 0)?;
        check_data(&d, 2)?;
        if s.numel() != 1 || d.numel() != 1 {
            return Err(KernelError::invalid("start and delta must be scalars"));
        }
        let out = out0(outputs)?;
        let dt = out.dtype;
        with_float!(dt, T => {
            let (s0, d0) = (
                <T as Float>::Acc::from_f64(s.get_f64(0)),
                <T as Float>::Acc::from_f64(d.get_f64(0)),
            );
            for (i, o) in elems_mut::<T>(out.data)?.iter_mut().enumerate() {
                *o = T::from_acc(s0 + <T as Float>::Acc::from_f64(i as f64) * d0);
            }
        }, _ => with_int!(dt, T => {
            let (s0, d0) = (s.to_i64_vec()?[0], d.to_i64_vec()?[0]);
            for (i, o) in elems_mut::<T>(out.data)?.iter_mut().enumerate() {
                *o = s0.wrapping_add((i as i64).wrapping_mul(d0)) as T;
            }
        }, _ => return Err(KernelError::unsupported(format!("Range on {dt}")))));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::{DType, Tensor};

    #[test]
    fn int_and_float_ranges() {
        let sc = |v: i64| i64s(&[], &[v]);
        let out = run("Range", 11, &[], &[Some(&sc(1)), Some(&sc(10)), Some(&sc(3))]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![1, 4, 7]);
        let out = run("Range", 11, &[], &[Some(&sc(10)), Some(&sc(6)), Some(&sc(-3))]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![10, 7]);
        let out = run("Range", 11, &[], &[Some(&sc(5)), Some(&sc(1)), Some(&sc(2))]).unwrap();
        assert_eq!(out[0].shape, vec![0]);
        assert!(run("Range", 11, &[], &[Some(&sc(0)), Some(&sc(1)), Some(&sc(0))]).is_err());
        let i32sc = |v: i32| i32s(&[], &[v]);
        let out = run("Range", 11, &[], &[Some(&i32sc(0)), Some(&i32sc(4)), Some(&i32sc(1))]).unwrap();
        assert_eq!(out[0].as_slice::<i32>().unwrap(), &[0, 1, 2, 3]);
        let f = |v: f32| Tensor::from_vec(&[], vec![v]);
        let out = run("Range", 11, &[], &[Some(&f(0.)), Some(&f(1.)), Some(&f(0.3))]).unwrap();
        assert_eq!(out[0].shape, vec![4]);
        assert!((vals_f32(&out[0])[3] - 0.9).abs() < 1e-6);
    }

    #[test]
    fn symbolic_position_ids() {
        let sc = |v: kiln_formats::Dim| Some(In { dtype: DType::I64, shape: vec![], value: Some(vec![v]) });
        let out = infer("Range", 11, &[], &[sc(s("past")), sc(s("past").add(&s("seq"))), sc(k(1))]).unwrap();
        assert_eq!(out[0].shape, vec![s("seq")]);
        let out = infer(
            "Range",
            11,
            &[],
            &[sym_in(DType::F32, vec![]), sym_in(DType::F32, vec![]), sym_in(DType::F32, vec![])],
        )
        .unwrap();
        assert!(!out[0].shape[0].is_known());
    }
}
