//! `kiln::FusedAttention(q, k, v[, mask])` = softmax(q·kᵀ·scale + mask)·v per head, with
//! grouped-query heads: q is `[B, H, S, d]`, k `[B, G, T, d]`, v `[B, G, T, dv]` (`H` a multiple
//! of `G`; query head `h` reads kv head `h / (H / G)`), the optional additive mask broadcasts to
//! `[B, H, S, T]`, and the output is `[B, H, S, dv]`. `scale` multiplies the scores (divides them
//! with `divide`), as `kiln::ScaledSoftmax` does.
//!
//! With `k_pitch` (`v_pitch`) non-zero, k (v) is a KV cache state read in place: each `[T, d]`
//! matrix is stored in `k_pitch` rows of which the first `T` are filled. With f32 queries, k and
//! v may be an f16 cache (`--kv-cache f16`): decode's few queries widen each key and value as
//! they load it, longer blocks widen their kv head into the task's scratch first. Memory traffic
//! is halved, and the arithmetic is the f32 path's on the rounded values.
//!
//! Exporters write this as five to nine steps per layer (the scores product, reshapes between
//! grouped and per-head views, scale, mask, softmax, the product with v); at decode each is a
//! dispatch over a few hundred numbers and a join of the threads. Here one parallel pass takes a
//! block of one head's queries (at decode, all the query heads of a group, which then read each
//! key and value once: `few_queries`) through both products and the softmax, the scores staying
//! in a per-thread buffer. The scale, mask and softmax round as the separate kernels do; the
//! products are the dense product's arithmetic, so results match the unfused steps to rounding.

use super::few_queries::{self, KvRows};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::broadcast::{broadcast_strides, fits_in};
use crate::ops::matmul::gemm::{f32s, f32s_mut, gemm, GAcc, Mat};
use crate::ops::matmul::same;
use crate::ops::norm::softmax::{row, Mode};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use half::f16;
use half::slice::HalfFloatSliceExt;
use kiln_formats::DType;
use rayon::prelude::*;

/// The op's name in the kiln domain.
pub const FUSED_ATTENTION: &str = "FusedAttention";

/// Queries of one head a task takes through both products: enough rows for the blocked product,
/// few enough that a 128-token prefill still splits into dozens of tasks.
const QUERY_BLOCK: usize = 32;
/// Multiply-adds below which a call stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 15;
/// A group of query heads sharing a kv head is one task when its queries (heads × queries per
/// head) are at most this many: decode's, which then read each key and value once.
const GROUP_ROWS: usize = few_queries::MAX_ROWS;
/// Output rows (queries times heads) up to which a parallel call shares its rows out to the
/// threads in one contiguous run each, as decode's calls do.
const SHARED_ROWS: usize = 64;

/// Mask values at or below this hide a key: exporters write `-inf` or f32's minimum (-3.4e38).
const MASKED: f64 = f32::MIN as f64 / 2.0;

/// The last of `row`'s mask values not at or below [`MASKED`] (NaN keeps its key), tested
/// sixteen at a time from the end: a causal block's rows each pass over the masked keys after
/// the block (a tenth of a SmolLM2 prefill's attention when tested one by one).
fn last_seen_f32(row: &[f32]) -> Option<usize> {
    let masked = MASKED as f32;
    let (head, tail) = row.as_chunks::<16>();
    let seen = |x: &f32| *x > masked || x.is_nan();
    if let Some(j) = tail.iter().rposition(seen) {
        return Some(head.len() * 16 + j);
    }
    let chunk = head.iter().rposition(|c| c.iter().fold(false, |any, x| any | seen(x)))?;
    head[chunk].iter().rposition(seen).map(|j| chunk * 16 + j)
}

/// Prepares `kiln::FusedAttention`, or `None` for another kiln op.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == FUSED_ATTENTION).then(|| {
        let pitch = |name: &str| -> Result<usize, KernelError> {
            let p = spec.attrs.int(name, 0)?;
            usize::try_from(p).map_err(|_| KernelError::attr(name, format!("{p} is negative")))
        };
        Ok(Box::new(FusedAttention {
            scale: spec.attrs.float("scale", 1.0)?,
            divide: spec.attrs.int("divide", 0)? != 0,
            k_pitch: pitch("k_pitch")?,
            v_pitch: pitch("v_pitch")?,
        }) as Box<dyn Kernel>)
    })
}

struct FusedAttention {
    scale: f32,
    divide: bool,
    /// Stored rows per k matrix when k is a KV state read in place, else 0.
    k_pitch: usize,
    /// The same for v.
    v_pitch: usize,
}

