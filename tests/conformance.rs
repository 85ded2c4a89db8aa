//! ONNX backend node-test conformance: every case the `onnx` wheel ships under
//! `onnx/backend/test/data/node/<case>/` is compiled and run, and its outputs compared with the
//! expected ones (rtol 1e-3, atol 1e-7, as ONNX's own runner).
//!
//! Each case ends as one of
//! - passed: every data set's outputs match;
//! - failed: it compiled but ran wrong, errored, panicked, crashed or timed out;
//! - unsupported: an op has no kernel (`CompileError::Unsupported`), or a graph input/output has
//!   a type kiln does not support (strings, sequences, float8, ...).
//!
//! Cases run in worker processes (this same test binary, started again with
//! `KILN_CONFORMANCE_WORKER=1`) so that a case that aborts, overflows its stack or hangs costs one
//! case, not the run: a worker that crashes or exceeds the per-case time limit is killed and
//! replaced.
//!
//! `tests/conformance/expected_pass.txt` lists the cases that must pass; the test fails when one
//! of them does not. Newly passing cases are printed; `KILN_UPDATE_EXPECTED=1` rewrites the list.
//! `tests/conformance/known_failures.txt` documents cases of supported ops that are expected to
//! fail, with the reason.
//!
//! Environment:
//! - `KILN_ONNX_NODE_TESTS`: the `node` folder (default
//!   `$KILN_CACHE/onnx-node-tests-1.20.0/onnx/backend/test/data/node`, `KILN_CACHE` defaulting to
//!   `~/.cache/kiln`); fetch it with `scripts/fetch-onnx-tests.sh`.
//! - `KILN_SKIP_CONFORMANCE=1`: skip (with a message) when the data is missing.
//! - `KILN_UPDATE_EXPECTED=1`: rewrite `expected_pass.txt` with the cases that pass now.
//! - `KILN_CONFORMANCE_FILTER=a,b`: only cases whose name contains one of these substrings.
//! - `KILN_CONFORMANCE_JOBS=N`: worker processes (default: available parallelism).
//! - `KILN_CONFORMANCE_TIMEOUT=SECS`: per-case time limit (default 20).
//! - `KILN_CONFORMANCE_INPROCESS=1`: run the cases in this process, one after another, without
//!   time limit (for debuggers).
//! - `KILN_CONFORMANCE_VERBOSE=1`: also print every unsupported case with its reason.

use kiln_compiler::{CompileError, CompileOptions};
use kiln_formats::onnx::proto::type_proto;
use kiln_formats::tensor::read_i64;
use kiln_formats::{DType, FormatError, Tensor};
use kiln_runtime::{Model, Session, TensorRef};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TEST_NAME: &str = "onnx_node_conformance";
const ONNX_VERSION: &str = "1.20.0";
const WORKER_ENV: &str = "KILN_CONFORMANCE_WORKER";
/// Lines of the worker protocol start with this; anything else a worker prints is ignored.
const PROTO: &str = "@@kiln-conformance\t";
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-7;
const DEFAULT_TIMEOUT_SECS: u64 = 20;
/// Longest reason printed per failing case.
const REASON_CHARS: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Passed,
    Failed,
    Unsupported,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Unsupported => "unsupported",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [Status::Passed, Status::Failed, Status::Unsupported].into_iter().find(|st| st.as_str() == s)
    }
}

/// How one case ended.
#[derive(Clone, Debug)]
struct Outcome {
    status: Status,
    reason: String,
    elapsed: Duration,
}

fn failed(reason: impl Into<String>) -> (Status, String) {
    (Status::Failed, reason.into())
}

fn unsupported(reason: impl Into<String>) -> (Status, String) {
    (Status::Unsupported, reason.into())
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_ONNX_NODE_TESTS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln")))
        .unwrap_or_else(|| PathBuf::from(".cache/kiln"));
    cache.join(format!("onnx-node-tests-{ONNX_VERSION}")).join("onnx/backend/test/data/node")
}

// ---------------------------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------------------------

/// `input_3.pb` → 3; files that do not look like `{prefix}_N.pb` are `None`.
fn pb_index(file: &Path, prefix: &str) -> Option<usize> {
    let name = file.file_name()?.to_str()?;
    name.strip_prefix(prefix)?.strip_prefix('_')?.strip_suffix(".pb")?.parse().ok()
}

