//! Attention (opset 23/24) and RotaryEmbedding (opset 23).
//!
//! Attention takes Q, K, V as 4-D `[B, H, S, D]` or 3-D `[B, S, H*D]` (with `q_num_heads` /
//! `kv_num_heads`), appends K/V to optional past caches (outputs `present_*`, always 4-D),
//! and computes `softmax(softcap(Q·Kᵀ·scale + bias))·V` where the bias combines the optional
//! mask (bool: false → -inf; float: added; a short last dim is padded with -inf), `is_causal`
//! (query i sees keys `j <= i + past_len`) and `nonpad_kv_seqlen`. Grouped-query attention maps
//! query head h to kv head `h / (Hq / Hkv)`. Rows are processed one query at a time with
//! scratch the size of one score row, in parallel over rows.

mod few_queries;
pub mod fused;
mod rotary;
pub mod rotate_half;

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::broadcast::broadcast_strides;
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

/// Op types this family has kernels for.
pub const OPS: &[&str] = &["Attention", "RotaryEmbedding"];

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    match spec.op {
        "Attention" => Some(Attention::new(spec).map(|k| Box::new(k) as Box<dyn Kernel>)),
        "RotaryEmbedding" => Some(rotary::build(spec)),
        _ => None,
    }
}

/// Prepares this family's kiln-domain kernel for `spec`, or `None` for another kiln op.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == rotate_half::ROTATE_HALF)
        .then(|| Ok(Box::new(rotate_half::RotateHalf) as Box<dyn Kernel>))
        .or_else(|| fused::build_kiln(spec))
}

struct Attention {
    is_causal: bool,
    q_heads: Option<i64>,
    kv_heads: Option<i64>,
    qk_mode: i64,
    scale: Option<f32>,
    softcap: f32,
}

impl Attention {
    fn new(spec: &OpSpec) -> Result<Attention, KernelError> {
        let qk_mode = spec.attrs.int("qk_matmul_output_mode", 0)?;
        if !(0..=3).contains(&qk_mode) {
            return Err(KernelError::attr("qk_matmul_output_mode", format!("{qk_mode} is not 0..3")));
        }
        let heads = |n: &str| -> Result<Option<i64>, KernelError> {
            match spec.attrs.int_opt(n)? {
                Some(h) if h <= 0 => Err(KernelError::attr(n, "must be positive")),
                h => Ok(h),
            }
        };
        Ok(Attention {
            is_causal: spec.attrs.int("is_causal", 0)? != 0,
            q_heads: heads("q_num_heads")?,
            kv_heads: heads("kv_num_heads")?,
            qk_mode,
            scale: spec.attrs.float_opt("scale")?,
            softcap: spec.attrs.float("softcap", 0.0)?,
        })
    }
}

/// Sizes of one call, generic over known (usize) and symbolic (Dim) dims.
#[derive(Clone, Copy, Debug)]
struct Geo<D> {
    b: D,
    hq: D,
    hkv: D,
    sq: D,
    skv: D,
    past: D,
    d: D,
    dv: D,
}

fn eq(a: &Dim, b: &Dim, what: &str) -> Result<(), KernelError> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => Err(KernelError::invalid(format!("{what}: {x} vs {y}"))),
        _ => Ok(()),
    }
}

/// `hidden / heads`, checking divisibility when known.
fn per_head(hidden: &Dim, heads: i64, what: &str) -> Result<Dim, KernelError> {
    if let Dim::Known(h) = hidden {
        if h % heads != 0 {
            return Err(KernelError::invalid(format!("{what} {h} is not divisible by {heads} heads")));
        }
    }
    hidden.floor_div(&Dim::Known(heads)).ok_or_else(|| KernelError::invalid("zero heads"))
}

