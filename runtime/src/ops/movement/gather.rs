//! Gather (whole slices along one axis: the embedding lookup), GatherElements (one element per
//! index along an axis) and GatherND (slices addressed by index tuples, with batch dims).
//! Indices are int32 or int64, negative ones count from the end, and an out-of-range index is an
//! error naming it.

use super::common::{agree, check_data, check_index_dtype, elems, elems_mut, out0, strides_of, Indices};
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use crate::with_any;
use kiln_formats::Dim;
use rayon::prelude::*;

/// Output elements above which row copies are spread over threads.
const PAR_MIN: usize = 1 << 18;

fn check_out_len(out: &TensorMut, elems: usize) -> Result<(), KernelError> {
    if out.data.len() != elems * out.dtype.size() {
        return Err(KernelError::invalid(format!(
            "output of {} bytes is not sized for {elems} elements",
            out.data.len()
        )));
    }
    Ok(())
}

/// Gather along `axis`.
pub struct Gather {
    axis: i64,
}

impl Gather {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        Ok(Gather { axis: spec.attrs.int("axis", 0)? })
    }
}

/// `dst` row `c` (of `inner` elements) = `src` row `rows[c % n] + (c / n) * axis_len`.
fn gather_rows<T: Copy + Send + Sync>(src: &[T], dst: &mut [T], rows: &[usize], axis_len: usize, inner: usize) {
    let n = rows.len();
    if dst.is_empty() || n == 0 {
        return;
    }
    let copy = |c: usize, d: &mut [T]| {
        let r = (c / n) * axis_len + rows[c % n];
        d.copy_from_slice(&src[r * inner..(r + 1) * inner]);
    };
    if inner == 1 {
        for (c, d) in dst.iter_mut().enumerate() {
            *d = src[(c / n) * axis_len + rows[c % n]];
        }
    } else if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(inner).enumerate().for_each(|(c, d)| copy(c, d));
    } else {
        for (c, d) in dst.chunks_mut(inner).enumerate() {
            copy(c, d);
        }
    }
}

impl Kernel for Gather {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let idx = required(inputs, 1)?;
        check_index_dtype(idx.dtype, 1)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let mut shape = x.shape[..axis].to_vec();
        shape.extend_from_slice(idx.shape);
        shape.extend_from_slice(&x.shape[axis + 1..]);
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let idx = Indices::new(&required(inputs, 1)?, 1)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let axis_len = x.shape[axis];
        let outer: usize = x.shape[..axis].iter().product();
        let inner: usize = x.shape[axis + 1..].iter().product();
        let out = out0(outputs)?;
        check_out_len(out, outer * idx.len() * inner)?;
        if x.data.len() != outer * axis_len * inner * x.dtype.size() {
            return Err(KernelError::input(0, "data does not match its shape"));
        }
        let rows = (0..idx.len()).map(|i| idx.resolve(i, axis_len)).collect::<Result<Vec<_>, _>>()?;
        with_any!(x.dtype, T => {
            gather_rows(elems::<T>(x.data)?, elems_mut::<T>(out.data)?, &rows, axis_len, inner)
        });
        Ok(())
    }
}

/// GatherElements along `axis`: the output has the indices' shape.
pub struct GatherElements {
    axis: i64,
}

impl GatherElements {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        Ok(GatherElements { axis: spec.attrs.int("axis", 0)? })
    }
}

/// Checks that `idx` (the indices' shape) fits inside `data` on every axis but `axis`.
fn check_fits(data: &[Dim], idx: &[Dim], axis: usize) -> Result<(), KernelError> {
    if data.len() != idx.len() {
        return Err(KernelError::invalid(format!("indices of rank {} for data of rank {}", idx.len(), data.len())));
    }
    for (a, (d, i)) in data.iter().zip(idx).enumerate() {
        if let (Dim::Known(d), Dim::Known(i)) = (d, i) {
            if a != axis && i > d {
                return Err(KernelError::invalid(format!("indices dim {a} is {i} but the data's is only {d}")));
            }
        }
    }
    Ok(())
}

