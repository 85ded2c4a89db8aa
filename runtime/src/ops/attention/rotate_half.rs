//! `kiln::RotateHalf(x, cos, sin)` = x·cos + rotate_half(x)·sin, where rotate_half(x) is
//! `concat(-x[h..], x[..h])` over the last axis (h = half of it): rotary position embedding as
//! Llama-style exporters write it, in seven steps per head tensor (two Slices, Neg, Concat, two
//! Muls, Add). `cos` and `sin` hold the full width and broadcast to x; nothing assumes their two
//! halves are equal, so the fused step computes exactly what the seven did, with the same
//! products and sums per element (f32 results are the same bits).

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OutputInfo, ShapeInput};
use crate::ops::broadcast::{broadcast_strides, for_each_offsets};
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};

/// The op's name in the kiln domain.
pub const ROTATE_HALF: &str = "RotateHalf";

pub(super) struct RotateHalf;

impl Kernel for RotateHalf {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !x.dtype.is_float() {
            return Err(KernelError::input(0, format!("{} is not a float type", x.dtype)));
        }
        let Some(d) = x.shape.last() else { return Err(KernelError::input(0, "is a scalar")) };
        if d.known().is_some_and(|d| d % 2 != 0) {
            return Err(KernelError::input(0, format!("last dim {d} is odd: it has no halves")));
        }
        for i in [1, 2] {
            let t = required(inputs, i)?;
            if t.dtype != x.dtype {
                return Err(KernelError::input(i, format!("is {}, x is {}", t.dtype, x.dtype)));
            }
            if t.shape.last() != Some(d) || !crate::ops::broadcast::fits_in(t.shape, x.shape) {
                return Err(KernelError::input(i, format!("shape {:?} does not broadcast to {:?}", t.shape, x.shape)));
            }
        }
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let (cos, sin) = (required(inputs, 1)?, required(inputs, 2)?);
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != x.dtype || out.data.len() != x.data.len() {
            return Err(KernelError::invalid("output does not match x"));
        }
        let d = *x.shape.last().ok_or_else(|| KernelError::input(0, "is a scalar"))?;
        let rows = &x.shape[..x.shape.len() - 1];
        let mut starts = [Vec::new(), Vec::new()];
        for (s, t) in starts.iter_mut().zip([cos, sin]) {
            if t.shape.last() != Some(&d) {
                return Err(KernelError::invalid(format!("{:?} and x {:?} differ in width", t.shape, x.shape)));
            }
            let strides = broadcast_strides(t.shape, x.shape)?;
            for_each_offsets(rows, [&strides[..rows.len()]], |_, [o]| s.push(o));
        }
        crate::with_float!(x.dtype, T => rotate::<T>(x.typed()?, cos.typed()?, sin.typed()?, &starts, d, out.typed()?),
            _ => return Err(KernelError::unsupported(format!("RotateHalf on {}", x.dtype))));
        Ok(())
    }
}

/// Rotates every row of `x` (`d` wide) with the cos/sin rows starting at `starts`.
fn rotate<T: Float>(x: &[T], cos: &[T], sin: &[T], starts: &[Vec<usize>; 2], d: usize, y: &mut [T]) {
    let h = d / 2;
    let round = |v: T::Acc| T::from_acc(v);
    for (((xr, yr), &c0), &s0) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(&starts[0]).zip(&starts[1]) {
        let (c, s) = (&cos[c0..c0 + d], &sin[s0..s0 + d]);
        let (x1, x2) = xr.split_at(h);
        let (y1, y2) = yr.split_at_mut(h);
        for j in 0..h {
            // As the unfused graph: x·cos and (±x')·sin each rounded, then their sum.
            let (a, b) = (x1[j].to_acc(), x2[j].to_acc());
            let p = round(a * c[j].to_acc()).to_acc();
            let q = round(-b * s[j].to_acc()).to_acc();
            y1[j] = round(p + q);
            let p = round(b * c[h + j].to_acc()).to_acc();
            let q = round(a * s[h + j].to_acc()).to_acc();
            y2[j] = round(p + q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::{DType, Dim};

    fn run(x: &[f32], xs: &[usize], cos: &[f32], cs: &[usize], sin: &[f32]) -> Result<Vec<f32>, KernelError> {
        fn r<'a>(d: &'a [f32], s: &'a [usize]) -> TensorRef<'a> {
            TensorRef { dtype: DType::F32, shape: s, data: bytemuck::cast_slice(d) }
        }
        let mut out = vec![0f32; x.len()];
        let mut om = TensorMut { dtype: DType::F32, shape: xs, data: bytemuck::cast_slice_mut(&mut out) };
        RotateHalf.run(&[Some(r(x, xs)), Some(r(cos, cs)), Some(r(sin, cs))], std::slice::from_mut(&mut om))?;
        Ok(out)
    }

    /// The seven-step graph, written out.
    fn reference(x: &[f32], xs: &[usize], cos: &[f32], cs: &[usize], sin: &[f32]) -> Vec<f32> {
        let d = *xs.last().unwrap();
        let h = d / 2;
        let st = broadcast_strides(cs, xs).unwrap();
        let mut out = vec![0f32; x.len()];
        for_each_offsets(xs, [&st[..]], |i, [o]| {
            let j = i % d;
            let row = i - j;
            let rot = if j < h { -x[row + j + h] } else { x[row + j - h] };
            out[i] = x[i] * cos[o] + rot * sin[o];
        });
        out
    }

    #[test]
    fn the_same_bits_as_the_unfused_graph() {
        // [batch 2, heads 3, seq 5, d 8] with cos/sin [2, 1, 5, 8], [5, 8] and [1, 1, 1, 8]; halves differ.
        let xs = [2, 3, 5, 8];
        let x: Vec<f32> = (0..240).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for cs in [&[2usize, 1, 5, 8][..], &[5, 8], &[1, 1, 1, 8]] {
            let n: usize = cs.iter().product();
            let cos: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos()).collect();
            let sin: Vec<f32> = (0..n).map(|i| (i as f32 * 0.29).sin()).collect();
            let got = run(&x, &xs, &cos, cs, &sin).unwrap();
            assert_eq!(got, reference(&x, &xs, &cos, cs, &sin), "cos {cs:?}");
        }
    }

    #[test]
    fn widths_that_do_not_match_are_refused() {
        let x = vec![0f32; 16];
        assert!(run(&x, &[2, 8], &[0.0; 4], &[4], &[0.0; 4]).is_err());
        assert!(run(&x, &[2, 8], &[0.0; 24], &[3, 8], &[0.0; 24]).is_err());
        let k = |v: &[i64]| v.iter().map(|&d| Dim::Known(d)).collect::<Vec<_>>();
        let (odd, c) = (k(&[2, 7]), k(&[7]));
        fn si(s: &[Dim]) -> ShapeInput<'_> {
            ShapeInput { dtype: DType::F32, shape: s, value: None, data: None }
        }
        let e = RotateHalf.infer(&[Some(si(&odd)), Some(si(&c)), Some(si(&c))], &mut crate::kernel::RunCx);
        assert!(e.unwrap_err().to_string().contains("odd"));
    }
}
