//! Opens a bundle: maps the file, reads the zip central directory, and checks every entry (present,
//! STORED, aligned, inside the file, checksum) before any byte of it is used. Weights are then
//! used in place from the map.

use super::manifest::Manifest;
use super::{hex, weight_entry_name, FORMAT_VERSION, MANIFEST, PROGRAM, WEIGHT_ENTRY_ALIGN};
use crate::program::ProgramSet;
use crate::SharedBytes;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Why a bundle was refused; every variant names the entry or byte range at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}")]
    Io { path: String, source: std::io::Error },
    #[error("not a kiln bundle: {0}")]
    NotBundle(String),
    #[error("bundle format {found} is newer than this kiln reads ({supported}); upgrade kiln or recompile the model")]
    TooNew { found: String, supported: String },
    #[error("entry '{entry}': {reason}")]
    Entry { entry: String, reason: String },
    #[error("checksum mismatch in entry '{entry}' (bytes {start}..{end}): expected {expected}, found {found}")]
    Checksum { entry: String, start: u64, end: u64, expected: String, found: String },
    #[error("manifest: {0}")]
    Manifest(String),
}

fn entry_err(entry: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Entry { entry: entry.into(), reason: reason.into() }
}

/// Loader options.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Hash every entry and compare with the manifest (the default; reads the whole file once).
    pub verify_checksums: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { verify_checksums: true }
    }
}

/// An opened, validated bundle.
pub struct Bundle {
    bytes: SharedBytes,
    pub manifest: Manifest,
    ranges: HashMap<String, Range<usize>>,
}

impl Bundle {
    /// Maps and validates the bundle at `path`.
    pub fn open(path: &Path, opts: OpenOptions) -> Result<Bundle, BundleError> {
        let io = |e| BundleError::Io { path: path.display().to_string(), source: e };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map. A file truncated by another process while mapped can still fault
        // on access; kiln's policy (README) is that bundles are replaced by rename, never rewritten
        // in place, which is what `kiln compile` does.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Bundle::from_bytes(SharedBytes::new(Arc::new(map)), opts)
    }

    /// Validates a bundle held in memory.
    pub fn from_bytes(bytes: SharedBytes, opts: OpenOptions) -> Result<Bundle, BundleError> {
        let data = bytes.as_slice();
        let file_len = data.len() as u64;
        if data.len() < 22 || &data[..4] != b"PK\x03\x04" {
            return Err(BundleError::NotBundle(format!(
                "the file ({file_len} bytes) does not start with a zip local header"
            )));
        }
        let listing = std::panic::catch_unwind(|| list_entries(data))
            .map_err(|_| BundleError::NotBundle("the zip directory could not be parsed".into()))??;
        let mut ranges = HashMap::new();
        for (name, stored, start, len) in listing {
            if name.starts_with('/') || name.contains('\\') || name.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(entry_err(&name, "has an absolute or parent-relative name"));
            }
            if !stored {
                return Err(entry_err(&name, "is compressed; kiln bundles store every entry uncompressed"));
            }
            let end = start.checked_add(len).filter(|&e| e <= file_len);
            let end = end.ok_or_else(|| {
                entry_err(
                    &name,
                    format!("bytes {start}..{} lie outside the file ({file_len} bytes)", start.saturating_add(len)),
                )
            })?;
            if ranges.insert(name.clone(), start as usize..end as usize).is_some() {
                return Err(entry_err(&name, "appears twice"));
            }
        }
        let m = ranges.get(MANIFEST).cloned().ok_or_else(|| BundleError::NotBundle(format!("no {MANIFEST} entry")))?;
        let raw: serde_json::Value =
            serde_json::from_slice(&data[m.clone()]).map_err(|e| BundleError::Manifest(format!("not JSON: {e}")))?;
        if raw.get("format").and_then(|f| f.as_str()) != Some("kiln-bundle") {
            return Err(BundleError::NotBundle(format!("{MANIFEST} does not declare format \"kiln-bundle\"")));
        }
        let major = raw.pointer("/format_version/major").and_then(|v| v.as_u64()).unwrap_or(0);
        let minor = raw.pointer("/format_version/minor").and_then(|v| v.as_u64()).unwrap_or(0);
        if major > FORMAT_VERSION.major as u64 {
            return Err(BundleError::TooNew {
                found: format!("{major}.{minor}"),
                supported: FORMAT_VERSION.to_string(),
            });
        }
        let manifest: Manifest = serde_json::from_value(raw).map_err(|e| BundleError::Manifest(e.to_string()))?;

