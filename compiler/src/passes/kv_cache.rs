//! The KV cache kept in place. An exported causal LM takes its cache as `past…` inputs and
//! returns `present… = Concat(past…, new)`: run as written, every forward pass copies the whole
//! cache twice (into the concat, then out to the caller) and the copy grows with the context.
//! Here each such pair becomes a state ([`KvState`]) the caller keeps: one buffer per tensor,
//! sized for the context the bundle is compiled for, where `kiln::KvAppend` writes only the new
//! positions and attention's products read the filled part in place (`b_pitch`).
//!
//! A pair is rewritten only when the compiler can prove every reader copes with the cache's
//! pitched layout: the concat is over the pair's axis, which is the products' row axis, and the
//! cache is read only by `Shape`, as the B operand of products, or as fused attention's k or v. Anything else (a sliding
//! window that crops `present`, an elementwise op over the cache) keeps the copying path, and
//! the report says why.
//!
//! With `half` (`--kv-cache f16`), a state only fused attention reads is stored as f16: the
//! append rounds the new positions and attention widens them as it reads, so a decoded token
//! reads half the cache bytes. A state a product reads stays f32 (the products take f32 only).

use crate::ir::{Graph, Node, ValueId};
use kiln_formats::generation::KvPair;
use kiln_formats::program::Attribute;
use kiln_formats::DType;
use kiln_runtime::ops::kv_cache::{pitch_attr as pitch_attr_of, KV_APPEND};
use kiln_runtime::ops::KILN_DOMAIN;

/// A cache tensor kept in place: the `past` value the caller's state provides and the `present`
/// value the append makes of it, with `capacity` positions along `axis`.
#[derive(Clone, Debug, PartialEq)]
pub struct KvState {
    pub past: ValueId,
    pub present: ValueId,
    pub axis: usize,
    /// The state's shape, `dims[axis]` being the capacity.
    pub dims: Vec<u64>,
}

/// Which pairs were kept in place, and why the others were not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvCacheReport {
    pub in_place: usize,
    /// Of those, the states stored as f16.
    pub half: usize,
    /// One line per pair left on the copying path.
    pub copied: Vec<String>,
}

/// Rewrites every pair it can prove safe into a state of `capacity` positions ([`Graph::states`]),
/// stored as f16 when `half` and only fused attention reads it; the others are left as they
/// are. Run after shape inference.
pub fn keep_in_place(g: &mut Graph, pairs: &[KvPair], capacity: u64, half: bool) -> KvCacheReport {
    let mut report = KvCacheReport::default();
    for pair in pairs {
        match rewrite(g, pair, capacity, half) {
            Ok(narrowed) => {
                report.in_place += 1;
                report.half += usize::from(narrowed);
            }
            Err(why) => report.copied.push(format!("{}: {why}", pair.present)),
        }
    }
    crate::passes::dce::eliminate(g);
    report
}

fn is_default(n: &Node) -> bool {
    matches!(n.domain.as_str(), "" | "ai.onnx")
}

/// Every (node, input position) reading `v`.
fn readers(g: &Graph, v: ValueId) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for (k, x) in n.inputs.iter().enumerate() {
            if *x == Some(v) {
                out.push((i, k));
            }
        }
    }
    out
}

fn producer(g: &Graph, v: ValueId) -> Option<usize> {
    g.nodes.iter().position(|n| n.outputs.contains(&v))
}

/// The pitch attribute through which `n` can read a state as its input `input`, if it can: a
/// default-domain `MatMul` becomes the kiln one, which can.
fn pitch_attr(n: &Node, input: usize) -> Option<&'static str> {
    match n.domain.as_str() {
        KILN_DOMAIN => pitch_attr_of(&n.op, input),
        _ if is_default(n) && n.op == "MatMul" => pitch_attr_of("MatMul", input),
        _ => None,
    }
}