impl Attention {
    fn geometry(&self, inputs: &[Option<ShapeInput>]) -> Result<Geo<Dim>, KernelError> {
        let q = required(inputs, 0)?;
        let k = required(inputs, 1)?;
        let v = required(inputs, 2)?;
        for (i, t) in [&q, &k, &v].iter().enumerate() {
            if !t.dtype.is_float() || t.dtype != q.dtype {
                return Err(KernelError::input(i, format!("{} (Q is {})", t.dtype, q.dtype)));
            }
        }
        let rank = q.shape.len();
        if k.shape.len() != rank || v.shape.len() != rank || !(rank == 3 || rank == 4) {
            return Err(KernelError::invalid("Q, K and V must all be 3-D or all 4-D"));
        }
        let mut g = if rank == 3 {
            let (Some(hq), Some(hkv)) = (self.q_heads, self.kv_heads) else {
                return Err(KernelError::attr("q_num_heads", "3-D inputs need q_num_heads and kv_num_heads"));
            };
            Geo {
                b: q.shape[0].clone(),
                hq: Dim::Known(hq),
                hkv: Dim::Known(hkv),
                sq: q.shape[1].clone(),
                skv: k.shape[1].clone(),
                past: Dim::Known(0),
                d: per_head(&q.shape[2], hq, "Q hidden size")?,
                dv: per_head(&v.shape[2], hkv, "V hidden size")?,
            }
        } else {
            Geo {
                b: q.shape[0].clone(),
                hq: q.shape[1].clone(),
                hkv: k.shape[1].clone(),
                sq: q.shape[2].clone(),
                skv: k.shape[2].clone(),
                past: Dim::Known(0),
                d: q.shape[3].clone(),
                dv: v.shape[3].clone(),
            }
        };
        if rank == 3 {
            eq(&per_head(&k.shape[2], self.kv_heads.unwrap_or(1), "K hidden size")?, &g.d, "K head size")?;
        } else {
            eq(&k.shape[3], &g.d, "K head size")?;
            eq(&v.shape[1], &g.hkv, "V heads")?;
        }
        eq(&k.shape[0], &g.b, "K batch")?;
        eq(&v.shape[0], &g.b, "V batch")?;
        eq(&v.shape[rank - 2], &g.skv, "V sequence")?;
        if let (Dim::Known(a), Dim::Known(b)) = (&g.hq, &g.hkv) {
            if *b <= 0 || a % b != 0 {
                return Err(KernelError::invalid(format!("{a} query heads cannot share {b} kv heads")));
            }
        }
        let pk = inputs.get(4).copied().flatten();
        let pv = inputs.get(5).copied().flatten();
        match (pk, pv) {
            (Some(pk), Some(pv)) => {
                if pk.shape.len() != 4 || pv.shape.len() != 4 || pk.dtype != q.dtype || pv.dtype != q.dtype {
                    return Err(KernelError::input(4, "past_key/past_value must be 4-D of Q's dtype"));
                }
                for (t, hd) in [(pk, &g.d), (pv, &g.dv)] {
                    eq(&t.shape[0], &g.b, "past batch")?;
                    eq(&t.shape[1], &g.hkv, "past heads")?;
                    eq(&t.shape[3], hd, "past head size")?;
                }
                eq(&pk.shape[2], &pv.shape[2], "past key and value lengths")?;
                g.past = pk.shape[2].clone();
            }
            (None, None) => {}
            _ => return Err(KernelError::input(4, "past_key and past_value go together")),
        }
        if let Some(m) = inputs.get(3).copied().flatten() {
            if !(m.dtype == DType::Bool || m.dtype == q.dtype) {
                return Err(KernelError::input(3, format!("mask of {} with {} inputs", m.dtype, q.dtype)));
            }
            if m.shape.is_empty() || m.shape.len() > 4 {
                return Err(KernelError::input(3, "mask must have 1 to 4 dims"));
            }
        }
        if let Some(n) = inputs.get(6).copied().flatten() {
            if n.dtype != DType::I64 || n.shape.len() != 1 {
                return Err(KernelError::input(6, "nonpad_kv_seqlen must be 1-D int64"));
            }
            eq(&n.shape[0], &g.b, "nonpad_kv_seqlen length")?;
        }
        Ok(g)
    }
}

