//! Corrupted and hostile bundles: every truncation, byte flips across every entry, local header
//! and the central directory, and hand-made archives (renamed, duplicated, overlapping or
//! compressed entries, `../` and absolute names, a manifest that disagrees with the data, a plan
//! the verifier refuses). In process, each is refused with a named error or, for bytes no reader
//! uses, runs exactly as the intact bundle does; through the CLI, `kiln verify` and `kiln run`
//! exit 1 (never a signal) with that error and write no output file.

mod common;
use common::*;
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::CompileOptions;
use kiln_formats::bundle::{write_bundle, Bundle, BundleParts, OpenOptions, WeightEntry};
use kiln_formats::program::{ProgramSet, StorageKind};
use kiln_formats::target::TargetLimits;
use kiln_formats::{npy, SharedBytes, Tensor};
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::{Session, TensorRef};
use std::ops::Range;
use std::path::PathBuf;

/// The tiny MLP compiled into a bundle: (bytes, the input, the intact bundle's outputs).
fn small_bundle() -> (Vec<u8>, Tensor, Vec<Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let mut opts = CompileOptions::default();
    opts.dim_bounds.insert("batch".into(), 8);
    let src = ModelSource::resolve(&examples().join("tiny_mlp.onnx")).unwrap();
    compile_bundle(&src, &opts, &[TargetLimits::cpu()], &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let x = input();
    let outputs = load_and_run(&bytes, &x).unwrap();
    (bytes, x, outputs)
}

fn input_npz() -> PathBuf {
    examples().join("tiny_mlp_input.npz")
}

fn input() -> Tensor {
    npy::read_npz(&input_npz()).unwrap().remove(0).1
}

/// What `kiln run BUNDLE` does, in process: open with every check, load, run `main`.
fn load_and_run(bytes: &[u8], x: &Tensor) -> Result<Vec<Tensor>, String> {
    let b = Bundle::from_bytes(SharedBytes::copy_from(bytes), OpenOptions::default()).map_err(|e| e.to_string())?;
    let loaded = LoadedBundle::from_bundle(b).map_err(|e| e.to_string())?;
    let model = loaded.model("main", None).ok_or("no main entry point")?.clone();
    Session::new(model).run(&[TensorRef::from_tensor(x)]).map_err(|e| e.to_string())
}

/// Accepted inputs must behave exactly like the intact bundle; refused ones need a message.
fn refused_or_same(bytes: &[u8], x: &Tensor, intact: &[Tensor], what: &str) -> Option<String> {
    match load_and_run(bytes, x) {
        Ok(outs) => {
            assert_eq!(outs.len(), intact.len(), "{what}: accepted, with other outputs");
            for (a, b) in outs.iter().zip(intact) {
                assert_eq!(a.bytes(), b.bytes(), "{what}: accepted, with other results");
            }
            None
        }
        Err(e) => {
            assert!(!e.trim().is_empty(), "{what}: refused without a message");
            Some(e)
        }
    }
}

/// `kiln verify` and `kiln run` on `bytes` both exit 1 with every needle in the message, no
/// panic, no signal, and no output file.
fn cli_refuses(bytes: &[u8], needles: &[&str], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.kiln");
    std::fs::write(&path, bytes).unwrap();
    let out_dir = dir.path().join("out");
    let p = path.to_str().unwrap();
    let npz = input_npz();
    let runs = [
        run_kiln(&["verify", p]),
        run_kiln(&["run", p, "--inputs", npz.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]),
        run_kiln(&["run", p, "--no-mmap", "--inputs", npz.to_str().unwrap()]),
    ];
    for o in runs {
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: exit status {:?} (None = killed by a signal): {err}", o.status);
        assert!(err.contains("error:") && !err.contains("panicked"), "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: the error should name {n:?}: {err}");
        }
    }
    assert!(!out_dir.exists() || std::fs::read_dir(&out_dir).unwrap().next().is_none(), "{what}: wrote output");
}

/// Where each part of a zip archive lies: entry name, local header, data; central directory; EOCD.
struct Layout {
    entries: Vec<(String, Range<usize>, Range<usize>)>,
    /// Central directory records: (name, byte range).
    central: Vec<(String, Range<usize>)>,
    eocd: Range<usize>,
}

fn u16_at(b: &[u8], i: usize) -> usize {
    u16::from_le_bytes([b[i], b[i + 1]]) as usize
}

fn u32_at(b: &[u8], i: usize) -> usize {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize
}

