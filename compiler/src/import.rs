//! ONNX → IR: values for inputs, initializers and node outputs; nodes sorted topologically;
//! Constant nodes turned into constants; attributes converted to the program schema once.

use crate::error::CompileError;
use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::onnx::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, AttributeProto, NodeProto,
};
use kiln_formats::onnx::OnnxModel;
use kiln_formats::program::{AttrKind, Attribute, TensorValue};
use kiln_formats::{DType, Dim, SharedBytes};
use std::collections::{HashMap, VecDeque};

/// Most nodes a graph may have. The memory planner's time grows with the square of the number of
/// values (a million-node chain planned for hours), and real models stay far below this: a
/// 70B-parameter transformer has about 10 000 nodes.
pub const MAX_NODES: usize = 100_000;

/// Imports a decoded model. `fixed` maps symbolic input dims to the values they are fixed at.
pub fn import(mut model: OnnxModel, fixed: &HashMap<String, i64>) -> Result<Graph, CompileError> {
    let mut gp = model.proto.graph.take().ok_or_else(|| CompileError::Model("no graph".into()))?;
    if gp.node.len() > MAX_NODES {
        return Err(CompileError::Model(format!(
            "the graph '{}' has {} nodes; kiln compiles at most {MAX_NODES} (planning time grows with the square of the node count)",
            gp.name,
            gp.node.len()
        )));
    }
    let mut g = Graph { name: gp.name.clone(), ..Default::default() };
    for o in &model.proto.opset_import {
        let d = if o.domain == "ai.onnx" { String::new() } else { o.domain.clone() };
        g.opsets.insert(d, o.version);
    }
    g.opsets.entry(String::new()).or_insert(1);
    let mut by_name: HashMap<String, ValueId> = HashMap::new();

    for t in gp.initializer.iter_mut() {
        let name = t.name.clone();
        if name.is_empty() {
            return Err(CompileError::Model("an initializer has no name".into()));
        }
        let data = model.take_tensor(t)?;
        let id = g.add_value(Value {
            name: name.clone(),
            dtype: Some(data.dtype),
            shape: Some(data.dims.iter().map(|&d| Dim::Known(d as i64)).collect()),
            constant: Some(data.bytes),
            sym_value: None,
        });
        by_name.insert(name, id);
    }
    if !gp.sparse_initializer.is_empty() {
        return Err(CompileError::Model("sparse initializers are not supported".into()));
    }

    for vi in &gp.input {
        // Old exporters list initializers among the inputs; those stay constants.
        if by_name.contains_key(&vi.name) {
            continue;
        }
        let (dtype, shape) = value_type(vi, fixed)?;
        let id =
            g.add_value(Value { name: vi.name.clone(), dtype: Some(dtype), shape: Some(shape), ..Default::default() });
        by_name.insert(vi.name.clone(), id);
        g.inputs.push(id);
    }

    let order = topo_order(&gp.node, &by_name)?;
    let mut nodes = std::mem::take(&mut gp.node);
    for i in order {
        let np = &mut nodes[i];
        let name = node_name(np, i);
        let domain = if np.domain == "ai.onnx" { String::new() } else { np.domain.clone() };
        let opset = *g.opsets.get(&domain).unwrap_or(&1);
        let node_err = |reason: String| CompileError::Node { node: name.clone(), op: np.op_type.clone(), reason };
        let subgraph = |a: &AttributeProto| {
            matches!(a.type_.enum_value(), Ok(AttributeType::GRAPH | AttributeType::GRAPHS)) || a.g.is_some()
        };
        if np.attribute.iter().any(subgraph) {
            return Err(CompileError::Unsupported(vec![format!(
                "op {} with subgraphs (control flow is not supported) (node '{name}')",
                np.op_type
            )]));
        }
        let mut attrs = Vec::with_capacity(np.attribute.len());
        for a in np.attribute.iter_mut() {
            attrs.push(convert_attr(&model, a).map_err(&node_err)?);
        }
        if np.op_type == "Constant" && domain.is_empty() {
            let out = np.output.first().cloned().unwrap_or_default();
            let (dtype, dims, bytes) = constant_node_value(&attrs).map_err(node_err)?;
            let id = g.add_value(Value {
                name: out.clone(),
                dtype: Some(dtype),
                shape: Some(dims.iter().map(|&d| Dim::Known(d as i64)).collect()),
                constant: Some(bytes),
                sym_value: None,
            });
            define(&mut by_name, out, id, &name)?;
            continue;
        }
        let mut inputs = Vec::with_capacity(np.input.len());
        for inp in &np.input {
            inputs.push(if inp.is_empty() { None } else { Some(by_name[inp]) });
        }
        let mut outputs = Vec::with_capacity(np.output.len());
        for out in &np.output {
            let id = g.add_value(Value {
                name: if out.is_empty() { format!("{name}:unused{}", outputs.len()) } else { out.clone() },
                ..Default::default()
            });
            if !out.is_empty() {
                define(&mut by_name, out.clone(), id, &name)?;
            }
            outputs.push(id);
        }
        if np.op_type == "Split" && domain.is_empty() && opset < 18 {
            // Before opset 18, a Split without sizes makes one equal part per output; the kernel
            // reads the count from `num_outputs`, as opset 18 spells it.
            let sizes_given = attrs.iter().any(|a| a.name == "split") || inputs.get(1).is_some_and(Option::is_some);
            if !sizes_given && !attrs.iter().any(|a| a.name == "num_outputs") {
                attrs.push(Attribute::int("num_outputs", outputs.len() as i64));
            }
        }
        g.nodes.push(Node { name, op: np.op_type.clone(), domain, opset, attrs, inputs, outputs });
    }

    for vi in &gp.output {
        let id = *by_name.get(&vi.name).ok_or_else(|| {
            CompileError::Model(format!("graph output '{}' is not produced by any node, input or initializer", vi.name))
        })?;
        g.outputs.push(id);
    }
    if g.outputs.is_empty() {
        return Err(CompileError::Model("the graph has no outputs".into()));
    }
    Ok(g)
}

