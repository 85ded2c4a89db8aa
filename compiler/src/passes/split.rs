//! Splits constants larger than the target's largest buffer: a 2-D weight read by `Gather` along
//! axis 0 (an embedding table) or as the right operand of `MatMul` (a projection, the output head)
//! becomes column blocks, each consumer runs once per block, and a `Concat` along the last axis
//! reassembles its output. Every output element is computed exactly as before, so results are
//! bit-identical. The blocks are copied out of the weight only when the bundle is written.
//!
//! A graph output over the limit that such a split produces (an output head's logits, say) is
//! not reassembled in one buffer: its pieces stay separate and are concatenated only when the
//! output is handed to the caller.

use crate::error::CompileError;
use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::bytes::ByteOwner;
use kiln_formats::program::Attribute;
use kiln_formats::{AlignedBuf, Dim, SharedBytes};
use std::sync::{Arc, OnceLock};

/// A column block of a row-major matrix, copied on first read.
struct ColumnBlock {
    src: SharedBytes,
    rows: usize,
    row_bytes: usize,
    start: usize,
    len: usize,
    copy: OnceLock<AlignedBuf>,
}

impl ByteOwner for ColumnBlock {
    fn bytes(&self) -> &[u8] {
        self.copy
            .get_or_init(|| {
                let mut out = AlignedBuf::zeroed(self.rows * self.len);
                let src = self.src.as_slice();
                for (r, dst) in out.as_mut_slice().chunks_exact_mut(self.len.max(1)).enumerate().take(self.rows) {
                    let at = r * self.row_bytes + self.start;
                    dst.copy_from_slice(&src[at..at + self.len]);
                }
                out
            })
            .as_slice()
    }
}

/// Whether `name` is one this pass gives the pieces it makes: `W.cols{a}..{b}` for a column block
/// of weight `W`, `V.part{k}` for the piece of value `V` a block computes.
pub fn is_piece_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let part = name.rsplit_once(".part").is_some_and(|(_, k)| digits(k));
    let cols =
        name.rsplit_once(".cols").and_then(|(_, r)| r.split_once("..")).is_some_and(|(a, b)| digits(a) && digits(b));
    part || cols
}

/// What a split produced, for reports.
#[derive(Clone, Debug)]
pub struct Split {
    pub value: String,
    pub bytes: u64,
    pub blocks: usize,
}

/// Splits every constant over `limit` bytes; an error names a constant that cannot be split.
pub fn split_oversized(g: &mut Graph, limit: u64) -> Result<Vec<Split>, CompileError> {
    let mut report = Vec::new();
    let oversized: Vec<ValueId> = (0..g.values.len())
        .filter(|&v| g.values[v].constant.as_ref().is_some_and(|c| c.len() as u64 > limit))
        .filter(|&v| g.nodes.iter().any(|n| n.inputs.contains(&Some(v))))
        .collect();
    for w in oversized {
        report.push(split_one(g, w, limit, 1)?);
    }
    Ok(report)
}

/// Leaves graph outputs over `limit` (at the dims' upper bounds, given by `bytes`) as pieces:
/// a MatMul with a constant right operand is split into enough column blocks for each piece of
/// its output to fit, and the Concat joining the pieces is dropped. Outputs produced otherwise are
/// left alone (the planner then names them).
pub fn split_outputs(
    g: &mut Graph,
    limit: u64,
    bytes: &dyn Fn(&Value) -> Option<u64>,
) -> Result<Vec<Split>, CompileError> {
    let mut report = Vec::new();
    for out in g.outputs.clone() {
        let Some(size) = bytes(&g.values[out]).filter(|&s| s > limit) else { continue };
        if g.nodes.iter().any(|n| n.inputs.contains(&Some(out))) || g.outputs.iter().filter(|&&o| o == out).count() > 1
        {
            continue;
        }
        let Some(pi) = g.nodes.iter().position(|n| n.outputs.contains(&out)) else { continue };
        if g.nodes[pi].op == "MatMul" {
            let w = g.nodes[pi].inputs.get(1).copied().flatten();
            let Some(w) = w.filter(|&w| {
                g.values[w].constant.is_some() && g.values[w].shape.as_ref().is_some_and(|s| s.len() == 2)
            }) else {
                continue;
            };
            if g.nodes.iter().filter(|n| n.inputs.contains(&Some(w))).count() > 1 {
                continue;
            }
            report.push(split_one(g, w, limit, size.div_ceil(limit) as usize + 1)?);
        }
        let Some(pi) = g.nodes.iter().position(|n| n.outputs.contains(&out)) else { continue };
        let node = &g.nodes[pi];
        let rank = g.values[out].shape.as_ref().map_or(0, Vec::len);
        let last = node.attrs.iter().find(|a| a.name == "axis").is_some_and(|a| a.i == rank as i64 - 1 || a.i == -1);
        let pieces: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
        if node.op == "Concat"
            && last
            && rank > 0
            && pieces.iter().all(|&p| bytes(&g.values[p]).is_some_and(|b| b <= limit))
        {
            g.nodes.remove(pi);
            g.assembled.push((out, pieces, rank - 1));
        }
    }
    Ok(report)
}

