//! Transpose, Slice, Expand, Concat and Split as strided copies (`copy.wgsl`), and Gather.

use super::{groups_1d, numel, padded, strides, words, Arg, Call, Dispatch, COPY, GATHER};
use crate::error::KernelError;
use crate::kernel::{normalize_axis, Attrs};
use crate::ops::broadcast::broadcast_strides;
use crate::ops::movement::common::normalize_axes;
use crate::ops::movement::slice::known_slice;
use kiln_formats::program::Step;
use kiln_formats::DType;

/// Slice's starts, ends and axes when they are attributes (before opset 10).
type SliceAttrs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

pub(crate) enum Movement {
    Transpose(Option<Vec<i64>>),
    /// Attributes before opset 10; inputs after.
    Slice(Option<SliceAttrs>),
    Expand,
    Concat(i64),
    Split(i64),
    Gather {
        axis: i64,
        int64: bool,
    },
    /// `kiln::KvAppend`: the new positions written after the filled ones of a state.
    KvAppend {
        axis: i64,
        capacity: usize,
    },
}

impl Movement {
    pub fn kv_append(attrs: Attrs) -> Result<Movement, KernelError> {
        let capacity = attrs.req_int("capacity")?;
        let capacity = usize::try_from(capacity).map_err(|_| KernelError::attr("capacity", "is negative"))?;
        Ok(Movement::KvAppend { axis: attrs.req_int("axis")?, capacity })
    }

    pub fn new(step: &Step, attrs: Attrs, indices: Option<DType>) -> Result<Movement, KernelError> {
        let ints = |n: &str| attrs.ints(n).map(|v| v.map(<[i64]>::to_vec));
        Ok(match step.op.as_str() {
            "Transpose" => Movement::Transpose(ints("perm")?),
            "Slice" if step.opset < 10 => Movement::Slice(Some((
                ints("starts")?.ok_or_else(|| KernelError::attr("starts", "is required"))?,
                ints("ends")?.ok_or_else(|| KernelError::attr("ends", "is required"))?,
                ints("axes")?,
            ))),
            "Slice" => Movement::Slice(None),
            "Expand" => Movement::Expand,
            "Concat" => Movement::Concat(attrs.req_int("axis")?),
            "Split" => Movement::Split(attrs.int("axis", 0)?),
            "Gather" => Movement::Gather { axis: attrs.int("axis", 0)?, int64: indices == Some(DType::I64) },
            op => return Err(KernelError::unsupported(format!("no GPU kernel for {op}"))),
        })
    }

