//! Byte storage: 64-byte aligned owned buffers and cheaply cloned shared views over mapped files.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// Alignment of every buffer kiln allocates: a cache line, and enough for AVX-512 loads.
pub const BUFFER_ALIGN: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; BUFFER_ALIGN]);

/// Where an empty buffer points: aligned, so that even an empty slice casts to any element type.
static EMPTY: Block = Block([0; BUFFER_ALIGN]);

/// An owned, zero-initialised byte buffer whose start is 64-byte aligned.
///
/// The bytes live in a `Vec<u8>` with up to 63 bytes of slack in front: `vec![0u8; n]` comes from
/// `calloc`, whose large blocks are fresh pages the kernel zeroes on first touch, so an arena or KV
/// cache costs nothing until it is used. (An over-aligned `alloc_zeroed`, or `vec![block; n]` of a
/// 64-byte aligned struct, writes every byte up front instead: ~0.4 s per GiB here.)
#[derive(Default)]
pub struct AlignedBuf {
    bytes: Vec<u8>,
    /// Index of the first 64-byte aligned byte of `bytes`.
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return AlignedBuf::default();
        }
        let bytes = vec![0u8; len.checked_add(BUFFER_ALIGN - 1).expect("capacity overflow")];
        let offset = bytes.as_ptr().align_offset(BUFFER_ALIGN);
        assert!(offset < BUFFER_ALIGN, "a byte buffer cannot be aligned to {BUFFER_ALIGN}");
        AlignedBuf { bytes, offset, len }
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

    /// Bytes the buffer holds without reallocating.
    fn capacity(&self) -> usize {
        self.bytes.len().saturating_sub(self.offset)
    }

    /// Grows or shrinks to `len` bytes, keeping the buffer if its capacity already suffices.
    pub fn resize(&mut self, len: usize) {
        if len > self.capacity() {
            let mut grown = AlignedBuf::zeroed(len);
            let old = &self.bytes[self.offset.min(self.bytes.len())..];
            grown.as_mut_slice()[..old.len()].copy_from_slice(old);
            *self = grown;
        }
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &EMPTY.0[..0];
        }
        &self.bytes[self.offset..self.offset + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            // SAFETY: a dangling, non-null pointer aligned to 64 is valid for an empty slice.
            return unsafe {
                std::slice::from_raw_parts_mut(std::ptr::NonNull::<Block>::dangling().as_ptr().cast(), 0)
            };
        }
        &mut self.bytes[self.offset..self.offset + self.len]
    }
}

impl Clone for AlignedBuf {
    /// A copy at its own aligned address (a cloned `Vec` may start at another offset mod 64).
    fn clone(&self) -> Self {
        let mut b = AlignedBuf::zeroed(self.capacity());
        b.as_mut_slice().copy_from_slice(&self.bytes[self.offset.min(self.bytes.len())..]);
        b.len = self.len;
        b
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
        assert!(b.as_slice()[10..].iter().all(|&x| x == 0));
        assert!(AlignedBuf::zeroed(0).is_empty());
        for mut e in [AlignedBuf::zeroed(0), AlignedBuf::default()] {
            assert_eq!(e.as_slice().as_ptr() as usize % BUFFER_ALIGN, 0);
            assert_eq!(e.as_mut_slice().as_ptr() as usize % BUFFER_ALIGN, 0);
        }
        b.resize(5);
        let c = b.clone();
        assert_eq!((c.len(), c.as_slice().as_ptr() as usize % BUFFER_ALIGN), (5, 0));
        assert_eq!(c.as_slice(), &b.as_slice()[..5]);
    }

    #[test]
    fn large_zeroed_buffers_are_zero_without_being_written() {
        // 1 GiB: written up front this would take ~100 ms and 1 GiB of resident memory; from
        // alloc_zeroed it is untouched pages until used.
        let started = std::time::Instant::now();
        let mut b = AlignedBuf::zeroed(1 << 30);
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "{:?}", started.elapsed());
        let s = b.as_slice();
        assert!([0, 4095, 1 << 29, (1 << 30) - 1].iter().all(|&i| s[i] == 0));
        b.as_mut_slice()[5] = 1;
        b.resize((1 << 30) + 1);
        assert_eq!((b.as_slice()[5], b.as_slice()[1 << 30]), (1, 0));
    }

    #[test]
    fn shared_slice_bounds() {
        let s = SharedBytes::copy_from(&[1, 2, 3, 4]);
        assert_eq!(s.slice(1..3).unwrap().as_slice(), &[2, 3]);
        assert!(s.slice(2..5).is_none());
    }
}