        let mut listed: HashMap<&str, ()> = HashMap::new();
        for e in &manifest.entries {
            let r = ranges
                .get(&e.name)
                .ok_or_else(|| entry_err(&e.name, "is listed in the manifest but missing from the archive"))?;
            if listed.insert(e.name.as_str(), ()).is_some() {
                return Err(entry_err(&e.name, "is listed twice in the manifest"));
            }
            if r.len() as u64 != e.len {
                return Err(entry_err(&e.name, format!("holds {} bytes, the manifest says {}", r.len(), e.len)));
            }
            let align = if e.kind == "weights" { WEIGHT_ENTRY_ALIGN } else { 1 };
            if !(r.start as u64).is_multiple_of(align) {
                return Err(entry_err(&e.name, format!("data starts at byte {}, not a multiple of {align}", r.start)));
            }
            if manifest.checksum_algorithm != "sha256" {
                return Err(BundleError::Manifest(format!(
                    "unknown checksum algorithm '{}'",
                    manifest.checksum_algorithm
                )));
            }
            if opts.verify_checksums {
                let found = hex(&Sha256::digest(&data[r.clone()]));
                if found != e.checksum {
                    return Err(BundleError::Checksum {
                        entry: e.name.clone(),
                        start: r.start as u64,
                        end: r.end as u64,
                        expected: e.checksum.clone(),
                        found,
                    });
                }
            }
        }
        if let Some(extra) = ranges.keys().find(|n| n.as_str() != MANIFEST && !listed.contains_key(n.as_str())) {
            return Err(entry_err(extra, "is in the archive but not in the manifest"));
        }
        if !listed.contains_key(PROGRAM) {
            return Err(entry_err(PROGRAM, "is missing"));
        }
        Ok(Bundle { bytes, manifest, ranges })
    }

    /// The data of an entry, without copying.
    pub fn entry(&self, name: &str) -> Option<SharedBytes> {
        self.ranges.get(name).and_then(|r| self.bytes.slice(r.clone()))
    }

    /// Decodes `program.bin`.
    pub fn programs(&self) -> Result<ProgramSet, BundleError> {
        let bytes = self.entry(PROGRAM).ok_or_else(|| entry_err(PROGRAM, "is missing"))?;
        ProgramSet::decode(bytes.as_slice()).map_err(|e| entry_err(PROGRAM, format!("cannot be decoded: {e}")))
    }

    /// The weight entries in order (`WeightRef::entry` indexes this list).
    pub fn weight_entries(&self) -> Result<Vec<SharedBytes>, BundleError> {
        let n = self.manifest.entries.iter().filter(|e| e.kind == "weights").count();
        (0..n)
            .map(|i| {
                let name = weight_entry_name(i);
                self.entry(&name)
                    .ok_or_else(|| entry_err(&name, "is missing (weight entries must be numbered from 00000)"))
            })
            .collect()
    }

    /// Size of the whole file.
    pub fn file_len(&self) -> usize {
        self.bytes.len()
    }

    /// Byte range of an entry's data in the file.
    pub fn entry_range(&self, name: &str) -> Option<Range<usize>> {
        self.ranges.get(name).cloned()
    }
}

/// (name, stored?, data start, data length) of every entry in the central directory.
fn list_entries(data: &[u8]) -> Result<Vec<(String, bool, u64, u64)>, BundleError> {
    let bad = |e: zip::result::ZipError| BundleError::NotBundle(format!("invalid zip archive: {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(bad)?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(bad)?;
        out.push((
            f.name().to_string(),
            f.compression() == zip::CompressionMethod::Stored,
            f.data_start(),
            f.compressed_size(),
        ));
    }
    Ok(out)
}