/// The `{prefix}_N.pb` files of a data set, in N order.
fn pb_files(set: &Path, prefix: &str) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(set)
        .map_err(|e| format!("cannot list {}: {e}", set.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| pb_index(&p, prefix).map(|i| (i, p)))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Reads one `.pb` tensor; a dtype kiln cannot hold makes the case unsupported.
fn read_pb(path: &Path) -> Result<(String, Tensor), (Status, String)> {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let bytes = std::fs::read(path).map_err(|e| failed(format!("cannot read {file}: {e}")))?;
    kiln_formats::onnx::read_tensor_proto(&bytes, &file).map_err(|e| match &e {
        FormatError::Tensor { reason, .. } if reason.starts_with("data type") => unsupported(format!("{file}: {e}")),
        _ => failed(format!("{file}: {e}")),
    })
}

/// ONNX's name for an element type code, for messages.
fn onnx_type_name(code: i32) -> String {
    let name = match code {
        17 => "FLOAT8E4M3FN",
        18 => "FLOAT8E4M3FNUZ",
        19 => "FLOAT8E5M2",
        20 => "FLOAT8E5M2FNUZ",
        21 => "UINT4",
        22 => "INT4",
        23 => "FLOAT4E2M1",
        24 => "FLOAT8E8M0",
        25 => "UINT2",
        26 => "INT2",
        _ => DType::onnx_name(code),
    };
    if name == "UNKNOWN" {
        format!("UNKNOWN ({code})")
    } else {
        name.to_string()
    }
}

/// Why a graph input or output's declared type is outside what kiln supports, if it is.
fn unsupported_type(what: &str, vi: &kiln_formats::onnx::proto::ValueInfoProto) -> Option<String> {
    let kind = match vi.type_.as_ref().and_then(|t| t.value.as_ref()) {
        // No type at all: left for the compiler to report.
        None => return None,
        Some(type_proto::Value::TensorType(t)) => {
            return DType::from_onnx_code(t.elem_type)
                .is_none()
                .then(|| format!("{what} '{}' has element type {}", vi.name, onnx_type_name(t.elem_type)))
        }
        Some(type_proto::Value::SequenceType(_)) => "a sequence",
        Some(type_proto::Value::MapType(_)) => "a map",
        Some(type_proto::Value::OptionalType(_)) => "an optional",
        Some(type_proto::Value::SparseTensorType(_)) => "a sparse tensor",
        Some(_) => "of an unknown kind",
    };
    Some(format!("{what} '{}' is {kind}", vi.name))
}

/// Compiles, loads and runs one case over all its data sets.
fn run_case(dir: &Path) -> (Status, String) {
    match try_case(dir) {
        Ok(()) => (Status::Passed, String::new()),
        Err(e) => e,
    }
}

fn try_case(dir: &Path) -> Result<(), (Status, String)> {
    let model_path = dir.join("model.onnx");
    if !model_path.is_file() {
        return Err(failed("no model.onnx"));
    }

    // Declared graph inputs (initializers excluded, as ONNX's runner feeds them) and outputs.
    let onnx = kiln_formats::onnx::load(&model_path).map_err(|e| failed(format!("load: {e}")))?;
    let graph = onnx.proto.graph.as_ref().expect("load checks the graph exists");
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let graph_inputs: Vec<&str> =
        graph.input.iter().filter(|vi| !inits.contains(vi.name.as_str())).map(|vi| vi.name.as_str()).collect();
    for vi in graph.input.iter().filter(|vi| !inits.contains(vi.name.as_str())) {
        if let Some(why) = unsupported_type("input", vi) {
            return Err(unsupported(why));
        }
    }
    for vi in &graph.output {
        if let Some(why) = unsupported_type("output", vi) {
            return Err(unsupported(why));
        }
    }
    let graph_outputs: Vec<String> = graph.output.iter().map(|vi| vi.name.clone()).collect();
    let graph_inputs: Vec<String> = graph_inputs.into_iter().map(String::from).collect();
    // Op types of the top-level graph that no kernel implements (subgraphs are not looked into).
    let mut no_kernel: Vec<String> = Vec::new();
    for n in &graph.node {
        let default_domain = matches!(n.domain.as_str(), "" | "ai.onnx");
        let op = if default_domain { n.op_type.clone() } else { format!("{}::{}", n.domain, n.op_type) };
        if !(default_domain && (n.op_type == "Constant" || kiln_runtime::ops::is_supported(&n.op_type)))
            && !no_kernel.contains(&op)
        {
            no_kernel.push(op);
        }
    }
    drop(onnx);

    let lowered = match kiln_compiler::compile_file(&model_path, &CompileOptions::default()) {
        Ok(l) => l,
        Err(CompileError::Unsupported(ops)) => return Err(unsupported(ops.join(", "))),
        // Some ops (If, Loop, Scan: subgraphs) are refused by the importer before the kernel
        // check runs; when the graph holds an op without a kernel, that is the real reason.
        Err(e) if !no_kernel.is_empty() => {
            return Err(unsupported(format!("op {} (no kernel; compile: {e})", no_kernel.join(", op "))))
        }
        Err(e) => return Err(failed(format!("compile: {e}"))),
    };
    let model = Model::new(lowered.program, &lowered.weights).map_err(|e| failed(format!("Model::new: {e}")))?;
    let input_names: Vec<String> = model.input_names().iter().map(|s| s.to_string()).collect();
    let output_names: Vec<String> = model.output_names().iter().map(|s| s.to_string()).collect();
    let mut session = Session::new(model);

    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| failed(format!("cannot list the case: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("test_data_set_"))
        })
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err(failed("no test_data_set_* folder"));
    }

    for set in &sets {
        let set_name = set.file_name().unwrap_or_default().to_string_lossy().to_string();
        let in_set = |r: (Status, String)| (r.0, format!("{set_name}: {}", r.1));

        // Inputs by name; an unnamed input_K.pb is the K-th declared graph input.
        let mut given: HashMap<String, Tensor> = HashMap::new();
        for (k, file) in pb_files(set, "input").map_err(failed)?.iter().enumerate() {
            let (name, t) = read_pb(file).map_err(in_set)?;
            let name = if name.is_empty() { graph_inputs.get(k).cloned().unwrap_or_default() } else { name };
            given.insert(name, t);
        }
        let mut inputs = Vec::with_capacity(input_names.len());
        for name in &input_names {
            let t = given.get(name).ok_or_else(|| {
                failed(format!(
                    "{set_name}: the model takes input '{name}', the data set has none (it has {:?})",
                    given.keys().collect::<BTreeSet<_>>()
                ))
            })?;
            inputs.push(TensorRef::from_tensor(t));
        }

        let got = session.run(&inputs).map_err(|e| failed(format!("{set_name}: run: {e}")))?;
        if got.len() != output_names.len() {
            return Err(failed(format!(
                "{set_name}: run returned {} outputs for {} output names",
                got.len(),
                output_names.len()
            )));
        }

        let expected = pb_files(set, "output").map_err(failed)?;
        if expected.len() != output_names.len() {
            return Err(failed(format!(
                "{set_name}: the data set has {} outputs, the compiled model {} ({})",
                expected.len(),
                output_names.len(),
                output_names.join(", ")
            )));
        }
        for (k, file) in expected.iter().enumerate() {
            let (name, want) = read_pb(file).map_err(in_set)?;
            let name = if name.is_empty() { graph_outputs.get(k).cloned().unwrap_or_default() } else { name };
            let idx = output_names.iter().position(|n| *n == name).unwrap_or(k);
            compare(&output_names[idx], &got[idx], &want).map_err(|m| failed(format!("{set_name}: {m}")))?;
        }
    }
    Ok(())
}