fn layout(b: &[u8]) -> Layout {
    let eocd = (0..=b.len() - 22).rev().find(|&i| b[i..i + 4] == *b"PK\x05\x06").expect("an EOCD");
    let (count, mut pos) = (u16_at(b, eocd + 10), u32_at(b, eocd + 16));
    let (mut entries, mut central) = (Vec::new(), Vec::new());
    for _ in 0..count {
        assert_eq!(b[pos..pos + 4], *b"PK\x01\x02");
        let size = u32_at(b, pos + 20);
        let (n, e, c) = (u16_at(b, pos + 28), u16_at(b, pos + 30), u16_at(b, pos + 32));
        let name = String::from_utf8(b[pos + 46..pos + 46 + n].to_vec()).unwrap();
        let local = u32_at(b, pos + 42);
        let data = local + 30 + u16_at(b, local + 26) + u16_at(b, local + 28);
        entries.push((name.clone(), local..data, data..data + size));
        central.push((name, pos..pos + 46 + n + e + c));
        pos += 46 + n + e + c;
    }
    Layout { entries, central, eocd: eocd..b.len() }
}

fn range_of<'a>(l: &'a Layout, name: &str) -> &'a (String, Range<usize>, Range<usize>) {
    l.entries.iter().find(|(n, _, _)| n == name).unwrap()
}

/// Rebuilds a valid container (checksums and alignment right) from the bundle's parts after
/// `edit`, so the damage `edit` does is the only one.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut BundleParts)) -> Vec<u8> {
    let b = Bundle::from_bytes(SharedBytes::copy_from(bytes), OpenOptions::default()).unwrap();
    let weights = b
        .weight_entries()
        .unwrap()
        .into_iter()
        .map(|w| WeightEntry { len: w.len() as u64, parts: vec![(0, w)] })
        .collect();
    let extra = b
        .manifest
        .entries
        .iter()
        .filter(|e| e.kind != "program" && e.kind != "weights")
        .map(|e| (e.name.clone(), e.kind.clone(), b.entry(&e.name).unwrap().as_slice().to_vec()))
        .collect();
    let mut parts = BundleParts { manifest: b.manifest.clone(), programs: b.programs().unwrap(), weights, extra };
    edit(&mut parts);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.kiln");
    write_bundle(&p, parts).unwrap();
    std::fs::read(p).unwrap()
}

/// Replaces every occurrence of `from` by `to` (same length) in the archive's bytes.
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut i = 0;
    let mut hits = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(hits > 0, "{} not found", String::from_utf8_lossy(from));
    out
}

#[test]
fn every_truncation_is_refused_naming_the_file_size() {
    let (bytes, x, _) = small_bundle();
    let l = layout(&bytes);
    for len in 0..bytes.len() {
        let err = load_and_run(&bytes[..len], &x).err().unwrap_or_else(|| panic!("truncated to {len} bytes: accepted"));
        assert!(err.contains(&format!("{len} bytes")), "truncated to {len} bytes: {err}");
    }
    // Through the CLI at every boundary: each header, each entry's data, the central directory.
    let mut cuts = vec![0, 1, 4, 21, 22, bytes.len() - 1, bytes.len() - 22, l.eocd.start];
    for (_, header, data) in &l.entries {
        cuts.extend([header.start, header.start + 10, data.start, (data.start + data.end) / 2, data.end]);
    }
    for (_, r) in &l.central {
        cuts.extend([r.start, r.start + 30]);
    }
    cuts.sort();
    cuts.dedup();
    for len in cuts.into_iter().filter(|&c| c < bytes.len()) {
        cli_refuses(&bytes[..len], &["bad.kiln", &format!("{len} bytes")], &format!("truncated to {len} bytes"));
    }
}

