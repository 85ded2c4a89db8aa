//! Writes a bundle atomically: into a temporary file beside the target, fsynced, then renamed, so
//! the target name only ever holds a complete bundle (the old one or the new one).

use super::manifest::{EntryInfo, Manifest};
use super::{hex, weight_entry_name, ENTRY_ALIGN, MANIFEST, PROGRAM, WEIGHT_ENTRY_ALIGN};
use crate::error::FormatError;
use crate::program::ProgramSet;
use crate::SharedBytes;
use prost::Message;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use zip::write::SimpleFileOptions;

/// One weight entry: tensors at byte offsets (multiples of 64) inside it.
#[derive(Clone, Debug, Default)]
pub struct WeightEntry {
    pub parts: Vec<(u64, SharedBytes)>,
    pub len: u64,
}

/// What goes into a bundle. `manifest.entries` is filled in by the writer.
pub struct BundleParts {
    pub manifest: Manifest,
    pub programs: ProgramSet,
    pub weights: Vec<WeightEntry>,
    /// Other entries: (name, kind, bytes), e.g. `tokenizer.json`.
    pub extra: Vec<(String, String, Vec<u8>)>,
}

/// Writes `parts` to `path` atomically and returns the manifest as written.
pub fn write_bundle(path: &Path, mut parts: BundleParts) -> Result<Manifest, FormatError> {
    let err = |m: String| FormatError::Invalid(format!("writing {}: {m}", path.display()));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", path.file_name().and_then(|n| n.to_str()).unwrap_or("bundle")))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| FormatError::io(dir, e))?;
    let mut zip = zip::ZipWriter::new(tmp.reopen().map_err(|e| FormatError::io(tmp.path(), e))?);
    let mut entries = Vec::new();
    let ze = |e: zip::result::ZipError| err(e.to_string());
    let io = |e: std::io::Error| err(e.to_string());

    let start = |zip: &mut zip::ZipWriter<std::fs::File>, name: &str, len: u64, align: u64| {
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(align as u16)
            .large_file(len >= u32::MAX as u64);
        zip.start_file(name, opts).map_err(ze)
    };

    let program = parts.programs.encode_to_vec();
    start(&mut zip, PROGRAM, program.len() as u64, ENTRY_ALIGN)?;
    zip.write_all(&program).map_err(io)?;
    entries.push(EntryInfo {
        name: PROGRAM.into(),
        kind: "program".into(),
        len: program.len() as u64,
        checksum: hex(&Sha256::digest(&program)),
    });

    for (i, w) in parts.weights.iter().enumerate() {
        let name = weight_entry_name(i);
        start(&mut zip, &name, w.len, WEIGHT_ENTRY_ALIGN)?;
        let mut hash = Sha256::new();
        let mut pos = 0u64;
        let zeros = [0u8; 64];
        for (off, bytes) in &w.parts {
            if *off < pos {
                return Err(err(format!("weight entry {name}: parts overlap at byte {off}")));
            }
            while pos < *off {
                let n = ((*off - pos) as usize).min(zeros.len());
                zip.write_all(&zeros[..n]).map_err(io)?;
                hash.update(&zeros[..n]);
                pos += n as u64;
            }
            zip.write_all(bytes.as_slice()).map_err(io)?;
            hash.update(bytes.as_slice());
            pos += bytes.len() as u64;
        }
        if pos != w.len {
            return Err(err(format!("weight entry {name}: parts end at {pos}, the entry is {} bytes", w.len)));
        }
        entries.push(EntryInfo { name, kind: "weights".into(), len: w.len, checksum: hex(&hash.finalize()) });
    }

    for (name, kind, bytes) in &parts.extra {
        start(&mut zip, name, bytes.len() as u64, ENTRY_ALIGN)?;
        zip.write_all(bytes).map_err(io)?;
        entries.push(EntryInfo {
            name: name.clone(),
            kind: kind.clone(),
            len: bytes.len() as u64,
            checksum: hex(&Sha256::digest(bytes)),
        });
    }

    parts.manifest.entries = entries;
    let manifest = serde_json::to_vec_pretty(&parts.manifest).map_err(|e| err(e.to_string()))?;
    start(&mut zip, MANIFEST, manifest.len() as u64, ENTRY_ALIGN)?;
    zip.write_all(&manifest).map_err(io)?;
    let file = zip.finish().map_err(ze)?;
    // Temporary files are created private (0600); a bundle is an ordinary, shareable file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    file.sync_all().map_err(io)?;
    drop(file);
    tmp.persist(path).map_err(|e| FormatError::io(path, e.error))?;
    // The rename is durable only once the directory entry is on disk.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(parts.manifest)
}