/// Row-major flat index → multi-index, for messages.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (a, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[a] = i % d;
            i /= d;
        }
    }
    idx
}

/// Exact dtype and shape; floats within `ATOL + RTOL * |expected|` (NaN equals NaN, infinities
/// must match); integers and bools exactly.
fn compare(name: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype != want.dtype {
        return Err(format!("output '{name}' is {}, expected {}", got.dtype, want.dtype));
    }
    if got.shape != want.shape {
        return Err(format!("output '{name}' has shape {:?}, expected {:?}", got.shape, want.shape));
    }
    let n = want.numel();
    let mut bad = 0usize;
    let mut first: Option<(usize, String, String)> = None;
    let mut worst = 0f64;
    if want.dtype.is_float() {
        for i in 0..n {
            let (g, e) = (got.get_f64(i), want.get_f64(i));
            let ok = g == e || (g.is_nan() && e.is_nan()) || (g - e).abs() <= ATOL + RTOL * e.abs();
            if !ok {
                bad += 1;
                let err = (g - e).abs();
                if err.is_nan() || err > worst {
                    worst = if err.is_nan() { f64::INFINITY } else { err };
                }
                first.get_or_insert((i, format!("{g:e}"), format!("{e:e}")));
            }
        }
    } else {
        for i in 0..n {
            let (g, e) = if want.dtype == DType::Bool {
                let (g, e) = (got.bytes()[i] != 0, want.bytes()[i] != 0);
                (i64::from(g), i64::from(e))
            } else {
                let g = read_i64(got.dtype, got.bytes(), i).unwrap_or(i64::MIN);
                let e = read_i64(want.dtype, want.bytes(), i).unwrap_or(i64::MIN);
                (g, e)
            };
            if g != e {
                bad += 1;
                first.get_or_insert((i, g.to_string(), e.to_string()));
            }
        }
    }
    match first {
        None => Ok(()),
        Some((i, g, e)) => {
            let worst = if want.dtype.is_float() { format!(", largest error {worst:e}") } else { String::new() };
            Err(format!(
                "output '{name}' ({} {:?}): {bad} of {n} elements differ{worst}; first at {:?}: got {g}, expected {e}",
                want.dtype,
                want.shape,
                unravel(i, &want.shape)
            ))
        }
    }
}

