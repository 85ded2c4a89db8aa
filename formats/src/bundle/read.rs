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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

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
    /// Read the whole file into memory instead of mapping it (`--no-mmap`): costs a copy of the
    /// weights, but a file truncated or rewritten by another process afterwards cannot fault.
    pub read_into_memory: bool,
    /// With `verify_checksums`, hash the weight entries on a thread of their own (the default):
    /// opening then costs the small entries' hashes only (SmolLM2 f32: 540 MB of weights take
    /// ~0.3 s to hash, the rest ~2 ms), and a model made from the bundle waits for the result
    /// ([`Bundle::weight_check`]) before it hands out any output, so nothing computed from
    /// damaged weights ever leaves kiln. Off: [`Bundle::open`] hashes everything before it
    /// returns (`kiln verify`, `kiln inspect`).
    pub weights_in_background: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { verify_checksums: true, read_into_memory: false, weights_in_background: true }
    }
}

/// An opened, validated bundle.
pub struct Bundle {
    bytes: SharedBytes,
    pub manifest: Manifest,
    ranges: HashMap<String, Range<usize>>,
    weight_check: Option<WeightCheck>,
}

/// The checksums of a bundle's weight entries, being verified on a background thread
/// ([`OpenOptions::weights_in_background`]). Clones share one verification; once it has passed,
/// [`WeightCheck::wait`] is one atomic load.
#[derive(Clone)]
pub struct WeightCheck(Arc<CheckState>);

struct CheckState {
    passed: AtomicBool,
    /// `None` while hashing; then the verdict.
    verdict: Mutex<Option<Result<(), Mismatch>>>,
    done: Condvar,
}

/// A weight entry whose data does not hash to the manifest's checksum.
#[derive(Clone, Debug)]
struct Mismatch {
    entry: String,
    range: Range<usize>,
    expected: String,
    found: String,
}

impl Mismatch {
    fn error(&self) -> BundleError {
        BundleError::Checksum {
            entry: self.entry.clone(),
            start: self.range.start as u64,
            end: self.range.end as u64,
            expected: self.expected.clone(),
            found: self.found.clone(),
        }
    }
}

/// Bytes hashed between two looks at whether anyone still wants the verdict.
pub(super) const HASH_CHUNK: usize = 8 << 20;

/// Hashes `data` (sha256, hex), or `None` once `cancelled` says no one wants the digest.
pub(super) fn sha256_hex(data: &[u8], cancelled: &impl Fn() -> bool) -> Option<String> {
    let mut hash = Sha256::new();
    for chunk in data.chunks(HASH_CHUNK) {
        if cancelled() {
            return None;
        }
        hash.update(chunk);
    }
    Some(hex(&hash.finalize()))
}

impl CheckState {
    /// Hashes each entry in turn and records the verdict; stops early, recording nothing, once
    /// `cancelled` (every handle dropped: the verdict would go unread).
    fn run(&self, bytes: &SharedBytes, entries: Vec<(String, Range<usize>, String)>, cancelled: impl Fn() -> bool) {
        let mut verdict = Ok(());
        for (entry, range, expected) in entries {
            let Some(found) = sha256_hex(&bytes.as_slice()[range.clone()], &cancelled) else { return };
            if found != expected {
                verdict = Err(Mismatch { entry, range, expected, found });
                break;
            }
        }
        self.passed.store(verdict.is_ok(), Ordering::Release);
        *self.verdict.lock().unwrap_or_else(PoisonError::into_inner) = Some(verdict);
        self.done.notify_all();
    }
}

impl WeightCheck {
    /// Starts hashing `entries` (name, range in `bytes`, expected checksum) on a new thread, or
    /// hashes them here if no thread can be started.
    fn start(bytes: SharedBytes, entries: Vec<(String, Range<usize>, String)>) -> WeightCheck {
        let state =
            Arc::new(CheckState { passed: AtomicBool::new(false), verdict: Mutex::new(None), done: Condvar::new() });
        let (shared, work) = (state.clone(), (bytes.clone(), entries.clone()));
        let spawned = std::thread::Builder::new()
            .name("kiln-checksums".into())
            .spawn(move || CheckState::run(&shared, &work.0, work.1, || Arc::strong_count(&shared) == 1));
        if spawned.is_err() {
            CheckState::run(&state, &bytes, entries, || false);
        }
        WeightCheck(state)
    }

    /// Waits for the verdict: `Ok` once every weight entry matched its checksum, else the
    /// checksum error naming the first entry (and its byte range) that did not.
    pub fn wait(&self) -> Result<(), BundleError> {
        if self.0.passed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut verdict = self.0.verdict.lock().unwrap_or_else(PoisonError::into_inner);
        while verdict.is_none() {
            verdict = self.0.done.wait(verdict).unwrap_or_else(PoisonError::into_inner);
        }
        match verdict.as_ref() {
            Some(Err(m)) => Err(m.error()),
            _ => Ok(()),
        }
    }

