//! Trilu: keeps the upper (or lower) triangle of the last two dims, from diagonal `k`, and zeroes
//! the rest. Zero is all-zero bytes in every dtype, so this is pure byte movement.

use super::common::{check_int, out0};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;

pub struct Trilu {
    upper: bool,
}

impl Trilu {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        Ok(Trilu { upper: spec.attrs.int("upper", 1)? != 0 })
    }
}

impl Kernel for Trilu {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if x.shape.len() < 2 {
            return Err(KernelError::input(0, "Trilu needs at least 2 dims"));
        }
        if let Some(k) = inputs.get(1).copied().flatten() {
            check_int(&k, 1)?;
            if let Some(n) = Dim::product(k.shape).known() {
                if n != 1 {
                    return Err(KernelError::input(1, "k must hold one value"));
                }
            }
        }
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let k = match inputs.get(1).copied().flatten() {
            Some(t) => *t.to_i64_vec()?.first().ok_or_else(|| KernelError::input(1, "k must hold one value"))?,
            None => 0,
        };
        let r = x.shape.len();
        if r < 2 {
            return Err(KernelError::input(0, "Trilu needs at least 2 dims"));
        }
        let (n, m) = (x.shape[r - 2], x.shape[r - 1]);
        let es = x.dtype.size();
        let out = out0(outputs)?;
        if out.data.len() != x.data.len() || x.data.len() != x.numel() * es {
            return Err(KernelError::invalid("output is not sized like the input"));
        }
        let row = m * es;
        for (ri, (dst, src)) in out.data.chunks_mut(row.max(1)).zip(x.data.chunks(row.max(1))).enumerate() {
            // Columns j of row i kept: upper j >= i + k, lower j <= i + k.
            let i = (ri % n.max(1)) as i64;
            let diag = i.saturating_add(k);
            let (lo, hi) = if self.upper {
                (diag.clamp(0, m as i64) as usize, m)
            } else {
                (0, diag.saturating_add(1).clamp(0, m as i64) as usize)
            };
            dst[..lo * es].fill(0);
            dst[lo * es..hi * es].copy_from_slice(&src[lo * es..hi * es]);
            dst[hi * es..].fill(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;

    #[test]
    fn triangles() {
        let x = f32s(&[3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let out = run("Trilu", 14, &[], &[Some(&x), None]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![1., 2., 3., 0., 5., 6., 0., 0., 9.]);
        let lower = [Attribute::int("upper", 0)];
        let out = run("Trilu", 14, &lower, &[Some(&x), None]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![1., 0., 0., 4., 5., 0., 7., 8., 9.]);
        let out = run("Trilu", 14, &[], &[Some(&x), Some(&i64s(&[], &[1]))]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 2., 3., 0., 0., 6., 0., 0., 0.]);
        let out = run("Trilu", 14, &lower, &[Some(&x), Some(&i64s(&[], &[-1]))]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 0., 0., 4., 0., 0., 7., 8., 0.]);
        let out = run("Trilu", 14, &[], &[Some(&x), Some(&i64s(&[], &[-5]))]).unwrap();
        assert_eq!(vals_f32(&out[0]), vals_f32(&x));
        let out = run("Trilu", 14, &lower, &[Some(&x), Some(&i64s(&[], &[i64::MIN]))]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0.; 9]);
        // Batched, non-square.
        let x = iota(&[2, 2, 3]);
        let out = run("Trilu", 14, &[], &[Some(&x), None]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 1., 2., 0., 4., 5., 6., 7., 8., 0., 10., 11.]);
        assert!(run("Trilu", 14, &[], &[Some(&iota(&[3])), None]).is_err());
    }
}
