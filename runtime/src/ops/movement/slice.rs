//! Slice: starts/ends/axes as attributes before opset 10; from 10 the inputs starts, ends and
//! optional axes and steps. Out-of-range starts and ends clamp (so INT64_MAX / INT64_MIN work as
//! "to the end" / "from the start"), negative values count from the end, negative steps walk
//! backwards.

use super::common::{check_int, normalize_axes, out0, strides_of, vector_len};
use super::strided::strided_copy;
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;

/// Known starts/ends at least this large (in magnitude) are read as "past the end" sentinels
/// when the dim is symbolic: exporters write INT64_MAX, INT32_MAX or similar.
const SENTINEL: i64 = i32::MAX as i64;

/// Starts, ends and optional axes given as attributes (before opset 10).
type AttrForm = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

pub struct Slice {
    attrs: Option<AttrForm>,
}

impl Slice {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        if spec.opset >= 10 {
            return Ok(Slice { attrs: None });
        }
        let req = |name: &str| {
            spec.attrs
                .ints(name)?
                .map(<[i64]>::to_vec)
                .ok_or_else(|| KernelError::attr(name, "is required before opset 10"))
        };
        Ok(Slice { attrs: Some((req("starts")?, req("ends")?, spec.attrs.ints("axes")?.map(<[i64]>::to_vec))) })
    }
}

/// The first element and element count of slicing a dim of size `d`.
pub(crate) fn known_slice(d: i64, start: i64, end: i64, step: i64) -> Result<(i64, i64), KernelError> {
    if step == 0 {
        return Err(KernelError::invalid("slice step must not be 0"));
    }
    // i128 keeps INT64 sentinels and `-step` of INT64_MIN from overflowing.
    let (d, mut s, mut e, step) = (d as i128, start as i128, end as i128, step as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let len = if step > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
        if e > s {
            (e - s + step - 1) / step
        } else {
            0
        }
    } else {
        s = s.max(0).min(d - 1);
        e = e.max(-1).min(d - 1);
        if s > e {
            (s - e - step - 1) / -step
        } else {
            0
        }
    };
    Ok((s.max(0) as i64, len as i64))
}

/// A start or end against a symbolic dim, with indices assumed to lie inside the dim (so the
/// result is exact for in-range slices and an upper bound otherwise).
fn sym_bound(v: &Dim, d: &Dim, forward: bool) -> Dim {
    match *v {
        Dim::Known(x) if x >= SENTINEL => {
            if forward {
                d.clone()
            } else {
                d.sub(&Dim::Known(1))
            }
        }
        Dim::Known(x) if x <= -SENTINEL => Dim::Known(if forward { 0 } else { -1 }),
        Dim::Known(x) if x < 0 => d.add(&Dim::Known(x)),
        _ => v.clone(),
    }
}

/// Output length of one sliced axis, symbolically.
fn sym_len(d: &Dim, s: &Dim, e: &Dim, step: i64) -> Result<Dim, KernelError> {
    if let (Dim::Known(d), Dim::Known(s), Dim::Known(e)) = (d, s, e) {
        return Ok(Dim::Known(known_slice(*d, *s, *e, step)?.1));
    }
    if step == 0 {
        return Err(KernelError::invalid("slice step must not be 0"));
    }
    let fwd = step > 0;
    let (s, e) = (sym_bound(s, d, fwd), sym_bound(e, d, fwd));
    let (span, by) = if fwd { (e.sub(&s), step) } else { (s.sub(&e), -step) };
    let len =
        if by == 1 { span } else { span.add(&Dim::Known(by - 1)).floor_div(&Dim::Known(by)).unwrap_or(Dim::Known(0)) };
    Ok(match len {
        Dim::Known(v) => Dim::Known(v.max(0)),
        l => l,
    })
}

/// What inference knows of one integer input.
enum Val {
    Absent,
    Unknown(usize),
    Known(Vec<Dim>),
}

impl Val {
    fn of(inputs: &[Option<ShapeInput>], i: usize) -> Result<Val, KernelError> {
        let Some(x) = inputs.get(i).copied().flatten() else {
            return Ok(Val::Absent);
        };
        check_int(&x, i)?;
        let n = vector_len(&x, i)?;
        Ok(match x.value {
            Some(v) => Val::Known(v.to_vec()),
            None => Val::Unknown(n),
        })
    }

