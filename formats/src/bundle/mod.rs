//! The `.kiln` bundle: a zip archive of STORED entries — `kiln.json` (manifest), `program.bin`
//! (prost-encoded programs), `weights/NNNNN.bin` (constants, each entry's data 16 KiB aligned in
//! the file), and optionally `tokenizer.json` and `generation.json`. See `formats/BUNDLE.md`.

pub mod manifest;
pub mod read;
pub mod write;

pub use manifest::Manifest;
pub use read::{Bundle, BundleError, OpenOptions, WeightCheck};
pub use write::{write_bundle, BundleParts, WeightEntry};

/// Version this build writes and the newest major version it reads.
pub const FORMAT_VERSION: manifest::FormatVersion = manifest::FormatVersion { major: 1, minor: 1 };
/// Alignment of each weight entry's data in the file: the Apple Silicon page size, so a GPU
/// runtime can wrap mapped memory without a copy.
pub const WEIGHT_ENTRY_ALIGN: u64 = 16 << 10;
/// Alignment of every tensor inside a weight entry.
pub const TENSOR_ALIGN: u64 = 64;
/// Alignment of other entries' data (program, JSON): enough for any scalar read.
pub const ENTRY_ALIGN: u64 = 64;
pub const MANIFEST: &str = "kiln.json";
pub const PROGRAM: &str = "program.bin";

/// Name of weight entry `i`.
pub fn weight_entry_name(i: usize) -> String {
    format!("weights/{i:05}.bin")
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
