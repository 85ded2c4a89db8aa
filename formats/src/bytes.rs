//! Byte storage: 64-byte aligned owned buffers and cheaply cloned shared views over mapped files.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Alignment of every buffer kiln allocates: a cache line, and enough for AVX-512 loads.
pub const BUFFER_ALIGN: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; BUFFER_ALIGN]);

/// An owned, zero-initialised byte buffer whose start is 64-byte aligned.
#[derive(Clone, Default)]
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        AlignedBuf { blocks: vec![Block([0; BUFFER_ALIGN]); len.div_ceil(BUFFER_ALIGN)], len }
    }

    /// A buffer holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut b = Self::zeroed(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grows or shrinks to `len` bytes, keeping the buffer if its capacity already suffices.
    pub fn resize(&mut self, len: usize) {
        let blocks = len.div_ceil(BUFFER_ALIGN);
        if blocks > self.blocks.len() {
            self.blocks.resize(blocks, Block([0; BUFFER_ALIGN]));
        }
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: blocks are plain bytes laid out contiguously and hold at least `len` bytes.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// Anything that owns bytes that stay put: a memory map, an aligned buffer, a vector.
pub trait ByteOwner: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl ByteOwner for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl ByteOwner for AlignedBuf {
    fn bytes(&self) -> &[u8] {
        self.as_slice()
    }
}

impl ByteOwner for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A read-only window into bytes owned elsewhere (usually a memory-mapped file); cloning is cheap
/// and never copies the data.
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn ByteOwner>,
    range: Range<usize>,
}

impl SharedBytes {
    /// The whole of `owner`.
    pub fn new(owner: Arc<dyn ByteOwner>) -> Self {
        let len = owner.bytes().len();
        SharedBytes { owner, range: 0..len }
    }

    /// `len` bytes that `owner` produces only when first read (e.g. a block of a larger weight,
    /// copied out on demand): planning never touches them.
    pub fn lazy(owner: Arc<dyn ByteOwner>, len: usize) -> Self {
        SharedBytes { owner, range: 0..len }
    }

    /// Bytes copied into a fresh aligned buffer (for small data such as inline ONNX tensors).
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::new(Arc::new(AlignedBuf::from_bytes(bytes)))
    }

    /// A sub-window, or `None` when `range` does not fit inside this one.
    pub fn slice(&self, range: Range<usize>) -> Option<SharedBytes> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        Some(SharedBytes {
            owner: self.owner.clone(),
            range: self.range.start + range.start..self.range.start + range.end,
        })
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        let bytes = self.owner.bytes();
        assert!(
            self.range.end <= bytes.len(),
            "lazy byte owner produced {} bytes, {} promised",
            bytes.len(),
            self.range.end
        );
        &bytes[self.range.clone()]
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_resizes() {
        let mut b = AlignedBuf::zeroed(10);
        assert_eq!(b.as_slice().as_ptr() as usize % BUFFER_ALIGN, 0);
        b.as_mut_slice()[9] = 7;
        b.resize(1000);
        assert_eq!(b.len(), 1000);
        assert_eq!(b.as_slice()[9], 7);
        assert_eq!(b.as_slice().as_ptr() as usize % BUFFER_ALIGN, 0);
    }

    #[test]
    fn shared_slice_bounds() {
        let s = SharedBytes::copy_from(&[1, 2, 3, 4]);
        assert_eq!(s.slice(1..3).unwrap().as_slice(), &[2, 3]);
        assert!(s.slice(2..5).is_none());
    }
}