#[test]
fn byte_flips_anywhere_are_refused_by_name_or_harmless() {
    let (bytes, x, intact) = small_bundle();
    let l = layout(&bytes);
    let mut refused_in = std::collections::BTreeMap::<String, Vec<usize>>::new();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0xff;
        let region = if let Some((name, h, d)) = l.entries.iter().find(|(_, h, d)| h.contains(&i) || d.contains(&i)) {
            let in_data = d.contains(&i);
            if in_data {
                // Entry data is covered by its checksum (the manifest by parsing), so a flip there
                // is always refused, naming the entry.
                let err = load_and_run(&bad, &x).err().unwrap_or_else(|| panic!("flip at {i} in {name}: accepted"));
                assert!(err.contains(name.as_str()) || name == "kiln.json", "flip at {i} in {name}: {err}");
            }
            format!("{} of {name}", if h.contains(&i) { "local header" } else { "data" })
        } else if l.central.iter().any(|(_, r)| r.contains(&i)) {
            "central directory".to_string()
        } else if l.eocd.contains(&i) {
            "end of central directory".to_string()
        } else {
            "padding".to_string()
        };
        if refused_or_same(&bad, &x, &intact, &format!("flip at {i} ({region})")).is_some() {
            refused_in.entry(region).or_default().push(i);
        }
    }
    // Through the CLI: the first, middle and last refused flip of every region.
    assert!(refused_in.len() >= 2 * l.entries.len() + 2, "refusals only in {:?}", refused_in.keys());
    for (region, at) in &refused_in {
        for &i in [at[0], at[at.len() / 2], at[at.len() - 1]].iter() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xff;
            let expected = load_and_run(&bad, &x).unwrap_err();
            // The CLI prints the same cause (its first line, the CLI adds context around it).
            let cause = expected.lines().next().unwrap();
            cli_refuses(&bad, &[cause], &format!("flip at {i} ({region})"));
        }
    }
}

#[test]
fn renamed_duplicated_and_overlapping_entries_are_named() {
    let (bytes, x, _) = small_bundle();
    // Renamed, in the local header and the central directory alike.
    let renamed = replace_all(&bytes, b"program.bin", b"program.bim");
    let err = load_and_run(&renamed, &x).unwrap_err();
    assert!(err.contains("program.bin") && err.contains("missing"), "{err}");
    cli_refuses(&renamed, &["program.bin", "missing"], "renamed entry");

    // Duplicated: a second central directory record for program.bin.
    let l = layout(&bytes);
    let (_, cd) = l.central.iter().find(|(n, _)| n == "program.bin").unwrap().clone();
    let mut dup = bytes[..l.eocd.start].to_vec();
    dup.extend_from_slice(&bytes[cd.clone()]);
    let mut eocd = bytes[l.eocd.clone()].to_vec();
    for at in [8, 10] {
        let n = u16_at(&eocd, at) + 1;
        eocd[at..at + 2].copy_from_slice(&(n as u16).to_le_bytes());
    }
    let cd_size = u32_at(&eocd, 12) + cd.len();
    eocd[12..16].copy_from_slice(&(cd_size as u32).to_le_bytes());
    dup.extend_from_slice(&eocd);
    let err = load_and_run(&dup, &x).unwrap_err();
    assert!(err.contains("program.bin") && err.contains("twice"), "{err}");
    cli_refuses(&dup, &["program.bin", "twice"], "duplicated entry");

    // Overlapping: tokenizer.json holds a copy of program.bin (so its length and checksum match)
    // and its directory record is pointed at program.bin's local header: both name one range.
    let with_copy = rewrite(&bytes, |p| {
        let prog = prost::Message::encode_to_vec(&p.programs);
        p.extra.push(("tokenizer.json".into(), "tokenizer".into(), prog));
    });
    assert!(load_and_run(&with_copy, &x).is_ok());
    let l = layout(&with_copy);
    let program_header = range_of(&l, "program.bin").1.start;
    let (_, cd) = l.central.iter().find(|(n, _)| n == "tokenizer.json").unwrap();
    let mut overlap = with_copy.clone();
    overlap[cd.start + 42..cd.start + 46].copy_from_slice(&(program_header as u32).to_le_bytes());
    let err = load_and_run(&overlap, &x).unwrap_err();
    assert!(err.contains("tokenizer.json") && err.contains("overlap") && err.contains("program.bin"), "{err}");
    cli_refuses(&overlap, &["tokenizer.json", "overlap", "program.bin"], "overlapping entries");
}

/// An archive entry: name, data, how it is stored.
type ZipEntry<'a> = (&'a str, &'a [u8], zip::CompressionMethod);

