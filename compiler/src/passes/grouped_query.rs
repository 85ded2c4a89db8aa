//! Grouped-query attention without the repeated keys and values. Exporters repeat each KV head
//! for the query heads that share it: `Reshape(Expand(Unsqueeze(K, heads + 1)))` turns
//! `[.., kv_heads, T, d]` into `[.., kv_heads * rep, T, d]`, a full copy of the cache every
//! forward pass, which attention then reads `rep` times. Since the query heads of one group are
//! adjacent, the same product is `Reshape(MatMul(Reshape(A, [.., kv_heads, rep * S, k]), K))`:
//! each KV head is read once, for all the rows of its group, and nothing is copied (the reshapes
//! are views). The KV operand is then the cache itself, which the in-place KV cache needs.

use super::pattern;
use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::{DType, Dim};

/// Rewrites every product whose second operand is a repeated KV tensor; returns how many.
/// Run after shape inference (it reads inferred shapes), before dead code elimination.
pub fn fold(g: &mut Graph) -> usize {
    let mut producer: Vec<Option<usize>> = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            producer[o] = Some(i);
        }
    }
    let rewrites: Vec<(usize, Repeat)> =
        (0..g.nodes.len()).filter_map(|i| repeat_operand(g, &producer, i).map(|r| (i, r))).collect();
    if rewrites.is_empty() {
        return 0;
    }
    let mut nodes = Vec::with_capacity(g.nodes.len() + 2 * rewrites.len());
    let mut next = rewrites.into_iter().peekable();
    let mut done = 0;
    for (i, node) in std::mem::take(&mut g.nodes).into_iter().enumerate() {
        let Some((_, r)) = next.next_if(|(j, _)| *j == i) else {
            nodes.push(node);
            continue;
        };
        let [a, y] = [node.inputs[0].expect("checked"), node.outputs[0]];
        let group = r.group;
        // A: [.., heads, S, k] -> [.., kv_heads, rep * S, k]; the product: [.., kv_heads, rep * S, n];
        // back to [.., heads, S, n]. 0 keeps an input dim, -1 is inferred (ONNX Reshape).
        let shape_of = |g: &Graph, v: ValueId| g.values[v].shape.clone().expect("checked");
        let (a_shape, y_shape) = (shape_of(g, a), shape_of(g, y));
        let grouped = |s: &[Dim]| -> Vec<Dim> {
            let mut out = s[..group].to_vec();
            out.push(Dim::Known(r.kv_heads));
            out.push(Dim::Known(r.rep).mul(&s[group + 1]));
            out.push(s[group + 2].clone());
            out
        };
        let a_grouped = add(g, &node.name, "a", grouped(&a_shape), g.values[a].dtype);
        let y_grouped = add(g, &node.name, "y", grouped(&y_shape), g.values[y].dtype);
        let to_groups = shape_const(g, &node.name, "groups", group, r.kv_heads);
        let to_heads = shape_const(g, &node.name, "heads", group, r.kv_heads * r.rep);
        nodes.push(pattern::reshape(g, format!("{}/grouped_split", node.name), a, to_groups, a_grouped));
        nodes.push(Node { inputs: vec![Some(a_grouped), Some(r.kv)], outputs: vec![y_grouped], ..node.clone() });
        nodes.push(pattern::reshape(g, format!("{}/grouped_merge", node.name), y_grouped, to_heads, y));
        done += 1;
    }
    g.nodes = nodes;
    done
}

/// A product's second operand that repeats `kv` along a new axis after `group`.
struct Repeat {
    kv: ValueId,
    /// The heads axis of the operands.
    group: usize,
    kv_heads: i64,
    rep: i64,
}

/// Whether node `i` is `MatMul(A, Reshape(Expand(Unsqueeze(KV))))` repeating KV's heads, with
/// every shape known well enough to prove it.
fn repeat_operand(g: &Graph, producer: &[Option<usize>], i: usize) -> Option<Repeat> {
    let n = &g.nodes[i];
    let is_product = match n.domain.as_str() {
        "" | "ai.onnx" => n.op == "MatMul",
        d => d == kiln_runtime::ops::KILN_DOMAIN && n.op == "MatMulTransB",
    };
    if !is_product || n.inputs.len() != 2 || n.outputs.len() != 1 {
        return None;
    }
    let (a, r) = (n.inputs[0]?, n.inputs[1]?);
    let from = |v: ValueId, op: &str| -> Option<&Node> {
        let p = &g.nodes[producer[v]?];
        (p.op == op && matches!(p.domain.as_str(), "" | "ai.onnx")).then_some(p)
    };
    let expand = from(from(r, "Reshape")?.inputs[0]?, "Expand")?;
    let unsqueeze = from(expand.inputs[0]?, "Unsqueeze")?;
    let kv = unsqueeze.inputs[0]?;
    let shape = |v: ValueId| g.values[v].shape.as_ref();
    let (xs, us, es, rs, as_, ys) = (
        shape(kv)?,
        shape(unsqueeze.outputs[0])?,
        shape(expand.outputs[0])?,
        shape(r)?,
        shape(a)?,
        shape(n.outputs[0])?,
    );
    let rank = xs.len();
    if rank < 3 || as_.len() != rank || ys.len() != rank || rs.len() != rank {
        return None;
    }
    let group = rank - 3;
    let kv_heads = xs[group].known()?;
    let rep = es.get(group + 1)?.known()?;
    let inserted = |s: &[Dim], d: Dim| -> bool {
        let mut v = xs.clone();
        v.insert(group + 1, d);
        v == s
    };
    let mut heads = xs.clone();
    heads[group] = Dim::Known(kv_heads * rep);
    let ok = rep > 1
        && inserted(us, Dim::Known(1))
        && inserted(es, Dim::Known(rep))
        && *rs == heads
        && as_[group].known() == Some(kv_heads * rep)
        && g.values[a].dtype.is_some()
        && g.values[n.outputs[0]].dtype.is_some();
    ok.then_some(Repeat { kv, group, kv_heads, rep })
}

