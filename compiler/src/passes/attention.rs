//! Attention as exporters write it becomes one `kiln::FusedAttention(q, k, v[, mask])`:
//!
//! `MatMul(Softmax(Reshape?(MatMulTransB(Reshape?(q), k))), v)` followed by an optional
//! `Reshape`, where the softmax is `kiln::ScaledSoftmax` (scale and additive mask) or a plain
//! `Softmax` over the last axis, and the reshapes are grouped-query attention's views between
//! `[B, H, S, ·]` and `[B, G, (H/G)·S, ·]` (see `grouped_query`). k and v are `[B, G, T, ·]`; with
//! no reshapes, G is H or 1 (the product then broadcasts one kv head to all).
//!
//! At decode each of those steps is a dispatch and a join of the threads around a few thousand
//! multiply-adds (SmolLM2: 210 steps per token, 16% of a q8 token); the fused kernel runs one
//! parallel pass over heads. CPU only, run after the scaled-softmax fusion and before the KV cache
//! pass, which then lets the fused node read the cache in place (`k_pitch`, `v_pitch`).

use super::pattern::{self, Index};
use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::program::Attribute;
use kiln_formats::{DType, Dim};
use kiln_runtime::ops::attention::fused::FUSED_ATTENTION;
use kiln_runtime::ops::norm::scaled_softmax::SCALED_SOFTMAX;
use kiln_runtime::ops::KILN_DOMAIN;

/// One attention found: the node the fused one replaces (the product with v, or the reshape
/// after it), and its operands.
struct Match {
    end: usize,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    mask: Option<ValueId>,
    scale: f32,
    divide: bool,
    /// Whether the product's output is the grouped view `[B, G, (H/G)·S, dv]`, which a `Reshape`
    /// of the fused node's per-head output then makes.
    grouped: bool,
}

/// Fuses every such attention whose intermediate values nothing else reads; returns how many.
/// Run after shape inference and the scaled-softmax fusion.
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let mut found: Vec<Match> = (0..g.nodes.len()).filter_map(|i| matched(g, &index, i)).collect();
    found.sort_by_key(|m| m.end);
    let count = found.len();
    let mut found = found.into_iter().peekable();
    let mut nodes = Vec::with_capacity(g.nodes.len() + count);
    for (i, node) in std::mem::take(&mut g.nodes).into_iter().enumerate() {
        let Some(m) = found.next_if(|m| m.end == i) else {
            nodes.push(node);
            continue;
        };
        let y = node.outputs[0];
        let out = if m.grouped {
            let q_shape = g.values[m.q].shape.clone().expect("matched");
            let v_shape = g.values[m.v].shape.clone().expect("matched");
            let heads = vec![q_shape[0].clone(), q_shape[1].clone(), q_shape[2].clone(), v_shape[3].clone()];
            let value = Value { name: format!("{}/heads", node.name), shape: Some(heads), ..g.values[y].clone() };
            g.add_value(Value { constant: None, sym_value: None, ..value })
        } else {
            y
        };
        let attrs = vec![Attribute::float("scale", m.scale), Attribute::int("divide", m.divide as i64)];
        let inputs = [Some(m.q), Some(m.k), Some(m.v)].into_iter().chain(m.mask.map(Some)).collect();
        let name = node.name.clone();
        nodes.push(Node {
            op: FUSED_ATTENTION.into(),
            domain: KILN_DOMAIN.into(),
            opset: 1,
            attrs,
            inputs,
            outputs: vec![out],
            name: name.clone(),
        });
        if m.grouped {
            // Back to the grouped view for the product's readers: batch and head size kept (0),
            // the kv heads, and the rows inferred (-1). A view, which the reshape-chain pass
            // merges into the reshape that usually follows.
            let groups = g.values[m.k].shape.as_ref().expect("matched")[1].known().expect("matched");
            let target = pattern::shape_const(g, format!("{name}/groups_shape"), &[0, groups, -1, 0]);
            nodes.push(pattern::reshape(g, format!("{name}/groups"), out, target, y));
        }
    }
    g.nodes = nodes;
    count
}

/// The input of `v`'s private `Reshape`, or `v` itself when no reshape makes it.
fn through_reshape(g: &Graph, index: &Index, v: ValueId) -> ValueId {
    index.private(g, v, "Reshape").and_then(|r| r.inputs.first().copied().flatten()).unwrap_or(v)
}