impl Kernel for Attention {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let g = self.geometry(inputs)?;
        let dt = required(inputs, 0)?.dtype;
        let total = g.past.add(&g.skv);
        let y = if required(inputs, 0)?.shape.len() == 3 {
            vec![g.b.clone(), g.sq.clone(), g.hq.mul(&g.dv)]
        } else {
            vec![g.b.clone(), g.hq.clone(), g.sq.clone(), g.dv.clone()]
        };
        Ok(vec![
            OutputInfo::new(dt, y),
            OutputInfo::new(dt, vec![g.b.clone(), g.hkv.clone(), total.clone(), g.d.clone()]),
            OutputInfo::new(dt, vec![g.b.clone(), g.hkv.clone(), total.clone(), g.dv.clone()]),
            OutputInfo::new(dt, vec![g.b, g.hq, g.sq, total]),
        ])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        // Re-derive and check the geometry from the real shapes, so indexing below is in bounds.
        let dims: Vec<Vec<Dim>> = inputs
            .iter()
            .map(|t| t.map(|t| t.shape.iter().map(|&d| Dim::Known(d as i64)).collect()).unwrap_or_default())
            .collect();
        let si: Vec<Option<ShapeInput>> = inputs
            .iter()
            .zip(&dims)
            .map(|(t, d)| t.map(|t| ShapeInput { dtype: t.dtype, shape: d, value: None, data: None }))
            .collect();
        let gd = self.geometry(&si)?;
        let k = |d: &Dim| d.known().map(|v| v as usize).ok_or_else(|| KernelError::invalid("unknown dim"));
        let g = Geo {
            b: k(&gd.b)?,
            hq: k(&gd.hq)?,
            hkv: k(&gd.hkv)?,
            sq: k(&gd.sq)?,
            skv: k(&gd.skv)?,
            past: k(&gd.past)?,
            d: k(&gd.d)?,
            dv: k(&gd.dv)?,
        };
        // Exact sizes (3-D hidden sizes must equal heads * head size).
        let q = required(inputs, 0)?;
        let (kt, vt) = (required(inputs, 1)?, required(inputs, 2)?);
        let n = |t: &TensorRef| t.numel();
        if n(&q) != g.b * g.hq * g.sq * g.d
            || n(&kt) != g.b * g.hkv * g.skv * g.d
            || n(&vt) != g.b * g.hkv * g.skv * g.dv
        {
            return Err(KernelError::invalid("Q/K/V sizes do not match their heads"));
        }
        let total = g.past + g.skv;
        let want = [
            g.b * g.hq * g.sq * g.dv,
            g.b * g.hkv * total * g.d,
            g.b * g.hkv * total * g.dv,
            g.b * g.hq * g.sq * total,
        ];
        for (o, w) in outputs.iter().zip(want) {
            if o.dtype != q.dtype || o.numel() != w || o.data.len() != w * q.dtype.size() {
                return Err(KernelError::invalid("an output does not match the attention sizes"));
            }
        }
        let mask = match inputs.get(3).copied().flatten() {
            Some(m) => {
                let tm = *m.shape.last().expect("mask rank checked");
                if tm > total {
                    return Err(KernelError::input(3, format!("mask is {tm} long, total sequence {total}")));
                }
                let st = broadcast_strides(m.shape, &[g.b, g.hq, g.sq, tm])?;
                Some((m, st, tm))
            }
            None => None,
        };
        let nonpad = match inputs.get(6).copied().flatten() {
            Some(t) => {
                let v = t.to_i64_vec()?;
                if v.iter().any(|&x| x < 0 || x as usize > total) {
                    return Err(KernelError::input(6, "nonpad_kv_seqlen out of range"));
                }
                Some(v)
            }
            None => None,
        };
        let cfg = Cfg {
            g,
            q3: q.shape.len() == 3,
            scale: self.scale.map_or(1.0 / (g.d as f64).sqrt(), |s| s as f64),
            softcap: self.softcap as f64,
            causal: self.is_causal,
            has_past: inputs.get(4).copied().flatten().is_some(),
            mode: self.qk_mode,
            nonpad,
        };
        let past = (inputs.get(4).copied().flatten(), inputs.get(5).copied().flatten());
        crate::with_float!(q.dtype, T => cfg.run::<T>(inputs, past, mask, outputs),
            _ => Err(KernelError::unsupported(format!("Attention on {}", q.dtype))))
    }
}

