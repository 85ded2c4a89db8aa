//! Expand (bidirectional broadcast to a shape input) and Tile (repeat along each axis), both as
//! strided views of the input: zero strides repeat elements.

use super::common::{check_int, fresh_dims, out0, strides_of, vector_len};
use super::strided::strided_copy;
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OutputInfo, ShapeInput};
use crate::ops::broadcast::{broadcast_shapes, broadcast_strides};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;

/// Expand: numpy broadcasting of the input against input 1 (a shape).
pub struct Expand;

impl Kernel for Expand {
    fn value_inputs(&self) -> &[usize] {
        &[1]
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let s = required(inputs, 1)?;
        check_int(&s, 1)?;
        let n = vector_len(&s, 1)?;
        let shape = match s.value {
            Some(v) => {
                if let Some(bad) = v.iter().find(|d| matches!(d, Dim::Known(x) if *x < 0)) {
                    return Err(KernelError::input(1, format!("shape has the dim {bad}")));
                }
                broadcast_shapes(&[x.shape, v])?
            }
            None => {
                // Where the input's dim is not 1 it wins (the shape may only say 1 or the same);
                // elsewhere the size comes from the unknown shape values.
                let rank = n.max(x.shape.len());
                let pad = rank - x.shape.len();
                let mut out = fresh_dims(cx, pad, "expand")?;
                for d in x.shape {
                    out.push(if *d == Dim::Known(1) { cx.fresh("expand")? } else { d.clone() });
                }
                out
            }
        };
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let out = out0(outputs)?;
        let strides: Vec<isize> = broadcast_strides(x.shape, out.shape)?.into_iter().map(|s| s as isize).collect();
        strided_copy(x.dtype.size(), x.data, 0, out.shape, &strides, out.data)
    }
}

/// Tile: each axis repeated `repeats[i]` times.
pub struct Tile;

impl Kernel for Tile {
    fn value_inputs(&self) -> &[usize] {
        &[1]
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let r = required(inputs, 1)?;
        check_int(&r, 1)?;
        let n = vector_len(&r, 1)?;
        if n != x.shape.len() {
            return Err(KernelError::input(1, format!("{n} repeats for rank {}", x.shape.len())));
        }
        let shape = match r.value {
            Some(v) => x
                .shape
                .iter()
                .zip(v)
                .map(|(d, rep)| match rep {
                    Dim::Known(k) if *k < 0 => Err(KernelError::input(1, format!("repeat {k} is negative"))),
                    _ => Ok(d.mul(rep)),
                })
                .collect::<Result<_, _>>()?,
            None => fresh_dims(cx, n, "tile")?,
        };
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let reps = required(inputs, 1)?.to_i64_vec()?;
        let out = out0(outputs)?;
        if reps.len() != x.shape.len() || out.shape.len() != x.shape.len() {
            return Err(KernelError::input(1, "repeats do not match the input rank"));
        }
        // Output [r0*d0, r1*d1, ...] is row-major [r0, d0, r1, d1, ...] reading the input with
        // stride 0 along each repeat axis.
        let st = strides_of(x.shape);
        let mut shape = Vec::with_capacity(2 * reps.len());
        let mut strides = Vec::with_capacity(2 * reps.len());
        for (i, &rep) in reps.iter().enumerate() {
            let rep = usize::try_from(rep).map_err(|_| KernelError::input(1, format!("repeat {rep} is negative")))?;
            if out.shape[i] != rep * x.shape[i] {
                return Err(KernelError::invalid("output is not sized for the repeats"));
            }
            shape.extend([rep, x.shape[i]]);
            strides.extend([0, st[i] as isize]);
        }
        strided_copy(x.dtype.size(), x.data, 0, &shape, &strides, out.data)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::DType;

    #[test]
    fn expands_bidirectionally() {
        let x = f32s(&[3, 1], &[1., 2., 3.]);
        let out = run("Expand", 13, &[], &[Some(&x), Some(&i64s(&[3], &[2, 1, 2]))]).unwrap();
        assert_eq!(out[0].shape, vec![2, 3, 2]);
        assert_eq!(vals_f32(&out[0]), vec![1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]);
        // The shape may be smaller than the input: the input's dims win.
        let out = run("Expand", 13, &[], &[Some(&x), Some(&i64s(&[1], &[1]))]).unwrap();
        assert_eq!(out[0].shape, vec![3, 1]);
        assert!(run("Expand", 13, &[], &[Some(&x), Some(&i64s(&[2], &[2, 2]))]).is_err());

        let x = sym_in(DType::F32, vec![k(1), k(1), s("t"), s("t")]);
        let out = infer("Expand", 13, &[], &[x, val_in(vec![s("b"), k(1), k(1), k(1)])]).unwrap();
        assert_eq!(out[0].shape, vec![s("b"), k(1), s("t"), s("t")]);
        let x = sym_in(DType::F32, vec![k(1), k(8)]);
        let out = infer("Expand", 13, &[], &[x, sym_in(DType::I64, ks(&[3]))]).unwrap();
        assert_eq!(out[0].shape[2], k(8));
        assert!(!out[0].shape[1].is_known());
    }

    #[test]
    fn tiles() {
        let x = f32s(&[2, 2], &[1., 2., 3., 4.]);
        let out = run("Tile", 13, &[], &[Some(&x), Some(&i64s(&[2], &[2, 3]))]).unwrap();
        assert_eq!(out[0].shape, vec![4, 6]);
        let v = vals_f32(&out[0]);
        assert_eq!(&v[..6], &[1., 2., 1., 2., 1., 2.]);
        assert_eq!(&v[12..18], &[1., 2., 1., 2., 1., 2.]);
        assert_eq!(&v[18..24], &[3., 4., 3., 4., 3., 4.]);
        assert!(run("Tile", 13, &[], &[Some(&x), Some(&i64s(&[1], &[2]))]).is_err());
        let out = infer("Tile", 13, &[], &[sym_in(DType::F32, vec![s("b"), k(2)]), val_in(ks(&[1, 3]))]).unwrap();
        assert_eq!(out[0].shape, vec![s("b"), k(6)]);
    }
}