impl Kernel for FusedAttention {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let [q, k, v] = [0, 1, 2].map(|i| required(inputs, i));
        let (q, k, v) = (q?, k?, v?);
        let cache = cache_type(q.dtype, k.dtype);
        for (i, t) in [&q, &k, &v].into_iter().enumerate() {
            let want = if i == 0 { q.dtype } else { cache };
            if t.dtype != want || !t.dtype.is_float() || t.shape.len() != 4 {
                return Err(KernelError::input(
                    i,
                    format!(
                        "{} {:?} is not a 4-D float tensor of q's type (or, for f32 q, an f16 cache)",
                        t.dtype, t.shape
                    ),
                ));
            }
        }
        same(&q.shape[0], &k.shape[0], "q and k batches")?;
        same(&k.shape[0], &v.shape[0], "k and v batches")?;
        same(&k.shape[1], &v.shape[1], "k and v heads")?;
        same(&k.shape[2], &v.shape[2], "k and v lengths")?;
        same(&q.shape[3], &k.shape[3], "q and k head sizes")?;
        if let (Some(h), Some(g)) = (q.shape[1].known(), k.shape[1].known()) {
            if g <= 0 || h % g != 0 {
                return Err(KernelError::invalid(format!("{h} query heads cannot share {g} kv heads")));
            }
        }
        let scores = [q.shape[0].clone(), q.shape[1].clone(), q.shape[2].clone(), k.shape[2].clone()];
        if let Some(m) = inputs.get(3).copied().flatten() {
            if m.dtype != q.dtype || !fits_in(m.shape, &scores) {
                return Err(KernelError::input(
                    3,
                    format!("{} {:?} does not broadcast to the scores' {} {:?}", m.dtype, m.shape, q.dtype, scores),
                ));
            }
        }
        let out = vec![q.shape[0].clone(), q.shape[1].clone(), q.shape[2].clone(), v.shape[3].clone()];
        Ok(vec![OutputInfo::new(q.dtype, out)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let [q, k, v] = [0, 1, 2].map(|i| required(inputs, i));
        let (q, k, v) = (q?, k?, v?);
        let cache = cache_type(q.dtype, k.dtype);
        if q.shape.len() != 4 || [&k, &v].iter().any(|t| t.dtype != cache || t.shape.len() != 4) {
            return Err(KernelError::invalid(
                "q, k and v must be 4-D tensors of one type (or f32 q over an f16 cache)",
            ));
        }
        let [b, h, s, d] = [q.shape[0], q.shape[1], q.shape[2], q.shape[3]];
        let [g, t, dv] = [k.shape[1], k.shape[2], v.shape[3]];
        if k.shape[0] != b || v.shape[0] != b || v.shape[1] != g || v.shape[2] != t || k.shape[3] != d {
            return Err(KernelError::invalid(format!(
                "q {:?}, k {:?} and v {:?} are not [B, H, S, d], [B, G, T, d], [B, G, T, dv]",
                q.shape, k.shape, v.shape
            )));
        }
        if g == 0 || h % g != 0 {
            return Err(KernelError::invalid(format!("{h} query heads cannot share {g} kv heads")));
        }
        let k_stride = matrix_stride(&k, self.k_pitch, b * g, 1)?;
        let v_stride = matrix_stride(&v, self.v_pitch, b * g, 2)?;
        let mask = inputs.get(3).copied().flatten();
        let mask_strides = match mask {
            Some(m) if m.dtype != q.dtype => {
                return Err(KernelError::input(3, format!("is {}, q is {}", m.dtype, q.dtype)))
            }
            Some(m) => broadcast_strides(m.shape, &[b, h, s, t])?,
            None => vec![0; 4],
        };
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != q.dtype || out.numel() != b * h * s * dv || out.data.len() != out.numel() * q.dtype.size() {
            return Err(KernelError::invalid("output does not match [B, H, S, dv]"));
        }
        let job = Job {
            dims: Dims { h, s, d, t, dv, rep: h / g, k_stride, v_stride },
            scale: self.scale,
            divide: self.divide,
            mask_strides: [mask_strides[0], mask_strides[1], mask_strides[2], mask_strides[3]],
        };
        if cache != q.dtype {
            let mask = mask.map(|m| m.typed()).transpose()?;
            job.run::<f32, f16>(q.typed()?, k.typed()?, v.typed()?, mask, out.typed()?);
            return Ok(());
        }
        crate::with_float!(q.dtype, T => job.run::<T, T>(q.typed()?, k.typed()?, v.typed()?,
                mask.map(|m| m.typed()).transpose()?, out.typed()?),
            _ => return Err(KernelError::unsupported(format!("FusedAttention on {}", q.dtype))));
        Ok(())
    }
}

/// The type k and v must have with queries of type `q`, where k is of type `k`: q's own, or an
/// f16 cache under f32 queries.
fn cache_type(q: DType, k: DType) -> DType {
    if q == DType::F32 && k == DType::F16 {
        DType::F16
    } else {
        q
    }
}

/// How a task reads one kv head's matrix: in place when it is stored as the queries' type,
/// widened into the task's scratch when it is an f16 cache under f32 queries.
trait CacheElem<T>: Copy + Send + Sync + 'static {
    fn matrix<'a>(src: &'a [Self], scratch: &'a mut Vec<T>) -> &'a [T];
}

