//! RMS normalisation spelled out in elementary ops becomes one `RMSNormalization` (opset 23).
//!
//! Exporters of Llama-style models write `x / sqrt(mean(x²) + eps) · w` as six or seven nodes:
//! `Mul(x, x)` or `Pow(x, 2)`, `ReduceMean` over the last axis, `Add(eps)`, `Sqrt`, then
//! `Reciprocal` (or `Div(1, ·)`) and `Mul(x, ·)` or a `Div(x, ·)`, and usually `Mul(·, w)`. Each is a step with its
//! own pass over the row and its own dispatch; at decode, where a row is a few hundred numbers,
//! the steps cost far more than the arithmetic (SmolLM2: 61 norms, 366 of its ~1500 steps per
//! token). One fused step reads the row twice and writes it once. Both backends have the kernel.

use super::pattern::{self, Index};
use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::program::{AttrKind, Attribute};
use kiln_formats::{DType, Dim, SharedBytes};

/// A normalisation found in the graph, ending at node `end`.
struct Match {
    end: usize,
    x: ValueId,
    epsilon: f32,
    /// The constant multiplying the normalised rows, when the pattern ends with one.
    scale: Option<ValueId>,
}

/// Fuses every RMS normalisation whose intermediate values nothing else reads; returns how many.
/// Run after shape inference and constant folding (it reads shapes and constants).
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let mut found: Vec<Match> = Vec::new();
    let mut normalized_at = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some((x, epsilon)) = normalized(g, &index, n) {
            normalized_at[n.outputs[0]] = Some(found.len());
            found.push(Match { end: i, x, epsilon, scale: None });
        }
    }
    if found.is_empty() {
        return 0;
    }
    // A following `Mul` by a constant row becomes the scale; the normalisation's own node is
    // then dead.
    for (i, n) in g.nodes.iter().enumerate() {
        let Some([a, b]) = (n.op == "Mul" && pattern::is_default(n)).then(|| pattern::inputs::<2>(n)).flatten() else {
            continue;
        };
        for (y, w) in [(a, b), (b, a)] {
            let Some(m) = normalized_at[y] else { continue };
            if index.readers(y) == 1 && is_scale(g, w, found[m].x) && pattern::same_type(g, n.outputs[0], found[m].x) {
                found[m].end = i;
                found[m].scale = Some(w);
                break;
            }
        }
    }
    let count = found.len();
    for m in found {
        let name = g.nodes[m.end].name.clone();
        let x_dtype = g.values[m.x].dtype.expect("checked");
        let scale = match m.scale {
            Some(w) => w,
            None => ones(g, &name, x_dtype, last_dim(g, m.x).expect("checked")),
        };
        let end = &g.nodes[m.end];
        g.nodes[m.end] = Node {
            name: end.name.clone(),
            op: "RMSNormalization".into(),
            domain: String::new(),
            opset: 23,
            attrs: vec![
                Attribute { name: "axis".into(), kind: AttrKind::Int as i32, i: -1, ..Default::default() },
                Attribute { name: "epsilon".into(), kind: AttrKind::Float as i32, f: m.epsilon, ..Default::default() },
            ],
            inputs: vec![Some(m.x), Some(scale)],
            outputs: end.outputs.clone(),
        };
    }
    count
}

