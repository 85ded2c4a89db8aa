//! RotaryEmbedding (opset 23): rotates the first `rotary_embedding_dim` features of every head
//! by position-dependent angles taken from cos/sin caches. X is `[B, H, S, D]` or `[B, S, H*D]`
//! (with `num_heads`); the caches are `[max_pos, rot/2]` indexed by `position_ids [B, S]`, or
//! `[B, S, rot/2]` without them. Pairs are (j, j + rot/2), or (2j, 2j+1) when `interleaved`.

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;

struct Rotary {
    interleaved: bool,
    num_heads: i64,
    rot_dim: i64,
}

pub(super) fn build(spec: &OpSpec) -> Result<Box<dyn Kernel>, KernelError> {
    Ok(Box::new(Rotary {
        interleaved: spec.attrs.int("interleaved", 0)? != 0,
        num_heads: spec.attrs.int("num_heads", 0)?,
        rot_dim: spec.attrs.int("rotary_embedding_dim", 0)?,
    }))
}

/// (batch, heads, seq, head size) of X.
struct Geo<D> {
    b: D,
    h: D,
    s: D,
    d: D,
}

fn eq(a: &Dim, b: &Dim, what: &str) -> Result<(), KernelError> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => Err(KernelError::invalid(format!("{what}: {x} vs {y}"))),
        _ => Ok(()),
    }
}

impl Rotary {
    fn geometry(&self, inputs: &[Option<ShapeInput>]) -> Result<(Geo<Dim>, Dim), KernelError> {
        let x = required(inputs, 0)?;
        let cos = required(inputs, 1)?;
        let sin = required(inputs, 2)?;
        if !x.dtype.is_float() || cos.dtype != x.dtype || sin.dtype != x.dtype {
            return Err(KernelError::invalid("X, cos_cache and sin_cache must be one float dtype"));
        }
        let g = match x.shape.len() {
            4 => Geo { b: x.shape[0].clone(), h: x.shape[1].clone(), s: x.shape[2].clone(), d: x.shape[3].clone() },
            3 => {
                if self.num_heads <= 0 {
                    return Err(KernelError::attr("num_heads", "is required for 3-D input"));
                }
                let nh = self.num_heads;
                if let Dim::Known(hd) = &x.shape[2] {
                    if hd % nh != 0 {
                        return Err(KernelError::invalid(format!("hidden size {hd} is not divisible by {nh} heads")));
                    }
                }
                Geo {
                    b: x.shape[0].clone(),
                    h: Dim::Known(nh),
                    s: x.shape[1].clone(),
                    d: x.shape[2].floor_div(&Dim::Known(nh)).expect("positive heads"),
                }
            }
            r => return Err(KernelError::input(0, format!("rank {r}: X must be 3-D or 4-D"))),
        };
        let rot = if self.rot_dim > 0 { Dim::Known(self.rot_dim) } else { g.d.clone() };
        if let (Dim::Known(r), d) = (&rot, &g.d) {
            if r % 2 != 0 || d.known().is_some_and(|d| *r > d) {
                return Err(KernelError::attr(
                    "rotary_embedding_dim",
                    format!("{r} must be even and at most the head size {d}"),
                ));
            }
        }
        let half = rot.floor_div(&Dim::Known(2)).expect("nonzero");
        if cos.shape != sin.shape {
            return Err(KernelError::input(2, "sin_cache and cos_cache differ in shape"));
        }
        match inputs.get(3).copied().flatten() {
            Some(p) => {
                if !p.dtype.is_int() || p.shape.len() != 2 {
                    return Err(KernelError::input(3, "position_ids must be 2-D integers"));
                }
                eq(&p.shape[0], &g.b, "position_ids batch")?;
                eq(&p.shape[1], &g.s, "position_ids sequence")?;
                if cos.shape.len() != 2 {
                    return Err(KernelError::input(1, "caches must be [max_position, rot/2] with position_ids"));
                }
            }
            None => {
                if cos.shape.len() != 3 {
                    return Err(KernelError::input(1, "caches must be [batch, seq, rot/2] without position_ids"));
                }
                eq(&cos.shape[0], &g.b, "cache batch")?;
                eq(&cos.shape[1], &g.s, "cache sequence")?;
            }
        }
        eq(cos.shape.last().expect("rank checked"), &half, "cache width and rotary_embedding_dim/2")?;
        Ok((g, rot))
    }
}