fn add(g: &mut Graph, node: &str, what: &str, shape: Vec<Dim>, dtype: Option<DType>) -> ValueId {
    g.add_value(Value { name: format!("{node}/grouped_{what}"), dtype, shape: Some(shape), ..Default::default() })
}

/// The Reshape target `[0; group] ++ [heads, -1, 0]`.
fn shape_const(g: &mut Graph, node: &str, what: &str, group: usize, heads: i64) -> ValueId {
    let mut dims = vec![0i64; group];
    dims.extend([heads, -1, 0]);
    pattern::shape_const(g, format!("{node}/grouped_{what}_shape"), &dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::test_node as node;

    fn value(name: &str, dims: &[i64], dtype: DType) -> Value {
        Value {
            name: name.into(),
            dtype: Some(dtype),
            shape: Some(dims.iter().map(|&d| if d < 0 { Dim::sym("s") } else { Dim::Known(d) }).collect()),
            ..Default::default()
        }
    }

    /// Scores of 6 query heads over 2 KV heads, each repeated 3 times; `s` is the query length.
    fn attention(repeated_heads: i64) -> Graph {
        let values = vec![
            value("kv", &[1, 2, 5, 4], DType::F32),
            value("axes", &[1], DType::I64),
            value("u", &[1, 2, 1, 5, 4], DType::F32),
            value("target", &[5], DType::I64),
            value("e", &[1, 2, 3, 5, 4], DType::F32),
            value("shape", &[4], DType::I64),
            value("r", &[1, repeated_heads, 5, 4], DType::F32),
            value("q", &[1, 6, -1, 4], DType::F32),
            value("y", &[1, 6, -1, 5], DType::F32),
        ];
        Graph {
            values,
            nodes: vec![
                node("Unsqueeze", "", &[0, 1], 2),
                node("Expand", "", &[2, 3], 4),
                node("Reshape", "", &[4, 5], 6),
                node("MatMulTransB", kiln_runtime::ops::KILN_DOMAIN, &[7, 6], 8),
            ],
            inputs: vec![0, 1, 3, 5, 7],
            outputs: vec![8],
            ..Default::default()
        }
    }

    #[test]
    fn repeated_kv_heads_are_read_in_place_by_their_query_groups() {
        let mut g = attention(6);
        assert_eq!(fold(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["Reshape", "MatMulTransB", "Reshape"], "the repeat is gone");
        let product = &g.nodes[1];
        assert_eq!(product.inputs[1], Some(0), "the product reads the KV tensor itself");
        let grouped = &g.values[product.inputs[0].unwrap()];
        let s = Dim::sym("s");
        assert_eq!(grouped.shape, Some(vec![Dim::Known(1), Dim::Known(2), Dim::Known(3).mul(&s), Dim::Known(4)]));
        assert_eq!(g.nodes[2].outputs, vec![8], "consumers still read the original output");
        let target = g.values[g.nodes[2].inputs[1].unwrap()].constant.as_ref().unwrap();
        let target: &[i64] = bytemuck::cast_slice(target.as_slice());
        assert_eq!(target, [0, 6, -1, 0]);
    }

    #[test]
    fn a_reshape_that_is_not_the_repeat_is_left_alone() {
        // [1, 2, 3, 5, 4] reshaped to [1, 3, 10, 4]: not heads * rep.
        let mut g = attention(6);
        g.values[6].shape = Some(vec![Dim::Known(1), Dim::Known(3), Dim::Known(10), Dim::Known(4)]);
        assert_eq!(fold(&mut g), 0);
        let mut g = attention(6);
        g.values[7].shape = Some(vec![Dim::Known(1), Dim::Known(5), Dim::sym("s"), Dim::Known(4)]);
        assert_eq!(fold(&mut g), 0, "query heads that do not match the repeated heads");
    }
}