/// Splits constant `w` into at least `min_blocks` column blocks, each within `limit`.
fn split_one(g: &mut Graph, w: ValueId, limit: u64, min_blocks: usize) -> Result<Split, CompileError> {
    let v = g.values[w].clone();
    let bytes = v.constant.clone().expect("only constants are split");
    let refuse = |why: String| {
        CompileError::Model(format!(
            "constant '{}' is {} bytes, over the target's largest buffer of {limit} bytes, and cannot be split: {why}",
            v.name,
            bytes.len()
        ))
    };
    let shape = v.known_shape().ok_or_else(|| refuse("its shape is not known".into()))?;
    let dtype = v.dtype.ok_or_else(|| refuse("its type is not known".into()))?;
    let [rows, cols] = shape[..] else {
        return Err(refuse(format!("only 2-D weights are split, this one has shape {shape:?}")));
    };
    let es = dtype.size();
    let col_limit = limit as usize / (rows * es).max(1);
    if col_limit == 0 {
        return Err(refuse(format!("a single column ({rows} rows) is already over the limit")));
    }
    let blocks = cols.div_ceil(col_limit).max(min_blocks).min(cols);
    let per = cols.div_ceil(blocks);
    let consumers: Vec<usize> = (0..g.nodes.len()).filter(|&i| g.nodes[i].inputs.contains(&Some(w))).collect();
    for &i in &consumers {
        let n = &g.nodes[i];
        let axis0 = n.attrs.iter().find(|a| a.name == "axis").is_none_or(|a| a.i == 0);
        let ok = match n.op.as_str() {
            "Gather" => n.inputs[0] == Some(w) && n.inputs.get(1) != Some(&Some(w)) && axis0,
            "MatMul" => n.inputs.get(1) == Some(&Some(w)) && n.inputs[0] != Some(w),
            _ => false,
        };
        if !ok {
            return Err(refuse(format!(
                "it is used by {} '{}', which kiln splits only as Gather(axis 0) data or MatMul's right operand",
                n.op, n.name
            )));
        }
    }
    let pieces: Vec<(ValueId, usize)> = (0..blocks)
        .map(|b| {
            let (start, width) = (b * per, per.min(cols - b * per));
            let owner = ColumnBlock {
                src: bytes.clone(),
                rows,
                row_bytes: cols * es,
                start: start * es,
                len: width * es,
                copy: OnceLock::new(),
            };
            let id = g.add_value(Value {
                name: format!("{}.cols{start}..{}", v.name, start + width),
                dtype: Some(dtype),
                shape: Some(vec![Dim::Known(rows as i64), Dim::Known(width as i64)]),
                constant: Some(SharedBytes::lazy(Arc::new(owner), rows * width * es)),
                sym_value: None,
            });
            (id, width)
        })
        .collect();
    // Rebuild consumers back to front so earlier indices stay valid.
    for &i in consumers.iter().rev() {
        let node = g.nodes[i].clone();
        let out = node.outputs[0];
        let out_shape = g.values[out].shape.clone().unwrap_or_default();
        let mut replacement: Vec<Node> = Vec::new();
        let mut parts = Vec::new();
        for (k, &(piece, width)) in pieces.iter().enumerate() {
            let mut shape = out_shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = Dim::Known(width as i64);
            }
            let part = g.add_value(Value {
                name: format!("{}.part{k}", g.values[out].name),
                dtype: g.values[out].dtype,
                shape: Some(shape),
                ..Default::default()
            });
            let mut n = node.clone();
            n.name = format!("{}.part{k}", node.name);
            n.inputs = node.inputs.iter().map(|&x| if x == Some(w) { Some(piece) } else { x }).collect();
            n.outputs = vec![part];
            replacement.push(n);
            parts.push(Some(part));
        }
        replacement.push(Node {
            name: format!("{}.concat", node.name),
            op: "Concat".into(),
            domain: String::new(),
            opset: *g.opsets.get("").unwrap_or(&13),
            attrs: vec![Attribute::int("axis", out_shape.len().saturating_sub(1) as i64)],
            inputs: parts,
            outputs: vec![out],
        });
        g.nodes.splice(i..=i, replacement);
    }
    Ok(Split { value: v.name.clone(), bytes: bytes.len() as u64, blocks })
}