fn zip_of(entries: &[ZipEntry]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, method) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default().compression_method(*method)).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn compressed_parent_relative_and_absolute_entries_are_named() {
    let (bytes, x, _) = small_bundle();
    let b = Bundle::from_bytes(SharedBytes::copy_from(&bytes), OpenOptions::default()).unwrap();
    let entry = |n: &str| b.entry(n).unwrap().as_slice().to_vec();
    let (manifest, program, weights) = (entry("kiln.json"), entry("program.bin"), entry("weights/00000.bin"));
    let stored = zip::CompressionMethod::Stored;
    let deflated = zip::CompressionMethod::Deflated;
    let cases: [(&str, Vec<ZipEntry>, &[&str]); 4] = [
        (
            "compressed",
            vec![
                ("program.bin", &program, deflated),
                ("weights/00000.bin", &weights, stored),
                ("kiln.json", &manifest, stored),
            ],
            &["program.bin", "compressed"],
        ),
        (
            "parent-relative",
            vec![("../../etc/passwd", b"x", stored), ("kiln.json", &manifest, stored)],
            &["../../etc/passwd"],
        ),
        (
            "absolute",
            vec![("/etc/passwd", b"x", stored), ("kiln.json", &manifest, stored)],
            &["/etc/passwd", "absolute"],
        ),
        ("no manifest", vec![("program.bin", &program, stored)], &["kiln.json"]),
    ];
    for (what, entries, needles) in cases {
        let z = zip_of(&entries);
        let err = load_and_run(&z, &x).unwrap_err();
        for n in needles {
            assert!(err.contains(n), "{what}: {err}");
        }
        cli_refuses(&z, needles, what);
    }
}

#[test]
fn a_manifest_that_disagrees_with_the_data_is_named() {
    let (bytes, x, _) = small_bundle();
    let b = Bundle::from_bytes(SharedBytes::copy_from(&bytes), OpenOptions::default()).unwrap();
    let prog_len = b.entry("program.bin").unwrap().len();
    // Size: the manifest's length of program.bin off by one (same number of digits, so the
    // manifest keeps its length and the archive stays well formed).
    let (from, to) = (format!("\"len\": {prog_len}"), format!("\"len\": {}", prog_len + 1));
    assert_eq!(from.len(), to.len());
    let bad = replace_all(&bytes, from.as_bytes(), to.as_bytes());
    let err = load_and_run(&bad, &x).unwrap_err();
    assert!(err.contains("program.bin") && err.contains(&prog_len.to_string()), "{err}");
    cli_refuses(&bad, &["program.bin", &format!("{}", prog_len + 1)], "manifest length");

    // Offsets: a weight reference past the end of its entry.
    let bad = rewrite(&bytes, |p| p.programs.programs[0].weights[0].offset = 1 << 20);
    let err = load_and_run(&bad, &x).unwrap_err();
    assert!(err.contains("'main'") && err.contains("weight 0") && err.contains("outside"), "{err}");
    cli_refuses(&bad, &["'main'", "weight 0", "outside"], "weight offset");

    // Shapes: the manifest's signature says the input has 5 features, the program 4.
    let bad = rewrite(&bytes, |p| p.manifest.entry_points[0].inputs[0].dims[1].value = Some(5));
    let err = load_and_run(&bad, &x).unwrap_err();
    assert!(err.contains("'main'") && err.contains("input 0") && err.contains("signature"), "{err}");
    cli_refuses(&bad, &["'main'", "input 0", "signature"], "manifest shape");

    // An entry point naming a program that does not exist.
    let bad = rewrite(&bytes, |p| p.manifest.entry_points[0].program = 7);
    cli_refuses(&bad, &["'main'", "program 7"], "program index");
}

#[test]
fn a_plan_that_fails_the_verifier_is_named() {
    let (bytes, _, _) = small_bundle();
    let programs = |p: &BundleParts| -> ProgramSet { p.programs.clone() };
    // Two arena values moved onto one byte range while both are live, and a buffer too small.
    let bad = rewrite(&bytes, |p| {
        let mut set = programs(p);
        let prog = &mut set.programs[0];
        let arena: Vec<usize> = (0..prog.values.len())
            .filter(|&i| prog.values[i].storage.as_ref().is_some_and(|s| s.kind == StorageKind::Arena as i32))
            .collect();
        assert!(arena.len() >= 2, "the tiny MLP has arena values");
        for &i in &arena {
            prog.values[i].storage.as_mut().unwrap().offset = 0;
        }
        p.programs = set;
    });
    cli_refuses(&bad, &["'main'", "fails verification", "share bytes"], "overlapping plan");
    let bad = rewrite(&bytes, |p| {
        p.programs.programs[0].buffers[0] = 64;
        p.manifest.entry_points[0].plan.buffers[0] = 64;
    });
    cli_refuses(&bad, &["'main'", "fails verification"], "short buffer");
}

