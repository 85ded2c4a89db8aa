//! Transpose: output axis `i` is input axis `perm[i]` (reversed axes by default).

use super::common::{out0, strides_of};
use super::strided::strided_copy;
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};

pub struct Transpose {
    perm: Option<Vec<i64>>,
}

impl Transpose {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        Ok(Transpose { perm: spec.attrs.ints("perm")?.map(<[i64]>::to_vec) })
    }

    /// The permutation for `rank`, checked to be one.
    fn perm(&self, rank: usize) -> Result<Vec<usize>, KernelError> {
        let Some(p) = &self.perm else {
            return Ok((0..rank).rev().collect());
        };
        if p.len() != rank {
            return Err(KernelError::attr("perm", format!("{p:?} has {} entries for rank {rank}", p.len())));
        }
        let mut seen = vec![false; rank];
        p.iter()
            .map(|&a| {
                // Negative entries are not in the spec; onnxruntime rejects them too.
                let i = usize::try_from(a).ok().filter(|&i| i < rank);
                match i {
                    Some(i) if !seen[i] => {
                        seen[i] = true;
                        Ok(i)
                    }
                    _ => Err(KernelError::attr("perm", format!("{p:?} is not a permutation of 0..{rank}"))),
                }
            })
            .collect()
    }
}

impl Kernel for Transpose {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let perm = self.perm(x.shape.len())?;
        Ok(vec![OutputInfo::new(x.dtype, perm.iter().map(|&a| x.shape[a].clone()).collect())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let perm = self.perm(x.shape.len())?;
        let st = strides_of(x.shape);
        let shape: Vec<usize> = perm.iter().map(|&a| x.shape[a]).collect();
        let strides: Vec<isize> = perm.iter().map(|&a| st[a] as isize).collect();
        strided_copy(x.dtype.size(), x.data, 0, &shape, &strides, out0(outputs)?.data)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn transposes() {
        let x = iota(&[2, 3]);
        let out = run("Transpose", 13, &[], &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![3, 2]);
        assert_eq!(vals_f32(&out[0]), vec![0., 3., 1., 4., 2., 5.]);

        // [B, S, H, D] -> [B, H, S, D] against a naive loop.
        let (b, sq, h, d) = (2, 5, 3, 4);
        let x = iota(&[b, sq, h, d]);
        let p = [Attribute::ints("perm", vec![0, 2, 1, 3])];
        let out = run("Transpose", 13, &p, &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![b, h, sq, d]);
        let (xv, ov) = (vals_f32(&x), vals_f32(&out[0]));
        for i in 0..b {
            for j in 0..h {
                for t in 0..sq {
                    for e in 0..d {
                        assert_eq!(ov[((i * h + j) * sq + t) * d + e], xv[((i * sq + t) * h + j) * d + e]);
                    }
                }
            }
        }
        let bad = [Attribute::ints("perm", vec![0, 0, 1, 2])];
        assert!(run("Transpose", 13, &bad, &[Some(&x)]).is_err());
        let bad = [Attribute::ints("perm", vec![0, 1])];
        assert!(run("Transpose", 13, &bad, &[Some(&x)]).is_err());
    }

    #[test]
    fn large_threaded_transpose_and_empty() {
        let (a, b, c) = (3, 300, 400);
        let x = iota(&[a, b, c]);
        let p = [Attribute::ints("perm", vec![2, 0, 1])];
        let out = run("Transpose", 13, &p, &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![c, a, b]);
        let (xv, ov) = (vals_f32(&x), vals_f32(&out[0]));
        for k in (0..c).step_by(7) {
            for i in 0..a {
                for j in (0..b).step_by(5) {
                    assert_eq!(ov[(k * a + i) * b + j], xv[(i * b + j) * c + k]);
                }
            }
        }
        let e = iota(&[0, 3]);
        let out = run("Transpose", 13, &[], &[Some(&e)]).unwrap();
        assert_eq!(out[0].shape, vec![3, 0]);
    }

    #[test]
    fn symbolic_and_bytes() {
        let p = [Attribute::ints("perm", vec![1, 0, 2])];
        let out = infer("Transpose", 13, &p, &[sym_in(DType::F16, vec![s("b"), s("t"), k(8)])]).unwrap();
        assert_eq!(out[0].shape, vec![s("t"), s("b"), k(8)]);
        let x = kiln_formats::Tensor::from_bools(&[2, 2], &[true, false, false, true]);
        let out = run("Transpose", 13, &[], &[Some(&x)]).unwrap();
        assert_eq!(out[0].bytes(), &[1, 0, 0, 1]);
    }
}
