//! LayerNormalization (opset 17) and RMSNormalization (opset 23): each row of the dims from
//! `axis` on is standardised, then scaled (and for LayerNormalization shifted). Scale and bias
//! broadcast to the input's shape. Statistics are computed in f32 (f64 for f64 inputs).

use super::PAR_MIN;
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::broadcast::broadcast_strides;
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

struct Norm {
    rms: bool,
    axis: i64,
    epsilon: f32,
    /// dtype of the Mean and InvStdDev outputs.
    stash: DType,
}

pub(super) fn build(spec: &OpSpec, rms: bool) -> Result<Box<dyn Kernel>, KernelError> {
    let code = spec.attrs.int("stash_type", 1)?;
    let stash = DType::from_onnx_code(code as i32)
        .filter(|d| d.is_float())
        .ok_or_else(|| KernelError::attr("stash_type", format!("{code} is not a float type")))?;
    Ok(Box::new(Norm { rms, axis: spec.attrs.int("axis", -1)?, epsilon: spec.attrs.float("epsilon", 1e-5)?, stash }))
}

/// Whether `p` broadcasts to `x` (unidirectionally), as far as known dims tell.
fn broadcasts_to(p: &[Dim], x: &[Dim]) -> bool {
    p.len() <= x.len()
        && p.iter().rev().zip(x.iter().rev()).all(|(a, b)| match (a, b) {
            (Dim::Known(1), _) => true,
            (Dim::Known(a), Dim::Known(b)) => a == b,
            _ => true,
        })
}

impl Kernel for Norm {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let scale = required(inputs, 1)?;
        if !x.dtype.is_float() {
            return Err(KernelError::input(0, format!("{} is not supported", x.dtype)));
        }
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let params = [Some(scale), if self.rms { None } else { inputs.get(2).copied().flatten() }];
        for (i, p) in params.iter().enumerate() {
            if let Some(p) = p {
                if p.dtype != x.dtype {
                    return Err(KernelError::input(i + 1, format!("is {}, X is {}", p.dtype, x.dtype)));
                }
                if !broadcasts_to(p.shape, x.shape) {
                    return Err(KernelError::input(
                        i + 1,
                        format!("shape {:?} does not broadcast to {:?}", p.shape, x.shape),
                    ));
                }
            }
        }
        let mut outs = vec![OutputInfo::new(x.dtype, x.shape.to_vec())];
        if !self.rms {
            let mut stat = x.shape[..axis].to_vec();
            stat.resize(x.shape.len(), Dim::Known(1));
            outs.push(OutputInfo::new(self.stash, stat.clone()));
            outs.push(OutputInfo::new(self.stash, stat));
        }
        Ok(outs)
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let scale = required(inputs, 1)?;
        let bias = if self.rms { None } else { inputs.get(2).copied().flatten() };
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let outer: usize = x.shape[..axis].iter().product();
        let n: usize = x.shape[axis..].iter().product();
        let sp = Param::new(scale, x.shape, axis, x.dtype)?;
        let bp = bias.map(|b| Param::new(b, x.shape, axis, x.dtype)).transpose()?;
        let (y, stats) = outputs.split_first_mut().ok_or_else(|| KernelError::invalid("missing output"))?;
        if y.dtype != x.dtype || y.data.len() != x.data.len() {
            return Err(KernelError::invalid("output does not match the input"));
        }
        let mut stats: Vec<&mut TensorMut> = stats.iter_mut().take(2).collect();
        for s in &stats {
            if !s.dtype.is_float() || s.numel() != outer || s.data.len() != outer * s.dtype.size() {
                return Err(KernelError::invalid("Mean/InvStdDev outputs do not match"));
            }
        }
        let job = Job { rms: self.rms, eps: self.epsilon as f64, n };
        crate::with_float!(x.dtype, T => {
            let xs = x.typed::<T>()?;
            let ys = y.typed::<T>()?;
            let scale = (sp.typed::<T>()?, &sp);
            let bias = match &bp { Some(b) => Some((b.typed::<T>()?, b)), None => None };
            if stats.is_empty() && xs.len() >= PAR_MIN && outer > 1 && n > 0 {
                xs.par_chunks(n).zip(ys.par_chunks_mut(n)).enumerate().for_each(|(r, (xr, yr))| {
                    job.row(r, xr, yr, scale, bias);
                });
            } else if n > 0 {
                for (r, (xr, yr)) in xs.chunks(n).zip(ys.chunks_mut(n)).enumerate() {
                    let (mean, inv) = job.row(r, xr, yr, scale, bias);
                    for (k, v) in [mean, inv].into_iter().enumerate() {
                        if let Some(s) = stats.get_mut(k) {
                            put_f64(s, r, v)?;
                        }
                    }
                }
            } else {
                // Empty rows: the mean of nothing is NaN, as in numpy.
                for s in stats.iter_mut() {
                    for r in 0..outer {
                        put_f64(s, r, f64::NAN)?;
                    }
                }
            }
        }, _ => return Err(KernelError::unsupported(format!("normalisation on {}", x.dtype))));
        Ok(())
    }
}