/// Keeps `pair` in place; whether its state is f16.
fn rewrite(g: &mut Graph, pair: &KvPair, capacity: u64, half: bool) -> Result<bool, String> {
    let find = |ids: &[ValueId], name: &str| ids.iter().copied().find(|&v| g.values[v].name == name);
    let past = find(&g.inputs, &pair.past).ok_or_else(|| format!("no input '{}'", pair.past))?;
    let present = find(&g.outputs, &pair.present).ok_or_else(|| format!("no output '{}'", pair.present))?;
    let concat = producer(g, present).ok_or("present is not computed")?;
    let c = &g.nodes[concat];
    let rank = g.values[present].shape.as_ref().map_or(0, Vec::len);
    let axis_attr = c.attrs.iter().find(|a| a.name == "axis").map(|a| a.i);
    let axis = axis_attr.map(|a| if a < 0 { a + rank as i64 } else { a });
    if c.op != "Concat" || !is_default(c) || c.inputs.len() != 2 || axis != Some(pair.axis as i64) {
        return Err(format!(
            "it is made by {} '{}', not a Concat of past and new positions along axis {} (a sliding window \
             or another cache layout)",
            c.op, c.name, pair.axis
        ));
    }
    // TorchScript exports pass the past through a one-input Concat or an Identity first, whose
    // output `Shape` may read too (it is the past's shape).
    let shape_only = |g: &Graph, (n, _): (usize, usize)| g.nodes[n].op == "Shape" && is_default(&g.nodes[n]);
    let mut entry = concat;
    let mut first = c.inputs[0].ok_or("the concat has no past operand")?;
    let mut shape_readers = Vec::new();
    while first != past {
        let p = producer(g, first).filter(|&p| {
            let n = &g.nodes[p];
            is_default(n) && (n.op == "Identity" || (n.op == "Concat" && n.inputs.len() == 1))
        });
        let p = p.ok_or("its first operand is not the past input")?;
        for r in readers(g, first) {
            match r.0 == entry {
                true => {}
                false if shape_only(g, r) => shape_readers.push(r.0),
                false => return Err(format!("the past is also read by {} '{}'", g.nodes[r.0].op, g.nodes[r.0].name)),
            }
        }
        entry = p;
        first = g.nodes[entry].inputs[0].ok_or("its first operand is not the past input")?;
    }
    for r in readers(g, past) {
        if r.0 != entry && !shape_only(g, r) {
            let n = &g.nodes[r.0];
            return Err(format!("the past is also read by {} '{}'", n.op, n.name));
        }
    }
    let mut products = Vec::new();
    for r in readers(g, present) {
        let n = &g.nodes[r.0];
        if shape_only(g, r) {
            continue;
        }
        match pitch_attr(n, r.1) {
            Some(attr) if pair.axis + 2 == rank => products.push((r.0, attr)),
            _ => return Err(format!("it is read by {} '{}', which cannot read the cache in place", n.op, n.name)),
        }
    }
    let v = &g.values[present];
    let dims = v.shape.as_ref().ok_or("its shape is unknown")?;
    let dims: Vec<u64> = dims
        .iter()
        .enumerate()
        .map(|(a, d)| if a == pair.axis { Some(capacity) } else { d.known().and_then(|x| u64::try_from(x).ok()) })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("its shape {dims:?} has symbolic dims besides the sequence"))?;
    if v.dtype.is_none() {
        return Err("its type is unknown".into());
    }
    let attention_only = products.iter().all(|&(_, attr)| matches!(attr, "k_pitch" | "v_pitch"));
    let narrowed = half && attention_only && v.dtype == Some(DType::F32);

    let c = &mut g.nodes[concat];
    c.op = KV_APPEND.into();
    c.domain = KILN_DOMAIN.into();
    c.opset = 1;
    c.attrs = vec![Attribute::int("axis", pair.axis as i64), Attribute::int("capacity", capacity as i64)];
    c.inputs[0] = Some(past);
    for r in shape_readers {
        g.nodes[r].inputs[0] = Some(past);
    }
    for (p, attr) in products {
        let n = &mut g.nodes[p];
        if is_default(n) {
            n.domain = KILN_DOMAIN.into();
            n.opset = 1;
        }
        n.attrs.retain(|a| a.name != attr);
        n.attrs.push(Attribute::int(attr, capacity as i64));
    }
    g.inputs.retain(|&i| i != past);
    g.outputs.retain(|&o| o != present);
    if narrowed {
        for s in [past, present] {
            g.values[s].dtype = Some(DType::F16);
        }
    }
    g.states.push(KvState { past, present, axis: pair.axis, dims });
    Ok(narrowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Value;
    use kiln_formats::Dim;

    fn value(name: &str, seq: Dim) -> Value {
        let shape = vec![Dim::Known(1), Dim::Known(2), seq, Dim::Known(4)];
        Value { name: name.into(), dtype: Some(DType::F32), shape: Some(shape), ..Default::default() }
    }

    fn node(op: &str, domain: &str, inputs: &[ValueId], out: ValueId, attrs: Vec<Attribute>) -> Node {
        let inputs = inputs.iter().map(|&i| Some(i)).collect();
        Node {
            name: format!("{op}_{out}"),
            op: op.into(),
            domain: domain.into(),
            opset: 17,
            attrs,
            inputs,
            outputs: vec![out],
        }
    }

    /// `present = Concat(past, new)` read by attention's `Q · presentᵀ` and returned.
    fn attention() -> Graph {
        let (p, s) = (Dim::sym("past"), Dim::sym("seq"));
        Graph {
            values: vec![
                value("past.0", p.clone()),
                value("new", s.clone()),
                value("present.0", p.add(&s)),
                value("q", s.clone()),
                value("scores", p.add(&s)),
            ],
            nodes: vec![
                node("Concat", "", &[0, 1], 2, vec![Attribute::int("axis", -2)]),
                node("MatMulTransB", KILN_DOMAIN, &[3, 2], 4, vec![]),
            ],
            inputs: vec![0, 1, 3],
            outputs: vec![4, 2],
            ..Default::default()
        }
    }

    fn pair() -> KvPair {
        KvPair { past: "past.0".into(), present: "present.0".into(), axis: 2 }
    }

    #[test]
    fn the_concat_becomes_an_append_and_attention_reads_the_state() {
        let mut g = attention();
        let report = keep_in_place(&mut g, &[pair()], 64, false);
        assert_eq!(report, KvCacheReport { in_place: 1, half: 0, copied: vec![] });
        assert_eq!(g.states, vec![KvState { past: 0, present: 2, axis: 2, dims: vec![1, 2, 64, 4] }]);
        assert_eq!(
            (g.inputs.clone(), g.outputs.clone()),
            (vec![1, 3], vec![4]),
            "past and present leave the signature"
        );
        assert_eq!((g.nodes[0].op.as_str(), g.nodes[0].domain.as_str()), (KV_APPEND, KILN_DOMAIN));
        let pitch = g.nodes[1].attrs.iter().find(|a| a.name == "b_pitch").map(|a| a.i);
        assert_eq!(pitch, Some(64));
    }

    #[test]
    fn a_reader_that_cannot_take_the_pitch_keeps_the_copy_and_is_named() {
        let mut g = attention();
        g.values.push(value("relu", Dim::sym("t")));
        g.nodes.push(node("Relu", "", &[2], 5, vec![]));
        g.outputs.push(5);
        let report = keep_in_place(&mut g, &[pair()], 64, false);
        assert_eq!(report.in_place, 0);
        assert!(report.copied[0].contains("Relu 'Relu_5'"), "{:?}", report.copied);
        assert!(g.states.is_empty() && g.nodes[0].op == "Concat", "the graph is left as it was");
    }

    #[test]
    fn a_cropped_present_keeps_the_copy() {
        // A sliding window: present = Slice(Concat(past, new)), not past + new.
        let mut g = attention();
        g.values.push(value("cropped", Dim::sym("w")));
        g.nodes.push(node("Slice", "", &[2], 5, vec![]));
        g.outputs = vec![4, 5];
        g.values[5].name = "present.0".into();
        g.values[2].name = "full".into();
        let report = keep_in_place(&mut g, &[pair()], 64, false);
        assert!(report.copied[0].contains("made by Slice"), "{:?}", report.copied);
        // The past also feeding something else than the concat or a Shape.
        let mut g = attention();
        g.values.push(value("neg", Dim::sym("past")));
        g.nodes.push(node("Neg", "", &[0], 5, vec![]));
        g.outputs.push(5);
        let report = keep_in_place(&mut g, &[pair()], 64, false);
        assert!(report.copied[0].contains("past is also read by Neg"), "{:?}", report.copied);
    }

    /// `present` read as fused attention's k: with `half`, an f16 state; read by a product, f32.
    #[test]
    fn a_state_only_attention_reads_is_stored_as_f16() {
        let fused = kiln_runtime::ops::attention::fused::FUSED_ATTENTION;
        let mut g = attention();
        g.nodes[1] = node(fused, KILN_DOMAIN, &[3, 2, 2], 4, vec![]);
        let report = keep_in_place(&mut g, &[pair()], 64, true);
        assert_eq!((report.in_place, report.half), (1, 1));
        assert_eq!((g.values[0].dtype, g.values[2].dtype), (Some(DType::F16), Some(DType::F16)), "past and present");
        assert_eq!(g.values[1].dtype, Some(DType::F32), "the new positions stay f32");
        let pitches: Vec<_> = g.nodes[1].attrs.iter().map(|a| (a.name.as_str(), a.i)).collect();
        assert_eq!(pitches, [("k_pitch", 64), ("v_pitch", 64)]);

        let mut g = attention();
        let report = keep_in_place(&mut g, &[pair()], 64, true);
        assert_eq!((report.in_place, report.half), (1, 0));
        assert_eq!(g.values[2].dtype, Some(DType::F32), "a product reads it");
    }
}