impl<T: Copy + Send + Sync + 'static> CacheElem<T> for T {
    fn matrix<'a>(src: &'a [T], _scratch: &'a mut Vec<T>) -> &'a [T] {
        src
    }
}

impl CacheElem<f32> for f16 {
    fn matrix<'a>(src: &'a [f16], scratch: &'a mut Vec<f32>) -> &'a [f32] {
        scratch.resize(src.len(), 0.0);
        src.convert_to_f32_slice(scratch);
        scratch
    }
}

/// A task's buffers, reused across its blocks: the scores and probabilities, and the widened kv
/// matrix of an f16 cache.
struct Scratch<T> {
    scores: Vec<T>,
    kv: Vec<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { scores: Vec::new(), kv: Vec::new() }
    }
}

/// Elements from one `[T, cols]` matrix of `x` (input `index`) to the next: `T·cols`, or the
/// pitch's rows for a state, after checking that all `matrices` lie in `x`'s data.
fn matrix_stride(x: &TensorRef, pitch: usize, matrices: usize, index: usize) -> Result<usize, KernelError> {
    let (t, cols) = (x.shape[2], x.shape[3]);
    if pitch != 0 && t > pitch {
        return Err(KernelError::input(index, format!("{t} rows do not fit a pitch of {pitch}")));
    }
    let stride = if pitch == 0 { t } else { pitch } * cols;
    let needed = matrices.saturating_sub(1) * stride + t * cols;
    let held = x.data.len() / x.dtype.size().max(1);
    if matrices > 0 && held < needed {
        return Err(KernelError::input(index, format!("holds {held} elements, {matrices} matrices need {needed}")));
    }
    Ok(stride)
}

/// Sizes of one call (see the module doc), plus the kv heads' strides.
#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    s: usize,
    d: usize,
    t: usize,
    dv: usize,
    /// Query heads per kv head.
    rep: usize,
    k_stride: usize,
    v_stride: usize,
}

struct Job {
    dims: Dims,
    scale: f32,
    divide: bool,
    /// Mask strides over `[B, H, S, T]` (all 0 without a mask).
    mask_strides: [usize; 4],
}

impl Job {
    fn run<T: Float, C: CacheElem<T>>(&self, q: &[T], k: &[C], v: &[C], mask: Option<&[T]>, y: &mut [T])
    where
        T::Acc: GAcc,
    {
        let Dims { s, t, d, dv, rep, .. } = self.dims;
        if y.is_empty() {
            return;
        }
        let heads = y.len() / (s * dv);
        let work = heads * s * t * (d + dv);
        // Tasks are runs of whole rows of y (one query of one head each) that read one kv head.
        let group = if rep > 1 && rep * s <= GROUP_ROWS { rep * s } else { 0 };
        let block = |row0: usize, yb: &mut [T], scratch: &mut Scratch<T>| self.block(q, k, v, mask, row0, yb, scratch);
        // The end of the task holding `row`: its group's, or its head's query block's.
        let unit = |row: usize| -> usize {
            if let Some(g) = row.checked_div(group) {
                return (g + 1) * group;
            }
            let head = row / s * s;
            head + s.min((row - head) / QUERY_BLOCK * QUERY_BLOCK + QUERY_BLOCK)
        };
        // The rows of `ys`, output rows `first..`, one task after another on this thread.
        let walk = |first: usize, ys: &mut [T], scratch: &mut Scratch<T>| {
            let end = first + ys.len() / dv;
            let mut row = first;
            while row < end {
                let next = unit(row).min(end);
                block(row, &mut ys[(row - first) * dv..(next - first) * dv], scratch);
                row = next;
            }
        };
        if work < PARALLEL_WORK {
            walk(0, y, &mut Scratch::default());
            return;
        }
        if group > 0 || y.len() / dv <= SHARED_ROWS {
            // Decode-sized calls: one contiguous share of the rows per thread. Nested splits
            // (groups, then runs of a group's rows) cost more in steals than the few microseconds
            // of work they shared out.
            let rows = y.len() / dv;
            let share = rows.div_ceil(rayon::current_num_threads().min(rows));
            y.par_chunks_mut(share * dv)
                .enumerate()
                .for_each_init(Scratch::default, |scratch, (i, ys)| walk(i * share, ys, scratch));
            return;
        }
        y.par_chunks_mut(s * dv).enumerate().for_each(|(bh, yh)| {
            yh.par_chunks_mut(QUERY_BLOCK * dv)
                .enumerate()
                .for_each_init(Scratch::default, |scratch, (blk, yb)| block(bh * s + blk * QUERY_BLOCK, yb, scratch));
        });
    }