struct Cfg {
    g: Geo<usize>,
    q3: bool,
    scale: f64,
    softcap: f64,
    causal: bool,
    has_past: bool,
    mode: i64,
    nonpad: Option<Vec<i64>>,
}

type Mask<'a> = Option<(TensorRef<'a>, Vec<usize>, usize)>;

#[derive(Clone, Copy)]
enum MaskData<'a, T> {
    Bool(&'a [u8]),
    Float(&'a [T]),
}

impl Cfg {
    /// Offset of row (b, h, s) of a Q/K/V tensor with `heads` heads, `len` rows and head size `hd`.
    fn row(&self, b: usize, h: usize, s: usize, heads: usize, len: usize, hd: usize) -> usize {
        if self.q3 {
            (b * len + s) * heads * hd + h * hd
        } else {
            ((b * heads + h) * len + s) * hd
        }
    }

    fn run<T: Float>(
        &self,
        inputs: &[Option<TensorRef>],
        (pk, pv): (Option<TensorRef>, Option<TensorRef>),
        mask: Mask,
        outputs: &mut [TensorMut],
    ) -> Result<(), KernelError> {
        let g = &self.g;
        let total = g.past + g.skv;
        let q = required(inputs, 0)?.typed::<T>()?;
        let k = required(inputs, 1)?.typed::<T>()?;
        let v = required(inputs, 2)?.typed::<T>()?;
        let pk = pk.map(|t| t.typed::<T>()).transpose()?;
        let pv = pv.map(|t| t.typed::<T>()).transpose()?;
        let (y, rest) = outputs.split_first_mut().ok_or_else(|| KernelError::invalid("missing output"))?;
        let y = y.typed::<T>()?;
        let mut rest = rest.iter_mut();
        // Present caches: [past; new] per (batch, kv head).
        for (src_new, src_past, hd) in [(k, pk, g.d), (v, pv, g.dv)] {
            let Some(out) = rest.next() else { break };
            let out = out.typed::<T>()?;
            for b in 0..g.b {
                for h in 0..g.hkv {
                    let dst = &mut out[(b * g.hkv + h) * total * hd..][..total * hd];
                    if let Some(p) = src_past {
                        let o = (b * g.hkv + h) * g.past * hd;
                        dst[..g.past * hd].copy_from_slice(&p[o..o + g.past * hd]);
                    }
                    for s in 0..g.skv {
                        let o = self.row(b, h, s, g.hkv, g.skv, hd);
                        dst[(g.past + s) * hd..][..hd].copy_from_slice(&src_new[o..o + hd]);
                    }
                }
            }
        }
        let qk_out = match rest.next() {
            Some(t) => Some(t.typed::<T>()?),
            None => None,
        };
        // Offset of cache row t of kv head h: in the past tensor, or in the new K/V.
        let kv_row = |hd: usize, b: usize, h: usize, t: usize| -> usize {
            if t < g.past {
                ((b * g.hkv + h) * g.past + t) * hd
            } else {
                self.row(b, h, t - g.past, g.hkv, g.skv, hd)
            }
        };
        let group = g.hq / g.hkv.max(1);
        // The mask's elements: bytes for bool masks, T otherwise.
        let mask_t = match &mask {
            Some((m, st, tm)) => {
                let data =
                    if m.dtype == DType::Bool { MaskData::Bool(m.data) } else { MaskData::Float(m.typed::<T>()?) };
                Some((data, st.as_slice(), *tm))
            }
            None => None,
        };
        // One query row (b, h, i): scores into `sc`, then Y row and optional qk row.
        let one = |b: usize, h: usize, i: usize, sc: &mut [T::Acc], yrow: &mut [T], qkrow: Option<&mut [T]>| {
            let kh = h / group;
            let qo = self.row(b, h, i, g.hq, g.sq, g.d);
            let qr = &q[qo..qo + g.d];
            let sc_t = T::Acc::from_f64(self.scale);
            let cap = T::Acc::from_f64(self.softcap);
            let ninf = <T::Acc as AccFloat>::neg_infinity();
            let limit = self.nonpad.as_ref().map_or(total, |np| np[b] as usize);
            let offset: i64 = if self.has_past {
                g.past as i64
            } else if let Some(np) = &self.nonpad {
                np[b] - g.sq as i64
            } else {
                0
            };
            let mut qk = qkrow;
            for (t, s) in sc.iter_mut().enumerate() {
                let ko = kv_row(g.d, b, kh, t);
                let kr = if t < g.past { &pk.unwrap_or(&[])[ko..ko + g.d] } else { &k[ko..ko + g.d] };
                let mut dot = T::Acc::ZERO;
                for (a, c) in qr.iter().zip(kr) {
                    dot += a.to_acc() * c.to_acc();
                }
                let raw = dot * sc_t;
                let mut bias = T::Acc::ZERO;
                if let Some((m, st, tm)) = mask_t {
                    if t < tm {
                        let mo = b * st[0] + h * st[1] + i * st[2] + t * st[3];
                        match m {
                            MaskData::Bool(d) if d[mo] == 0 => bias = ninf,
                            MaskData::Bool(_) => {}
                            MaskData::Float(d) => bias += d[mo].to_acc(),
                        }
                    } else {
                        bias = ninf;
                    }
                }
                if (self.causal && t as i64 > i as i64 + offset) || t >= limit {
                    bias = ninf;
                }
                // The mask is added before the softcap, as the ONNX reference does (onnx 1.20's
                // backend tests check it), so a masked score becomes -softcap, not -inf.
                let masked = raw + bias;
                let capped = if self.softcap > 0.0 { cap * (masked / cap).tanh() } else { masked };
                *s = capped;
                if let Some(qk) = qk.as_deref_mut() {
                    qk[t] = T::from_acc(match self.mode {
                        0 => raw,
                        1 => masked,
                        _ => capped,
                    });
                }
            }
            let mut mx = ninf;
            for &s in sc.iter() {
                if s > mx {
                    mx = s;
                }
            }
            let mut sum = T::Acc::ZERO;
            for s in sc.iter_mut() {
                *s = (*s - mx).exp();
                sum += *s;
            }
            let inv = T::Acc::ONE / sum;
            if let (Some(qk), 3) = (qk, self.mode) {
                for (d, s) in qk.iter_mut().zip(sc.iter()) {
                    *d = T::from_acc(*s * inv);
                }
            }
            let mut acc = [T::Acc::ZERO; 256];
            let mut big = Vec::new();
            let acc: &mut [T::Acc] = if g.dv <= acc.len() {
                &mut acc[..g.dv]
            } else {
                big.resize(g.dv, T::Acc::ZERO);
                &mut big
            };
            for (t, &p) in sc.iter().enumerate() {
                let vo = kv_row(g.dv, b, kh, t);
                let vr = if t < g.past { &pv.unwrap_or(&[])[vo..vo + g.dv] } else { &v[vo..vo + g.dv] };
                let w = p * inv;
                for (a, x) in acc.iter_mut().zip(vr) {
                    *a += w * x.to_acc();
                }
            }
            for (d, a) in yrow.iter_mut().zip(acc.iter()) {
                *d = T::from_acc(*a);
            }
        };
        let rows = g.b * g.hq * g.sq;
        if rows == 0 || g.dv == 0 && qk_out.is_none() {
            return Ok(());
        }
        // Y rows in storage order: (b, h, i) for 4-D, (b, i, h) for 3-D.
        let decode = |r: usize| -> (usize, usize, usize) {
            if self.q3 {
                (r / (g.sq * g.hq), r % g.hq, (r / g.hq) % g.sq)
            } else {
                (r / (g.hq * g.sq), (r / g.sq) % g.hq, r % g.sq)
            }
        };
        match qk_out {
            Some(qk) => {
                let mut sc = vec![T::Acc::ZERO; total];
                for r in 0..rows {
                    let (b, h, i) = decode(r);
                    let qr = ((b * g.hq + h) * g.sq + i) * total;
                    let yr = &mut y[r * g.dv..(r + 1) * g.dv];
                    one(b, h, i, &mut sc, yr, Some(&mut qk[qr..qr + total]));
                }
            }
            None if g.dv > 0 => {
                let work = rows * total * (g.d + g.dv);
                let min_rows = if work > 1 << 16 { 1 } else { rows };
                y.par_chunks_mut(g.dv).enumerate().with_min_len(min_rows).for_each_init(
                    || vec![T::Acc::ZERO; total],
                    |sc, (r, yr)| {
                        let (b, h, i) = decode(r);
                        one(b, h, i, sc, yr, None);
                    },
                );
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::reduce::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::{DType, Dim, Tensor};

    fn seq(n: usize, s: f32, o: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + o) * 7 % 13) as f32 - 6.) * s).collect()
    }

    /// Plain reference on 4-D [B, H, S, D] data with an additive bias [Sq, T] per (b, h).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (b, hq, hkv, sq, t, d, dv): (usize, usize, usize, usize, usize, usize, usize),
        scale: f32,
        bias: &dyn Fn(usize, usize, usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut y = vec![0f32; b * hq * sq * dv];
        for bi in 0..b {
            for h in 0..hq {
                let kh = h / (hq / hkv);
                for i in 0..sq {
                    let mut s: Vec<f32> = (0..t)
                        .map(|j| {
                            let dot: f32 = (0..d)
                                .map(|x| q[((bi * hq + h) * sq + i) * d + x] * k[((bi * hkv + kh) * t + j) * d + x])
                                .sum();
                            dot * scale + bias(bi, h, i, j)
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    s.iter_mut().for_each(|x| *x = (*x - m).exp());
                    let z: f32 = s.iter().sum();
                    for x in 0..dv {
                        y[((bi * hq + h) * sq + i) * dv + x] =
                            (0..t).map(|j| s[j] / z * v[((bi * hkv + kh) * t + j) * dv + x]).sum();
                    }
                }
            }
        }
        y
    }

    fn run_att(attrs: &[Attribute], inputs: Vec<Option<Tensor>>) -> Vec<Tensor> {
        try_run("Attention", 23, attrs, inputs).unwrap()
    }

    #[test]
    fn attention_4d_gqa_and_scale() {
        let (b, hq, hkv, sq, t, d, dv) = (2, 4, 2, 3, 5, 4, 6);
        let q = seq(b * hq * sq * d, 0.1, 0);
        let k = seq(b * hkv * t * d, 0.1, 3);
        let v = seq(b * hkv * t * dv, 0.2, 5);
        let out = run_att(
            &[],
            vec![
                Some(Tensor::from_vec(&[b, hq, sq, d], q.clone())),
                Some(Tensor::from_vec(&[b, hkv, t, d], k.clone())),
                Some(Tensor::from_vec(&[b, hkv, t, dv], v.clone())),
            ],
        );
        assert_eq!(out[0].shape, vec![b, hq, sq, dv]);
        let want = reference(&q, &k, &v, (b, hq, hkv, sq, t, d, dv), 0.5, &|_, _, _, _| 0.);
        assert_close(&f32s(&out[0]), &want, 1e-5);
        let out = run_att(
            &[float("scale", 0.1), int("is_causal", 1)],
            vec![
                Some(Tensor::from_vec(&[b, hq, sq, d], q.clone())),
                Some(Tensor::from_vec(&[b, hkv, t, d], k.clone())),
                Some(Tensor::from_vec(&[b, hkv, t, dv], v.clone())),
            ],
        );
        let causal = |_: usize, _: usize, i: usize, j: usize| if j > i { f32::NEG_INFINITY } else { 0. };
        let want = reference(&q, &k, &v, (b, hq, hkv, sq, t, d, dv), 0.1, &causal);
        assert_close(&f32s(&out[0]), &want, 1e-5);
    }

    #[test]
    fn attention_3d_with_past_mask_and_present() {
        // 3-D inputs: B=1, Sq=2, Hq=2, Hkv=1, D=Dv=2; past of 2 rows.
        let (hq, hkv, sq, skv, p, d) = (2, 1, 2, 2, 2, 2);
        let q3 = seq(sq * hq * d, 0.3, 1);
        let k3 = seq(skv * hkv * d, 0.3, 2);
        let v3 = seq(skv * hkv * d, 0.5, 4);
        let pk = seq(hkv * p * d, 0.3, 6);
        let pv = seq(hkv * p * d, 0.5, 8);
        let mask = vec![true, true, false, true, true, true, true, false];
        let out = run_att(
            &[int("q_num_heads", 2), int("kv_num_heads", 1), int("qk_matmul_output_mode", 1)],
            vec![
                Some(Tensor::from_vec(&[1, sq, hq * d], q3.clone())),
                Some(Tensor::from_vec(&[1, skv, hkv * d], k3.clone())),
                Some(Tensor::from_vec(&[1, skv, hkv * d], v3.clone())),
                Some(Tensor::from_bools(&[sq, p + skv], &mask)),
                Some(Tensor::from_vec(&[1, hkv, p, d], pk.clone())),
                Some(Tensor::from_vec(&[1, hkv, p, d], pv.clone())),
            ],
        );
        assert_eq!(out[0].shape, vec![1, sq, hq * d]);
        assert_eq!(out[1].shape, vec![1, hkv, p + skv, d]);
        let kt: Vec<f32> = pk.iter().chain(&k3).cloned().collect();
        let vt: Vec<f32> = pv.iter().chain(&v3).cloned().collect();
        assert_eq!(f32s(&out[1]), kt);
        assert_eq!(f32s(&out[2]), vt);
        // Q to 4-D: [1, Sq, Hq, D] -> [1, Hq, Sq, D].
        let q4: Vec<f32> = (0..hq * sq * d)
            .map(|x| {
                let (h, i, e) = (x / (sq * d), (x / d) % sq, x % d);
                q3[(i * hq + h) * d + e]
            })
            .collect();
        let bias = |_: usize, _: usize, i: usize, j: usize| {
            if mask[i * 4 + j] {
                0.
            } else {
                f32::NEG_INFINITY
            }
        };
        let y4 = reference(&q4, &kt, &vt, (1, hq, hkv, sq, p + skv, d, d), 1. / 2f32.sqrt(), &bias);
        let y3: Vec<f32> = (0..sq * hq * d)
            .map(|x| {
                let (i, h, e) = (x / (hq * d), (x / d) % hq, x % d);
                y4[(h * sq + i) * d + e]
            })
            .collect();
        assert_close(&f32s(&out[0]), &y3, 1e-5);
        let qk = f32s(&out[3]);
        assert_eq!(out[3].shape, vec![1, hq, sq, p + skv]);
        assert_eq!(qk[2], f32::NEG_INFINITY);
        assert!(qk[0].is_finite());
    }

    #[test]
    fn attention_infer_and_errors() {
        let q = [Dim::sym("b"), Dim::sym("s"), Dim::Known(64)];
        let kv = [Dim::sym("b"), Dim::sym("s"), Dim::Known(32)];
        let attrs = [int("q_num_heads", 4), int("kv_num_heads", 2)];
        let i = |s: &'static [Dim]| Some((DType::F32, s, None));
        let qs: &'static [Dim] = Box::leak(Box::new(q.clone()));
        let kvs: &'static [Dim] = Box::leak(Box::new(kv));
        let o = infer1("Attention", 23, &attrs, &[i(qs), i(kvs), i(kvs)]).unwrap();
        assert_eq!(o[0].shape, q.to_vec());
        assert_eq!(o[1].shape, vec![Dim::sym("b"), Dim::Known(2), Dim::sym("s"), Dim::Known(16)]);
        assert!(infer1("Attention", 23, &[int("q_num_heads", 3), int("kv_num_heads", 2)], &[i(qs), i(kvs), i(kvs)])
            .is_err());
        assert!(infer1("Attention", 23, &[], &[i(qs), i(kvs), i(kvs)]).is_err());
        let bad = try_run(
            "Attention",
            23,
            &[],
            vec![
                Some(Tensor::from_vec(&[1, 1, 2, 4], vec![0f32; 8])),
                Some(Tensor::from_vec(&[1, 1, 3, 3], vec![0f32; 9])),
                Some(Tensor::from_vec(&[1, 1, 3, 4], vec![0f32; 12])),
            ],
        );
        assert!(bad.is_err());
    }
}
