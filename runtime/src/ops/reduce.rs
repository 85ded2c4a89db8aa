//! Reductions: the Reduce* family over any set of axes, ArgMax/ArgMin, CumSum and TopK.

mod arg;
mod cumsum;
#[cfg(test)]
pub(crate) mod testutil;
mod topk;

use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};
use rayon::prelude::*;

/// Op types this family has kernels for.
pub const OPS: &[&str] = &[
    "ArgMax",
    "ArgMin",
    "CumSum",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "TopK",
];

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let kind = match spec.op {
        "ArgMax" => return Some(arg::build(spec, true)),
        "ArgMin" => return Some(arg::build(spec, false)),
        "CumSum" => return Some(cumsum::build(spec)),
        "TopK" => return Some(topk::build(spec)),
        "ReduceL1" => Kind::L1,
        "ReduceL2" => Kind::L2,
        "ReduceLogSum" => Kind::LogSum,
        "ReduceLogSumExp" => Kind::LogSumExp,
        "ReduceMax" => Kind::Max,
        "ReduceMean" => Kind::Mean,
        "ReduceMin" => Kind::Min,
        "ReduceProd" => Kind::Prod,
        "ReduceSum" => Kind::Sum,
        "ReduceSumSquare" => Kind::SumSquare,
        _ => return None,
    };
    Some(Reduce::new(spec, kind).map(|k| Box::new(k) as Box<dyn Kernel>))
}

/// Which reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    L1,
    L2,
    LogSum,
    LogSumExp,
    Max,
    Mean,
    Min,
    Prod,
    Sum,
    SumSquare,
}

/// A Reduce* op with its attributes resolved.
struct Reduce {
    kind: Kind,
    keepdims: bool,
    /// Axes from the attribute (older opsets); `None` when absent.
    axes_attr: Option<Vec<i64>>,
    /// Whether axes come from input 1 (ReduceSum from opset 13, the others from 18).
    axes_input: bool,
    noop_with_empty_axes: bool,
}

impl Reduce {
    fn new(spec: &OpSpec, kind: Kind) -> Result<Reduce, KernelError> {
        let input_since = if kind == Kind::Sum { 13 } else { 18 };
        let axes_input = spec.opset >= input_since;
        let axes_attr = if axes_input { None } else { spec.attrs.ints("axes")?.map(<[i64]>::to_vec) };
        Ok(Reduce {
            kind,
            keepdims: spec.attrs.int("keepdims", 1)? != 0,
            axes_attr,
            axes_input,
            noop_with_empty_axes: spec.attrs.int("noop_with_empty_axes", 0)? != 0,
        })
    }

    /// Reduced-axis mask for an input of `rank`, or `None` for the identity (noop with empty axes).
    fn mask(&self, rank: usize, axes: &[i64]) -> Result<Option<Vec<bool>>, KernelError> {
        if axes.is_empty() {
            return Ok(if self.noop_with_empty_axes { None } else { Some(vec![true; rank]) });
        }
        let mut mask = vec![false; rank];
        for &a in axes {
            let a = normalize_axis(a, rank)?;
            if mask[a] {
                return Err(KernelError::attr("axes", format!("axis {a} is repeated")));
            }
            mask[a] = true;
        }
        Ok(Some(mask))
    }

    fn check_dtype(&self, dt: DType) -> Result<(), KernelError> {
        let ok = dt.is_float() || dt.is_int() || (dt == DType::Bool && matches!(self.kind, Kind::Max | Kind::Min));
        if ok {
            Ok(())
        } else {
            Err(KernelError::input(0, format!("{dt} is not supported")))
        }
    }

    fn out_shape<D: Clone>(&self, shape: &[D], mask: &[bool], one: D) -> Vec<D> {
        shape
            .iter()
            .zip(mask)
            .filter_map(|(d, &m)| match (m, self.keepdims) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(one.clone()),
                (true, false) => None,
            })
            .collect()
    }
}

