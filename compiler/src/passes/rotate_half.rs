//! Rotary position embedding as Llama-style exporters write it,
//! `Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, h..)), Slice(x, ..h)), sin))` over the last axis,
//! becomes `kiln::RotateHalf(x, cos, sin)`: seven steps and five intermediate tensors per query
//! or key tensor become one step (SmolLM2: 360 of its ~1500 steps per decoded token). CPU only
//! (the GPU backend has no kernel for it).

use super::pattern::{self, Index};
use crate::ir::{Graph, Node, ValueId};
use kiln_runtime::ops::attention::rotate_half::ROTATE_HALF;
use kiln_runtime::ops::KILN_DOMAIN;

/// Fuses every rotation whose intermediate values nothing else reads; returns how many.
/// Run after shape inference and constant folding (it reads shapes and slice bounds).
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let found: Vec<(usize, [ValueId; 3])> =
        g.nodes.iter().enumerate().filter_map(|(i, n)| rotation(g, &index, n).map(|m| (i, m))).collect();
    for &(i, [x, cos, sin]) in &found {
        let n = &mut g.nodes[i];
        n.op = ROTATE_HALF.into();
        n.domain = KILN_DOMAIN.into();
        n.opset = 1;
        n.attrs.clear();
        n.inputs = vec![Some(x), Some(cos), Some(sin)];
    }
    found.len()
}

/// `[x, cos, sin]` when `n` is the final `Add` of a rotation of `x`.
fn rotation(g: &Graph, index: &Index, n: &Node) -> Option<[ValueId; 3]> {
    if n.op != "Add" || !pattern::is_default(n) || n.outputs.len() != 1 {
        return None;
    }
    let [a, b] = pattern::inputs::<2>(n)?;
    let m = [(a, b), (b, a)].into_iter().find_map(|(p, q)| {
        let (pm, qm) = (index.private(g, p, "Mul")?, index.private(g, q, "Mul")?);
        let [q0, q1] = pattern::inputs::<2>(qm)?;
        let (x, sin) = [(q0, q1), (q1, q0)].into_iter().find_map(|(r, s)| Some((rotated(g, index, r)?, s)))?;
        let cos = pattern::other_operand(pm, x)?;
        Some([x, cos, sin])
    })?;
    let [x, cos, sin] = m;
    let xs = pattern::shape(g, x)?;
    let d = xs.last()?;
    let dtype = g.values[x].dtype.filter(|t| t.is_float())?;
    let fits = |v: ValueId| {
        let s = pattern::shape(g, v);
        g.values[v].dtype == Some(dtype) && s.is_some_and(|s| s.last() == Some(d) && pattern::broadcasts_to(s, xs))
    };
    (fits(cos) && fits(sin) && pattern::shape(g, n.outputs[0]) == Some(xs)).then_some(m)
}

/// `x` when `r` is `Concat(Neg(Slice(x, h..d)), Slice(x, 0..h))` along x's last axis of even
/// width `d = 2h`, each intermediate read only there.
fn rotated(g: &Graph, index: &Index, r: ValueId) -> Option<ValueId> {
    let concat = index.private(g, r, "Concat")?;
    let [neg, first] = pattern::inputs::<2>(concat)?;
    let neg = index.private(g, neg, "Neg")?;
    let [second] = pattern::inputs::<1>(neg)?;
    let (x, hi) = slice_of(g, index.private(g, second, "Slice")?)?;
    let (x1, lo) = slice_of(g, index.private(g, first, "Slice")?)?;
    let xs = pattern::shape(g, x)?;
    let d = xs.last()?.known()?;
    let h = d / 2;
    let ok = x1 == x
        && d % 2 == 0
        && d > 0
        && pattern::is_last_axis(pattern::int_attr(concat, "axis", 0)?, xs.len())
        && lo == (0, h)
        && hi == (h, d);
    ok.then_some(x)
}