/// A node's name, or `<op>_<index>` for the unnamed nodes some exporters write.
fn node_name(n: &NodeProto, index: usize) -> String {
    if n.name.is_empty() {
        format!("{}_{index}", n.op_type)
    } else {
        n.name.clone()
    }
}

fn define(by_name: &mut HashMap<String, ValueId>, name: String, id: ValueId, node: &str) -> Result<(), CompileError> {
    if by_name.insert(name.clone(), id).is_some() {
        return Err(CompileError::Model(format!("value '{name}' is defined twice (again by node '{node}')")));
    }
    Ok(())
}

/// Dtype and shape of a graph input; unnamed unknown dims get a symbol named after the input.
fn value_type(
    vi: &kiln_formats::onnx::proto::ValueInfoProto,
    fixed: &HashMap<String, i64>,
) -> Result<(DType, Vec<Dim>), CompileError> {
    let err = |m: String| CompileError::Model(format!("input '{}': {m}", vi.name));
    let tt = vi.type_.as_ref().map(|t| t.tensor_type()).ok_or_else(|| err("has no type".into()))?;
    let dtype = DType::from_onnx_code(tt.elem_type)
        .ok_or_else(|| err(format!("element type {} is not supported", DType::onnx_name(tt.elem_type))))?;
    let shape = tt.shape.as_ref().ok_or_else(|| err("has no shape (rank unknown)".into()))?;
    let mut dims = Vec::with_capacity(shape.dim.len());
    for (axis, d) in shape.dim.iter().enumerate() {
        dims.push(match &d.value {
            Some(dimension::Value::DimValue(v)) if *v >= 0 => Dim::Known(*v),
            Some(dimension::Value::DimValue(v)) => return Err(err(format!("dim {axis} is negative ({v})"))),
            Some(dimension::Value::DimParam(p)) if !p.is_empty() => {
                parse_dim_expr(p).unwrap_or_else(|| Dim::sym(p)).substitute(&|s| fixed.get(s).map(|&v| Dim::Known(v)))
            }
            _ => {
                let p = format!("{}_dim{axis}", vi.name);
                fixed.get(&p).map(|&v| Dim::Known(v)).unwrap_or_else(|| Dim::sym(&p))
            }
        });
    }
    Ok((dtype, dims))
}

/// Parses a dim_param that is an expression over symbols, as exporters write them
/// (`past_sequence+sequence`, `s0 + s1`, `2*batch`, `seq - 1`), so that it relates to the dims it
/// is made of; `None` for anything else (a plain name becomes one symbol).
fn parse_dim_expr(text: &str) -> Option<Dim> {
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if "+-*".contains(c) {
            tokens.push(c.to_string());
            chars.next();
        } else if c.is_alphanumeric() || c == '_' || c == '.' {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_' || **c == '.') {
                word.push(c);
                chars.next();
            }
            tokens.push(word);
        } else {
            return None;
        }
    }
    // Operands at even positions, operators between them: at least `a op b`.
    if tokens.len() < 3 || tokens.len().is_multiple_of(2) {
        return None;
    }
    let atom = |t: &str| match t.parse::<i64>() {
        Ok(v) => Some(Dim::Known(v)),
        Err(_) if t.starts_with(|c: char| c.is_alphabetic() || c == '_') => Some(Dim::sym(t)),
        Err(_) => None,
    };
    // A sum of products: `*` binds tighter than `+` and `-`.
    let (mut total, mut term, mut sign) = (Dim::Known(0), atom(&tokens[0])?, 1i64);
    for pair in tokens[1..].chunks(2) {
        let next = atom(&pair[1])?;
        match pair[0].as_str() {
            "*" => term = term.mul(&next),
            op @ ("+" | "-") => {
                total = total.add(&term.mul(&Dim::Known(sign)));
                sign = if op == "+" { 1 } else { -1 };
                term = next;
            }
            _ => return None,
        }
    }
    Some(total.add(&term.mul(&Dim::Known(sign))))
}