/// Element `i` of a float output set from an f64.
fn put_f64(t: &mut TensorMut, i: usize, v: f64) -> Result<(), KernelError> {
    match t.dtype {
        DType::F32 => t.typed::<f32>()?[i] = v as f32,
        DType::F64 => t.typed::<f64>()?[i] = v,
        DType::F16 => t.typed::<half::f16>()?[i] = half::f16::from_f64(v),
        DType::BF16 => t.typed::<half::bf16>()?[i] = half::bf16::from_f64(v),
        d => return Err(KernelError::invalid(format!("{d} statistics output"))),
    }
    Ok(())
}

/// A scale or bias tensor read at the input's indices: offset = row part + column part.
struct Param<'a> {
    t: TensorRef<'a>,
    /// (size, stride) of the dims before `axis`, for the row part.
    outer: Vec<(usize, usize)>,
    /// Column offsets within a row; `None` when they are simply 0..n (the common case).
    cols: Option<Vec<usize>>,
}

impl<'a> Param<'a> {
    fn new(t: TensorRef<'a>, xs: &[usize], axis: usize, dt: DType) -> Result<Self, KernelError> {
        if t.dtype != dt {
            return Err(KernelError::invalid("scale/bias dtype differs from X"));
        }
        let st = broadcast_strides(t.shape, xs)?;
        let outer: Vec<(usize, usize)> = xs[..axis].iter().copied().zip(st[..axis].iter().copied()).collect();
        // Usually the parameter is one row laid out as x's normalised axes: its column offsets
        // are then 0..n, known without listing them (decode normalises one row per step).
        let mut dense = 1;
        let mut identity = true;
        for (&d, &s) in xs[axis..].iter().zip(&st[axis..]).rev() {
            identity &= d == 1 || s == dense;
            dense *= d;
        }
        if identity {
            return Ok(Param { t, outer, cols: None });
        }
        let mut cols = Vec::with_capacity(dense);
        crate::ops::broadcast::for_each_offsets(&xs[axis..], [&st[axis..]], |_, [o]| cols.push(o));
        let identity = cols.iter().enumerate().all(|(i, &o)| i == o);
        Ok(Param { t, outer, cols: (!identity).then_some(cols) })
    }

    fn typed<T: Float>(&self) -> Result<&'a [T], KernelError> {
        self.t.typed::<T>()
    }

    fn row_base(&self, mut r: usize) -> usize {
        let mut off = 0;
        for &(d, s) in self.outer.iter().rev() {
            off += (r % d) * s;
            r /= d;
        }
        off
    }

    #[inline(always)]
    fn at<T: Float>(&self, data: &[T], base: usize, j: usize) -> T::Acc {
        match &self.cols {
            None => data[base + j].to_acc(),
            Some(c) => data[base + c[j]].to_acc(),
        }
    }
}

#[derive(Clone, Copy)]
struct Job {
    rms: bool,
    eps: f64,
    n: usize,
}