/// The last panic's message and location, captured by the hook [`run_caught`] installs.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Runs a case, turning a panic into a failure.
fn run_caught(dir: &Path) -> Outcome {
    let start = Instant::now();
    *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let (status, reason) = match panic::catch_unwind(AssertUnwindSafe(|| run_case(dir))) {
        Ok(r) => r,
        Err(payload) => {
            let msg = LAST_PANIC
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            failed(format!("panic: {msg}"))
        }
    };
    Outcome { status, reason, elapsed: start.elapsed() }
}

/// Records panics quietly (the message becomes the case's reason) instead of printing them.
fn install_quiet_panic_hook() -> Box<dyn Fn(&panic::PanicHookInfo<'_>) + Sync + Send + 'static> {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
    }));
    previous
}

/// What makes a case unsupported, for counting: each op without a kernel (`op Foo`), or the
/// unsupported type with the value's name left out (`input has element type STRING`).
fn reason_keys(reason: &str) -> Vec<String> {
    if reason.starts_with("op ") {
        // "op A (opset 13) (node 'x'), op B ..." and "op A, op B (no kernel; compile: ...)".
        reason
            .split(", ")
            .filter(|item| item.starts_with("op "))
            .map(|item| item.split(" (").next().unwrap_or(item).to_string())
            .collect()
    } else if let (Some(kind), Some(rest)) = (reason.split(' ').next(), reason.split_once("' ")) {
        vec![format!("{kind} {}", rest.1)]
    } else {
        vec![reason.to_string()]
    }
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c == '\n' || c == '\t' || c == '\r' { ' ' } else { c }).collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

// ---------------------------------------------------------------------------------------------
// Worker processes
// ---------------------------------------------------------------------------------------------

/// Worker mode: reads case folders from stdin, one a line, and answers each with a protocol line
/// `PROTO case \t status \t micros \t reason`.
fn worker_main() {
    let _ = install_quiet_panic_hook();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let dir = PathBuf::from(line.trim_end());
        let case = dir.file_name().unwrap_or_default().to_string_lossy().to_string();
        let o = run_caught(&dir);
        let msg = format!("{PROTO}{case}\t{}\t{}\t{}\n", o.status.as_str(), o.elapsed.as_micros(), one_line(&o.reason));
        if out.write_all(msg.as_bytes()).and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}

enum Msg {
    Done { slot: usize, gen: u64, case: String, outcome: Outcome },
    Exited { slot: usize, gen: u64 },
}