    /// Keys `0..end` that some of the `rows` rows from `row0` may attend to: the keys after the
    /// last one whose mask is not at or below [`MASKED`] in any row are left out of both
    /// products, as a causal mask does to the later keys of a prompt's earlier queries. Their probabilities
    /// would be exactly zero: `exp` of a score at least 1.7e38 below the row's maximum. All `t`
    /// when a row masks every key (its softmax then spreads over all of them, as unfused).
    fn attended<T: Float>(&self, mask: Option<&[T]>, row0: usize, rows: usize, t: usize) -> usize {
        let Some(m) = mask else { return t };
        let mt = self.mask_strides[3];
        let masked = <T::Acc as AccFloat>::from_f64(MASKED);
        let mut end = 0;
        for r in row0..row0 + rows {
            let m0 = self.mask_row(r);
            let seen = |j: usize| m[m0 + j * mt].to_acc().partial_cmp(&masked).is_none_or(|o| o.is_gt());
            let last = match (f32s(m), mt) {
                (Some(m), 1) => last_seen_f32(&m[m0 + end..m0 + t]).map(|j| end + j),
                _ => (end..t).rev().find(|&j| seen(j)),
            };
            match last {
                Some(j) => end = j + 1,
                None if !(0..end).any(seen) => return t,
                None => {}
            }
        }
        end
    }

    /// Where output row `row`'s mask row starts (row `(batch · H + head) · S + query`).
    fn mask_row(&self, row: usize) -> usize {
        let Dims { h, s, .. } = self.dims;
        let [mb, mh, ms, _] = self.mask_strides;
        row / s / h * mb + row / s % h * mh + row % s * ms
    }