    /// Whether the verdict is in (without waiting for it).
    pub fn is_done(&self) -> bool {
        self.0.passed.load(Ordering::Acquire) || self.0.verdict.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

impl Bundle {
    /// Maps (or, with [`OpenOptions::read_into_memory`], reads) and validates the bundle at `path`.
    pub fn open(path: &Path, opts: OpenOptions) -> Result<Bundle, BundleError> {
        let io = |e| BundleError::Io { path: path.display().to_string(), source: e };
        let mut file = std::fs::File::open(path).map_err(io)?;
        if opts.read_into_memory {
            return Bundle::from_bytes(read_aligned(&mut file).map_err(io)?, opts);
        }
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
            .map_err(|_| {
                BundleError::NotBundle(format!("the zip directory of the file ({file_len} bytes) could not be parsed"))
            })?
            .map_err(|e| match e {
                BundleError::NotBundle(m) => BundleError::NotBundle(format!("{m} (the file is {file_len} bytes)")),
                e => e,
            })?;
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
        check_disjoint(&ranges)?;
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
        let mut later = Vec::new();
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
            if opts.verify_checksums && opts.weights_in_background && e.kind == "weights" {
                later.push((e.name.clone(), r.clone(), e.checksum.clone()));
            } else if opts.verify_checksums {
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
        // Started last, once everything else has passed: a refused bundle starts no thread.
        let weight_check = (!later.is_empty()).then(|| WeightCheck::start(bytes.clone(), later));
        Ok(Bundle { bytes, manifest, ranges, weight_check })
    }

    /// The verification of the weight entries' checksums still running or done in the
    /// background ([`OpenOptions::weights_in_background`]); `None` when they were verified
    /// before [`Bundle::open`] returned, or not at all.
    pub fn weight_check(&self) -> Option<&WeightCheck> {
        self.weight_check.as_ref()
    }

    /// Waits until every checksum is verified: `Ok`, or the checksum error of the first weight
    /// entry that does not match. Immediate when none is being verified in the background.
    pub fn wait_verified(&self) -> Result<(), BundleError> {
        self.weight_check.as_ref().map_or(Ok(()), WeightCheck::wait)
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

/// No two entries may share a byte: an archive whose directory points two names at one range
/// would let one checksummed entry stand in for another.
fn check_disjoint(ranges: &HashMap<String, Range<usize>>) -> Result<(), BundleError> {
    let mut sorted: Vec<(&String, &Range<usize>)> = ranges.iter().filter(|(_, r)| !r.is_empty()).collect();
    sorted.sort_by_key(|(n, r)| (r.start, r.end, n.as_str()));
    for pair in sorted.windows(2) {
        let ((a, ra), (b, rb)) = (pair[0], pair[1]);
        if rb.start < ra.end {
            return Err(entry_err(
                b,
                format!("bytes {}..{} overlap entry '{a}' (bytes {}..{})", rb.start, rb.end, ra.start, ra.end),
            ));
        }
    }
    Ok(())
}

/// The names of the central directory's records, as the end record declares them (`None` when it
/// defers to a zip64 record, or the directory cannot be walked: the zip reader then decides).
fn central_names(data: &[u8]) -> Option<Vec<String>> {
    const EOCD: usize = 22;
    let u16_at = |i: usize| data.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |i: usize| data.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let last = data.len().checked_sub(EOCD)?;
    // The end record closes the file, followed only by its comment (at most 65535 bytes).
    let eocd = (last.saturating_sub(u16::MAX as usize)..=last)
        .rev()
        .find(|&i| data[i..i + 4] == *b"PK\x05\x06" && u16_at(i + 20).map(|c| i + EOCD + c) == Some(data.len()))?;
    let (total, mut pos) = (u16_at(eocd + 10)?, u32_at(eocd + 16)?);
    if total == u16::MAX as usize || pos == u32::MAX as usize {
        return None;
    }
    let mut names = Vec::with_capacity(total);
    for _ in 0..total {
        if data.get(pos..pos + 4)? != b"PK\x01\x02" {
            return None;
        }
        let (n, e, c) = (u16_at(pos + 28)?, u16_at(pos + 30)?, u16_at(pos + 32)?);
        names.push(String::from_utf8_lossy(data.get(pos + 46..pos + 46 + n)?).into_owned());
        pos += 46 + n + e + c;
    }
    Some(names)
}

/// The whole file in a 64-byte aligned buffer (weights are used in place, so their alignment
/// inside the buffer must be what it is in the file).
fn read_aligned(file: &mut std::fs::File) -> std::io::Result<SharedBytes> {
    use std::io::Read;
    let len = file.metadata()?.len();
    let len = usize::try_from(len).map_err(|_| std::io::Error::other(format!("{len} bytes do not fit in memory")))?;
    let mut buf = crate::AlignedBuf::zeroed(len);
    file.read_exact(buf.as_mut_slice())?;
    // A file that grew since the length was read is refused rather than half read.
    let mut probe = [0u8; 1];
    if file.read(&mut probe)? != 0 {
        return Err(std::io::Error::other("the file grew while it was being read"));
    }
    Ok(SharedBytes::new(Arc::new(buf)))
}

/// (name, stored?, data start, data length) of every entry in the central directory.
fn list_entries(data: &[u8]) -> Result<Vec<(String, bool, u64, u64)>, BundleError> {
    let bad = |e: zip::result::ZipError| BundleError::NotBundle(format!("invalid zip archive: {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(bad)?;
    // The zip crate keeps one record per name, so a second record under a name already seen
    // vanishes from its listing; the count the end record declares still shows it.
    if let Some(names) = central_names(data).filter(|n| n.len() != zip.len()) {
        let mut seen = std::collections::HashSet::new();
        let twice = names.iter().find(|n| !seen.insert(n.as_str())).cloned().unwrap_or_default();
        return Err(entry_err(&twice, "appears twice in the central directory"));
    }
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
