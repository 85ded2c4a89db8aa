//! Follows shape arithmetic symbolically: the elements of `Shape` outputs and of what Gather,
//! Slice, Concat, Unsqueeze, Cast and integer arithmetic make of them. TorchScript exports compute
//! every Reshape target this way; with these values known, the targets become symbolic shapes
//! (or constants, which constant folding then removes).

use super::infer::value_dims;
use crate::ir::{Graph, Node};
use kiln_formats::program::AttrKind;
use kiln_formats::{DType, Dim};

/// Sets `sym_value` on the outputs of node `ni` when it can be derived.
pub fn propagate(g: &mut Graph, ni: usize) {
    let node = &g.nodes[ni];
    let Some(&out) = node.outputs.first() else {
        return;
    };
    if !g.values[out].dtype.is_some_and(|d| d.is_int() || d == DType::Bool) {
        return;
    }
    let input = |k: usize| node.inputs.get(k).copied().flatten().and_then(|id| value_dims(&g.values[id]));
    let result = match node.op.as_str() {
        "Shape" => node.inputs[0].and_then(|id| g.values[id].shape.clone()).map(|s| {
            let r = s.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(int_attr(node, "start").unwrap_or(0));
            let end = clamp(int_attr(node, "end").unwrap_or(r));
            s[start..end.max(start)].to_vec()
        }),
        "Size" => node.inputs[0].and_then(|id| g.values[id].shape.clone()).map(|s| vec![Dim::product(&s)]),
        "Identity" | "Cast" | "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" => input(0),
        "Concat" => node
            .inputs
            .iter()
            .map(|i| i.and_then(|id| value_dims(&g.values[id])))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        "Gather" if int_attr(node, "axis").unwrap_or(0) == 0 => input(0).zip(input(1)).and_then(|(data, idx)| {
            idx.iter()
                .map(|i| {
                    let i = i.known()?;
                    let i = if i < 0 { i + data.len() as i64 } else { i };
                    data.get(usize::try_from(i).ok()?).cloned()
                })
                .collect()
        }),
        "Slice" if node.opset >= 10 => input(0).zip(input(1)).zip(input(2)).and_then(|((data, starts), ends)| {
            let axes = input(3);
            let steps = input(4);
            if starts.len() != 1
                || axes.as_ref().is_some_and(|a| a.len() != 1 || a[0].known().is_some_and(|x| x != 0 && x != -1))
            {
                return None;
            }
            slice_1d(&data, starts[0].known()?, ends[0].known()?, steps.map_or(Some(1), |s| s.first()?.known())?)
        }),
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" => input(0).zip(input(1)).and_then(|(a, b)| {
            broadcast_pair(&a, &b, |x, y| match node.op.as_str() {
                "Add" => Some(x.add(y)),
                "Sub" => Some(x.sub(y)),
                "Mul" => Some(x.mul(y)),
                // Truncating and floor division agree on the non-negative sizes seen here.
                "Div" => x.floor_div(y),
                "Max" => Some(x.maximum(y)),
                _ => Some(x.minimum(y)),
            })
        }),
        "Equal" => input(0).zip(input(1)).and_then(|(a, b)| {
            broadcast_pair(&a, &b, |x, y| match (x.known(), y.known()) {
                _ if x == y => Some(Dim::Known(1)),
                (Some(p), Some(q)) => Some(Dim::Known(i64::from(p == q))),
                // A symbolic size is never negative: it differs from the -1 Reshape uses for "infer".
                (None, Some(q)) | (Some(q), None) if q < 0 => Some(Dim::Known(0)),
                _ => None,
            })
        }),
        "Where" => input(0).zip(input(1)).zip(input(2)).and_then(|((c, x), y)| {
            let n = c.len().max(x.len()).max(y.len());
            let at = |v: &[Dim], i: usize| if v.len() == 1 { v.first().cloned() } else { v.get(i).cloned() };
            (0..n).map(|i| if at(&c, i)?.known()? != 0 { at(&x, i) } else { at(&y, i) }).collect()
        }),
        _ => None,
    };
    if let Some(v) = result {
        g.values[out].sym_value = Some(v);
    }
}

/// Elementwise `f` over two value lists of equal length or one of length 1.
fn broadcast_pair(a: &[Dim], b: &[Dim], f: impl Fn(&Dim, &Dim) -> Option<Dim>) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    if (a.len() != n && a.len() != 1) || (b.len() != n && b.len() != 1) {
        return None;
    }
    (0..n).map(|i| f(&a[if a.len() == 1 { 0 } else { i }], &b[if b.len() == 1 { 0 } else { i }])).collect()
}

fn int_attr(node: &Node, name: &str) -> Option<i64> {
    node.attrs.iter().find(|a| a.name == name && a.kind == AttrKind::Int as i32).map(|a| a.i)
}

fn slice_1d(data: &[Dim], start: i64, end: i64, step: i64) -> Option<Vec<Dim>> {
    if step == 0 {
        return None;
    }
    let n = data.len() as i64;
    let norm = |v: i64, lo: i64, hi: i64| (if v < 0 { v + n } else { v }).clamp(lo, hi);
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, e) = (norm(start, 0, n), norm(end, 0, n));
        while i < e {
            out.push(data[i as usize].clone());
            i += step;
        }
    } else {
        let (mut i, e) = (norm(start, -1, n - 1), norm(end, -1, n - 1));
        while i > e {
            out.push(data[i as usize].clone());
            i += step;
        }
    }
    Some(out)
}
