//! Owned tensors: a dtype, a shape and 64-byte aligned little-endian element bytes.

use crate::bytes::AlignedBuf;
use crate::dtype::DType;
use crate::error::FormatError;
use half::{bf16, f16};

/// A Rust type that is the in-memory form of one [`DType`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DType = DType::$d; })* };
}
element!(f32 => F32, f64 => F64, f16 => F16, bf16 => BF16, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64);

/// Number of elements of a shape, or `None` on overflow.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Bytes of a tensor of this dtype and shape, or `None` on overflow.
pub fn byte_size(dtype: DType, shape: &[usize]) -> Option<usize> {
    numel(shape)?.checked_mul(dtype.size())
}

/// An owned tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    data: AlignedBuf,
}

impl Tensor {
    /// A zero-filled tensor.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Tensor, FormatError> {
        let len = byte_size(dtype, shape)
            .ok_or_else(|| FormatError::TooLarge(format!("{dtype} tensor of shape {shape:?}")))?;
        Ok(Tensor { dtype, shape: shape.to_vec(), data: AlignedBuf::zeroed(len) })
    }

    /// A tensor holding a copy of `bytes`, which must be exactly the tensor's size.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, FormatError> {
        let want = byte_size(dtype, shape)
            .ok_or_else(|| FormatError::TooLarge(format!("{dtype} tensor of shape {shape:?}")))?;
        if want != bytes.len() {
            return Err(FormatError::Invalid(format!(
                "{dtype} tensor of shape {shape:?} needs {want} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Tensor { dtype, shape: shape.to_vec(), data: AlignedBuf::from_bytes(bytes) })
    }

    /// A tensor from typed elements; panics if `values` does not match the shape (a programming error).
    pub fn from_vec<T: Element>(shape: &[usize], values: Vec<T>) -> Tensor {
        assert_eq!(numel(shape), Some(values.len()), "shape {shape:?} does not hold {} values", values.len());
        Tensor { dtype: T::DTYPE, shape: shape.to_vec(), data: AlignedBuf::from_bytes(bytemuck::cast_slice(&values)) }
    }

    /// A bool tensor.
    pub fn from_bools(shape: &[usize], values: &[bool]) -> Tensor {
        assert_eq!(numel(shape), Some(values.len()), "shape {shape:?} does not hold {} values", values.len());
        let bytes: Vec<u8> = values.iter().map(|&b| u8::from(b)).collect();
        Tensor { dtype: DType::Bool, shape: shape.to_vec(), data: AlignedBuf::from_bytes(&bytes) }
    }

    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.data.as_mut_slice()
    }

    /// The elements as `T`, or `None` when `T` is not this tensor's dtype.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        (T::DTYPE == self.dtype).then(|| bytemuck::cast_slice(self.bytes()))
    }

    /// Element `i` converted to f64 (bools as 0/1), for comparisons and printing.
    pub fn get_f64(&self, i: usize) -> f64 {
        read_f64(self.dtype, self.bytes(), i)
    }
}

/// Element `i` of little-endian `bytes` of type `dtype`, as f64.
pub fn read_f64(dtype: DType, bytes: &[u8], i: usize) -> f64 {
    let s = dtype.size();
    let b = &bytes[i * s..(i + 1) * s];
    match dtype {
        DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
        DType::F16 => f16::from_le_bytes(b.try_into().unwrap()).to_f64(),
        DType::BF16 => bf16::from_le_bytes(b.try_into().unwrap()).to_f64(),
        DType::I8 => b[0] as i8 as f64,
        DType::U8 | DType::Bool => b[0] as f64,
        DType::I16 => i16::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::U16 => u16::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::U32 => u32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::U64 => u64::from_le_bytes(b.try_into().unwrap()) as f64,
    }
}

/// Element `i` of an integer (or bool) tensor's bytes as i64; `None` for float dtypes.
pub fn read_i64(dtype: DType, bytes: &[u8], i: usize) -> Option<i64> {
    let s = dtype.size();
    let b = bytes.get(i * s..(i + 1) * s)?;
    Some(match dtype {
        DType::I8 => b[0] as i8 as i64,
        DType::U8 | DType::Bool => b[0] as i64,
        DType::I16 => i16::from_le_bytes(b.try_into().ok()?) as i64,
        DType::U16 => u16::from_le_bytes(b.try_into().ok()?) as i64,
        DType::I32 => i32::from_le_bytes(b.try_into().ok()?) as i64,
        DType::U32 => u32::from_le_bytes(b.try_into().ok()?) as i64,
        DType::I64 => i64::from_le_bytes(b.try_into().ok()?),
        DType::U64 => u64::from_le_bytes(b.try_into().ok()?) as i64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_access_checks_dtype() {
        let t = Tensor::from_vec(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]);
        assert_eq!(t.as_slice::<f32>().unwrap()[3], 4.0);
        assert!(t.as_slice::<i32>().is_none());
        assert_eq!(t.get_f64(1), 2.0);
    }

    #[test]
    fn from_bytes_checks_length() {
        assert!(Tensor::from_bytes(DType::F32, &[3], &[0u8; 8]).is_err());
        assert!(Tensor::zeros(DType::F32, &[usize::MAX, 2]).is_err());
    }
}