struct Worker {
    gen: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr_tail: Arc<Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    /// The case it is running and since when.
    busy: Option<(String, Instant)>,
}

fn spawn_worker(slot: usize, gen: u64, tx: &mpsc::Sender<Msg>) -> Worker {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start a conformance worker process");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let stdin = child.stdin.take();

    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may have printed "test NAME ... " on the same line before it.
            let Some(at) = line.find(PROTO) else {
                continue;
            };
            let rest = &line[at + PROTO.len()..];
            let mut f = rest.splitn(4, '\t');
            let (Some(case), Some(status), Some(micros), reason) = (f.next(), f.next(), f.next(), f.next()) else {
                continue;
            };
            let outcome = Outcome {
                status: Status::parse(status).unwrap_or(Status::Failed),
                reason: reason.unwrap_or_default().to_string(),
                elapsed: Duration::from_micros(micros.parse().unwrap_or(0)),
            };
            let case = case.to_string();
            if tx.send(Msg::Done { slot, gen, case, outcome }).is_err() {
                return;
            }
        }
        let _ = tx.send(Msg::Exited { slot, gen });
    });

    // Keep the end of what the worker writes to stderr, to explain a crash.
    let stderr_tail = Arc::new(Mutex::new(String::new()));
    let tail = stderr_tail.clone();
    let stderr_thread = std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            t.push_str(&String::from_utf8_lossy(&buf[..n]));
            if t.len() > 4000 {
                let cut = t.len() - 2000;
                let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(t.len());
                t.drain(..cut);
            }
        }
    });
    Worker { gen, child, stdin, stderr_tail, stderr_thread: Some(stderr_thread), busy: None }
}