impl Kernel for Reduce {
    fn value_inputs(&self) -> &[usize] {
        if self.axes_input {
            &[1]
        } else {
            &[]
        }
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        self.check_dtype(x.dtype)?;
        let rank = x.shape.len();
        let axes: Vec<i64> = match (self.axes_input, inputs.get(1).copied().flatten()) {
            (true, Some(a)) => {
                if a.shape.len() > 1 {
                    return Err(KernelError::input(1, "axes must be 1-D"));
                }
                match a.value {
                    Some(v) => v
                        .iter()
                        .map(|d| d.known().ok_or_else(|| KernelError::input(1, "axes must be known")))
                        .collect::<Result<_, _>>()?,
                    None if self.keepdims => {
                        // Which axes shrink to 1 is unknown until run time; the rank is not.
                        let mut shape = Vec::with_capacity(rank);
                        for _ in 0..rank {
                            shape.push(cx.fresh("reduced_dim")?);
                        }
                        return Ok(vec![OutputInfo::new(x.dtype, shape)]);
                    }
                    None => {
                        // Without the values, the count of axes still gives the output rank.
                        let count = match a.shape.first().map(Dim::known) {
                            None => 1,
                            Some(Some(k)) if k >= 0 => k as usize,
                            _ => return Err(KernelError::input(1, "axes must have a known length when keepdims=0")),
                        };
                        let out_rank = match count {
                            0 if self.noop_with_empty_axes => rank,
                            0 => 0,
                            k if k <= rank => rank - k,
                            k => return Err(KernelError::input(1, format!("{k} axes for a rank-{rank} input"))),
                        };
                        if out_rank == rank && count == 0 {
                            return Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())]);
                        }
                        let shape = (0..out_rank).map(|_| cx.fresh("reduced_dim")).collect::<Result<_, _>>()?;
                        return Ok(vec![OutputInfo::new(x.dtype, shape)]);
                    }
                }
            }
            (true, None) => Vec::new(),
            (false, _) => self.axes_attr.clone().unwrap_or_default(),
        };
        let shape = match self.mask(rank, &axes)? {
            None => x.shape.to_vec(),
            Some(mask) => self.out_shape(x.shape, &mask, Dim::Known(1)),
        };
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        self.check_dtype(x.dtype)?;
        let axes = match (self.axes_input, inputs.get(1).copied().flatten()) {
            (true, Some(a)) => a.to_i64_vec()?,
            (true, None) => Vec::new(),
            (false, _) => self.axes_attr.clone().unwrap_or_default(),
        };
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != x.dtype {
            return Err(KernelError::invalid("output dtype differs from input"));
        }
        let Some(mask) = self.mask(x.shape.len(), &axes)? else {
            if out.data.len() != x.data.len() {
                return Err(KernelError::invalid("output size differs from input"));
            }
            out.data.copy_from_slice(x.data);
            return Ok(());
        };
        if self.out_shape(x.shape, &mask, 1usize).iter().product::<usize>() != out.numel()
            || out.data.len() != out.numel() * out.dtype.size()
        {
            return Err(KernelError::invalid("output shape does not match the reduction"));
        }
        let plan = Plan::new(x.shape, &mask);
        let k = self.kind;
        crate::with_float!(x.dtype, T => run_float::<T>(k, x.typed::<T>()?, out.typed::<T>()?, &plan), _ => {
            crate::with_int!(x.dtype, T => run_int::<T>(k, bytemuck::cast_slice(x.data), bytemuck::cast_slice_mut(out.data), &plan),
                _ => Err(KernelError::unsupported(format!("{:?} on {}", k, x.dtype))))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Accumulators and reducers.

/// Arithmetic the reducers need: f32/f64 for floats, i128 for exact integer sums and products.
pub(crate) trait RAcc: Copy + PartialEq + Send + Sync + 'static {
    fn zero() -> Self;
    fn one() -> Self;
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn abs(self) -> Self;
    /// Maximum that propagates NaN, as numpy's reductions do.
    fn max_nan(self, o: Self) -> Self;
    fn min_nan(self, o: Self) -> Self;
    fn lowest() -> Self;
    fn highest() -> Self;
    fn div_count(self, n: usize) -> Self;
    fn sqrt(self) -> Self;
    fn ln(self) -> Self;
    fn exp(self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn gt(self, o: Self) -> bool;
    fn is_nan(self) -> bool;
}

impl<F: AccFloat + 'static> RAcc for F {
    #[inline(always)]
    fn zero() -> Self {
        F::ZERO
    }
    #[inline(always)]
    fn one() -> Self {
        F::ONE
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn abs(self) -> Self {
        AccFloat::abs(self)
    }
    #[inline(always)]
    fn max_nan(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            self + o
        } else if o > self {
            o
        } else {
            self
        }
    }
    #[inline(always)]
    fn min_nan(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            self + o
        } else if o < self {
            o
        } else {
            self
        }
    }
    fn lowest() -> Self {
        F::neg_infinity()
    }
    fn highest() -> Self {
        F::infinity()
    }
    #[inline(always)]
    fn div_count(self, n: usize) -> Self {
        self / F::from_f64(n as f64)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        AccFloat::sqrt(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        AccFloat::ln(self)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        AccFloat::exp(self)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn gt(self, o: Self) -> bool {
        self > o
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        AccFloat::is_nan(self)
    }
}

impl RAcc for i128 {
    fn zero() -> Self {
        0
    }
    fn one() -> Self {
        1
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.wrapping_abs()
    }
    #[inline(always)]
    fn max_nan(self, o: Self) -> Self {
        self.max(o)
    }
    #[inline(always)]
    fn min_nan(self, o: Self) -> Self {
        self.min(o)
    }
    fn lowest() -> Self {
        i128::MIN
    }
    fn highest() -> Self {
        i128::MAX
    }
    fn div_count(self, n: usize) -> Self {
        if n == 0 {
            0
        } else {
            self / n as i128
        }
    }
    fn sqrt(self) -> Self {
        (self as f64).sqrt() as i128
    }
    fn ln(self) -> Self {
        (self as f64).ln() as i128
    }
    fn exp(self) -> Self {
        (self as f64).exp() as i128
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.wrapping_sub(o)
    }
    #[inline(always)]
    fn gt(self, o: Self) -> bool {
        self > o
    }
    fn is_nan(self) -> bool {
        false
    }
}

/// One reduction: a running state, how an element updates it, and the final value.
trait Red<A>: Copy + Send + Sync {
    type S: Copy + Send + Sync;
    fn init(&self) -> Self::S;
    fn step(&self, s: Self::S, x: A) -> Self::S;
    fn finish(&self, s: Self::S, n: usize) -> A;
}

macro_rules! simple_red {
    ($name:ident, $init:expr, |$s:ident, $x:ident| $step:expr, |$f:ident, $n:ident| $fin:expr) => {
        #[derive(Clone, Copy)]
        struct $name;
        impl<A: RAcc> Red<A> for $name {
            type S = A;
            #[inline(always)]
            fn init(&self) -> A {
                $init
            }
            #[inline(always)]
            fn step(&self, $s: A, $x: A) -> A {
                $step
            }
            #[inline(always)]
            #[allow(unused_variables)]
            fn finish(&self, $f: A, $n: usize) -> A {
                $fin
            }
        }
    };
}

simple_red!(RSum, A::zero(), |s, x| s.add(x), |s, n| s);
simple_red!(RSumSq, A::zero(), |s, x| s.add(x.mul(x)), |s, n| s);
simple_red!(RL1, A::zero(), |s, x| s.add(x.abs()), |s, n| s);
simple_red!(RL2, A::zero(), |s, x| s.add(x.mul(x)), |s, n| s.sqrt());
simple_red!(RMean, A::zero(), |s, x| s.add(x), |s, n| s.div_count(n));
simple_red!(RProd, A::one(), |s, x| s.mul(x), |s, n| s);
simple_red!(RMax, A::lowest(), |s, x| s.max_nan(x), |s, n| s);
simple_red!(RMin, A::highest(), |s, x| s.min_nan(x), |s, n| s);
simple_red!(RLogSum, A::zero(), |s, x| s.add(x), |s, n| s.ln());

/// log(sum(exp(x))) with a running maximum, so large inputs do not overflow.
#[derive(Clone, Copy)]
struct RLogSumExp;
impl<A: RAcc> Red<A> for RLogSumExp {
    type S = (A, A);
    fn init(&self) -> (A, A) {
        (A::lowest(), A::zero())
    }
    #[inline(always)]
    fn step(&self, (m, s): (A, A), x: A) -> (A, A) {
        // Infinities and NaN take the values the plain formula gives them.
        if x.is_nan() || m.is_nan() {
            return (x.add(m), A::one());
        }
        if x == A::highest() || m == A::highest() {
            return (A::highest(), A::one());
        }
        if x == A::lowest() {
            return (m, s);
        }
        if m == A::lowest() {
            return (x, A::one());
        }
        if x.gt(m) {
            (x, s.mul(m.sub(x).exp()).add(A::one()))
        } else {
            (m, s.add(x.sub(m).exp()))
        }
    }
    fn finish(&self, (m, s): (A, A), _n: usize) -> A {
        if m.is_nan() || m == A::lowest() || m == A::highest() {
            m
        } else {
            m.add(s.ln())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loop structure.

/// The input's axes merged into alternating kept/reduced groups (size-1 axes dropped).
struct Plan {
    /// (size, input stride) of kept groups, outermost first.
    kept: Vec<(usize, usize)>,
    /// (size, input stride) of reduced groups, outermost first.
    reduced: Vec<(usize, usize)>,
    /// Whether the innermost group is reduced (contiguous reductions).
    inner_reduced: bool,
    /// Number of elements reduced into each output.
    count: usize,
    in_len: usize,
}

impl Plan {
    fn new(shape: &[usize], mask: &[bool]) -> Plan {
        let mut groups: Vec<(usize, bool)> = Vec::new();
        for (&d, &m) in shape.iter().zip(mask) {
            if d == 1 {
                continue;
            }
            match groups.last_mut() {
                Some((s, r)) if *r == m => *s *= d,
                _ => groups.push((d, m)),
            }
        }
        let mut kept = Vec::new();
        let mut reduced = Vec::new();
        let mut stride = 1;
        for &(d, r) in groups.iter().rev() {
            if r {
                reduced.push((d, stride));
            } else {
                kept.push((d, stride));
            }
            stride *= d;
        }
        kept.reverse();
        reduced.reverse();
        Plan {
            inner_reduced: groups.last().is_some_and(|g| g.1),
            count: reduced.iter().map(|g| g.0).product(),
            kept,
            reduced,
            in_len: shape.iter().product(),
        }
    }
}

/// Input offset of unit `i` counted over `groups` in row-major order.
#[inline]
fn decode(mut i: usize, groups: &[(usize, usize)]) -> usize {
    let mut off = 0;
    for &(d, s) in groups.iter().rev() {
        off += (i % d) * s;
        i /= d;
    }
    off
}

/// Calls `f` with every offset spanned by `groups` (once with 0 when there are none).
#[inline]
fn for_each_offset(groups: &[(usize, usize)], mut f: impl FnMut(usize)) {
    let total: usize = groups.iter().map(|g| g.0).product();
    if total == 0 {
        return;
    }
    let mut idx = [0usize; 16];
    if groups.len() > idx.len() {
        for i in 0..total {
            f(decode(i, groups));
        }
        return;
    }
    let mut off = 0;
    for _ in 0..total {
        f(off);
        for a in (0..groups.len()).rev() {
            idx[a] += 1;
            off += groups[a].1;
            if idx[a] < groups[a].0 {
                break;
            }
            off -= groups[a].1 * groups[a].0;
            idx[a] = 0;
        }
    }
}

/// Inputs larger than this are reduced in parallel.
const PAR_MIN: usize = 1 << 16;
/// Columns reduced together when the innermost axis is kept.
const COLS: usize = 64;

fn reduce_loops<E, A, R>(
    r: R,
    x: &[E],
    out: &mut [E],
    p: &Plan,
    load: impl Fn(E) -> A + Sync,
    store: impl Fn(A) -> E + Sync,
) where
    E: Copy + Send + Sync,
    A: Copy,
    R: Red<A>,
{
    let n = p.count;
    if p.in_len == 0 || n == 0 {
        // Reductions over an empty set give the reduction's identity.
        let v = store(r.finish(r.init(), 0));
        out.iter_mut().for_each(|o| *o = v);
        return;
    }
    if p.inner_reduced {
        let (l, _) = *p.reduced.last().expect("inner group is reduced");
        let others = &p.reduced[..p.reduced.len() - 1];
        let unit = |o: usize, dst: &mut E| {
            let base = decode(o, &p.kept);
            let mut s = r.init();
            for_each_offset(others, |off| {
                let row = &x[base + off..base + off + l];
                for &v in row {
                    s = r.step(s, load(v));
                }
            });
            *dst = store(r.finish(s, n));
        };
        if x.len() >= PAR_MIN && out.len() > 1 {
            let chunk = out.len().div_ceil(rayon::current_num_threads() * 4).max(1);
            out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
                for (i, d) in o.iter_mut().enumerate() {
                    unit(c * chunk + i, d);
                }
            });
        } else {
            for (o, d) in out.iter_mut().enumerate() {
                unit(o, d);
            }
        }
    } else {
        let l = p.kept.last().map_or(1, |g| g.0);
        let outer = &p.kept[..p.kept.len().saturating_sub(1)];
        let row = |ri: usize, dst: &mut [E]| {
            let base = decode(ri, outer);
            let mut c0 = 0;
            while c0 < l {
                let w = COLS.min(l - c0);
                let mut st = [r.init(); COLS];
                for_each_offset(&p.reduced, |off| {
                    let src = &x[base + off + c0..base + off + c0 + w];
                    for (s, &v) in st.iter_mut().zip(src) {
                        *s = r.step(*s, load(v));
                    }
                });
                for (d, s) in dst[c0..c0 + w].iter_mut().zip(st) {
                    *d = store(r.finish(s, n));
                }
                c0 += w;
            }
        };
        if x.len() >= PAR_MIN && out.len() > l {
            out.par_chunks_mut(l).enumerate().for_each(|(ri, d)| row(ri, d));
        } else {
            for (ri, d) in out.chunks_mut(l).enumerate() {
                row(ri, d);
            }
        }
    }
}

fn run_float<T: Float>(k: Kind, x: &[T], out: &mut [T], p: &Plan) -> Result<(), KernelError>
where
    T::Acc: RAcc,
{
    let (l, s) = (|v: T| v.to_acc(), T::from_acc);
    match k {
        Kind::L1 => reduce_loops(RL1, x, out, p, l, s),
        Kind::L2 => reduce_loops(RL2, x, out, p, l, s),
        Kind::LogSum => reduce_loops(RLogSum, x, out, p, l, s),
        Kind::LogSumExp => reduce_loops(RLogSumExp, x, out, p, l, s),
        Kind::Max => reduce_loops(RMax, x, out, p, l, s),
        Kind::Mean => reduce_loops(RMean, x, out, p, l, s),
        Kind::Min => reduce_loops(RMin, x, out, p, l, s),
        Kind::Prod => reduce_loops(RProd, x, out, p, l, s),
        Kind::Sum => reduce_loops(RSum, x, out, p, l, s),
        Kind::SumSquare => reduce_loops(RSumSq, x, out, p, l, s),
    }
    Ok(())
}

/// Integer element types, widened to i128 (exact sums) or f64 (means, logs, roots).
pub(crate) trait IntEl: Copy + Send + Sync + PartialOrd + 'static {
    const MIN: Self;
    const MAX: Self;
    fn to_i128(self) -> i128;
    /// Wrapping conversion, as integer overflow wraps in numpy.
    fn from_i128(v: i128) -> Self;
    fn to_f64(self) -> f64;
    /// Truncating, saturating conversion.
    fn from_f64(v: f64) -> Self;
}

macro_rules! int_el {
    ($($t:ty),*) => {$(
        impl IntEl for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            #[inline(always)]
            fn to_i128(self) -> i128 { self as i128 }
            #[inline(always)]
            fn from_i128(v: i128) -> Self { v as $t }
            #[inline(always)]
            fn to_f64(self) -> f64 { self as f64 }
            #[inline(always)]
            fn from_f64(v: f64) -> Self { v as $t }
        }
    )*};
}
int_el!(i8, i16, i32, i64, u8, u16, u32, u64);

fn run_int<T: IntEl>(k: Kind, x: &[T], out: &mut [T], p: &Plan) -> Result<(), KernelError> {
    let (li, si) = (|v: T| v.to_i128(), T::from_i128);
    let (lf, sf) = (|v: T| v.to_f64(), T::from_f64);
    // Max/Min of an empty set: the type's extremes rather than i128's.
    let clamp = |v: i128| T::from_i128(v.clamp(T::MIN.to_i128(), T::MAX.to_i128()));
    match k {
        Kind::L1 => reduce_loops(RL1, x, out, p, li, si),
        Kind::L2 => reduce_loops(RL2, x, out, p, lf, sf),
        Kind::LogSum => reduce_loops(RLogSum, x, out, p, lf, sf),
        Kind::LogSumExp => reduce_loops(RLogSumExp, x, out, p, lf, sf),
        Kind::Max => reduce_loops(RMax, x, out, p, li, clamp),
        Kind::Mean => reduce_loops(RMean, x, out, p, li, si),
        Kind::Min => reduce_loops(RMin, x, out, p, li, clamp),
        Kind::Prod => reduce_loops(RProd, x, out, p, li, si),
        Kind::Sum => reduce_loops(RSum, x, out, p, li, si),
        Kind::SumSquare => reduce_loops(RSumSq, x, out, p, li, si),
    }
    Ok(())
}

/// Splits `shape` around `axis` into (outer, axis size, inner) element counts.
pub(crate) fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use kiln_formats::{DType, Dim, Tensor};

    fn sum_all(op: &str, opset: i64, x: Tensor) -> Tensor {
        run1(op, opset, &[int("keepdims", 0)], vec![Some(x)])
    }

    #[test]
    fn reduce_sum_axes_attr_and_input() {
        let x = Tensor::from_vec(&[2, 3], vec![1f32, 2., 3., 4., 5., 6.]);
        let y = run1("ReduceSum", 11, &[ints("axes", &[1])], vec![Some(x.clone())]);
        assert_eq!(y.shape, vec![2, 1]);
        assert_eq!(f32s(&y), vec![6., 15.]);
        let axes = Tensor::from_vec(&[1], vec![0i64]);
        let y = run1("ReduceSum", 13, &[int("keepdims", 0)], vec![Some(x.clone()), Some(axes)]);
        assert_eq!(y.shape, vec![3]);
        assert_eq!(f32s(&y), vec![5., 7., 9.]);
        // Empty axes: reduce all, or the identity with noop_with_empty_axes.
        let y = run1("ReduceSum", 13, &[], vec![Some(x.clone())]);
        assert_eq!((y.shape.clone(), f32s(&y)), (vec![1, 1], vec![21.]));
        let y = run1(
            "ReduceSum",
            13,
            &[int("noop_with_empty_axes", 1)],
            vec![Some(x.clone()), Some(Tensor::from_vec::<i64>(&[0], vec![]))],
        );
        assert_eq!(f32s(&y), f32s(&x));
    }

    #[test]
    fn reduce_kinds() {
        let x = Tensor::from_vec(&[2, 2], vec![1f32, -2., 3., 4.]);
        let close =
            |a: Vec<f32>, b: Vec<f32>| assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5), "{a:?} vs {b:?}");
        close(f32s(&sum_all("ReduceMax", 13, x.clone())), vec![4.]);
        close(f32s(&sum_all("ReduceMin", 13, x.clone())), vec![-2.]);
        close(f32s(&sum_all("ReduceMean", 13, x.clone())), vec![1.5]);
        close(f32s(&sum_all("ReduceProd", 13, x.clone())), vec![-24.]);
        close(f32s(&sum_all("ReduceL1", 13, x.clone())), vec![10.]);
        close(f32s(&sum_all("ReduceL2", 13, x.clone())), vec![30f32.sqrt()]);
        close(f32s(&sum_all("ReduceSumSquare", 13, x.clone())), vec![30.]);
        close(f32s(&sum_all("ReduceLogSum", 13, x.clone())), vec![6f32.ln()]);
        let lse = (1f32.exp() + (-2f32).exp() + 3f32.exp() + 4f32.exp()).ln();
        close(f32s(&sum_all("ReduceLogSumExp", 13, x.clone())), vec![lse]);
        let big = Tensor::from_vec(&[2], vec![1000f32, 1000.]);
        close(f32s(&sum_all("ReduceLogSumExp", 13, big)), vec![1000. + 2f32.ln()]);
        let nan = Tensor::from_vec(&[3], vec![1f32, f32::NAN, 2.]);
        assert!(f32s(&sum_all("ReduceMax", 13, nan))[0].is_nan());
    }

    #[test]
    fn reduce_middle_and_mixed_axes() {
        // [2, 3, 4] reduced over axes 0 and 2, and over axis 1 (innermost kept).
        let v: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let x = Tensor::from_vec(&[2, 3, 4], v.clone());
        let y = run1("ReduceSum", 11, &[ints("axes", &[0, 2])], vec![Some(x.clone())]);
        assert_eq!(y.shape, vec![1, 3, 1]);
        let want: Vec<f32> =
            (0..3).map(|j| (0..2).flat_map(|i| (0..4).map(move |k| (i * 12 + j * 4 + k) as f32)).sum()).collect();
        assert_eq!(f32s(&y), want);
        let y = run1("ReduceMax", 13, &[ints("axes", &[-2]), int("keepdims", 0)], vec![Some(x)]);
        assert_eq!(y.shape, vec![2, 4]);
        assert_eq!(f32s(&y), vec![8., 9., 10., 11., 20., 21., 22., 23.]);
    }

    #[test]
    fn reduce_large_parallel_matches_serial() {
        let v: Vec<f32> = (0..(300 * 257)).map(|i| ((i % 17) as f32) - 8.).collect();
        let x = Tensor::from_vec(&[300, 257], v.clone());
        let y = run1("ReduceSum", 11, &[ints("axes", &[0])], vec![Some(x.clone())]);
        for j in [0usize, 100, 256] {
            let s: f32 = (0..300).map(|i| v[i * 257 + j]).sum();
            assert_eq!(f32s(&y)[j], s);
        }
        let y = run1("ReduceSum", 11, &[ints("axes", &[1])], vec![Some(x)]);
        let s: f32 = v[257..514].iter().sum();
        assert_eq!(f32s(&y)[1], s);
    }

    #[test]
    fn reduce_ints_and_half() {
        let x = Tensor::from_vec(&[4], vec![1i32, 2, 3, 5]);
        let y = sum_all("ReduceMean", 18, x.clone());
        assert_eq!(y.as_slice::<i32>().unwrap(), &[2]);
        let y = sum_all("ReduceProd", 18, x);
        assert_eq!(y.as_slice::<i32>().unwrap(), &[30]);
        let x = Tensor::from_vec(&[3], vec![5i64, -7, 2]);
        assert_eq!(sum_all("ReduceMin", 18, x).as_slice::<i64>().unwrap(), &[-7]);
        let h: Vec<half::f16> = (0..1000).map(|_| half::f16::from_f32(0.1)).collect();
        let y = sum_all("ReduceSum", 13, Tensor::from_vec(&[1000], h));
        // Accumulated in f32, so the sum is not stuck where f16 stops growing.
        assert!((y.as_slice::<half::f16>().unwrap()[0].to_f32() - 100.).abs() < 0.2);
    }

    #[test]
    fn reduce_empty_sets() {
        let x = Tensor::from_vec::<f32>(&[2, 0], vec![]);
        let y = run1("ReduceSum", 11, &[ints("axes", &[1])], vec![Some(x.clone())]);
        assert_eq!(f32s(&y), vec![0., 0.]);
        let y = run1("ReduceProd", 13, &[ints("axes", &[1])], vec![Some(x.clone())]);
        assert_eq!(f32s(&y), vec![1., 1.]);
        let y = run1("ReduceMax", 13, &[ints("axes", &[1])], vec![Some(x)]);
        assert_eq!(f32s(&y), vec![f32::NEG_INFINITY; 2]);
    }

    #[test]
    fn reduce_infer_symbolic_and_errors() {
        let s = Dim::sym("seq");
        let shape = [Dim::Known(2), s.clone(), Dim::Known(8)];
        let out = infer1("ReduceMean", 13, &[ints("axes", &[-1])], &[Some((DType::F32, &shape[..], None))]).unwrap();
        assert_eq!(out[0].shape, vec![Dim::Known(2), s.clone(), Dim::Known(1)]);
        let out = infer1(
            "ReduceSum",
            13,
            &[int("keepdims", 0)],
            &[
                Some((DType::F32, &shape[..], None)),
                Some((DType::I64, &[Dim::Known(1)][..], Some(&[Dim::Known(1)][..]))),
            ],
        )
        .unwrap();
        assert_eq!(out[0].shape, vec![Dim::Known(2), Dim::Known(8)]);
        assert!(infer1("ReduceMean", 13, &[ints("axes", &[3])], &[Some((DType::F32, &shape[..], None))]).is_err());
        assert!(infer1("ReduceMean", 13, &[ints("axes", &[1, -2])], &[Some((DType::F32, &shape[..], None))]).is_err());
        assert!(infer1("ReduceSum", 13, &[], &[Some((DType::Bool, &shape[..], None))]).is_err());
    }
}