    fn len(&self) -> Option<usize> {
        match self {
            Val::Absent => None,
            Val::Unknown(n) => Some(*n),
            Val::Known(v) => Some(v.len()),
        }
    }
}

fn dims(v: &[i64]) -> Val {
    Val::Known(v.iter().map(|&x| Dim::Known(x)).collect())
}

impl Kernel for Slice {
    fn value_inputs(&self) -> &[usize] {
        if self.attrs.is_some() {
            &[]
        } else {
            &[1, 2, 3, 4]
        }
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let rank = x.shape.len();
        let (starts, ends, axes, steps) = match &self.attrs {
            Some((s, e, a)) => (dims(s), dims(e), a.as_deref().map_or(Val::Absent, dims), Val::Absent),
            None => (Val::of(inputs, 1)?, Val::of(inputs, 2)?, Val::of(inputs, 3)?, Val::of(inputs, 4)?),
        };
        let n = starts.len().ok_or_else(|| KernelError::input(1, "starts are required"))?;
        for (v, what) in [(&ends, "ends"), (&axes, "axes"), (&steps, "steps")] {
            if v.len().is_some_and(|l| l != n) || (what == "ends" && v.len().is_none()) {
                return Err(KernelError::invalid(format!("{what} must have as many entries as starts ({n})")));
            }
        }
        let mut shape = x.shape.to_vec();
        let axes: Vec<usize> = match &axes {
            Val::Absent => {
                if n > rank {
                    return Err(KernelError::invalid(format!("{n} starts for rank {rank}")));
                }
                (0..n).collect()
            }
            Val::Known(v) if v.iter().all(Dim::is_known) => {
                let v: Vec<i64> = v.iter().filter_map(Dim::known).collect();
                normalize_axes(&v, rank)?
            }
            _ => {
                // Which axes change is unknown: any dim may.
                for d in &mut shape {
                    *d = cx.fresh("slice")?;
                }
                return Ok(vec![OutputInfo::new(x.dtype, shape)]);
            }
        };
        for (i, &a) in axes.iter().enumerate() {
            let pick = |v: &Val| match v {
                Val::Known(v) => Some(v[i].clone()),
                _ => None,
            };
            let step = match &steps {
                Val::Absent => Some(1),
                v => pick(v).and_then(|d| d.known()),
            };
            shape[a] = match (pick(&starts), pick(&ends), step) {
                (Some(s), Some(e), Some(step)) => sym_len(&x.shape[a], &s, &e, step)?,
                _ => cx.fresh("slice")?,
            };
        }
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let rank = x.shape.len();
        let read = |i: usize| -> Result<Option<Vec<i64>>, KernelError> {
            inputs.get(i).copied().flatten().map(|t| t.to_i64_vec()).transpose()
        };
        let (starts, ends, axes, steps) = match &self.attrs {
            Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
            None => (
                read(1)?.ok_or_else(|| KernelError::input(1, "starts are required"))?,
                read(2)?.ok_or_else(|| KernelError::input(2, "ends are required"))?,
                read(3)?,
                read(4)?,
            ),
        };
        let n = starts.len();
        let axes = match axes {
            Some(a) => normalize_axes(&a, rank)?,
            None => (0..n.min(rank)).collect(),
        };
        if ends.len() != n || axes.len() != n || steps.as_ref().is_some_and(|s| s.len() != n) {
            return Err(KernelError::invalid("starts, ends, axes and steps differ in length"));
        }
        let st = strides_of(x.shape);
        let mut shape = x.shape.to_vec();
        let mut strides: Vec<isize> = st.iter().map(|&s| s as isize).collect();
        let mut base = 0usize;
        for (i, &a) in axes.iter().enumerate() {
            let step = steps.as_ref().map_or(1, |s| s[i]);
            let (start, len) = known_slice(x.shape[a] as i64, starts[i], ends[i], step)?;
            shape[a] = len as usize;
            // A huge step only ever takes one element; its stride is never used then.
            strides[a] = if len > 1 { st[a] as isize * step as isize } else { 0 };
            base += start as usize * st[a];
        }
        let out = out0(outputs)?;
        if shape != out.shape {
            return Err(KernelError::invalid(format!("slice gives {shape:?} but the output is {:?}", out.shape)));
        }
        strided_copy(x.dtype.size(), x.data, base, &shape, &strides, out.data)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::known_slice;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn known_rules() {
        assert_eq!(known_slice(10, 2, 5, 1).unwrap(), (2, 3));
        assert_eq!(known_slice(10, -3, i64::MAX, 1).unwrap(), (7, 3));
        assert_eq!(known_slice(10, 20, 30, 1).unwrap().1, 0);
        assert_eq!(known_slice(10, 0, 10, 3).unwrap(), (0, 4));
        assert_eq!(known_slice(10, -1, i64::MIN, -1).unwrap(), (9, 10));
        assert_eq!(known_slice(10, 20, 0, -2).unwrap(), (9, 5));
        assert_eq!(known_slice(10, 5, i64::MIN, i64::MIN).unwrap(), (5, 1));
        assert_eq!(known_slice(0, 0, -1, -1).unwrap().1, 0);
        assert!(known_slice(10, 0, 1, 0).is_err());
    }

    #[test]
    fn slices() {
        let x = iota(&[3, 4]);
        let out = run(
            "Slice",
            13,
            &[],
            &[Some(&x), Some(&i64s(&[2], &[1, 0])), Some(&i64s(&[2], &[i64::MAX, 3])), None, None],
        )
        .unwrap();
        assert_eq!(out[0].shape, vec![2, 3]);
        assert_eq!(vals_f32(&out[0]), vec![4., 5., 6., 8., 9., 10.]);
        // Negative step along axis 1, axes given, int32 parameters.
        let out = run(
            "Slice",
            13,
            &[],
            &[
                Some(&x),
                Some(&i32s(&[1], &[-1])),
                Some(&i32s(&[1], &[i32::MIN])),
                Some(&i32s(&[1], &[-1])),
                Some(&i32s(&[1], &[-2])),
            ],
        )
        .unwrap();
        assert_eq!(vals_f32(&out[0]), vec![3., 1., 7., 5., 11., 9.]);
        // Opset 9 attributes.
        let a =
            [Attribute::ints("starts", vec![1]), Attribute::ints("ends", vec![1000]), Attribute::ints("axes", vec![0])];
        let out = run("Slice", 9, &a, &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![2, 4]);
        let zero = i64s(&[1], &[0]);
        assert!(run("Slice", 13, &[], &[Some(&x), Some(&zero), Some(&zero), Some(&zero), Some(&zero)]).is_err());
        let ax = i64s(&[1], &[2]);
        assert!(run("Slice", 13, &[], &[Some(&x), Some(&zero), Some(&zero), Some(&ax), None]).is_err());
    }

    #[test]
    fn symbolic_slices() {
        // x[:, -1:, :] on a symbolic sequence.
        let x = sym_in(DType::F32, vec![s("b"), s("t"), k(8)]);
        let out =
            infer("Slice", 13, &[], &[x, val_in(ks(&[-1])), val_in(ks(&[i64::MAX])), val_in(ks(&[1])), None]).unwrap();
        assert_eq!(out[0].shape, vec![s("b"), k(1), k(8)]);
        // Causal mask bias[:, :, past:past+seq] with symbolic bounds from Shape arithmetic.
        let m = sym_in(DType::F32, vec![k(1), k(1), k(1024), k(1024)]);
        let past = s("past");
        let end = past.add(&s("seq"));
        let out = infer("Slice", 13, &[], &[m, val_in(vec![past]), val_in(vec![end]), val_in(ks(&[2])), None]).unwrap();
        assert_eq!(out[0].shape, vec![k(1), k(1), s("seq"), k(1024)]);
        // Unknown starts: the sliced axis gets a fresh dim, the others are kept.
        let x = sym_in(DType::F32, vec![s("b"), k(8)]);
        let st = sym_in(DType::I64, ks(&[1]));
        let out = infer("Slice", 13, &[], &[x, st, val_in(ks(&[4])), val_in(ks(&[1])), None]).unwrap();
        assert_eq!(out[0].shape[0], s("b"));
        assert!(!out[0].shape[1].is_known());
    }
}