/// Indices of nodes in an order where every input is defined before use.
fn topo_order(nodes: &[NodeProto], known: &HashMap<String, ValueId>) -> Result<Vec<usize>, CompileError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o.as_str(), i);
        }
    }
    let mut pending = vec![0usize; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if known.contains_key(inp) {
                continue;
            }
            match producer.get(inp.as_str()) {
                Some(&p) => {
                    pending[i] += 1;
                    users[p].push(i);
                }
                None => {
                    return Err(CompileError::Node {
                        node: node_name(n, i),
                        op: n.op_type.clone(),
                        reason: format!("input '{inp}' is not a graph input, an initializer or any node's output"),
                    })
                }
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push_back(u);
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck = (0..nodes.len()).find(|&i| pending[i] > 0).unwrap_or(0);
        return Err(CompileError::Node {
            node: node_name(&nodes[stuck], stuck),
            op: nodes[stuck].op_type.clone(),
            reason: "is part of a cycle: its inputs depend on its own outputs".into(),
        });
    }
    Ok(order)
}

fn convert_attr(model: &OnnxModel, a: &mut AttributeProto) -> Result<Attribute, String> {
    let ty = a.type_.enum_value().ok();
    let name = a.name.clone();
    Ok(match ty {
        Some(AttributeType::INT) => Attribute::int(&name, a.i),
        Some(AttributeType::FLOAT) => Attribute::float(&name, a.f),
        Some(AttributeType::STRING) => {
            Attribute { name, kind: AttrKind::String as i32, s: std::mem::take(&mut a.s), ..Default::default() }
        }
        Some(AttributeType::INTS) => Attribute::ints(&name, std::mem::take(&mut a.ints)),
        Some(AttributeType::FLOATS) => Attribute::floats(&name, std::mem::take(&mut a.floats)),
        Some(AttributeType::STRINGS) => Attribute {
            name,
            kind: AttrKind::Strings as i32,
            strings: std::mem::take(&mut a.strings),
            ..Default::default()
        },
        Some(AttributeType::TENSOR) => {
            let t = a.t.as_mut().ok_or_else(|| format!("attribute '{name}' has no tensor"))?;
            let data = model.take_tensor(t).map_err(|e| format!("attribute '{name}': {e}"))?;
            Attribute::tensor(
                &name,
                TensorValue {
                    dtype: data.dtype.onnx_code(),
                    dims: data.dims.iter().map(|&d| d as i64).collect(),
                    data: data.bytes.as_slice().to_vec(),
                },
            )
        }
        Some(AttributeType::GRAPH | AttributeType::GRAPHS) => {
            return Err(format!("attribute '{name}' holds a subgraph; control flow is not supported"))
        }
        _ => return Err(format!("attribute '{name}' has unsupported type {:?}", a.type_)),
    })
}

/// The tensor a Constant node defines.
fn constant_node_value(attrs: &[Attribute]) -> Result<(DType, Vec<usize>, SharedBytes), String> {
    let a = attrs.first().ok_or("Constant has no value attribute")?;
    let le = |v: Vec<u8>| SharedBytes::copy_from(&v);
    Ok(match (a.name.as_str(), &a.tensor) {
        ("value", Some(t)) => {
            let dtype = DType::from_onnx_code(t.dtype).ok_or("unsupported tensor type")?;
            (dtype, t.dims.iter().map(|&d| d as usize).collect(), le(t.data.clone()))
        }
        ("value_float", _) => (DType::F32, vec![], le(a.f.to_le_bytes().to_vec())),
        ("value_floats", _) => {
            (DType::F32, vec![a.floats.len()], le(a.floats.iter().flat_map(|f| f.to_le_bytes()).collect()))
        }
        ("value_int", _) => (DType::I64, vec![], le(a.i.to_le_bytes().to_vec())),
        ("value_ints", _) => {
            (DType::I64, vec![a.ints.len()], le(a.ints.iter().flat_map(|f| f.to_le_bytes()).collect()))
        }
        (other, _) => return Err(format!("Constant attribute '{other}' is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dim_params_that_are_expressions_relate_to_their_symbols() {
        let (p, s) = (Dim::sym("past_sequence"), Dim::sym("sequence"));
        assert_eq!(parse_dim_expr("past_sequence+sequence"), Some(p.add(&s)));
        assert_eq!(parse_dim_expr("s0 + s1"), Some(Dim::sym("s0").add(&Dim::sym("s1"))));
        assert_eq!(parse_dim_expr("2*batch - 1"), Some(Dim::sym("batch").mul(&Dim::Known(2)).sub(&Dim::Known(1))));
        assert_eq!(parse_dim_expr("batch_size"), None);
        assert_eq!(parse_dim_expr("a + "), None);
        assert_eq!(parse_dim_expr("f(x)"), None);
    }
}