    /// Rows `row0..` of the output (row `(batch · H + head) · S + query`), as many as `y` has:
    /// queries of one head, or whole heads of one group, so that all read one kv head.
    #[allow(clippy::too_many_arguments)]
    fn block<T: Float, C: CacheElem<T>>(
        &self,
        q: &[T],
        k: &[C],
        v: &[C],
        mask: Option<&[T]>,
        row0: usize,
        y: &mut [T],
        scratch: &mut Scratch<T>,
    ) where
        T::Acc: GAcc,
    {
        let Dims { h, s, d, t, dv, rep, k_stride, v_stride } = self.dims;
        let rows = y.len() / dv;
        if t == 0 {
            // No keys: the product over them is empty, as the unfused steps give.
            y.fill(T::from_acc(T::Acc::ZERO));
            return;
        }
        let (batch, head0) = (row0 / s / h, row0 / s % h);
        let kv = batch * (h / rep) + head0 / rep;
        let t = self.attended(mask, row0, rows, t);
        scratch.scores.resize(2 * rows * t, T::from_acc(T::Acc::ZERO));
        let (scores, probs) = scratch.scores.split_at_mut(rows * t);
        let qb = &q[row0 * d..];
        let (kc, vc) = (&k[kv * k_stride..kv * k_stride + t * d], &v[kv * v_stride..kv * v_stride + t * dv]);
        let few = rows <= few_queries::MAX_ROWS;
        match (f32s(qb), KvRows::of(kc), f32s_mut(scores)) {
            (Some(qf), Some(kf), Some(sf)) if few => few_queries::scores(qf, rows, d, kf, t, sf),
            _ => gemm(
                rows,
                t,
                d,
                1.0,
                Mat { data: qb, rs: d, cs: 1 },
                Mat { data: C::matrix(kc, &mut scratch.kv), rs: 1, cs: d },
                scores,
                false,
                false,
            ),
        }
        let c = T::from_acc(<T::Acc as AccFloat>::from_f64(self.scale as f64)).to_acc();
        let mt = self.mask_strides[3];
        for (r, (sr, pr)) in scores.chunks_exact_mut(t).zip(probs.chunks_exact_mut(t)).enumerate() {
            let m0 = self.mask_row(row0 + r);
            for (j, (p, &x)) in pr.iter_mut().zip(sr.iter()).enumerate() {
                let x = x.to_acc();
                let mut e = T::from_acc(if self.divide { x / c } else { x * c });
                if let Some(m) = mask {
                    e = T::from_acc(e.to_acc() + m[m0 + j * mt].to_acc());
                }
                *p = e;
            }
            row(pr, sr, Mode::Soft);
        }
        match (f32s(scores), KvRows::of(vc), f32s_mut(y)) {
            (Some(pf), Some(vf), Some(yf)) if few => few_queries::weighted_values(pf, rows, t, vf, dv, yf),
            _ => gemm(
                rows,
                dv,
                t,
                1.0,
                Mat { data: &*scores, rs: t, cs: 1 },
                Mat { data: C::matrix(vc, &mut scratch.kv), rs: dv, cs: 1 },
                y,
                false,
                false,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::RunCx;
    use kiln_formats::program::Attribute;
    use kiln_formats::Dim;

    fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| ((((i + seed) * 7919) % 211) as f32 / 105.0 - 1.0) * scale).collect()
    }

    /// softmax(q·kᵀ·scale + mask)·v in f64, over dense k and v.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        [b, h, s, d, g, t, dv]: [usize; 7],
        scale: f64,
        mask: Option<(&[f32], [usize; 4])>,
    ) -> Vec<f64> {
        let mut y = vec![0f64; b * h * s * dv];
        for bi in 0..b {
            for hi in 0..h {
                let kv = bi * g + hi / (h / g);
                for si in 0..s {
                    let qr = &q[((bi * h + hi) * s + si) * d..][..d];
                    let sc: Vec<f64> = (0..t)
                        .map(|j| {
                            let kr = &k[(kv * t + j) * d..][..d];
                            let dot: f64 = qr.iter().zip(kr).map(|(&a, &c)| a as f64 * c as f64).sum();
                            let m =
                                mask.map_or(0.0, |(m, st)| m[bi * st[0] + hi * st[1] + si * st[2] + j * st[3]] as f64);
                            dot * scale + m
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..dv {
                        y[((bi * h + hi) * s + si) * dv + c] =
                            (0..t).map(|j| e[j] / z * v[(kv * t + j) * dv + c] as f64).sum::<f64>();
                    }
                }
            }
        }
        y
    }

    fn kernel(attrs: Vec<Attribute>) -> Box<dyn Kernel> {
        let spec = OpSpec {
            op: FUSED_ATTENTION,
            domain: crate::ops::KILN_DOMAIN,
            opset: 1,
            attrs: crate::kernel::Attrs(&attrs),
        };
        build_kiln(&spec).unwrap().unwrap()
    }

    fn tensor<'a>(shape: &'a [usize], data: &'a [f32]) -> TensorRef<'a> {
        TensorRef { dtype: DType::F32, shape, data: bytemuck::cast_slice(data) }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        k: &dyn Kernel,
        q: (&[f32], [usize; 4]),
        kt: (&[f32], [usize; 4]),
        vt: (&[f32], [usize; 4]),
        mask: Option<(&[f32], &[usize])>,
        out_shape: [usize; 4],
    ) -> Result<Vec<f32>, KernelError> {
        let mut out = vec![0f32; out_shape.iter().product()];
        let mut om = TensorMut { dtype: DType::F32, shape: &out_shape, data: bytemuck::cast_slice_mut(&mut out) };
        let inputs = [
            Some(tensor(&q.1, q.0)),
            Some(tensor(&kt.1, kt.0)),
            Some(tensor(&vt.1, vt.0)),
            mask.map(|(m, s)| tensor(s, m)),
        ];
        k.run(&inputs, std::slice::from_mut(&mut om))?;
        Ok(out)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            assert!((a as f64 - b).abs() <= 1e-5 + 1e-5 * b.abs(), "{what}: element {i}: {a} vs {b}");
        }
    }

    /// Decode (one query), a ragged prefill block count, grouped and plain heads, with and without
    /// a causal mask: each against the f64 reference.
    #[test]
    fn matches_the_reference_on_decode_and_prefill_shapes() {
        for (b, h, g, s, t, d, dv) in
            [(1, 9, 3, 1, 37, 64, 64), (1, 4, 4, 70, 70, 16, 8), (2, 6, 2, 33, 40, 8, 12), (1, 2, 1, 5, 0, 4, 4)]
        {
            let q = values(b * h * s * d, 1, 1.0);
            let k = values(b * g * t * d, 2, 1.0);
            let v = values(b * g * t * dv, 3, 2.0);
            // A causal mask over the last `s` of `t` positions, shared by batches and heads.
            let causal: Vec<f32> =
                (0..s * t).map(|i| if i % t.max(1) > t - s + i / t.max(1) { f32::NEG_INFINITY } else { 0.0 }).collect();
            let scale = 1.0 / (d as f32).sqrt();
            let dims = [b, h, s, d, g, t, dv];
            let k_attrs = vec![Attribute::float("scale", scale)];
            let args = ((&q[..], [b, h, s, d]), (&k[..], [b, g, t, d]), (&v[..], [b, g, t, dv]));
            let got = run(&*kernel(k_attrs.clone()), args.0, args.1, args.2, None, [b, h, s, dv]).unwrap();
            let c = scale as f64;
            close(&got, &reference(&q, &k, &v, dims, c, None), &format!("{dims:?} unmasked"));
            if t >= s {
                let got = run(&*kernel(k_attrs), args.0, args.1, args.2, Some((&causal, &[1, 1, s, t])), [b, h, s, dv])
                    .unwrap();
                let want = reference(&q, &k, &v, dims, c, Some((&causal, [0, 0, t, 1])));
                close(&got, &want, &format!("{dims:?} causal"));
            }
        }
    }

    /// A causal mask written as f32's minimum (as torch exports it) leaves the keys after each
    /// query block out; a query that masks every key still spreads over all of them.
    #[test]
    fn keys_masked_in_every_row_of_a_block_are_left_out() {
        let (b, h, g, s, t, d, dv) = (1, 2, 1, 70, 70, 16, 8);
        let q = values(b * h * s * d, 1, 1.0);
        let k = values(b * g * t * d, 2, 1.0);
        let v = values(b * g * t * dv, 3, 2.0);
        let mut mask: Vec<f32> = (0..s * t).map(|i| if i % t > i / t { f32::MIN } else { 0.0 }).collect();
        let dims = [b, h, s, d, g, t, dv];
        let args = ((&q[..], [b, h, s, d]), (&k[..], [b, g, t, d]), (&v[..], [b, g, t, dv]));
        let kernel = kernel(vec![Attribute::float("scale", 0.25)]);
        let got = run(&*kernel, args.0, args.1, args.2, Some((&mask, &[1, 1, s, t])), [b, h, s, dv]).unwrap();
        close(&got, &reference(&q, &k, &v, dims, 0.25, Some((&mask, [0, 0, t, 1]))), "causal at f32::MIN");
        // Query 33 (in the second block of 32) now masks every key: its scores all round to
        // f32::MIN, so its softmax is uniform over the 70 keys, not over the block's 34.
        mask[33 * t..34 * t].fill(f32::MIN);
        let got = run(&*kernel, args.0, args.1, args.2, Some((&mask, &[1, 1, s, t])), [b, h, s, dv]).unwrap();
        for head in 0..h {
            let row = &got[(head * s + 33) * dv..(head * s + 34) * dv];
            let mean: Vec<f64> =
                (0..dv).map(|c| (0..t).map(|j| v[j * dv + c] as f64).sum::<f64>() / t as f64).collect();
            close(row, &mean, "a query that masks every key");
        }
        // A NaN mask value keeps its key, and poisons its row as the unfused steps would.
        mask[5 * t + 50] = f32::NAN;
        let got = run(&*kernel, args.0, args.1, args.2, Some((&mask, &[1, 1, s, t])), [b, h, s, dv]).unwrap();
        assert!(got[5 * dv..6 * dv].iter().all(|x| x.is_nan()), "{:?}", &got[5 * dv..6 * dv]);
        assert!(got[4 * dv..5 * dv].iter().all(|x| x.is_finite()));
    }

    /// Groups of query heads taken as one task (decode's one query per head, and two queries
    /// per head here) with a mask that differs per batch, head and query.
    #[test]
    fn grouped_heads_each_read_their_own_mask_rows() {
        // The last four are large enough to run in parallel, each thread taking a share of the
        // rows that starts or ends inside a group (SmolLM2's decode), a head of plain multi-head
        // attention (GPT-2's), a head's two queries, or a head's second query block.
        let shapes = [
            (2, 6, 2, 1, 9, 8, 12),
            (2, 6, 2, 2, 9, 12, 40),
            (1, 8, 1, 1, 5, 16, 16),
            (1, 9, 3, 1, 300, 64, 64),
            (1, 12, 12, 1, 300, 64, 64),
            (1, 4, 2, 5, 300, 16, 16),
            (1, 1, 1, 40, 300, 16, 16),
        ];
        for (b, h, g, s, t, d, dv) in shapes {
            let q = values(b * h * s * d, 1, 1.0);
            let k = values(b * g * t * d, 2, 1.0);
            let v = values(b * g * t * dv, 3, 2.0);
            let mask: Vec<f32> = (0..b * h * s * t)
                .map(|i| if i % 7 == 3 { f32::NEG_INFINITY } else { (i % 5) as f32 * 0.25 })
                .collect();
            let dims = [b, h, s, d, g, t, dv];
            let got = run(
                &*kernel(vec![Attribute::float("scale", 0.3)]),
                (&q, [b, h, s, d]),
                (&k, [b, g, t, d]),
                (&v, [b, g, t, dv]),
                Some((&mask, &[b, h, s, t])),
                [b, h, s, dv],
            )
            .unwrap();
            let want = reference(&q, &k, &v, dims, 0.3f32 as f64, Some((&mask, [h * s * t, s * t, t, 1])));
            close(&got, &want, &format!("{dims:?} per-head mask"));
        }
    }

    /// `divide` divides by the scale; pitched k and v read only their filled rows.
    #[test]
    fn divides_and_reads_pitched_states() {
        let (h, g, s, t, d, pitch) = (4, 2, 3, 5, 8, 9);
        let q = values(h * s * d, 4, 1.0);
        let dense_k = values(g * t * d, 5, 1.0);
        let dense_v = values(g * t * d, 6, 1.0);
        // The states: each kv head's t rows, then pitch - t rows of garbage.
        let pitched = |dense: &[f32]| -> Vec<f32> {
            dense
                .chunks(t * d)
                .flat_map(|m| m.iter().copied().chain(std::iter::repeat_n(f32::NAN, (pitch - t) * d)))
                .collect()
        };
        let (pk, pv) = (pitched(&dense_k), pitched(&dense_v));
        let attrs = vec![
            Attribute::float("scale", 2.0),
            Attribute::int("divide", 1),
            Attribute::int("k_pitch", pitch as i64),
            Attribute::int("v_pitch", pitch as i64),
        ];
        let got =
            run(&*kernel(attrs), (&q, [1, h, s, d]), (&pk, [1, g, t, d]), (&pv, [1, g, t, d]), None, [1, h, s, d])
                .unwrap();
        close(&got, &reference(&q, &dense_k, &dense_v, [1, h, s, d, g, t, d], 0.5, None), "pitched");
    }

    #[test]
    fn mismatched_shapes_and_short_states_are_errors() {
        let q = values(2 * 4, 0, 1.0);
        let kv = values(3 * 4, 0, 1.0);
        let plain = kernel(vec![]);
        let err = run(&*plain, (&q, [1, 3, 1, 4]), (&kv, [1, 2, 1, 4]), (&kv, [1, 2, 1, 4]), None, [1, 3, 1, 4]);
        assert!(err.unwrap_err().to_string().contains("cannot share"));
        let pitched = kernel(vec![Attribute::int("k_pitch", 4)]);
        let err = run(&*pitched, (&q, [1, 2, 1, 4]), (&kv, [1, 2, 1, 4]), (&kv[..8], [1, 2, 1, 4]), None, [1, 2, 1, 4]);
        assert!(err.unwrap_err().to_string().contains("matrices need"), "two pitched matrices need 20 elements");
        let err = run(&*plain, (&q, [1, 2, 1, 4]), (&kv, [1, 1, 3, 4]), (&kv, [1, 1, 2, 6]), None, [1, 2, 1, 6]);
        assert!(err.is_err(), "k and v lengths differ");
    }

    /// An f16 cache under f32 queries gives the bits of the f32 path over the cache's rounded
    /// values: decode with grouped and plain heads (run in parallel), a prefill of several query
    /// blocks, pitched states, and a mask.
    #[test]
    fn an_f16_cache_reads_as_its_rounded_values() {
        let pitch = 301;
        for (h, g, s, t, d) in [(9, 3, 1, 300, 64), (12, 12, 1, 300, 64), (4, 2, 70, 80, 16), (2, 1, 3, 5, 12)] {
            let q = values(h * s * d, 1, 1.0);
            let rounded = |x: Vec<f32>| x.into_iter().map(|v| f16::from_f32(v).to_f32()).collect::<Vec<_>>();
            let (k, v) = (rounded(values(g * t * d, 2, 3.0)), rounded(values(g * t * d, 3, 2.0)));
            // Each kv head's t rows, then pitch - t rows the kernel must not read.
            let state = |dense: &[f32]| -> Vec<f16> {
                let pad = std::iter::repeat_n(f16::NAN, (pitch - t) * d);
                dense.chunks(t * d).flat_map(|m| m.iter().map(|&x| f16::from_f32(x)).chain(pad.clone())).collect()
            };
            let (ks, vs) = (state(&k), state(&v));
            let mask: Vec<f32> = (0..h * s * t).map(|i| (i % 5) as f32 * 0.25).collect();
            let attrs = |pitch: i64| {
                let mut a = vec![Attribute::float("scale", 0.125)];
                a.extend([Attribute::int("k_pitch", pitch), Attribute::int("v_pitch", pitch)]);
                a
            };
            let (qs, ks_shape) = ([1, h, s, d], [1, g, t, d]);
            let mask_shape = [1, h, s, t];
            let want =
                run(&*kernel(attrs(0)), (&q, qs), (&k, ks_shape), (&v, ks_shape), Some((&mask, &mask_shape)), qs);
            let mut got = vec![0f32; h * s * d];
            let mut om = TensorMut { dtype: DType::F32, shape: &qs, data: bytemuck::cast_slice_mut(&mut got) };
            let inputs = [
                Some(tensor(&qs, &q)),
                Some(TensorRef { dtype: DType::F16, shape: &ks_shape, data: bytemuck::cast_slice(&ks) }),
                Some(TensorRef { dtype: DType::F16, shape: &ks_shape, data: bytemuck::cast_slice(&vs) }),
                Some(tensor(&mask_shape, &mask)),
            ];
            kernel(attrs(pitch as i64)).run(&inputs, std::slice::from_mut(&mut om)).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want.unwrap()), "h={h} g={g} s={s} t={t}");
        }
    }

    #[test]
    fn an_f16_cache_needs_f32_queries_and_both_operands_cached() {
        let ones = [Dim::Known(1), Dim::Known(1), Dim::Known(1), Dim::Known(1)];
        let shape = |dtype| ShapeInput { dtype, shape: &ones, value: None, data: None };
        let infer = |q, k, v| kernel(vec![]).infer(&[Some(shape(q)), Some(shape(k)), Some(shape(v))], &mut RunCx);
        assert_eq!(infer(DType::F32, DType::F16, DType::F16).unwrap()[0].dtype, DType::F32);
        assert!(infer(DType::F32, DType::F16, DType::F32).is_err(), "v must be f16 too");
        assert!(infer(DType::F64, DType::F16, DType::F16).is_err(), "only under f32 queries");
        assert!(infer(DType::F16, DType::F16, DType::F16).is_ok(), "the plain f16 path");
    }

    /// Prefill attention at SmolLM2's and GPT-2's shapes (128 causal queries).
    #[test]
    #[ignore]
    fn prefill_speed() {
        for (name, h, g) in [("smollm2", 9, 3), ("gpt2", 12, 12)] {
            let (s, t, d) = (128, 128, 64);
            let q = values(h * s * d, 1, 1.0);
            let k = values(g * t * d, 2, 1.0);
            let v = values(g * t * d, 3, 2.0);
            let mask: Vec<f32> = (0..s * t).map(|i| if i % t > i / t { f32::MIN } else { 0.0 }).collect();
            let kernel = kernel(vec![Attribute::float("scale", 0.125)]);
            let mut best = f64::MAX;
            for _ in 0..200 {
                let start = std::time::Instant::now();
                let args = ((&q[..], [1, h, s, d]), (&k[..], [1, g, t, d]), (&v[..], [1, g, t, d]));
                std::hint::black_box(
                    run(&*kernel, args.0, args.1, args.2, Some((&mask, &[1, 1, s, t])), [1, h, s, d]).unwrap(),
                );
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!("{name}: {:.3} ms per layer", best * 1e3);
        }
    }
}
