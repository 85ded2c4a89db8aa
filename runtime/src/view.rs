//! Typed views over bytes the caller owns: kernels read inputs and write outputs through these and
//! never allocate tensor storage themselves.

use crate::error::KernelError;
use kiln_formats::tensor::{read_f64, read_i64, Element};
use kiln_formats::{DType, Tensor};

/// A read-only tensor: dtype, shape and its contiguous row-major bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// A writable tensor.
#[derive(Debug)]
pub struct TensorMut<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a mut [u8],
}

fn cast<T: Element>(dtype: DType, data: &[u8]) -> Result<&[T], KernelError> {
    // Bools are stored as one byte each and read as u8.
    if T::DTYPE != dtype && !(T::DTYPE == DType::U8 && dtype == DType::Bool) {
        return Err(KernelError::invalid(format!("expected {} data, got {dtype}", T::DTYPE)));
    }
    bytemuck::try_cast_slice(data).map_err(|e| KernelError::invalid(format!("{dtype} data is misaligned: {e:?}")))
}

impl<'a> TensorRef<'a> {
    pub fn from_tensor(t: &'a Tensor) -> Self {
        TensorRef { dtype: t.dtype, shape: &t.shape, data: t.bytes() }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements as `T`; an error when `T` is not the dtype.
    pub fn typed<T: Element>(&self) -> Result<&'a [T], KernelError> {
        cast(self.dtype, self.data)
    }

    /// Element `i` as f64 (slow path, for scalars and attributes-as-inputs).
    pub fn get_f64(&self, i: usize) -> f64 {
        read_f64(self.dtype, self.data, i)
    }

    /// All elements of an integer tensor as i64 (for small shape-like inputs).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, KernelError> {
        (0..self.numel())
            .map(|i| {
                read_i64(self.dtype, self.data, i)
                    .ok_or_else(|| KernelError::invalid(format!("expected integers, got {}", self.dtype)))
            })
            .collect()
    }
}

impl<'a> TensorMut<'a> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements as `T`; an error when `T` is not the dtype.
    pub fn typed<T: Element>(&mut self) -> Result<&mut [T], KernelError> {
        if T::DTYPE != self.dtype && !(T::DTYPE == DType::U8 && self.dtype == DType::Bool) {
            return Err(KernelError::invalid(format!("expected {} output, got {}", T::DTYPE, self.dtype)));
        }
        bytemuck::try_cast_slice_mut(self.data)
            .map_err(|e| KernelError::invalid(format!("output is misaligned: {e:?}")))
    }
}
