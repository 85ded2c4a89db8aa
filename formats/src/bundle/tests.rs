//! Container tests: round trip, alignment, and refusal of damaged or hostile archives with a
//! named cause and no panic.

use super::manifest::*;
use super::*;
use crate::program::{Program, ProgramSet, ValueInfo};
use crate::target::TargetLimits;
use crate::SharedBytes;
use std::io::Write;

fn sample_parts() -> BundleParts {
    let w0 = SharedBytes::copy_from(&[1u8; 100]);
    let w1 = SharedBytes::copy_from(&[2u8; 40]);
    BundleParts {
        manifest: Manifest {
            format: "kiln-bundle".into(),
            format_version: FORMAT_VERSION,
            producer: Producer { name: "kiln".into(), version: "test".into() },
            source: Source { name: "m.onnx".into(), sha256: "00".into() },
            checksum_algorithm: "sha256".into(),
            entries: vec![],
            entry_points: vec![EntryPoint {
                name: "main".into(),
                target: "cpu".into(),
                program: 0,
                inputs: vec![],
                outputs: vec![],
                plan: PlanSummary { alignment: 64, arena_bytes: 0, lower_bound_bytes: 0, buffers: vec![] },
            }],
            targets: vec![TargetLimits::cpu()],
            metadata: Default::default(),
        },
        programs: ProgramSet {
            programs: vec![Program {
                values: vec![ValueInfo { name: "x".into(), dtype: 1, ..Default::default() }],
                ..Default::default()
            }],
        },
        weights: vec![WeightEntry { parts: vec![(0, w0), (128, w1)], len: 168 }],
        extra: vec![("tokenizer.json".into(), "tokenizer".into(), b"{}".to_vec())],
    }
}

fn sample_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.kiln");
    write_bundle(&p, sample_parts()).unwrap();
    std::fs::read(p).unwrap()
}

/// Opens with every check made before it returns (weights hashed in the foreground).
fn open(bytes: &[u8]) -> Result<Bundle, BundleError> {
    Bundle::from_bytes(
        SharedBytes::copy_from(bytes),
        OpenOptions { weights_in_background: false, ..OpenOptions::default() },
    )
}

#[test]
fn weights_verified_in_the_background_report_a_mismatch_by_entry_and_range() {
    let bytes = sample_bytes();
    let background = |bytes: &[u8]| Bundle::from_bytes(SharedBytes::copy_from(bytes), OpenOptions::default());
    let b = background(&bytes).unwrap();
    b.wait_verified().unwrap();
    assert!(b.weight_check().unwrap().is_done());
    let r = b.entry_range("weights/00000.bin").unwrap();
    let mut bad = bytes.clone();
    bad[r.start + 130] ^= 1;
    // Opening succeeds; the verdict, waited for, names the entry and its bytes, every time asked.
    let b = background(&bad).unwrap();
    let check = b.weight_check().unwrap().clone();
    drop(b);
    for _ in 0..2 {
        let err = check.wait().unwrap_err().to_string();
        assert!(err.contains("checksum mismatch in entry 'weights/00000.bin'"), "{err}");
        assert!(err.contains(&format!("bytes {}..{}", r.start, r.end)), "{err}");
    }
    // The other entries are still hashed before open returns.
    let p = background(&bytes).unwrap().entry_range("program.bin").unwrap();
    let mut bad = bytes.clone();
    bad[p.start] ^= 1;
    let err = background(&bad).err().unwrap().to_string();
    assert!(err.contains("program.bin") && err.contains("checksum"), "{err}");
    // Without checksums, or with every one checked at open, nothing runs in the background.
    let unchecked = OpenOptions { verify_checksums: false, ..OpenOptions::default() };
    assert!(Bundle::from_bytes(SharedBytes::copy_from(&bytes), unchecked).unwrap().weight_check().is_none());
    assert!(open(&bytes).unwrap().weight_check().is_none());
}

#[test]
fn hashing_stops_once_no_one_wants_the_digest() {
    let data = vec![7u8; 3 * read::HASH_CHUNK];
    let calls = std::cell::Cell::new(0);
    let digest = read::sha256_hex(&data, &|| {
        calls.set(calls.get() + 1);
        calls.get() > 1
    });
    assert_eq!((digest, calls.get()), (None, 2));
    let whole = read::sha256_hex(&data, &|| false).unwrap();
    assert_eq!(whole, hex(&<sha2::Sha256 as sha2::Digest>::digest(&data)));
}