type P<'p, 'a, T> = (&'p [T], &'p Param<'a>);

impl Job {
    /// Normalises one row; returns its (mean, inverse std dev).
    fn row<T: Float>(&self, r: usize, x: &[T], y: &mut [T], (sd, sp): P<T>, bias: Option<P<T>>) -> (f64, f64) {
        let nf = T::Acc::from_f64(self.n as f64);
        let mean = if self.rms {
            T::Acc::ZERO
        } else {
            let mut s = T::Acc::ZERO;
            for v in x {
                s += v.to_acc();
            }
            s / nf
        };
        let mut ss = T::Acc::ZERO;
        for v in x {
            let d = v.to_acc() - mean;
            ss += d * d;
        }
        let inv = T::Acc::ONE / (ss / nf + T::Acc::from_f64(self.eps)).sqrt();
        let sbase = sp.row_base(r);
        match bias {
            None if sp.cols.is_none() => {
                let s = &sd[sbase..sbase + self.n];
                for ((v, o), g) in x.iter().zip(y.iter_mut()).zip(s) {
                    *o = T::from_acc((v.to_acc() - mean) * inv * g.to_acc());
                }
            }
            Some((bd, bp)) if sp.cols.is_none() && bp.cols.is_none() => {
                let bbase = bp.row_base(r);
                let s = &sd[sbase..sbase + self.n];
                let b = &bd[bbase..bbase + self.n];
                for (((v, o), g), c) in x.iter().zip(y.iter_mut()).zip(s).zip(b) {
                    *o = T::from_acc((v.to_acc() - mean) * inv * g.to_acc() + c.to_acc());
                }
            }
            _ => {
                let bb = bias.map(|(_, bp)| bp.row_base(r));
                for (j, (v, o)) in x.iter().zip(y.iter_mut()).enumerate() {
                    let mut z = (v.to_acc() - mean) * inv * sp.at(sd, sbase, j);
                    if let (Some((bd, bp)), Some(bb)) = (bias, bb) {
                        z += bp.at(bd, bb, j);
                    }
                    *o = T::from_acc(z);
                }
            }
        }
        (mean.to_f64(), inv.to_f64())
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::reduce::testutil::*;
    use kiln_formats::{DType, Dim, Tensor};

    fn ln_ref(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> (Vec<f32>, f32, f32) {
        let n = x.len() as f32;
        let m = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / n;
        let inv = 1. / (var + eps).sqrt();
        let y = x.iter().enumerate().map(|(i, v)| (v - m) * inv * g[i] + b[i]).collect();
        (y, m, inv)
    }

    #[test]
    fn layernorm_last_axis_with_stats() {
        let v: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
        let g = vec![1f32, 2., 0.5, -1.];
        let b = vec![0.1f32, 0.2, 0.3, 0.4];
        let out = try_run(
            "LayerNormalization",
            17,
            &[],
            vec![
                Some(Tensor::from_vec(&[3, 4], v.clone())),
                Some(Tensor::from_vec(&[4], g.clone())),
                Some(Tensor::from_vec(&[4], b.clone())),
            ],
        )
        .unwrap();
        assert_eq!(out[1].shape, vec![3, 1]);
        for r in 0..3 {
            let (y, m, inv) = ln_ref(&v[r * 4..r * 4 + 4], &g, &b, 1e-5);
            assert_close(&f32s(&out[0])[r * 4..r * 4 + 4], &y, 1e-5);
            assert_close(&[f32s(&out[1])[r], f32s(&out[2])[r]], &[m, inv], 1e-5);
        }
    }

    #[test]
    fn layernorm_axis_and_broadcast_scale() {
        // Normalise over the last two dims of [2, 2, 3]; scale [1, 3] broadcasts over them.
        let v: Vec<f32> = (0..12).map(|i| (i as f32 * 1.3).cos()).collect();
        let g = [2f32, 3., 4.];
        let y = run1(
            "LayerNormalization",
            17,
            &[int("axis", 1), float("epsilon", 1e-3)],
            vec![Some(Tensor::from_vec(&[2, 2, 3], v.clone())), Some(Tensor::from_vec(&[1, 3], g.to_vec()))],
        );
        for r in 0..2 {
            let gg: Vec<f32> = (0..6).map(|j| g[j % 3]).collect();
            let (want, _, _) = ln_ref(&v[r * 6..r * 6 + 6], &gg, &[0.; 6], 1e-3);
            assert_close(&f32s(&y)[r * 6..r * 6 + 6], &want, 1e-5);
        }
    }

    #[test]
    fn rmsnorm() {
        let v = vec![1f32, 2., 3., 4., -1., 0., 1., 2.];
        let g = vec![1f32, 0.5, 2., 1.];
        let y = run1(
            "RMSNormalization",
            23,
            &[],
            vec![Some(Tensor::from_vec(&[2, 4], v.clone())), Some(Tensor::from_vec(&[4], g.clone()))],
        );
        let mut want = Vec::new();
        for r in v.chunks(4) {
            let ms = r.iter().map(|a| a * a).sum::<f32>() / 4.;
            let inv = 1. / (ms + 1e-5).sqrt();
            want.extend(r.iter().zip(&g).map(|(a, s)| a * inv * s));
        }
        assert_close(&f32s(&y), &want, 1e-5);
    }

    #[test]
    fn layernorm_large_parallel_and_infer() {
        let v: Vec<f32> = (0..64 * 1024).map(|i| ((i % 97) as f32) * 0.01).collect();
        let g = vec![1f32; 1024];
        let y = run1(
            "LayerNormalization",
            17,
            &[],
            vec![Some(Tensor::from_vec(&[64, 1024], v.clone())), Some(Tensor::from_vec(&[1024], g.clone()))],
        );
        let (want, _, _) = ln_ref(&v[1024 * 5..1024 * 6], &g, &[0.; 1024], 1e-5);
        assert_close(&f32s(&y)[1024 * 5..1024 * 6], &want, 1e-4);

        let s = [Dim::sym("b"), Dim::sym("s"), Dim::Known(8)];
        let g = [Dim::Known(8)];
        let o = infer1(
            "LayerNormalization",
            17,
            &[],
            &[Some((DType::F16, &s[..], None)), Some((DType::F16, &g[..], None))],
        )
        .unwrap();
        assert_eq!(o[0].shape, s.to_vec());
        assert_eq!(o[1].shape, vec![Dim::sym("b"), Dim::sym("s"), Dim::Known(1)]);
        assert_eq!(o[1].dtype, DType::F32);
        let bad = [Dim::Known(7)];
        assert!(infer1(
            "LayerNormalization",
            17,
            &[],
            &[Some((DType::F32, &s[..], None)), Some((DType::F32, &bad[..], None))]
        )
        .is_err());
        assert!(infer1(
            "RMSNormalization",
            23,
            &[int("axis", 3)],
            &[Some((DType::F32, &s[..], None)), Some((DType::F32, &g[..], None))]
        )
        .is_err());
    }
}
