//! `kiln::ScaledSoftmax(x[, mask])` = softmax(x·scale + mask) over the last axis (x / scale
//! when `divide` is set): attention's `Mul` (or `Div`) by the head-size scale, `Add` of the
//! causal mask and `Softmax`, which exporters write as three steps and three passes over the
//! scores. Each element is scaled and masked with the separate kernels' roundings, then the rows
//! go through the same softmax, so f32 results are the same bits.

use super::softmax::{row, Mode};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::broadcast::{broadcast_strides, for_each_offsets};
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use rayon::prelude::*;

/// The op's name in the kiln domain.
pub const SCALED_SOFTMAX: &str = "ScaledSoftmax";

/// Prepares `kiln::ScaledSoftmax`, or `None` for another kiln op.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == SCALED_SOFTMAX).then(|| {
        let scale = spec.attrs.float("scale", 1.0)?;
        let divide = spec.attrs.int("divide", 0)? != 0;
        Ok(Box::new(ScaledSoftmax { scale, divide }) as Box<dyn Kernel>)
    })
}

struct ScaledSoftmax {
    scale: f32,
    divide: bool,
}

impl Kernel for ScaledSoftmax {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !x.dtype.is_float() || x.shape.is_empty() {
            return Err(KernelError::input(0, format!("{} {:?} is not a float tensor of rank ≥ 1", x.dtype, x.shape)));
        }
        if let Some(m) = inputs.get(1).copied().flatten() {
            if m.dtype != x.dtype || !crate::ops::broadcast::fits_in(m.shape, x.shape) {
                return Err(KernelError::input(
                    1,
                    format!("{} {:?} does not broadcast to {} {:?}", m.dtype, m.shape, x.dtype, x.shape),
                ));
            }
        }
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let mask = inputs.get(1).copied().flatten();
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != x.dtype || out.data.len() != x.data.len() {
            return Err(KernelError::invalid("output does not match the input"));
        }
        let n = *x.shape.last().ok_or_else(|| KernelError::input(0, "is a scalar"))?;
        let rows = &x.shape[..x.shape.len() - 1];
        // Per row of x, where its mask row starts and the step along it (0: one value per row).
        let mut starts = Vec::new();
        let mut step = 0;
        if let Some(m) = mask {
            let strides = broadcast_strides(m.shape, x.shape)?;
            step = strides[rows.len()];
            for_each_offsets(rows, [&strides[..rows.len()]], |_, [o]| starts.push(o));
        }
        let job = Job { scale: self.scale, divide: self.divide, n, starts: &starts, step };
        crate::with_float!(x.dtype, T => job.run::<T>(x.typed()?, mask.map(|m| m.typed()).transpose()?, out.typed()?),
            _ => return Err(KernelError::unsupported(format!("ScaledSoftmax on {}", x.dtype))));
        Ok(())
    }
}

struct Job<'a> {
    scale: f32,
    divide: bool,
    n: usize,
    starts: &'a [usize],
    step: usize,
}

/// Rows are handed to threads in chunks of at least this many elements: a decode step's few
/// short rows cost less than waking another thread.
const PAR_MIN_CHUNK: usize = 1 << 13;

impl Job<'_> {
    fn run<T: Float>(&self, x: &[T], mask: Option<&[T]>, y: &mut [T]) {
        let n = self.n;
        if n == 0 {
            return;
        }
        let c = T::from_acc(<T::Acc as crate::ops::num::num_like::AccFloat>::from_f64(self.scale as f64)).to_acc();
        let rows = x.len() / n;
        let threads = rayon::current_num_threads();
        // About four chunks per thread, so rows still balance when a thread is busy elsewhere.
        let per = PAR_MIN_CHUNK.div_ceil(n).max(rows.div_ceil(threads * 4));
        let chunk = |(i, (xc, yc)): (usize, (&[T], &mut [T]))| {
            let mut scratch = vec![T::from_acc(c); n];
            for (r, (xr, yr)) in xc.chunks_exact(n).zip(yc.chunks_exact_mut(n)).enumerate() {
                self.scale_and_mask(c, xr, mask.map(|m| (m, self.starts[i * per + r])), &mut scratch);
                row(&scratch, yr, Mode::Soft);
            }
        };
        if threads > 1 && rows > per {
            x.par_chunks(per * n).zip(y.par_chunks_mut(per * n)).enumerate().for_each(chunk);
        } else {
            chunk((0, (x, y)));
        }
    }

    /// `s = x·c + mask` (or `x / c + mask`), each step rounded to T as the separate Mul (Div)
    /// and Add kernels round it; `mask` is the mask and where this row's mask values start.
    #[inline(always)]
    fn scale_and_mask<T: Float>(&self, c: T::Acc, x: &[T], mask: Option<(&[T], usize)>, s: &mut [T]) {
        // Branching once per row rather than per element keeps the division out of the Mul loop.
        if self.divide {
            fill(x, mask, self.step, s, |v| v / c)
        } else {
            fill(x, mask, self.step, s, |v| v * c)
        }
    }
}