impl Kernel for Rotary {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        self.geometry(inputs)?;
        let x = required(inputs, 0)?;
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let dims: Vec<Vec<Dim>> = inputs
            .iter()
            .map(|t| t.map(|t| t.shape.iter().map(|&d| Dim::Known(d as i64)).collect()).unwrap_or_default())
            .collect();
        let si: Vec<Option<ShapeInput>> = inputs
            .iter()
            .zip(&dims)
            .map(|(t, d)| t.map(|t| ShapeInput { dtype: t.dtype, shape: d, value: None, data: None }))
            .collect();
        let (gd, rot) = self.geometry(&si)?;
        let u = |d: &Dim| d.known().map(|v| v as usize).ok_or_else(|| KernelError::invalid("unknown dim"));
        let g = Geo { b: u(&gd.b)?, h: u(&gd.h)?, s: u(&gd.s)?, d: u(&gd.d)? };
        let rot = u(&rot)?;
        let x = required(inputs, 0)?;
        let cos = required(inputs, 1)?;
        if x.numel() != g.b * g.h * g.s * g.d {
            return Err(KernelError::invalid("X size does not match its heads"));
        }
        let half = rot / 2;
        // Cache row of (b, s): from position_ids, or the (b, s) row itself.
        let rows: Vec<usize> = match inputs.get(3).copied().flatten() {
            Some(p) => {
                let max = cos.shape[0];
                p.to_i64_vec()?
                    .into_iter()
                    .map(|v| {
                        usize::try_from(v)
                            .ok()
                            .filter(|&v| v < max)
                            .ok_or_else(|| KernelError::input(3, format!("position {v} is outside 0..{max}")))
                    })
                    .collect::<Result<_, _>>()?
            }
            None => (0..g.b * g.s).collect(),
        };
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != x.dtype || out.data.len() != x.data.len() {
            return Err(KernelError::invalid("output does not match X"));
        }
        let job = Job { g, half, rot, x3: x.shape.len() == 3, interleaved: self.interleaved };
        let sin = required(inputs, 2)?;
        crate::with_float!(x.dtype, T => job.run(x.typed::<T>()?, cos.typed::<T>()?, sin.typed::<T>()?, &rows, out.typed::<T>()?),
            _ => return Err(KernelError::unsupported(format!("RotaryEmbedding on {}", x.dtype))));
        Ok(())
    }
}

struct Job {
    g: Geo<usize>,
    half: usize,
    rot: usize,
    x3: bool,
    interleaved: bool,
}