/// `(x, eps)` when `n` ends `x / sqrt(mean(x², last axis) + eps)` and the values in between are
/// read only by the pattern.
fn normalized(g: &Graph, index: &Index, n: &Node) -> Option<(ValueId, f32)> {
    if !pattern::is_default(n) || n.outputs.len() != 1 {
        return None;
    }
    let [a, b] = pattern::inputs::<2>(n)?;
    let (x, root) = match n.op.as_str() {
        "Div" => (a, index.private(g, b, "Sqrt")?),
        "Mul" => [(a, b), (b, a)].into_iter().find_map(|(x, inv)| {
            // `Reciprocal(s)`, or `Div(1, s)` as TorchScript writes `torch.rsqrt`.
            let s = match index.private(g, inv, "Reciprocal") {
                Some(r) => r.inputs.first().copied()??,
                None => {
                    let [one, s] = pattern::inputs::<2>(index.private(g, inv, "Div")?)?;
                    (pattern::scalar(g, one)? == 1.0).then_some(s)?
                }
            };
            Some((x, index.private(g, s, "Sqrt")?))
        })?,
        _ => return None,
    };
    let [sum] = pattern::inputs::<1>(root)?;
    let add = index.private(g, sum, "Add")?;
    let [p, q] = pattern::inputs::<2>(add)?;
    let (mean, eps) = [(p, q), (q, p)].into_iter().find_map(|(m, e)| Some((m, pattern::scalar(g, e)?)))?;
    let mean = index.private(g, mean, "ReduceMean")?;
    let squares = mean_of_last_axis(g, mean)?;
    let squared = index.private(g, squares, "Mul").or_else(|| index.private(g, squares, "Pow"))?;
    let [s0, s1] = pattern::inputs::<2>(squared)?;
    let squares_x = match squared.op.as_str() {
        "Mul" => s0 == x && s1 == x,
        _ => s0 == x && pattern::scalar(g, s1) == Some(2.0),
    };
    let float = g.values[x].dtype.is_some_and(|d| d.is_float());
    let eps_ok = eps.is_finite() && eps >= 0.0;
    (squares_x && float && eps_ok && last_dim(g, x).is_some() && pattern::same_type(g, n.outputs[0], x))
        .then_some((x, eps as f32))
}

/// The input of `ReduceMean` node `n` when it averages over the last axis only, keeping it.
fn mean_of_last_axis(g: &Graph, n: &Node) -> Option<ValueId> {
    let data = n.inputs.first().copied()??;
    let rank = pattern::shape(g, data)?.len();
    if pattern::int_attr(n, "keepdims", 1)? != 1 {
        return None;
    }
    let axes = match n.inputs.get(1).copied().flatten() {
        Some(v) => pattern::ints(g, v)?,
        None => pattern::ints_attr(n, "axes")?.to_vec(),
    };
    (axes.len() == 1 && pattern::is_last_axis(axes[0], rank)).then_some(data)
}

/// Whether `w` is a constant row of `x`'s dtype that broadcasts along `x`'s last axis only.
fn is_scale(g: &Graph, w: ValueId, x: ValueId) -> bool {
    let (wv, xv) = (&g.values[w], &g.values[x]);
    let (Some(ws), Some(xs)) = (&wv.shape, &xv.shape) else { return false };
    let Some((last, lead)) = ws.split_last() else { return false };
    wv.constant.is_some()
        && wv.dtype == xv.dtype
        && ws.len() <= xs.len()
        && lead.iter().all(|d| *d == Dim::Known(1))
        && Some(last) == xs.last()
        && last.is_known()
}

fn last_dim(g: &Graph, x: ValueId) -> Option<usize> {
    pattern::shape(g, x)?.last()?.known().and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0)
}