/// `s = scale(x) + mask`, mask values `step` apart from `mask.1` on (0: one value for the row).
#[inline(always)]
fn fill<T: Float>(x: &[T], mask: Option<(&[T], usize)>, step: usize, s: &mut [T], scale: impl Fn(T::Acc) -> T::Acc) {
    let scaled = |v: T| T::from_acc(scale(v.to_acc()));
    let add = |t: T, m: T| T::from_acc(t.to_acc() + m.to_acc());
    match mask {
        None => s.iter_mut().zip(x).for_each(|(d, &v)| *d = scaled(v)),
        // The contiguous and broadcast cases spelled out, so those loops vectorize.
        Some((m, at)) if step == 1 => {
            s.iter_mut().zip(x).zip(&m[at..]).for_each(|((d, &v), &mv)| *d = add(scaled(v), mv))
        }
        Some((m, at)) if step == 0 => s.iter_mut().zip(x).for_each(|(d, &v)| *d = add(scaled(v), m[at])),
        Some((m, at)) => {
            s.iter_mut().zip(x).zip(m[at..].iter().step_by(step)).for_each(|((d, &v), &mv)| *d = add(scaled(v), mv))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::{DType, Dim};

    fn run(k: &ScaledSoftmax, x: &[f32], xs: &[usize], mask: Option<(&[f32], &[usize])>) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        let xr = TensorRef { dtype: DType::F32, shape: xs, data: bytemuck::cast_slice(x) };
        let mr = mask.map(|(m, s)| TensorRef { dtype: DType::F32, shape: s, data: bytemuck::cast_slice(m) });
        let mut om = TensorMut { dtype: DType::F32, shape: xs, data: bytemuck::cast_slice_mut(&mut out) };
        k.run(&[Some(xr), mr], std::slice::from_mut(&mut om)).unwrap();
        out
    }

    /// Mul (or Div), Add and Softmax as the separate kernels compute them.
    fn reference(x: &[f32], xs: &[usize], c: f32, divide: bool, mask: Option<(&[f32], &[usize])>) -> Vec<f32> {
        let mut u: Vec<f32> = x.iter().map(|&v| if divide { v / c } else { v * c }).collect();
        if let Some((m, ms)) = mask {
            let st = broadcast_strides(ms, xs).unwrap();
            for_each_offsets(xs, [&st[..]], |i, [o]| u[i] += m[o]);
        }
        let n = *xs.last().unwrap();
        let mut y = vec![0f32; x.len()];
        for (ur, yr) in u.chunks(n).zip(y.chunks_mut(n)) {
            row(ur, yr, Mode::Soft);
        }
        y
    }

    #[test]
    fn the_same_bits_as_scale_mask_and_softmax() {
        let xs = [2, 3, 4, 7];
        let x: Vec<f32> = (0..168).map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0).collect();
        let causal: Vec<f32> = (0..28).map(|i| if i % 7 > i / 7 + 3 { f32::NEG_INFINITY } else { 0.0 }).collect();
        let column = [0.5f32, -1.0, 0.0, 2.0];
        for divide in [false, true] {
            let k = ScaledSoftmax { scale: 0.125, divide };
            assert_eq!(run(&k, &x, &xs, None), reference(&x, &xs, 0.125, divide, None));
            for (m, ms) in [(&causal[..], &[1usize, 1, 4, 7][..]), (&column[..], &[4, 1])] {
                assert_eq!(run(&k, &x, &xs, Some((m, ms))), reference(&x, &xs, 0.125, divide, Some((m, ms))), "{ms:?}");
            }
        }
    }

    #[test]
    fn rows_split_across_threads_keep_their_mask_rows_and_bits() {
        // 1200 rows of 40: several chunks, the last one short.
        let xs = [2, 3, 200, 40];
        let x: Vec<f32> = (0..48_000).map(|i| ((i * 37 % 1009) as f32 - 500.0) / 61.0).collect();
        let causal: Vec<f32> = (0..8000).map(|i| if i % 40 > i / 40 % 40 { f32::NEG_INFINITY } else { 0.0 }).collect();
        let column: Vec<f32> = (0..200).map(|i| (i % 5) as f32 - 2.0).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            for divide in [false, true] {
                let k = ScaledSoftmax { scale: 0.17, divide };
                assert_eq!(run(&k, &x, &xs, None), reference(&x, &xs, 0.17, divide, None));
                for (m, ms) in [(&causal[..], &[1usize, 1, 200, 40][..]), (&column[..], &[200, 1])] {
                    assert_eq!(
                        run(&k, &x, &xs, Some((m, ms))),
                        reference(&x, &xs, 0.17, divide, Some((m, ms))),
                        "{ms:?}"
                    );
                }
            }
        });
    }

    #[test]
    fn a_mask_that_would_grow_the_scores_is_refused() {
        let k = |v: &[i64]| v.iter().map(|&d| Dim::Known(d)).collect::<Vec<_>>();
        let (x, m) = (k(&[1, 4, 7]), k(&[2, 4, 7]));
        let si = |s| ShapeInput { dtype: DType::F32, shape: s, value: None, data: None };
        let e =
            ScaledSoftmax { scale: 1.0, divide: false }.infer(&[Some(si(&x)), Some(si(&m))], &mut crate::kernel::RunCx);
        assert!(e.is_err());
    }
}