impl Job {
    fn run<T: Float>(&self, x: &[T], cos: &[T], sin: &[T], rows: &[usize], y: &mut [T]) {
        let g = &self.g;
        let (half, rot) = (self.half, self.rot);
        for b in 0..g.b {
            for h in 0..g.h {
                for s in 0..g.s {
                    let o = if self.x3 { (b * g.s + s) * g.h * g.d + h * g.d } else { ((b * g.h + h) * g.s + s) * g.d };
                    let xr = &x[o..o + g.d];
                    let yr = &mut y[o..o + g.d];
                    let cr = rows[b * g.s + s] * half;
                    let (c, sn) = (&cos[cr..cr + half], &sin[cr..cr + half]);
                    for j in 0..half {
                        let (i1, i2) = if self.interleaved { (2 * j, 2 * j + 1) } else { (j, j + half) };
                        let (x1, x2) = (xr[i1].to_acc(), xr[i2].to_acc());
                        let (cv, sv) = (c[j].to_acc(), sn[j].to_acc());
                        yr[i1] = T::from_acc(cv * x1 - sv * x2);
                        yr[i2] = T::from_acc(sv * x1 + cv * x2);
                    }
                    yr[rot..].copy_from_slice(&xr[rot..]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::reduce::testutil::*;
    use kiln_formats::{DType, Dim, Tensor};

    #[test]
    fn rotary_half_and_interleaved() {
        // B=1, H=1, S=2, D=4, full rotation; caches [max_pos=3, 2].
        let x: Vec<f32> = vec![1., 2., 3., 4., 5., 6., 7., 8.];
        let ang = [[0.0f32, 0.0], [0.5, 1.0], [1.0, 2.0]];
        let cos: Vec<f32> = ang.iter().flatten().map(|a| a.cos()).collect();
        let sin: Vec<f32> = ang.iter().flatten().map(|a| a.sin()).collect();
        let pos = vec![2i64, 1];
        let inputs = || {
            vec![
                Some(Tensor::from_vec(&[1, 1, 2, 4], x.clone())),
                Some(Tensor::from_vec(&[3, 2], cos.clone())),
                Some(Tensor::from_vec(&[3, 2], sin.clone())),
                Some(Tensor::from_vec(&[1, 2], pos.clone())),
            ]
        };
        let y = run1("RotaryEmbedding", 23, &[], inputs());
        let mut want = Vec::new();
        for (s, p) in pos.iter().enumerate() {
            let r = &x[s * 4..s * 4 + 4];
            let a = ang[*p as usize];
            let mut o = [0f32; 4];
            for j in 0..2 {
                o[j] = a[j].cos() * r[j] - a[j].sin() * r[j + 2];
                o[j + 2] = a[j].sin() * r[j] + a[j].cos() * r[j + 2];
            }
            want.extend(o);
        }
        assert_close(&f32s(&y), &want, 1e-6);
        let y = run1("RotaryEmbedding", 23, &[int("interleaved", 1)], inputs());
        let mut want = Vec::new();
        for (s, p) in pos.iter().enumerate() {
            let r = &x[s * 4..s * 4 + 4];
            let a = ang[*p as usize];
            for j in 0..2 {
                want.push(a[j].cos() * r[2 * j] - a[j].sin() * r[2 * j + 1]);
                want.push(a[j].sin() * r[2 * j] + a[j].cos() * r[2 * j + 1]);
            }
        }
        assert_close(&f32s(&y), &want, 1e-6);
    }

    #[test]
    fn rotary_3d_partial_without_positions() {
        // B=1, S=1, H=2, D=4, rot=2: caches [1, 1, 1]; the last two features pass through.
        let x = vec![1f32, 2., 3., 4., 5., 6., 7., 8.];
        let (c, s) = (0.6f32, 0.8f32);
        let y = run1(
            "RotaryEmbedding",
            23,
            &[int("num_heads", 2), int("rotary_embedding_dim", 2)],
            vec![
                Some(Tensor::from_vec(&[1, 1, 8], x)),
                Some(Tensor::from_vec(&[1, 1, 1], vec![c])),
                Some(Tensor::from_vec(&[1, 1, 1], vec![s])),
            ],
        );
        let want = vec![c - s * 2., s + c * 2., 3., 4., c * 5. - s * 6., s * 5. + c * 6., 7., 8.];
        assert_close(&f32s(&y), &want, 1e-6);
    }

    #[test]
    fn rotary_errors_and_infer() {
        let x = [Dim::sym("b"), Dim::sym("s"), Dim::Known(64)];
        let c = [Dim::Known(128), Dim::Known(8)];
        let p = [Dim::sym("b"), Dim::sym("s")];
        let i = |s: &[Dim], dt: DType| Some((dt, s.to_vec()));
        let ins = [i(&x, DType::F32), i(&c, DType::F32), i(&c, DType::F32), i(&p, DType::I64)];
        let refs: Vec<_> = ins.iter().map(|o| o.as_ref().map(|(d, s)| (*d, &s[..], None))).collect();
        let o = infer1("RotaryEmbedding", 23, &[int("num_heads", 4)], &refs).unwrap();
        assert_eq!(o[0].shape, x.to_vec());
        // Head size 16 needs caches of width 8; rot 8 needs width 4.
        assert!(infer1("RotaryEmbedding", 23, &[int("num_heads", 4), int("rotary_embedding_dim", 8)], &refs).is_err());
        assert!(infer1("RotaryEmbedding", 23, &[], &refs).is_err());
        let bad = try_run(
            "RotaryEmbedding",
            23,
            &[],
            vec![
                Some(Tensor::from_vec(&[1, 1, 1, 2], vec![1f32, 2.])),
                Some(Tensor::from_vec(&[1, 1], vec![1f32])),
                Some(Tensor::from_vec(&[1, 1], vec![0f32])),
                Some(Tensor::from_vec(&[1, 1], vec![5i64])),
            ],
        );
        assert!(bad.is_err());
    }
}
