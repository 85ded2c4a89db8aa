//! The tanh approximation of GELU, `(x·½)·(tanh((x + (x³)·0.044715)·√(2/π)) + 1)`, which
//! exporters write for GPT-2-style models (transformers' `gelu_new`) as eight steps, becomes
//! `kiln::GeluTanh(x)` carrying the graph's constants: one pass over the MLP's widest tensor
//! instead of eight, and seven intermediate tensors fewer. Every step must be read only by the
//! next, and the constants must be single numbers, so the output has x's shape. CPU only (the GPU
//! backend has no kernel for it).

use super::pattern::{self, Index};
use crate::ir::{Graph, Node, ValueId};
use kiln_formats::program::Attribute;
use kiln_formats::DType;
use kiln_runtime::ops::unary::gelu_tanh::GELU_TANH;
use kiln_runtime::ops::KILN_DOMAIN;

/// A GELU found in the graph: the final Mul, x, and the constants.
struct Match {
    end: usize,
    x: ValueId,
    half: f64,
    cube_scale: f64,
    scale: f64,
    one: f64,
}

/// Fuses every such GELU; returns how many.
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let found: Vec<Match> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op == "Mul" && pattern::is_default(n) && n.outputs.len() == 1)
        .filter_map(|(end, n)| {
            let [a, b] = pattern::inputs::<2>(n)?;
            [(a, b), (b, a)].into_iter().find_map(|(h, p)| matched(g, &index, end, h, p))
        })
        .collect();
    for m in &found {
        let n = &mut g.nodes[m.end];
        n.op = GELU_TANH.into();
        n.domain = KILN_DOMAIN.into();
        n.opset = 1;
        n.inputs = vec![Some(m.x)];
        n.attrs = [("half", m.half), ("cube_scale", m.cube_scale), ("scale", m.scale), ("one", m.one)]
            .map(|(name, v)| Attribute::float(name, v as f32))
            .to_vec();
    }
    found.len()
}

/// `h = x·½` and `p = tanh(…) + 1` of the Mul at `end`, when the rest of the pattern is there.
fn matched(g: &Graph, index: &Index, end: usize, h: ValueId, p: ValueId) -> Option<Match> {
    let (x, half) = with_constant(g, index.private(g, h, "Mul")?)?;
    let (t, one) = with_constant(g, index.private(g, p, "Add")?)?;
    let [m] = pattern::inputs::<1>(index.private(g, t, "Tanh")?)?;
    let (inner, scale) = with_constant(g, index.private(g, m, "Mul")?)?;
    let [a, b] = pattern::inputs::<2>(index.private(g, inner, "Add")?)?;
    let q = [(a, b), (b, a)].into_iter().find_map(|(v, q)| (v == x).then_some(q))?;
    let (cube, cube_scale) = with_constant(g, index.private(g, q, "Mul")?)?;
    let pow = index.private(g, cube, "Pow")?;
    let [base, exponent] = pattern::inputs::<2>(pow)?;
    // f64 models keep their steps: the kernel's constants are f32 attributes.
    let dtype = g.values[x].dtype?;
    let fits = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    let y = g.nodes[end].outputs[0];
    (fits && base == x && pattern::scalar(g, exponent)? == 3.0 && pattern::same_type(g, x, y)).then_some(Match {
        end,
        x,
        half,
        cube_scale,
        scale,
        one,
    })
}

/// The other input and the number of a two-input node with one single-number constant input.
fn with_constant(g: &Graph, n: &Node) -> Option<(ValueId, f64)> {
    let [a, b] = pattern::inputs::<2>(n)?;
    [(a, b), (b, a)].into_iter().find_map(|(v, c)| {
        let constant = g.values[c].constant.is_some() && g.values[v].constant.is_none();
        constant.then(|| pattern::scalar(g, c).map(|k| (v, k))).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Value;
    use kiln_formats::{Dim, SharedBytes};

    /// GPT-2's GELU over x (value 0): values 1..=5 are the constants ½, 3, 0.044715, √(2/π) and 1.
    fn graph(extra_reader: Option<usize>) -> Graph {
        let mut g = Graph::default();
        let tensor = |name: String| Value {
            name,
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::sym("s"), Dim::Known(8)]),
            ..Default::default()
        };
        g.add_value(tensor("x".into()));
        for (i, c) in [0.5f32, 3.0, 0.044715, 0.7978846, 1.0].into_iter().enumerate() {
            g.add_value(Value {
                name: format!("c{i}"),
                dtype: Some(DType::F32),
                shape: Some(vec![]),
                constant: Some(SharedBytes::copy_from(&c.to_le_bytes())),
                ..Default::default()
            });
        }
        // Operand orders as TorchScript writes them, some constants first.
        let steps: [(&str, [usize; 2]); 8] = [
            ("Mul", [0, 1]),   // 6 = x·½
            ("Pow", [0, 2]),   // 7 = x³
            ("Mul", [3, 7]),   // 8 = 0.044715·x³
            ("Add", [0, 8]),   // 9
            ("Mul", [9, 4]),   // 10
            ("Tanh", [10, 0]), // 11 (one input, see below)
            ("Add", [5, 11]),  // 12 = 1 + tanh
            ("Mul", [6, 12]),  // 13
        ];
        for (k, (op, inputs)) in steps.into_iter().enumerate() {
            let out = g.add_value(tensor(format!("v{}", 6 + k)));
            let inputs = if op == "Tanh" { vec![Some(inputs[0])] } else { inputs.map(Some).to_vec() };
            g.nodes.push(Node {
                name: format!("n{k}"),
                op: op.into(),
                domain: String::new(),
                opset: 17,
                attrs: Vec::new(),
                inputs,
                outputs: vec![out],
            });
        }
        g.inputs = vec![0];
        g.outputs = std::iter::once(13).chain(extra_reader).collect();
        g
    }

    #[test]
    fn eight_steps_become_one_with_the_graphs_constants() {
        let mut g = graph(None);
        assert_eq!(fuse(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(g.nodes.len(), 1);
        let n = &g.nodes[0];
        assert_eq!((n.op.as_str(), n.inputs.as_slice(), n.outputs.as_slice()), (GELU_TANH, &[Some(0)][..], &[13][..]));
        let attrs: Vec<(&str, f32)> = n.attrs.iter().map(|a| (a.name.as_str(), a.f)).collect();
        assert_eq!(attrs, [("half", 0.5), ("cube_scale", 0.044715), ("scale", 0.7978846), ("one", 1.0)]);
    }

    #[test]
    fn a_step_read_elsewhere_or_another_power_stays() {
        for shared in 6..13 {
            let mut g = graph(Some(shared));
            assert_eq!(fuse(&mut g), 0, "value {shared} is also an output");
        }
        let mut g = graph(None);
        g.values[2].constant = Some(SharedBytes::copy_from(&2.0f32.to_le_bytes()));
        assert_eq!(fuse(&mut g), 0, "x² is not this GELU");
    }
}