impl Kernel for GatherElements {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let idx = required(inputs, 1)?;
        check_index_dtype(idx.dtype, 1)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        check_fits(x.shape, idx.shape, axis)?;
        Ok(vec![OutputInfo::new(x.dtype, idx.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let it = required(inputs, 1)?;
        let idx = Indices::new(&it, 1)?;
        check_data(&x, 0)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let dims = |s: &[usize]| -> Vec<Dim> { s.iter().map(|&d| Dim::from(d)).collect() };
        check_fits(&dims(x.shape), &dims(it.shape), axis)?;
        let out = out0(outputs)?;
        check_out_len(out, idx.len())?;
        if out.shape != it.shape {
            return Err(KernelError::invalid("output shape differs from the indices'"));
        }
        let st = strides_of(x.shape);
        let axis_len = x.shape[axis];
        let rank = it.shape.len();
        with_any!(x.dtype, T => {
            let src = elems::<T>(x.data)?;
            let dst = elems_mut::<T>(out.data)?;
            // Walk the indices' positions, tracking the data offset of every axis but `axis`.
            let mut pos = vec![0usize; rank];
            let mut base = 0usize;
            for (i, d) in dst.iter_mut().enumerate() {
                let at = base + idx.resolve(i, axis_len)? * st[axis];
                *d = *src.get(at).ok_or_else(|| KernelError::invalid("data is too short"))?;
                for a in (0..rank).rev() {
                    pos[a] += 1;
                    if a != axis {
                        base += st[a];
                    }
                    if pos[a] < it.shape[a] {
                        break;
                    }
                    if a != axis {
                        base -= st[a] * it.shape[a];
                    }
                    pos[a] = 0;
                }
            }
        });
        Ok(())
    }
}

/// GatherND with `batch_dims` leading dims shared by data and indices.
pub struct GatherNd {
    batch_dims: usize,
}

impl GatherNd {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let b = spec.attrs.int("batch_dims", 0)?;
        Ok(GatherNd {
            batch_dims: usize::try_from(b).map_err(|_| KernelError::attr("batch_dims", "must not be negative"))?,
        })
    }
}

/// The tuple length `m` of GatherND / ScatterND indices, checked against the data rank.
pub(super) fn tuple_len(data: &[Dim], idx: &[Dim], batch_dims: usize) -> Result<usize, KernelError> {
    let (r, q) = (data.len(), idx.len());
    if q == 0 || r == 0 || batch_dims >= q.min(r) {
        return Err(KernelError::invalid(format!(
            "batch_dims {batch_dims} needs data and indices of larger rank (got {r} and {q})"
        )));
    }
    match idx[q - 1] {
        Dim::Known(m) if m >= 1 && (m as usize) <= r - batch_dims => Ok(m as usize),
        ref m => Err(KernelError::input(
            1,
            format!("the last indices dim ({m}) must be known and within 1..={}", r - batch_dims),
        )),
    }
}

impl Kernel for GatherNd {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let idx = required(inputs, 1)?;
        check_index_dtype(idx.dtype, 1)?;
        let b = self.batch_dims;
        let m = tuple_len(x.shape, idx.shape, b)?;
        let mut shape = Vec::new();
        for a in 0..b {
            shape.push(agree(&x.shape[a], &idx.shape[a], || format!("batch dim {a} of data and indices"))?);
        }
        shape.extend_from_slice(&idx.shape[b..idx.shape.len() - 1]);
        shape.extend_from_slice(&x.shape[b + m..]);
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let it = required(inputs, 1)?;
        let idx = Indices::new(&it, 1)?;
        let b = self.batch_dims;
        let dims = |s: &[usize]| -> Vec<Dim> { s.iter().map(|&d| Dim::from(d)).collect() };
        let m = tuple_len(&dims(x.shape), &dims(it.shape), b)?;
        if x.shape[..b] != it.shape[..b] {
            return Err(KernelError::invalid("batch dims of data and indices differ"));
        }
        let batches: usize = x.shape[..b].iter().product();
        let tuples: usize = it.shape[b..it.shape.len() - 1].iter().product();
        let inner: usize = x.shape[b + m..].iter().product();
        let batch_len: usize = x.shape[b..].iter().product();
        let st = strides_of(&x.shape[b..]);
        let out = out0(outputs)?;
        check_out_len(out, batches * tuples * inner)?;
        with_any!(x.dtype, T => {
            let src = elems::<T>(x.data)?;
            let dst = elems_mut::<T>(out.data)?;
            for bt in 0..batches * tuples {
                let mut off = (bt / tuples.max(1)) * batch_len;
                for (k, (&dim, &stride)) in x.shape[b..b + m].iter().zip(&st).enumerate() {
                    off += idx.resolve(bt * m + k, dim)? * stride;
                }
                let row = src
                    .get(off..off + inner)
                    .ok_or_else(|| KernelError::invalid("data is too short"))?;
                dst[bt * inner..(bt + 1) * inner].copy_from_slice(row);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn gather_axis0_is_an_embedding_lookup() {
        let table = iota(&[4, 3]);
        let ids = i64s(&[2, 2], &[3, 0, -1, 1]);
        let out = run("Gather", 13, &[], &[Some(&table), Some(&ids)]).unwrap();
        assert_eq!(out[0].shape, vec![2, 2, 3]);
        assert_eq!(vals_f32(&out[0]), vec![9., 10., 11., 0., 1., 2., 9., 10., 11., 3., 4., 5.]);
        let bad = i32s(&[1], &[4]);
        let err = run("Gather", 13, &[], &[Some(&table), Some(&bad)]).unwrap_err();
        assert!(err.to_string().contains("index 4"), "{err}");
        assert!(run("Gather", 13, &[], &[Some(&table), Some(&f32s(&[1], &[0.]))]).is_err());
    }

    #[test]
    fn large_and_empty_gathers() {
        let table = iota(&[1000, 512]);
        let ids: Vec<i64> = (0..600).map(|i| (i * 37) % 1000).collect();
        let out = run("Gather", 13, &[], &[Some(&table), Some(&i64s(&[600], &ids))]).unwrap();
        let v = vals_f32(&out[0]);
        for (r, &id) in ids.iter().enumerate().step_by(13) {
            assert_eq!(v[r * 512 + 3], (id * 512 + 3) as f32);
        }
        let out = run("Gather", 13, &[], &[Some(&table), Some(&i64s(&[0], &[]))]).unwrap();
        assert_eq!(out[0].shape, vec![0, 512]);
    }

    #[test]
    fn gather_inner_axis_and_scalar_index() {
        let x = iota(&[2, 3]);
        let a = [Attribute::int("axis", 1)];
        let out = run("Gather", 13, &a, &[Some(&x), Some(&i32s(&[2], &[2, 0]))]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![2., 0., 5., 3.]);
        let out = run("Gather", 13, &a, &[Some(&x), Some(&i64s(&[], &[-2]))]).unwrap();
        assert_eq!(out[0].shape, vec![2]);
        assert_eq!(vals_f32(&out[0]), vec![1., 4.]);
        let out = infer(
            "Gather",
            13,
            &[],
            &[sym_in(DType::F32, vec![k(50257), k(768)]), sym_in(DType::I64, vec![s("b"), s("t")])],
        )
        .unwrap();
        assert_eq!(out[0].shape, vec![s("b"), s("t"), k(768)]);
    }

    #[test]
    fn gather_elements() {
        let x = f32s(&[2, 2], &[1., 2., 3., 4.]);
        let a = [Attribute::int("axis", 1)];
        let idx = i64s(&[2, 2], &[0, 0, 1, 0]);
        let out = run("GatherElements", 13, &a, &[Some(&x), Some(&idx)]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![1., 1., 4., 3.]);
        let x = iota(&[3, 3]);
        let idx = i32s(&[2, 3], &[1, 2, 0, 2, 0, -3]);
        let out = run("GatherElements", 13, &[], &[Some(&x), Some(&idx)]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![3., 7., 2., 6., 1., 2.]);
        let bad = i32s(&[1, 1], &[3]);
        assert!(run("GatherElements", 13, &[], &[Some(&x), Some(&bad)]).is_err());
        let wide = i32s(&[1, 4], &[0, 0, 0, 0]);
        assert!(run("GatherElements", 13, &[], &[Some(&x), Some(&wide)]).is_err());
    }

    #[test]
    fn gather_nd() {
        let x = f32s(&[2, 2], &[0., 1., 2., 3.]);
        let idx = i64s(&[2, 2], &[0, 0, 1, 1]);
        let out = run("GatherND", 13, &[], &[Some(&x), Some(&idx)]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 3.]);
        let idx = i64s(&[2, 1], &[1, 0]);
        let out = run("GatherND", 13, &[], &[Some(&x), Some(&idx)]).unwrap();
        assert_eq!(out[0].shape, vec![2, 2]);
        assert_eq!(vals_f32(&out[0]), vec![2., 3., 0., 1.]);
        // batch_dims = 1
        let x = iota(&[2, 2, 2]);
        let idx = i64s(&[2, 1], &[1, 0]);
        let b = [Attribute::int("batch_dims", 1)];
        let out = run("GatherND", 13, &b, &[Some(&x), Some(&idx)]).unwrap();
        assert_eq!(out[0].shape, vec![2, 2]);
        assert_eq!(vals_f32(&out[0]), vec![2., 3., 4., 5.]);
        let idx = i64s(&[1, 4], &[0, 0, 0, 0]);
        assert!(run("GatherND", 13, &[], &[Some(&x), Some(&idx)]).is_err());
        let idx = i64s(&[1, 3], &[0, 0, 2]);
        assert!(run("GatherND", 13, &[], &[Some(&x), Some(&idx)]).is_err());
    }
}
