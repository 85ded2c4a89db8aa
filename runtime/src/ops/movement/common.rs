//! Helpers shared by the data-movement kernels: typed slices that fail instead of panicking,
//! index tensors, shape-valued inputs and dim agreement checks.

use crate::error::KernelError;
use crate::kernel::{InferCx, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};

/// `data` as elements of `T`; an error (not a panic) when the bytes are misaligned or ragged.
pub(super) fn elems<T: bytemuck::Pod>(data: &[u8]) -> Result<&[T], KernelError> {
    bytemuck::try_cast_slice(data).map_err(|e| KernelError::invalid(format!("tensor data is misaligned: {e:?}")))
}

/// Mutable form of [`elems`].
pub(super) fn elems_mut<T: bytemuck::Pod>(data: &mut [u8]) -> Result<&mut [T], KernelError> {
    bytemuck::try_cast_slice_mut(data).map_err(|e| KernelError::invalid(format!("output data is misaligned: {e:?}")))
}

/// The first output, or an error when the step has none.
pub(super) fn out0<'a, 'b>(outputs: &'b mut [TensorMut<'a>]) -> Result<&'b mut TensorMut<'a>, KernelError> {
    outputs.first_mut().ok_or_else(|| KernelError::invalid("missing output"))
}

/// Checks that input `index` has exactly the bytes its shape needs, so that indexing by shape
/// cannot run past its data.
pub(super) fn check_data(t: &TensorRef, index: usize) -> Result<(), KernelError> {
    if t.data.len() != t.numel() * t.dtype.size() {
        return Err(KernelError::input(index, format!("{} bytes do not hold shape {:?}", t.data.len(), t.shape)));
    }
    Ok(())
}

/// Copies all of `src` into `dst`, which must be the same size.
pub(super) fn copy_all(src: &[u8], dst: &mut [u8]) -> Result<(), KernelError> {
    if src.len() != dst.len() {
        return Err(KernelError::invalid(format!("output holds {} bytes but the input has {}", dst.len(), src.len())));
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// Checks that input `index` holds integers (shape-like inputs: shapes, axes, starts, repeats).
pub(super) fn check_int(inp: &ShapeInput, index: usize) -> Result<(), KernelError> {
    if inp.dtype.is_int() {
        Ok(())
    } else {
        Err(KernelError::input(index, format!("expected an integer tensor, got {}", inp.dtype)))
    }
}

/// Checks that input `index` is an index tensor (int32 or int64).
pub(super) fn check_index_dtype(dtype: DType, index: usize) -> Result<(), KernelError> {
    if matches!(dtype, DType::I32 | DType::I64) {
        Ok(())
    } else {
        Err(KernelError::input(index, format!("indices must be int32 or int64, got {dtype}")))
    }
}

/// The element count of a 1-D (or scalar, counted as 1) shape-like input; an error when the
/// rank is wrong or the length is symbolic.
pub(super) fn vector_len(inp: &ShapeInput, index: usize) -> Result<usize, KernelError> {
    match inp.shape {
        [] => Ok(1),
        [Dim::Known(n)] if *n >= 0 => Ok(*n as usize),
        [d] => Err(KernelError::input(index, format!("length {d} must be known to infer the output rank"))),
        s => Err(KernelError::input(index, format!("expected a 1-D tensor, got shape {s:?}"))),
    }
}

/// The input's integer values when every one of them is a known number.
pub(super) fn known_ints(inp: &ShapeInput) -> Option<Vec<i64>> {
    inp.value?.iter().map(Dim::known).collect()
}

/// `n` new symbolic dims.
pub(super) fn fresh_dims(cx: &mut dyn InferCx, n: usize, hint: &str) -> Result<Vec<Dim>, KernelError> {
    (0..n).map(|_| cx.fresh(hint)).collect()
}

/// The dim two inputs must share: an error when both are known and differ; otherwise the known
/// one (a symbolic dim is assumed to match, which run-time inference re-checks with real sizes).
pub(super) fn agree(a: &Dim, b: &Dim, what: impl FnOnce() -> String) -> Result<Dim, KernelError> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => Err(KernelError::invalid(format!("{}: {x} vs {y}", what()))),
        (Dim::Sym(_), Dim::Known(_)) => Ok(b.clone()),
        _ => Ok(a.clone()),
    }
}

/// Row-major element strides of `shape`.
pub(super) fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// An int32 or int64 index tensor's elements.
#[derive(Clone, Copy)]
pub(super) enum Indices<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl<'a> Indices<'a> {
    /// The indices of input `index`.
    pub(super) fn new(t: &TensorRef<'a>, index: usize) -> Result<Self, KernelError> {
        check_data(t, index)?;
        match t.dtype {
            DType::I32 => Ok(Indices::I32(elems(t.data)?)),
            DType::I64 => Ok(Indices::I64(elems(t.data)?)),
            d => Err(KernelError::input(index, format!("indices must be int32 or int64, got {d}"))),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Indices::I32(v) => v.len(),
            Indices::I64(v) => v.len(),
        }
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> i64 {
        match self {
            Indices::I32(v) => v[i] as i64,
            Indices::I64(v) => v[i],
        }
    }

    /// Element `i` as a position along a dim of size `dim`, negative values counting from the
    /// end; an error naming the index when it is out of range.
    #[inline]
    pub(super) fn resolve(&self, i: usize, dim: usize) -> Result<usize, KernelError> {
        let v = self.get(i);
        wrap_index(v, dim).map_err(|_| {
            KernelError::invalid(format!(
                "index {v} (element {i} of the indices) is out of range for a dim of size {dim}"
            ))
        })
    }
}

/// A possibly negative index into a dim of size `dim`.
#[inline]
pub(super) fn wrap_index(v: i64, dim: usize) -> Result<usize, KernelError> {
    let d = dim as i64;
    let w = if v < 0 { v + d } else { v };
    if w < 0 || w >= d {
        return Err(KernelError::invalid(format!("index {v} is out of range for a dim of size {dim}")));
    }
    Ok(w as usize)
}

/// Resolves a list of possibly negative axes against `rank`, rejecting duplicates.
pub(crate) fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, KernelError> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = crate::kernel::normalize_axis(a, rank)?;
        if out.contains(&n) {
            return Err(KernelError::invalid(format!("axis {a} is repeated")));
        }
        out.push(n);
    }
    Ok(out)
}