#[test]
fn entry_points_may_share_a_program_and_a_missing_one_is_named() {
    let (bytes, x, intact) = small_bundle();
    // A second entry point on the same program: both load (prepared side by side) and agree.
    let shared = rewrite(&bytes, |p| {
        let mut ep = p.manifest.entry_points[0].clone();
        ep.name = "again".into();
        p.manifest.entry_points.push(ep);
    });
    let b = Bundle::from_bytes(SharedBytes::copy_from(&shared), OpenOptions::default()).unwrap();
    let loaded = LoadedBundle::from_bundle(b).unwrap();
    for name in ["main", "again"] {
        let out = Session::new(loaded.model(name, None).unwrap().clone()).run(&[TensorRef::from_tensor(&x)]).unwrap();
        assert_eq!(out[0].bytes(), intact[0].bytes(), "{name}");
    }
    // One naming a program that does not exist.
    let missing = rewrite(&bytes, |p| {
        let mut ep = p.manifest.entry_points[0].clone();
        ep.name = "ghost".into();
        ep.program = 7;
        p.manifest.entry_points.push(ep);
    });
    cli_refuses(&missing, &["entry point 'ghost' names program 7 of 1"], "missing program");
    // Two bad entry points: the first in manifest order is the one reported.
    let two_bad = rewrite(&bytes, |p| {
        p.programs.programs[0].buffers[0] = 64;
        let mut ep = p.manifest.entry_points[0].clone();
        ep.name = "second".into();
        p.manifest.entry_points[0].plan.buffers[0] = 64;
        ep.plan.buffers[0] = 64;
        p.manifest.entry_points.push(ep);
    });
    for _ in 0..5 {
        let err = load_and_run(&two_bad, &x).unwrap_err();
        assert!(err.contains("'main'") && err.contains("fails verification"), "{err}");
    }
}

#[test]
fn an_arena_larger_than_the_machine_is_refused_before_it_is_allocated() {
    let (bytes, _, _) = small_bundle();
    // The manifest's plan must agree with the program's.
    let bad = rewrite(&bytes, |p| p.programs.programs[0].buffers[0] += 64);
    cli_refuses(&bad, &["'main'", "plan"], "plan summary");
    // A consistent but huge plan (1 PiB): verifiable, but `run` refuses before allocating it.
    let huge: u64 = 1 << 50;
    let bad = rewrite(&bytes, |p| {
        p.programs.programs[0].buffers[0] = huge;
        p.manifest.entry_points[0].plan.buffers[0] = huge;
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.kiln");
    std::fs::write(&path, &bad).unwrap();
    let o = run_kiln(&["verify", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let npz = input_npz();
    let o = run_kiln(&["run", path.to_str().unwrap(), "--inputs", npz.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("'main'") && err.contains(&format!("arena of {huge} bytes")), "{err}");
}

#[test]
fn a_bundle_replaced_by_rename_keeps_running_and_no_mmap_survives_truncation() {
    let (bytes, x, intact) = small_bundle();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.kiln");
    std::fs::write(&path, &bytes).unwrap();
    let run = |l: &LoadedBundle| {
        Session::new(l.model("main", None).unwrap().clone()).run(&[TensorRef::from_tensor(&x)]).unwrap()
    };
    // Mapped, then a new compile renamed over the path: the old mapping still reads the old file.
    let mapped = LoadedBundle::open(&path, OpenOptions::default()).unwrap();
    let mut opts = CompileOptions::default();
    opts.dim_bounds.insert("batch".into(), 2);
    let src = ModelSource::resolve(&examples().join("tiny_mlp.onnx")).unwrap();
    compile_bundle(&src, &opts, &[TargetLimits::cpu()], &path).unwrap();
    assert_eq!(run(&mapped)[0].bytes(), intact[0].bytes());

    // Read into memory, then the file truncated to nothing: nothing the file does matters now.
    std::fs::write(&path, &bytes).unwrap();
    let in_memory =
        LoadedBundle::open(&path, OpenOptions { read_into_memory: true, ..OpenOptions::default() }).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_len(0).unwrap();
    assert_eq!(run(&in_memory)[0].bytes(), intact[0].bytes());

    // A bundle truncated before it is opened is refused by name, mapped or not.
    for no_mmap in [false, true] {
        let err = LoadedBundle::open(&path, OpenOptions { read_into_memory: no_mmap, ..OpenOptions::default() })
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("0 bytes"), "{err}");
    }
    let o = run_kiln(&["verify", "--no-mmap", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    std::fs::write(&path, &bytes).unwrap();
    let o = run_kiln(&["verify", "--no-mmap", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}