/// `(data, (start, end))` of a unit-step `Slice` of one axis, the last, with known bounds
/// clamped to the axis as ONNX does.
fn slice_of(g: &Graph, s: &Node) -> Option<(ValueId, (i64, i64))> {
    let data = s.inputs.first().copied()??;
    let shape = pattern::shape(g, data)?;
    let d = shape.last()?.known()?;
    let input = |i: usize| s.inputs.get(i).copied().flatten();
    let (starts, ends, axes, steps) = if s.opset < 10 {
        let attr = |n: &str| pattern::ints_attr(s, n).map(<[i64]>::to_vec);
        (attr("starts")?, attr("ends")?, attr("axes"), None)
    } else {
        let ints = |i: usize| input(i).map(|v| pattern::ints(g, v));
        (pattern::ints(g, input(1)?)?, pattern::ints(g, input(2)?)?, ints(3).map(Option::unwrap_or_default), ints(4))
    };
    let axes = axes.unwrap_or_else(|| vec![0]);
    let unit_step = match steps {
        None => true,
        Some(Some(st)) => st == [1],
        Some(None) => false,
    };
    if starts.len() != 1 || ends.len() != 1 || axes.len() != 1 || !unit_step {
        return None;
    }
    if !pattern::is_last_axis(axes[0], shape.len()) {
        return None;
    }
    let clamp = |v: i64| if v < 0 { (v.saturating_add(d)).max(0) } else { v.min(d) };
    Some((data, (clamp(starts[0]), clamp(ends[0]))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Value;
    use kiln_formats::{DType, Dim, SharedBytes};

    fn int(g: &mut Graph, v: &[i64]) -> ValueId {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        g.add_value(Value {
            name: format!("c{}", g.values.len()),
            dtype: Some(DType::I64),
            shape: Some(vec![Dim::Known(v.len() as i64)]),
            constant: Some(SharedBytes::copy_from(&bytes)),
            sym_value: None,
        })
    }

    fn float(g: &mut Graph, name: &str, dims: &[i64]) -> ValueId {
        let shape = dims.iter().map(|&d| if d < 0 { Dim::sym("s") } else { Dim::Known(d) }).collect();
        g.add_value(Value { name: name.into(), dtype: Some(DType::F32), shape: Some(shape), ..Default::default() })
    }

    fn node(g: &mut Graph, op: &str, inputs: &[ValueId], out: ValueId) {
        let attrs = if op == "Concat" {
            use kiln_formats::program::{AttrKind, Attribute};
            vec![Attribute { name: "axis".into(), kind: AttrKind::Int as i32, i: -1, ..Default::default() }]
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

    /// The exporters' rotation of x [1, 2, s, 8] with cos/sin [1, 1, s, 8]; the second half's
    /// slice ends at `end`.
    fn rotation(end: i64) -> Graph {
        let mut g = Graph::default();
        let x = float(&mut g, "x", &[1, 2, -1, 8]);
        let [cos, sin] = ["cos", "sin"].map(|n| float(&mut g, n, &[1, 1, -1, 8]));
        let [lo, hi] = ["lo", "hi"].map(|n| float(&mut g, n, &[1, 2, -1, 4]));
        let [neg] = ["neg"].map(|n| float(&mut g, n, &[1, 2, -1, 4]));
        let [rot, p, q, y] = ["rot", "p", "q", "y"].map(|n| float(&mut g, n, &[1, 2, -1, 8]));
        let (zero, four, end, axis) = (int(&mut g, &[0]), int(&mut g, &[4]), int(&mut g, &[end]), int(&mut g, &[-1]));
        node(&mut g, "Slice", &[x, zero, four, axis], lo);
        node(&mut g, "Slice", &[x, four, end, axis], hi);
        node(&mut g, "Neg", &[hi], neg);
        node(&mut g, "Concat", &[neg, lo], rot);
        node(&mut g, "Mul", &[x, cos], p);
        node(&mut g, "Mul", &[rot, sin], q);
        node(&mut g, "Add", &[q, p], y);
        g.inputs = vec![x, cos, sin];
        g.outputs = vec![y];
        g
    }

    #[test]
    fn the_rotation_becomes_one_step() {
        for end in [8, i64::MAX, 100] {
            let mut g = rotation(end);
            assert_eq!(fuse(&mut g), 1, "end {end}");
            crate::passes::dce::eliminate(&mut g);
            assert_eq!(g.nodes.len(), 1);
            assert_eq!(
                (g.nodes[0].op.as_str(), &g.nodes[0].inputs[..]),
                ("RotateHalf", &[Some(0), Some(1), Some(2)][..])
            );
        }
    }

    #[test]
    fn other_slices_or_shared_values_are_left_alone() {
        let mut g = rotation(7);
        assert_eq!(fuse(&mut g), 0, "the second half stops short");
        let mut g = rotation(8);
        g.nodes[3].inputs.swap(0, 1);
        assert_eq!(fuse(&mut g), 0, "halves in the other order are not this rotation");
        let mut g = rotation(8);
        g.outputs.push(6); // the rotated copy is an output too
        assert_eq!(fuse(&mut g), 0);
    }
}