    pub fn dispatches(&self, call: &Call) -> Result<Vec<Dispatch>, KernelError> {
        let x = call.input(0)?;
        let xs = strides(x);
        match self {
            Movement::Transpose(perm) => {
                let perm: Vec<usize> = match perm {
                    Some(p) => normalize_axes(p, x.len())?,
                    None => (0..x.len()).rev().collect(),
                };
                let ins: Vec<isize> = perm.iter().map(|&p| xs[p] as isize).collect();
                view(call.output(0)?, 0, &ins)
            }
            Movement::Slice(attrs) => {
                let value = |k: usize| call.values.get(k).cloned().flatten();
                let (starts, ends, axes, steps) = match attrs {
                    Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
                    None => (
                        value(1).ok_or_else(|| KernelError::input(1, "starts are required"))?,
                        value(2).ok_or_else(|| KernelError::input(2, "ends are required"))?,
                        value(3),
                        value(4),
                    ),
                };
                let axes = match axes {
                    Some(a) => normalize_axes(&a, x.len())?,
                    None => (0..starts.len().min(x.len())).collect(),
                };
                let mut ins: Vec<isize> = xs.iter().map(|&s| s as isize).collect();
                let mut base = 0isize;
                for (i, &a) in axes.iter().enumerate() {
                    let step = steps.as_ref().and_then(|s| s.get(i).copied()).unwrap_or(1);
                    let (start, end) = (starts.get(i), ends.get(i));
                    let (Some(&start), Some(&end)) = (start, end) else {
                        return Err(KernelError::invalid("starts, ends and axes differ in length"));
                    };
                    let (start, len) = known_slice(x[a] as i64, start, end, step)?;
                    base += start as isize * xs[a] as isize;
                    ins[a] = if len > 1 { xs[a] as isize * step as isize } else { 0 };
                }
                view(call.output(0)?, base, &ins)
            }
            Movement::Expand => {
                let out = call.output(0)?;
                let ins: Vec<isize> = broadcast_strides(x, out)?.iter().map(|&s| s as isize).collect();
                view(out, 0, &ins)
            }
            Movement::Concat(axis) => {
                let out = call.output(0)?;
                let a = normalize_axis(*axis, out.len())?;
                let os = strides(out);
                let mut at = 0;
                let mut launches = Vec::new();
                for k in 0..call.inputs.len() {
                    let piece = call.input(k)?;
                    if piece.iter().product::<usize>() > 0 {
                        let ins: Vec<isize> = strides(piece).iter().map(|&s| s as isize).collect();
                        launches.extend(copy(Copy {
                            input: k,
                            output: 0,
                            shape: piece,
                            in_base: 0,
                            in_strides: &ins,
                            out_base: (at * os[a]) as isize,
                            out_strides: Some(&os),
                        })?);
                    }
                    at += piece.get(a).copied().unwrap_or(0);
                }
                Ok(launches)
            }
            Movement::Split(axis) => {
                let a = normalize_axis(*axis, x.len())?;
                let ins: Vec<isize> = xs.iter().map(|&s| s as isize).collect();
                let mut at = 0;
                let mut launches = Vec::new();
                for k in 0..call.outputs.len() {
                    let piece = call.output(k)?;
                    if piece.iter().product::<usize>() > 0 {
                        launches.extend(copy(Copy {
                            input: 0,
                            output: k,
                            shape: piece,
                            in_base: (at * xs[a]) as isize,
                            in_strides: &ins,
                            out_base: 0,
                            out_strides: None,
                        })?);
                    }
                    at += piece.get(a).copied().unwrap_or(0);
                }
                Ok(launches)
            }
            Movement::KvAppend { axis, capacity } => {
                // Input 0 is the filled part (its shape only), input 1 the new positions.
                let new = call.input(1)?;
                let a = normalize_axis(*axis, x.len())?;
                if new.len() != x.len() || x[a] + new.get(a).copied().unwrap_or(0) > *capacity {
                    return Err(KernelError::invalid(format!(
                        "{:?} new positions after {:?} do not fit a cache of {capacity}",
                        new, x
                    )));
                }
                let mut full = x.to_vec();
                full[a] = *capacity;
                let pitched = strides(&full);
                let ins: Vec<isize> = strides(new).iter().map(|&s| s as isize).collect();
                copy(Copy {
                    input: 1,
                    output: 0,
                    shape: new,
                    in_base: 0,
                    in_strides: &ins,
                    out_base: (x[a] * pitched[a]) as isize,
                    out_strides: Some(&pitched),
                })
            }
            Movement::Gather { axis, int64 } => {
                let a = normalize_axis(*axis, x.len())?;
                let m = numel(call.input(1)?)?;
                let n = numel(call.output(0)?)?;
                let inner = words(&[x[a + 1..].iter().product::<usize>().max(1)])?[0];
                let len = words(&[x[a]])?[0];
                Ok(vec![Dispatch {
                    shader: &GATHER,
                    args: vec![Arg::In(0), Arg::In(1), Arg::Out(0)],
                    params: vec![n, m.max(1), len, inner, u32::from(*int64)],
                    groups: groups_1d(n),
                }])
            }
        }
    }
}

/// One strided copy over every index `idx` of `shape`: input `input` at `in_base + idx . in_strides`
/// to output `output` at `out_base + idx . out_strides` (`None`: `shape`'s dense strides).
struct Copy<'a> {
    input: usize,
    output: usize,
    shape: &'a [usize],
    in_base: isize,
    in_strides: &'a [isize],
    out_base: isize,
    out_strides: Option<&'a [usize]>,
}

fn copy(c: Copy) -> Result<Vec<Dispatch>, KernelError> {
    let n = numel(c.shape)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let int = |v: isize| {
        i32::try_from(v).map(|v| v as u32).map_err(|_| KernelError::invalid(format!("{v} exceeds 32-bit GPU indexing")))
    };
    let rank = c.shape.len();
    let mut params = vec![n, rank as u32, int(c.in_base)?, int(c.out_base)?];
    params.extend(padded(words(c.shape)?, rank)?);
    params.extend(padded(c.in_strides.iter().map(|&s| int(s)).collect::<Result<Vec<_>, _>>()?, rank)?);
    let dense = strides(c.shape);
    params.extend(padded(words(c.out_strides.unwrap_or(&dense))?, rank)?);
    Ok(vec![Dispatch { shader: &COPY, args: vec![Arg::In(c.input), Arg::Out(c.output)], params, groups: groups_1d(n) }])
}

/// A copy of input 0 into output 0 over the output's shape.
fn view(out: &[usize], in_base: isize, in_strides: &[isize]) -> Result<Vec<Dispatch>, KernelError> {
    copy(Copy { input: 0, output: 0, shape: out, in_base, in_strides, out_base: 0, out_strides: None })
}