/// Runs the cases on `jobs` worker processes with a per-case time limit.
fn run_in_workers(cases: &[PathBuf], jobs: usize, timeout: Duration) -> BTreeMap<String, Outcome> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut queue: VecDeque<&PathBuf> = cases.iter().collect();
    let mut results: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut next_gen = 0u64;
    let mut workers: Vec<Option<Worker>> = (0..jobs.min(cases.len()).max(1)).map(|_| None).collect();
    let name_of = |p: &Path| p.file_name().unwrap_or_default().to_string_lossy().to_string();

    while results.len() < cases.len() {
        // Give idle workers work, starting workers as needed.
        for (slot, w) in workers.iter_mut().enumerate() {
            if queue.is_empty() {
                break;
            }
            if w.as_ref().is_some_and(|w| w.busy.is_some()) {
                continue;
            }
            if w.is_none() {
                next_gen += 1;
                *w = Some(spawn_worker(slot, next_gen, &tx));
            }
            let w = w.as_mut().expect("just started");
            let dir = queue.pop_front().expect("not empty");
            w.busy = Some((name_of(dir), Instant::now()));
            if let Some(stdin) = w.stdin.as_mut() {
                // A worker that died is noticed when its stdout closes.
                let _ = writeln!(stdin, "{}", dir.display()).and_then(|_| stdin.flush());
            }
        }

        let next_deadline = workers.iter().flatten().filter_map(|w| w.busy.as_ref().map(|(_, t)| *t + timeout)).min();
        let wait = next_deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        match rx.recv_timeout(wait) {
            Ok(Msg::Done { slot, gen, case, outcome }) => {
                if let Some(w) = workers[slot].as_mut().filter(|w| w.gen == gen) {
                    if w.busy.as_ref().is_some_and(|(c, _)| *c == case) {
                        w.busy = None;
                        results.insert(case, outcome);
                    }
                }
            }
            Ok(Msg::Exited { slot, gen }) => {
                if workers[slot].as_ref().is_some_and(|w| w.gen == gen) {
                    let mut w = workers[slot].take().expect("checked");
                    drop(w.stdin.take());
                    let status = w.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    if let Some(t) = w.stderr_thread.take() {
                        let _ = t.join();
                    }
                    if let Some((case, start)) = w.busy.take() {
                        let tail = w.stderr_tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let tail = one_line(tail.trim());
                        let tail: String = {
                            let n = tail.chars().count();
                            tail.chars().skip(n.saturating_sub(300)).collect()
                        };
                        results.insert(
                            case,
                            Outcome {
                                status: Status::Failed,
                                reason: if tail.is_empty() {
                                    format!("worker crashed ({status})")
                                } else {
                                    format!("worker crashed ({status}): {tail}")
                                },
                                elapsed: start.elapsed(),
                            },
                        );
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("this thread holds a sender"),
        }

        // Kill workers whose case ran out of time.
        for w in workers.iter_mut() {
            let expired = w.as_ref().and_then(|w| w.busy.as_ref()).is_some_and(|(_, t)| t.elapsed() > timeout);
            if expired {
                let mut dead = w.take().expect("checked");
                let _ = dead.child.kill();
                let _ = dead.child.wait();
                let (case, start) = dead.busy.take().expect("checked");
                results.insert(
                    case,
                    Outcome {
                        status: Status::Failed,
                        reason: format!("timeout (over {} s)", timeout.as_secs_f64()),
                        elapsed: start.elapsed(),
                    },
                );
            }
        }
    }

    for mut w in workers.into_iter().flatten() {
        drop(w.stdin.take());
        let _ = w.child.wait();
    }
    results
}

fn run_in_process(cases: &[PathBuf]) -> BTreeMap<String, Outcome> {
    let previous = install_quiet_panic_hook();
    let results = cases
        .iter()
        .map(|dir| {
            let case = dir.file_name().unwrap_or_default().to_string_lossy().to_string();
            (case, run_caught(dir))
        })
        .collect();
    panic::set_hook(previous);
    results
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

fn read_list(path: &Path) -> Vec<(String, String)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((case, reason)) => (case.to_string(), reason.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// Writes straight to the process's stdout/stderr, past libtest's capture, so the summary shows
/// in a plain `cargo test` too.
fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

fn err(s: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(s.as_bytes());
    let _ = e.flush();
}

#[test]
fn onnx_node_conformance() {
    if std::env::var_os(WORKER_ENV).is_some() {
        worker_main();
        return;
    }

    let dir = data_dir();
    if !dir.is_dir() {
        let msg = format!(
            "the ONNX node tests are not at {}; run scripts/fetch-onnx-tests.sh \
             (or set KILN_ONNX_NODE_TESTS, or KILN_SKIP_CONFORMANCE=1 to skip)",
            dir.display()
        );
        if env_flag("KILN_SKIP_CONFORMANCE") {
            out(&format!("conformance: skipped: {msg}\n"));
            return;
        }
        panic!("{msg}");
    }

    let filters: Vec<String> = std::env::var("KILN_CONFORMANCE_FILTER")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let selected = |case: &str| filters.is_empty() || filters.iter().any(|f| case.contains(f.as_str()));

    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| selected(&p.file_name().unwrap_or_default().to_string_lossy()))
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty() || !filters.is_empty(),
        "no test cases under {}; run scripts/fetch-onnx-tests.sh again",
        dir.display()
    );

    let jobs = env_num("KILN_CONFORMANCE_JOBS")
        .map(|n| n.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let timeout = Duration::from_secs(env_num("KILN_CONFORMANCE_TIMEOUT").unwrap_or(DEFAULT_TIMEOUT_SECS));
    let start = Instant::now();
    let results = if env_flag("KILN_CONFORMANCE_INPROCESS") {
        run_in_process(&cases)
    } else {
        run_in_workers(&cases, jobs, timeout)
    };
    let wall = start.elapsed();

    let expected_path = manifest_path("tests/conformance/expected_pass.txt");
    let known_path = manifest_path("tests/conformance/known_failures.txt");
    let expected: BTreeSet<String> = read_list(&expected_path).into_iter().map(|(c, _)| c).collect();
    let known: BTreeMap<String, String> = read_list(&known_path).into_iter().collect();

    // Per-case lines on stderr: every failure, and unsupported ones when asked.
    let verbose = env_flag("KILN_CONFORMANCE_VERBOSE");
    let mut missing_ops: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexplained = 0usize;
    for (case, o) in &results {
        match o.status {
            Status::Passed => {}
            Status::Failed => {
                let tag = if known.contains_key(case) {
                    " [known]"
                } else {
                    unexplained += 1;
                    ""
                };
                err(&format!("FAIL{tag} {case}: {}\n", truncate(&one_line(&o.reason), REASON_CHARS)));
            }
            Status::Unsupported => {
                for key in reason_keys(&o.reason) {
                    *missing_ops.entry(key).or_default() += 1;
                }
                if verbose {
                    err(&format!("unsupported {case}: {}\n", truncate(&one_line(&o.reason), REASON_CHARS)));
                }
            }
        }
    }

    let count = |s: Status| results.values().filter(|o| o.status == s).count();
    let (passed, failed_n, unsupported_n) = (count(Status::Passed), count(Status::Failed), count(Status::Unsupported));

    // What keeps most cases unsupported, and where the time went.
    let mut top: Vec<(&String, &usize)> = missing_ops.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if !top.is_empty() {
        let list: Vec<String> = top.iter().take(20).map(|(k, n)| format!("{k} ×{n}")).collect();
        err(&format!("unsupported, most common reasons: {}\n", list.join("; ")));
    }
    let mut slow: Vec<(&String, &Outcome)> = results.iter().collect();
    slow.sort_by_key(|(_, o)| std::cmp::Reverse(o.elapsed));
    let slow: Vec<String> = slow.iter().take(5).map(|(c, o)| format!("{c} {:.2} s", o.elapsed.as_secs_f64())).collect();
    err(&format!(
        "conformance ran {} cases in {:.1} s ({}); slowest: {}\n",
        results.len(),
        wall.as_secs_f64(),
        if env_flag("KILN_CONFORMANCE_INPROCESS") {
            "in process".to_string()
        } else {
            format!("{jobs} worker processes")
        },
        slow.join(", ")
    ));
    if failed_n > 0 {
        err(&format!(
            "{failed_n} failed: {} listed in tests/conformance/known_failures.txt, {unexplained} not\n",
            failed_n - unexplained
        ));
    }

    // A table of every case, for tools and for diffing two runs.
    let table_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-results.tsv");
    let mut table = String::from("case\tstatus\tmillis\treason\n");
    for (case, o) in &results {
        table.push_str(&format!("{case}\t{}\t{}\t{}\n", o.status.as_str(), o.elapsed.as_millis(), one_line(&o.reason)));
    }
    if std::fs::write(&table_path, table).is_ok() {
        err(&format!("per-case results: {}\n", table_path.display()));
    }

    let passing: BTreeSet<String> =
        results.iter().filter(|(_, o)| o.status == Status::Passed).map(|(c, _)| c.clone()).collect();
    let newly: Vec<&String> = passing.iter().filter(|c| !expected.contains(*c)).collect();
    let regressed: Vec<&String> = expected.iter().filter(|c| selected(c) && !passing.contains(*c)).collect();
    let stale_known: Vec<&String> = known.keys().filter(|c| passing.contains(*c)).collect();

    for c in &newly {
        out(&format!("newly passing (not in expected_pass.txt): {c}\n"));
    }
    for c in &stale_known {
        out(&format!("passes but is listed in known_failures.txt: {c}\n"));
    }
    out(&format!(
        "conformance: {passed} passed, {failed_n} failed, {unsupported_n} unsupported ({} total)\n",
        results.len()
    ));

    if env_flag("KILN_UPDATE_EXPECTED") {
        // Cases outside the filter keep their entries.
        let mut list: BTreeSet<String> = expected.iter().filter(|c| !selected(c)).cloned().collect();
        list.extend(passing.iter().cloned());
        let text: String = list.iter().map(|c| format!("{c}\n")).collect();
        std::fs::write(&expected_path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", expected_path.display()));
        out(&format!("wrote {} cases to {}\n", list.len(), expected_path.display()));
        return;
    }

    if !regressed.is_empty() {
        let lines: Vec<String> = regressed
            .iter()
            .map(|c| match results.get(*c) {
                Some(o) => format!("  {c}: {} {}", o.status.as_str(), truncate(&one_line(&o.reason), REASON_CHARS)),
                None => format!("  {c}: no such case in {}", dir.display()),
            })
            .collect();
        panic!(
            "{} case(s) in tests/conformance/expected_pass.txt do not pass:\n{}\n\
             (fix them, or if the change is intended, rerun with KILN_UPDATE_EXPECTED=1)",
            regressed.len(),
            lines.join("\n")
        );
    }
}