/// The softmax making `p`: (scores, mask, scale, divide).
fn softmax(g: &Graph, index: &Index, p: ValueId) -> Option<(ValueId, Option<ValueId>, f32, bool)> {
    if let Some(n) = index.private_kiln(g, p, SCALED_SOFTMAX) {
        let x = n.inputs.first().copied()??;
        let mask = n.inputs.get(1).copied().flatten();
        let scale = n.attrs.iter().find(|a| a.name == "scale").map_or(1.0, |a| a.f);
        return Some((x, mask, scale, pattern::int_attr(n, "divide", 0)? != 0));
    }
    let n = index.private(g, p, "Softmax")?;
    let [x] = pattern::inputs::<1>(n)?;
    let rank = pattern::shape(g, x)?.len();
    let axis = pattern::int_attr(n, "axis", if n.opset < 13 { 1 } else { -1 })?;
    (rank > 0 && pattern::is_last_axis(axis, rank)).then_some((x, None, 1.0, false))
}

fn matched(g: &Graph, index: &Index, i: usize) -> Option<Match> {
    let n = &g.nodes[i];
    if n.op != "MatMul" || !pattern::is_default(n) || n.outputs.len() != 1 {
        return None;
    }
    let [p2, v] = pattern::inputs::<2>(n)?;
    let (x, mask, scale, divide) = softmax(g, index, through_reshape(g, index, p2))?;
    let scores = index.private_kiln(g, through_reshape(g, index, x), "MatMulTransB")?;
    if !scores.attrs.is_empty() {
        return None;
    }
    let [a, k] = pattern::inputs::<2>(scores)?;
    // q is the input of the reshape grouping a's heads, else a itself (per head, or a grouped
    // view taken as heads when the shapes allow nothing else).
    let a_shape = pattern::shape(g, a)?;
    let regrouped = index.made_by(g, a, "Reshape").and_then(|r| r.inputs.first().copied().flatten());
    let (q, geo) = [regrouped, Some(a)].into_iter().flatten().find_map(|q| {
        let geo = Geometry::of(g, q, k, v)?;
        geo.pairs(a_shape, &geo.q[3]).then_some((q, geo))
    })?;
    if !matches!(g.values[q].dtype?, DType::F32 | DType::F16 | DType::BF16)
        || [k, v, x, n.outputs[0]].iter().any(|&t| g.values[t].dtype != g.values[q].dtype)
    {
        return None;
    }
    // The probabilities must be a view of `[B, H, S, T]` that pairs each query head with its kv
    // head too.
    let (t, dv) = (&geo.kv[2], &pattern::shape(g, v)?[3]);
    if !geo.pairs(pattern::shape(g, p2)?, t) {
        return None;
    }
    // The mask broadcasts against the softmax input, which must then be the per-head scores.
    let x_shape = pattern::shape(g, x)?;
    if x_shape.last() != Some(t) || (mask.is_some() && x_shape != geo.per_head(t)) {
        return None;
    }
    let y_shape = pattern::shape(g, n.outputs[0])?;
    if !geo.pairs(y_shape, dv) {
        return None;
    }
    let y = n.outputs[0];
    if y_shape == geo.per_head(dv) {
        return Some(Match { end: i, q, k, v, mask, scale, divide, grouped: false });
    }
    // Grouped: the reshape back to heads that exporters write next, when it is y's one reader,
    // becomes the fused node; otherwise a reshape of the fused output makes y.
    let merge = (index.readers(y) == 1)
        .then(|| g.nodes.iter().position(|r| r.inputs.first() == Some(&Some(y))))
        .flatten()
        .filter(|&r| {
            let r = &g.nodes[r];
            r.op == "Reshape"
                && pattern::is_default(r)
                && pattern::shape(g, r.outputs[0]) == Some(&geo.per_head(dv)[..])
        });
    Some(Match { end: merge.unwrap_or(i), q, k, v, mask, scale, divide, grouped: merge.is_none() })
}

/// q's `[B, H, S, d]` and k's `[B, G, T, d]`, with v `[B, G, T, dv]`.
struct Geometry {
    q: Vec<Dim>,
    kv: Vec<Dim>,
    /// Query heads per kv head, H / G.
    rep: i64,
}