/// A constant row of `d` ones of `dtype`, for a normalisation without a scale.
fn ones(g: &mut Graph, node: &str, dtype: DType, d: usize) -> ValueId {
    let one: Vec<u8> = match dtype {
        DType::F64 => 1f64.to_le_bytes().to_vec(),
        DType::F16 => half::f16::ONE.to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::ONE.to_le_bytes().to_vec(),
        _ => 1f32.to_le_bytes().to_vec(),
    };
    g.add_value(Value {
        name: format!("{node}/rms_scale"),
        dtype: Some(dtype),
        shape: Some(vec![Dim::Known(d as i64)]),
        constant: Some(SharedBytes::copy_from(&one.repeat(d))),
        sym_value: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(g: &mut Graph, name: &str, dims: &[i64], dtype: DType, constant: Option<&[u8]>) -> ValueId {
        g.add_value(Value {
            name: name.into(),
            dtype: Some(dtype),
            shape: Some(dims.iter().map(|&d| if d < 0 { Dim::sym("s") } else { Dim::Known(d) }).collect()),
            constant: constant.map(SharedBytes::copy_from),
            sym_value: None,
        })
    }

    fn node(g: &mut Graph, op: &str, inputs: &[ValueId], out: ValueId) {
        let attrs = if op == "ReduceMean" {
            vec![Attribute { name: "axes".into(), kind: AttrKind::Ints as i32, ints: vec![-1], ..Default::default() }]
        } else {
            Vec::new()
        };
        let inputs = inputs.iter().map(|&i| Some(i)).collect();
        g.nodes.push(Node {
            name: op.into(),
            op: op.into(),
            domain: String::new(),
            opset: 17,
            attrs,
            inputs,
            outputs: vec![out],
        });
    }

    /// `x / sqrt(mean(x²) + 1e-5)` spelled `how` (`Div(x, s)`, `x · Reciprocal(s)` or
    /// `x · Div(1, s)`), then `· w` when `scaled`.
    fn norm(how: &str, scaled: bool) -> Graph {
        let mut g = Graph::default();
        let f = DType::F32;
        let x = value(&mut g, "x", &[1, -1, 8], f, None);
        let [sq, mean, sum, root, inv, y, out] =
            ["sq", "mean", "sum", "root", "inv", "y", "out"].map(|n| value(&mut g, n, &[1, -1, 8], f, None));
        let eps = value(&mut g, "eps", &[], f, Some(&1e-5f32.to_le_bytes()));
        let w = value(&mut g, "w", &[8], f, Some(&[0u8; 32]));
        let one = value(&mut g, "one", &[], f, Some(&1f32.to_le_bytes()));
        node(&mut g, "Mul", &[x, x], sq);
        node(&mut g, "ReduceMean", &[sq], mean);
        node(&mut g, "Add", &[mean, eps], sum);
        node(&mut g, "Sqrt", &[sum], root);
        match how {
            "div" => node(&mut g, "Div", &[x, root], y),
            "reciprocal" => node(&mut g, "Reciprocal", &[root], inv),
            _ => node(&mut g, "Div", &[one, root], inv),
        }
        if how != "div" {
            node(&mut g, "Mul", &[x, inv], y);
        }
        g.inputs = vec![x];
        if scaled {
            node(&mut g, "Mul", &[w, y], out);
            g.outputs = vec![out];
        } else {
            g.outputs = vec![y];
        }
        g
    }

    fn fused(mut g: Graph) -> Graph {
        assert_eq!(fuse(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(g.nodes.len(), 1, "{:?}", g.nodes);
        assert_eq!(g.nodes[0].op, "RMSNormalization");
        assert_eq!(g.nodes[0].outputs, g.outputs, "readers still read the pattern's output");
        assert_eq!(g.nodes[0].attrs[1].f, 1e-5);
        g
    }

    #[test]
    fn every_spelling_becomes_one_node_with_the_scale() {
        for how in ["div", "reciprocal", "one_over"] {
            let g = fused(norm(how, true));
            assert_eq!(g.nodes[0].inputs, [Some(0), Some(9)], "{how}: x and the weight");
        }
    }

    #[test]
    fn without_a_weight_the_scale_is_ones() {
        let g = fused(norm("reciprocal", false));
        let scale = &g.values[g.nodes[0].inputs[1].unwrap()];
        let ones: &[f32] = bytemuck::cast_slice(scale.constant.as_ref().unwrap().as_slice());
        assert_eq!(ones, [1.0; 8]);
    }

    #[test]
    fn an_intermediate_read_elsewhere_or_another_axis_is_left_alone() {
        let mut g = norm("reciprocal", true);
        g.outputs.push(3); // the mean is also an output
        assert_eq!(fuse(&mut g), 0);
        let mut g = norm("reciprocal", true);
        g.nodes[1].attrs[0].ints = vec![1];
        assert_eq!(fuse(&mut g), 0, "a mean over the sequence is not a norm");
        let mut g = norm("reciprocal", true);
        g.nodes[0].inputs[1] = Some(g.outputs[0] - 1); // squares something other than x
        assert_eq!(fuse(&mut g), 0);
        let mut g = norm("one_over", true);
        let two = value(&mut g, "two", &[], DType::F32, Some(&2f32.to_le_bytes()));
        g.nodes[4].inputs[0] = Some(two);
        assert_eq!(fuse(&mut g), 0, "2 / sqrt is not a reciprocal");
    }
}
