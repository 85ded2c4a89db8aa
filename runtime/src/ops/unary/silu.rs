//! `kiln::Silu(x)` = x·σ(x), and `kiln::Silu(x, up)` = x·σ(x)·up: the SiLU activation and the
//! gated unit of Llama-style MLPs, which exporters write as `Mul(x, Sigmoid(x))` and
//! `Mul(·, up)`. The compiler's fusion makes one step of the two or three; the arithmetic is the
//! same, in the same order, as the separate kernels', so f32 results are the same bits.

use super::MathExt;
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::binary::strided::{map, zip2, Layout, PAR_MIN};
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;
use rayon::prelude::*;

/// The op's name in the kiln domain.
pub const SILU: &str = "Silu";

/// Prepares `kiln::Silu`, or `None` for another kiln op.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == SILU).then(|| {
        let halves = match spec.attrs.int("halves", 0)? {
            0 => None,
            1 => Some(Half::First),
            2 => Some(Half::Second),
            h => return Err(KernelError::invalid(format!("halves = {h}: expected 0, 1 or 2"))),
        };
        Ok(Box::new(Silu { halves }) as Box<dyn Kernel>)
    })
}

/// Which half of each row of a single input is x (the other is up).
#[derive(Clone, Copy, PartialEq)]
enum Half {
    First,
    Second,
}

/// With `halves`, one input holds x and up side by side along its last axis (a merged gate and
/// up product's output, read without splitting it), and the output is half as wide.
struct Silu {
    halves: Option<Half>,
}

impl Kernel for Silu {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !x.dtype.is_float() {
            return Err(KernelError::input(0, format!("{} is not a float type", x.dtype)));
        }
        if self.halves.is_some() {
            let mut shape = x.shape.to_vec();
            let half = match shape.last().map(|d| d.known()) {
                Some(Some(w)) if w % 2 == 0 => Dim::Known(w / 2),
                _ => {
                    return Err(KernelError::input(0, format!("{:?} does not end in an even width to halve", x.shape)))
                }
            };
            *shape.last_mut().expect("checked") = half;
            return Ok(vec![OutputInfo::new(x.dtype, shape)]);
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
        if let Some(half) = self.halves {
            let width = x.shape.last().copied().unwrap_or(0);
            if out.dtype != x.dtype || width % 2 != 0 || out.data.len() * 2 != x.data.len() {
                return Err(KernelError::invalid("the output is not half of x's rows"));
            }
            crate::with_float!(x.dtype, T => halves::<T>(x.typed()?, width / 2, half, out.typed()?),
                _ => return Err(KernelError::unsupported(format!("Silu on {}", x.dtype))));
            return Ok(());
        }
        if out.dtype != x.dtype || out.data.len() != x.data.len() || up.is_some_and(|u| u.data.len() != x.data.len()) {
            return Err(KernelError::invalid("x, up and the output differ in size"));
        }
        crate::with_float!(x.dtype, T => run::<T>(x.typed()?, up.map(|u| u.typed()).transpose()?, out.typed()?)?,
            _ => return Err(KernelError::unsupported(format!("Silu on {}", x.dtype))));
        Ok(())
    }
}

/// x·σ(x), rounded to T after each op, as the separate Sigmoid and Mul steps round.
#[inline(always)]
fn silu<T: Float>(v: T) -> T
where
    T::Acc: MathExt,
{
    let s = T::from_acc(v.to_acc().sigmoid_v());
    T::from_acc(v.to_acc() * s.to_acc())
}

#[inline(always)]
fn gated<T: Float>(v: T, u: T) -> T
where
    T::Acc: MathExt,
{
    T::from_acc(silu(v).to_acc() * u.to_acc())
}

fn run<T: Float>(x: &[T], up: Option<&[T]>, out: &mut [T]) -> Result<(), KernelError>
where
    T::Acc: MathExt,
{
    match up {
        None => map(x, out, silu),
        Some(up) => {
            let n = x.len();
            let l = Layout::new(&[n], n, [(&[n][..], n), (&[n][..], n)])?;
            zip2(&l, x, up, out, gated);
            Ok(())
        }
    }
}

/// The gated unit over rows of `[x | up]` (or `[up | x]`), `n` outputs per row.
fn halves<T: Float>(xu: &[T], n: usize, half: Half, out: &mut [T])
where
    T::Acc: MathExt,
{
    if n == 0 {
        return;
    }
    let row = |(r, o): (usize, &mut [T])| {
        let (first, second) = xu[r * 2 * n..(r + 1) * 2 * n].split_at(n);
        let (x, up) = if half == Half::First { (first, second) } else { (second, first) };
        for ((o, &v), &u) in o.iter_mut().zip(x).zip(up) {
            *o = gated(v, u);
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        out.chunks_mut(n).enumerate().for_each(row);
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
        Silu { halves: None }.run(&[Some(xr), ur], std::slice::from_mut(&mut om)).unwrap();
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
    fn halves_of_one_input_give_the_bits_of_two() {
        use crate::kernel::Attrs;
        use kiln_formats::program::Attribute;
        // Rows of 2n: one serial call and one split across threads.
        for (rows, n) in [(3, 5), (128, 600)] {
            let xu: Vec<f32> = (0..rows * 2 * n).map(|i| ((i * 7919 % 20011) as f32 - 10_000.0) / 300.0).collect();
            for (half, attr) in [(0, 1), (1, 2)] {
                let pick = |h: usize| -> Vec<f32> { xu.chunks(n).skip(h).step_by(2).flatten().copied().collect() };
                let want = silu(&pick(half), Some(&pick(1 - half)));
                let attrs = [Attribute::int("halves", attr)];
                let spec = OpSpec { op: SILU, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: Attrs(&attrs) };
                let kernel = build_kiln(&spec).unwrap().unwrap();
                let (shape, out_shape) = ([rows, 2 * n], [rows, n]);
                let xr = TensorRef { dtype: DType::F32, shape: &shape, data: bytemuck::cast_slice(&xu) };
                let mut out = vec![0f32; rows * n];
                let mut om =
                    TensorMut { dtype: DType::F32, shape: &out_shape, data: bytemuck::cast_slice_mut(&mut out) };
                kernel.run(&[Some(xr)], std::slice::from_mut(&mut om)).unwrap();
                assert_eq!(out, want, "{rows}x{n} halves = {attr}");
            }
        }
        let bad = [Attribute::int("halves", 3)];
        assert!(build_kiln(&OpSpec { op: SILU, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: Attrs(&bad) })
            .unwrap()
            .is_err());
    }

    #[test]
    fn up_must_match_x() {
        use kiln_formats::Dim;
        let (a, b) = ([Dim::Known(4)], [Dim::Known(5)]);
        fn si(s: &[Dim]) -> ShapeInput<'_> {
            ShapeInput { dtype: DType::F32, shape: s, value: None, data: None }
        }
        assert!(Silu { halves: None }.infer(&[Some(si(&a)), Some(si(&b))], &mut crate::kernel::RunCx).is_err());
        assert!(Silu { halves: None }.infer(&[Some(si(&a)), Some(si(&a))], &mut crate::kernel::RunCx).is_ok());
    }
}
