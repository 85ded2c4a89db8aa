//! The plan verifier: short, independent of the planner, and run both at compile time and at
//! load. It is what makes the executor's unchecked arena access sound: every arena value is
//! aligned, inside its buffer, within the target's limit, large enough for its bounded shape, and
//! shares no byte with any value live at the same step.

use kiln_formats::program::{Program, StorageKind, NO_VALUE};
use kiln_formats::DType;

/// Why a plan was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    #[error("value '{value}': {reason}")]
    Value { value: String, reason: String },
    #[error("arena buffer {buffer} is {size} bytes, over the target's limit of {limit}")]
    BufferLimit { buffer: usize, size: u64, limit: u64 },
    #[error("values '{a}' and '{b}' are live at the same step (step {step}) and share bytes {start}..{end} of arena buffer {buffer}")]
    Overlap { a: String, b: String, step: usize, buffer: usize, start: u64, end: u64 },
    #[error("invalid plan: {0}")]
    Plan(String),
}

struct Placed {
    slot: usize,
    buffer: usize,
    start: u64,
    end: u64,
    first: usize,
    last: usize,
}

/// Checks the arena plan of `p`.
pub fn verify(p: &Program) -> Result<(), VerifyError> {
    let n = p.values.len();
    let val = |i: usize, reason: String| VerifyError::Value { value: p.values[i].name.clone(), reason };
    if p.max_buffer > 0 {
        if let Some((b, &size)) = p.buffers.iter().enumerate().find(|(_, &s)| s > p.max_buffer) {
            return Err(VerifyError::BufferLimit { buffer: b, size, limit: p.max_buffer });
        }
    }
    // Views read and extend the life of the value that owns their bytes.
    let root: Vec<usize> = (0..n)
        .map(|i| {
            let mut r = i;
            for _ in 0..n {
                match &p.values[r].storage {
                    Some(s) if s.kind == StorageKind::Alias as i32 && (s.index as usize) < n => r = s.index as usize,
                    _ => break,
                }
            }
            r
        })
        .collect();
    let end = p.steps.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    let mut touch = |slot: usize, step: usize| {
        let r = root[slot];
        first[r] = first[r].min(step);
        last[r] = last[r].max(step);
    };
    for &i in &p.inputs {
        if (i as usize) < n {
            touch(i as usize, 0);
        }
    }
    for (s, step) in p.steps.iter().enumerate() {
        for &i in step.inputs.iter().chain(&step.outputs) {
            if i != NO_VALUE && (i as usize) < n {
                touch(i as usize, s);
            }
        }
    }
    for i in 0..p.outputs.len() {
        for o in p.output_slots(i) {
            if (o as usize) < n {
                touch(o as usize, end);
            }
        }
    }

    let mut placed = Vec::new();
    for (i, v) in p.values.iter().enumerate() {
        let Some(s) = v.storage.as_ref().filter(|s| s.kind == StorageKind::Arena as i32) else {
            continue;
        };
        let buffer = s.index as usize;
        let size = *p.buffers.get(buffer).ok_or_else(|| val(i, format!("arena buffer {buffer} does not exist")))?;
        if p.alignment == 0 || s.offset % p.alignment != 0 {
            return Err(val(i, format!("offset {} is not a multiple of the alignment {}", s.offset, p.alignment)));
        }
        let stop = s.offset.checked_add(s.capacity).filter(|&e| e <= size);
        let stop = stop.ok_or_else(|| {
            val(
                i,
                format!(
                    "bytes {}..{} overrun buffer {buffer} ({size} bytes)",
                    s.offset,
                    s.offset.saturating_add(s.capacity)
                ),
            )
        })?;
        let needed = bounded_bytes(v)
            .ok_or_else(|| val(i, "has an unbounded or invalid dim but is placed in the arena".into()))?;
        if s.capacity < needed {
            return Err(val(i, format!("reserves {} bytes but its shape needs up to {needed}", s.capacity)));
        }
        if first[i] != usize::MAX {
            placed.push(Placed { slot: i, buffer, start: s.offset, end: stop, first: first[i], last: last[i] });
        }
    }
    let in_place = in_place_pairs(p, &root, &first, &last)?;
    placed.sort_by_key(|t| (t.buffer, t.start));
    for (k, a) in placed.iter().enumerate() {
        for b in placed[k + 1..].iter().take_while(|b| b.buffer == a.buffer && b.start < a.end) {
            let pair = (a.slot.min(b.slot), a.slot.max(b.slot));
            if in_place.contains(&pair) {
                continue;
            }
            if a.first <= b.last && b.first <= a.last && a.start < a.end && b.start < b.end {
                return Err(VerifyError::Overlap {
                    a: p.values[a.slot].name.clone(),
                    b: p.values[b.slot].name.clone(),
                    step: a.first.max(b.first),
                    buffer: a.buffer,
                    start: b.start,
                    end: a.end.min(b.end),
                });
            }
        }
    }
    Ok(())
}

/// The (smaller, larger) slot pairs of in-place steps, each checked: the output overwrites an
/// arena input that dies at that step, in exactly the input's range, for an op that allows it.
/// Such a pair shares its bytes only at that step, which the overlap check then permits.
fn in_place_pairs(
    p: &Program,
    root: &[usize],
    first: &[usize],
    last: &[usize],
) -> Result<Vec<(usize, usize)>, VerifyError> {
    let mut pairs = Vec::new();
    for (s, step) in p.steps.iter().enumerate() {
        if step.in_place == 0 {
            continue;
        }
        let bad = |reason: String| {
            VerifyError::Plan(format!("step {s} ({} '{}') runs in place but {reason}", step.op, step.name))
        };
        if !crate::ops::in_place_capable(&step.op, &step.domain) {
            return Err(bad("its op cannot write over an input".into()));
        }
        let (Some(x), [o]) = (step.in_place_input(), step.outputs.as_slice()) else {
            return Err(bad(format!(
                "input {} of {} and its one output do not exist",
                step.in_place - 1,
                step.inputs.len()
            )));
        };
        let (x, o) = (x as usize, *o as usize);
        if x >= root.len() || o >= root.len() || root[x] != x || root[o] != o {
            return Err(bad("the input or output is a view or out of range".into()));
        }
        let arena = |i: usize| p.values[i].storage.as_ref().filter(|st| st.kind == StorageKind::Arena as i32);
        let (Some(xs), Some(os)) = (arena(x), arena(o)) else {
            return Err(bad("the input or output is not in the arena".into()));
        };
        if (xs.index, xs.offset, xs.capacity) != (os.index, os.offset, os.capacity) {
            return Err(bad(format!("'{}' and '{}' do not occupy the same bytes", p.values[x].name, p.values[o].name)));
        }
        if last[x] != s || first[o] != s {
            return Err(bad(format!(
                "'{}' is still read after it (last at step {}) or '{}' is written before it",
                p.values[x].name, last[x], p.values[o].name
            )));
        }
        if p.values[x].dtype != p.values[o].dtype || p.values[x].dims != p.values[o].dims {
            return Err(bad(format!("'{}' and '{}' differ in dtype or shape", p.values[x].name, p.values[o].name)));
        }
        pairs.push((x.min(o), x.max(o)));
    }
    Ok(pairs)
}

/// Bytes of a value at the upper bounds recorded in its dims.
pub fn bounded_bytes(v: &kiln_formats::program::ValueInfo) -> Option<u64> {
    let dtype = DType::from_onnx_code(v.dtype)?;
    v.dims.iter().try_fold(dtype.size() as u64, |acc, d| u64::try_from(d.value).ok().and_then(|x| acc.checked_mul(x)))
}