#[test]
fn round_trip_and_alignment() {
    let bytes = sample_bytes();
    let b = open(&bytes).unwrap();
    let w = b.weight_entries().unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(&w[0].as_slice()[..100], &[1u8; 100]);
    assert_eq!(&w[0].as_slice()[128..], &[2u8; 40]);
    assert_eq!(b.entry_range("weights/00000.bin").unwrap().start % WEIGHT_ENTRY_ALIGN as usize, 0);
    assert_eq!(b.programs().unwrap().programs.len(), 1);
    assert_eq!(b.entry("tokenizer.json").unwrap().as_slice(), b"{}");
}

#[cfg(unix)]
#[test]
fn bundles_are_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.kiln");
    write_bundle(&p, sample_parts()).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
}

#[test]
fn every_truncation_is_refused_without_panic() {
    let bytes = sample_bytes();
    for len in 0..bytes.len() {
        assert!(open(&bytes[..len]).is_err(), "truncated to {len} bytes but accepted");
    }
}

#[test]
fn byte_flips_are_refused_or_harmless() {
    let bytes = sample_bytes();
    let b = open(&bytes).unwrap();
    // Every byte of every entry's data is covered by a checksum (the manifest by JSON parsing and
    // the checks after it), so a flip there must be refused.
    for e in &b.manifest.entries {
        let r = b.entry_range(&e.name).unwrap();
        for i in (r.start..r.end).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            let err = open(&bad).err().unwrap_or_else(|| panic!("flip at {i} in {} accepted", e.name)).to_string();
            assert!(err.contains(&e.name), "flip in {} gave: {err}", e.name);
        }
    }
    // Flips in headers and the central directory: refused or, when they hit bytes no reader uses
    // (timestamps, comments), accepted — but never a panic.
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0xff;
        let _ = open(&bad);
    }
}

#[test]
fn newer_major_version_is_refused_naming_both() {
    let mut parts = sample_parts();
    parts.manifest.format_version = manifest::FormatVersion { major: 2, minor: 3 };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.kiln");
    write_bundle(&p, parts).unwrap();
    let err = Bundle::open(&p, OpenOptions::default()).err().unwrap().to_string();
    assert!(err.contains("2.3") && err.contains(&FORMAT_VERSION.to_string()), "{err}");
}

fn zip_with(entries: &[(&str, &[u8], zip::CompressionMethod)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, method) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default().compression_method(*method)).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn hostile_archives_are_refused_by_name() {
    let stored = zip::CompressionMethod::Stored;
    let err = open(&zip_with(&[("kiln.json", b"{}", zip::CompressionMethod::Deflated)])).err().unwrap().to_string();
    assert!(err.contains("compressed"), "{err}");
    let err = open(&zip_with(&[("../evil", b"x", stored), ("kiln.json", b"{}", stored)])).err().unwrap().to_string();
    assert!(err.contains("../evil"), "{err}");
    let err = open(&zip_with(&[("/abs", b"x", stored)])).err().unwrap().to_string();
    assert!(err.contains("/abs"), "{err}");
    let err = open(&zip_with(&[("kiln.json", b"{\"format\": \"other\"}", stored)])).err().unwrap().to_string();
    assert!(err.contains("kiln-bundle"), "{err}");
    assert!(open(b"not a zip at all").is_err());
}

#[test]
fn unlisted_and_missing_entries_are_refused() {
    let bytes = sample_bytes();
    let b = open(&bytes).unwrap();
    let mut m = b.manifest.clone();
    m.entries.retain(|e| e.kind != "tokenizer");
    let json = serde_json::to_vec(&m).unwrap();
    let mut list: Vec<(String, Vec<u8>)> =
        b.manifest.entries.iter().map(|e| (e.name.clone(), b.entry(&e.name).unwrap().as_slice().to_vec())).collect();
    list.push(("kiln.json".into(), json));
    let refs: Vec<(&str, &[u8], zip::CompressionMethod)> =
        list.iter().map(|(n, d)| (n.as_str(), d.as_slice(), zip::CompressionMethod::Stored)).collect();
    let err = open(&zip_with(&refs)).err().unwrap().to_string();
    // Unaligned weights or the unlisted tokenizer: both are named refusals.
    assert!(err.contains("weights/00000.bin") || err.contains("tokenizer.json"), "{err}");
}
