//! `kiln::Silu(x)` = x·σ(x), and `kiln::Silu(x, up)` = x·σ(x)·up: the SiLU activation and the
//! gated unit of Llama-style MLPs, which exporters write as `Mul(x, Sigmoid(x))` and
//! `Mul(·, up)`. The compiler's fusion makes one step of the two or three; the arithmetic is the
//! same, in the same order, as the separate kernels', so f32 results are the same bits.

use super::MathExt;
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::binary::strided::{map, zip2, Layout};
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};

/// The op's name in the kiln domain.
pub const SILU: &str = "Silu";

/// Prepares `kiln::Silu`, or `None` for another kiln op.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == SILU).then(|| Ok(Box::new(Silu) as Box<dyn Kernel>))
}

struct Silu;

impl Kernel for Silu {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !x.dtype.is_float() {
            return Err(KernelError::input(0, format!("{} is not a float type", x.dtype)));
        }
        if let Some(up) = inputs.get(1).copied().flatten() {
            if up.dtype != x.dtype || up.shape != x.shape {
                return Err(KernelError::input(
                    1,
                    format!("{} {:?} differs from x's {} {:?}", up.dtype, up.shape, x.dtype, x.shape),
                ));
            }
        }
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let up = inputs.get(1).copied().flatten();
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != x.dtype || out.data.len() != x.data.len() || up.is_some_and(|u| u.data.len() != x.data.len()) {
            return Err(KernelError::invalid("x, up and the output differ in size"));
        }
        crate::with_float!(x.dtype, T => run::<T>(x.typed()?, up.map(|u| u.typed()).transpose()?, out.typed()?)?,
            _ => return Err(KernelError::unsupported(format!("Silu on {}", x.dtype))));
        Ok(())
    }
}

fn run<T: Float>(x: &[T], up: Option<&[T]>, out: &mut [T]) -> Result<(), KernelError>
where
    T::Acc: MathExt,
{
    // Rounded to T after each op, as the separate Sigmoid and Mul steps round.
    let silu = |v: T| {
        let s = T::from_acc(v.to_acc().sigmoid_v());
        T::from_acc(v.to_acc() * s.to_acc())
    };
    match up {
        None => map(x, out, silu),
        Some(up) => {
            let n = x.len();
            let l = Layout::new(&[n], n, [(&[n][..], n), (&[n][..], n)])?;
            zip2(&l, x, up, out, |v, u| T::from_acc(silu(v).to_acc() * u.to_acc()));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::DType;

    fn silu(x: &[f32], up: Option<&[f32]>) -> Vec<f32> {
        let shape = [x.len()];
        let xr = TensorRef { dtype: DType::F32, shape: &shape, data: bytemuck::cast_slice(x) };
        let ur = up.map(|u| TensorRef { dtype: DType::F32, shape: &shape, data: bytemuck::cast_slice(u) });
        let mut out = vec![0f32; x.len()];
        let mut om = TensorMut { dtype: DType::F32, shape: &shape, data: bytemuck::cast_slice_mut(&mut out) };
        Silu.run(&[Some(xr), ur], std::slice::from_mut(&mut om)).unwrap();
        out
    }

    #[test]
    fn the_same_bits_as_sigmoid_then_mul() {
        // Large enough to split across threads.
        let x: Vec<f32> = (0..100_003).map(|i| ((i * 7919 % 20011) as f32 - 10_000.0) / 300.0).collect();
        let up: Vec<f32> = x.iter().map(|v| (v * 0.37).sin()).collect();
        let plain: Vec<f32> = x.iter().map(|&v| v * super::super::expf::sigmoid(v)).collect();
        assert_eq!(silu(&x, None), plain);
        let gated: Vec<f32> = plain.iter().zip(&up).map(|(s, u)| s * u).collect();
        assert_eq!(silu(&x, Some(&up)), gated);
        let edge = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, -200.0, 200.0, f32::NAN, 1e-30];
        let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let plain = edge.iter().map(|&v| v * super::super::expf::sigmoid(v)).collect();
        assert_eq!(bits(silu(&edge, None)), bits(plain));
    }

    #[test]
    fn up_must_match_x() {
        use kiln_formats::Dim;
        let (a, b) = ([Dim::Known(4)], [Dim::Known(5)]);
        fn si(s: &[Dim]) -> ShapeInput<'_> {
            ShapeInput { dtype: DType::F32, shape: s, value: None, data: None }
        }
        assert!(Silu.infer(&[Some(si(&a)), Some(si(&b))], &mut crate::kernel::RunCx).is_err());
        assert!(Silu.infer(&[Some(si(&a)), Some(si(&a))], &mut crate::kernel::RunCx).is_ok());
    }
}