impl Geometry {
    fn of(g: &Graph, q: ValueId, k: ValueId, v: ValueId) -> Option<Geometry> {
        let (qs, ks, vs) = (pattern::shape(g, q)?, pattern::shape(g, k)?, pattern::shape(g, v)?);
        if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
            return None;
        }
        let (h, kv_heads) = (qs[1].known()?, ks[1].known()?);
        let fits = qs[0] == ks[0] && ks[0] == vs[0] && vs[1] == ks[1] && vs[2] == ks[2] && qs[3] == ks[3];
        (fits && kv_heads > 0 && h % kv_heads == 0).then(|| Geometry {
            q: qs.to_vec(),
            kv: ks.to_vec(),
            rep: h / kv_heads,
        })
    }

    /// `[B, H, S, last]`.
    fn per_head(&self, last: &Dim) -> Vec<Dim> {
        vec![self.q[0].clone(), self.q[1].clone(), self.q[2].clone(), last.clone()]
    }

    /// Whether an operand of this shape, multiplied with k or v (`[B, G, ·, ·]`), pairs every
    /// query head with its kv head: the grouped view `[B, G, (H/G)·S, last]`, or the per-head one
    /// when each head has its own kv head or all share one (the product broadcasts it).
    fn pairs(&self, shape: &[Dim], last: &Dim) -> bool {
        let grouped = [self.q[0].clone(), self.kv[1].clone(), Dim::Known(self.rep).mul(&self.q[2]), last.clone()];
        shape == grouped || (shape == self.per_head(last) && (self.rep == 1 || self.kv[1] == Dim::Known(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Builder(Graph);

    impl Builder {
        fn value(&mut self, name: &str, dims: &[Dim]) -> ValueId {
            self.0.add_value(Value {
                name: name.into(),
                dtype: Some(DType::F32),
                shape: Some(dims.to_vec()),
                constant: None,
                sym_value: None,
            })
        }

        fn shape(&mut self, name: &str, dims: &[i64]) -> ValueId {
            pattern::shape_const(&mut self.0, name.into(), dims)
        }

        fn node(&mut self, op: &str, domain: &str, inputs: &[ValueId], out: ValueId, attrs: Vec<Attribute>) {
            self.0.nodes.push(Node {
                name: format!("{op}_{out}"),
                op: op.into(),
                domain: domain.into(),
                opset: if domain.is_empty() { 17 } else { 1 },
                attrs,
                inputs: inputs.iter().map(|&v| Some(v)).collect(),
                outputs: vec![out],
            });
        }
    }

    fn k(v: i64) -> Dim {
        Dim::Known(v)
    }

    /// Decode attention as the grouped-query pass leaves SmolLM2's (H = 9, G = 3, S = 1, T
    /// symbolic): reshape q to groups, scores, reshape to heads, scaled softmax with a mask,
    /// reshape to groups, product with v, reshape to heads.
    fn grouped(masked: bool) -> (Graph, [ValueId; 5]) {
        let mut b = Builder(Graph::default());
        let t = Dim::sym("total");
        let q = b.value("q", &[k(1), k(9), k(1), k(8)]);
        let kk = b.value("k", &[k(1), k(3), t.clone(), k(8)]);
        let v = b.value("v", &[k(1), k(3), t.clone(), k(4)]);
        let mask = b.value("mask", &[k(1), k(1), k(1), t.clone()]);
        let a = b.value("a", &[k(1), k(3), k(3), k(8)]);
        let s1 = b.value("s1", &[k(1), k(3), k(3), t.clone()]);
        let s2 = b.value("s2", &[k(1), k(9), k(1), t.clone()]);
        let p1 = b.value("p1", &[k(1), k(9), k(1), t.clone()]);
        let p2 = b.value("p2", &[k(1), k(3), k(3), t.clone()]);
        let y1 = b.value("y1", &[k(1), k(3), k(3), k(4)]);
        let y2 = b.value("y2", &[k(1), k(9), k(1), k(4)]);
        let to_groups = b.shape("groups", &[0, 3, -1, 0]);
        let to_heads = b.shape("heads", &[0, 9, -1, 0]);
        b.node("Reshape", "", &[q, to_groups], a, vec![]);
        b.node("MatMulTransB", KILN_DOMAIN, &[a, kk], s1, vec![]);
        b.node("Reshape", "", &[s1, to_heads], s2, vec![]);
        let softmax_in: &[ValueId] = if masked { &[s2, mask] } else { &[s2] };
        let attrs = vec![Attribute::float("scale", 0.125), Attribute::int("divide", 0)];
        b.node(SCALED_SOFTMAX, KILN_DOMAIN, softmax_in, p1, attrs);
        b.node("Reshape", "", &[p1, to_groups], p2, vec![]);
        b.node("MatMul", "", &[p2, v], y1, vec![]);
        b.node("Reshape", "", &[y1, to_heads], y2, vec![]);
        b.0.inputs = vec![q, kk, v, mask];
        b.0.outputs = vec![y2];
        (b.0, [q, kk, v, mask, y2])
    }

    #[test]
    fn grouped_query_attention_becomes_one_node() {
        for masked in [true, false] {
            let (mut g, [q, kk, v, mask, y]) = grouped(masked);
            assert_eq!(fuse(&mut g), 1);
            crate::passes::dce::eliminate(&mut g);
            assert_eq!(g.nodes.len(), 1, "{:?}", g.nodes);
            let n = &g.nodes[0];
            assert_eq!((n.op.as_str(), n.domain.as_str()), (FUSED_ATTENTION, KILN_DOMAIN));
            let want: Vec<_> = [q, kk, v].into_iter().chain(masked.then_some(mask)).map(Some).collect();
            assert_eq!(n.inputs, want);
            assert_eq!(n.outputs, [y]);
            assert_eq!(n.attrs[0].f, 0.125);
        }
    }

    /// When the product's grouped output is read by something other than a reshape to heads (here
    /// a reshape straight to `[1, 1, 36]`), a reshape of the fused per-head output makes it.
    #[test]
    fn a_grouped_output_read_otherwise_is_made_by_a_reshape() {
        let (mut g, [.., y]) = grouped(true);
        g.values[y].shape = Some(vec![k(1), k(1), k(36)]);
        assert_eq!(fuse(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, [FUSED_ATTENTION, "Reshape", "Reshape"]);
        let heads = g.nodes[0].outputs[0];
        assert_eq!(g.values[heads].shape, Some(vec![k(1), k(9), k(1), k(4)]));
        assert_eq!(g.nodes[1].inputs[0], Some(heads));
        assert_eq!(g.values[g.nodes[1].outputs[0]].name, "y1", "the grouped view is made again");
    }

    #[test]
    fn plain_heads_with_a_softmax_fuse_without_reshapes() {
        let mut b = Builder(Graph::default());
        let q = b.value("q", &[k(1), k(4), k(5), k(8)]);
        let kk = b.value("k", &[k(1), k(4), k(7), k(8)]);
        let v = b.value("v", &[k(1), k(4), k(7), k(8)]);
        let s = b.value("s", &[k(1), k(4), k(5), k(7)]);
        let p = b.value("p", &[k(1), k(4), k(5), k(7)]);
        let y = b.value("y", &[k(1), k(4), k(5), k(8)]);
        b.node("MatMulTransB", KILN_DOMAIN, &[q, kk], s, vec![]);
        b.node("Softmax", "", &[s], p, vec![Attribute::int("axis", -1)]);
        b.node("MatMul", "", &[p, v], y, vec![]);
        b.0.outputs = vec![y];
        let mut g = b.0;
        assert_eq!(fuse(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].attrs[0].f, 1.0);
    }

    #[test]
    fn attention_with_a_shared_intermediate_or_mismatched_heads_is_left_alone() {
        let (mut g, _) = grouped(true);
        g.outputs.push(7); // the probabilities are also returned
        assert_eq!(fuse(&mut g), 0);
        // Without its q reshape the grouped product's rows are not per head.
        let (mut g, [q, ..]) = grouped(true);
        g.nodes[1].inputs[0] = Some(q);
        assert_eq!(fuse(&mut g), 0);
        // A softmax over another axis is not attention's.
        let (mut g, _) = grouped(false);
        let sm = g.nodes.iter_mut().find(|n| n.op == SCALED_SOFTMAX).unwrap();
        sm.op = "Softmax".into();
        sm.domain = String::new();
        sm.attrs = vec![Attribute::int("axis", 1)];
        assert_eq!(fuse(&mut g), 0);
    }
}
