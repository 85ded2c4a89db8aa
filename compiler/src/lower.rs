//! IR → program: one step per node over numbered value slots. Constants become weights, views
//! (Reshape, Squeeze, ...) alias their input, and every other value gets its own storage until the
//! planner assigns arena offsets.

use crate::error::CompileError;
use crate::ir::{Graph, ValueId};
use kiln_formats::program::{
    AssembledOutput, DimInfo, Program, StateInfo, Step, Storage, SymbolBound, ValueInfo, WeightRef, NO_VALUE,
};
use kiln_formats::SharedBytes;
use std::collections::{BTreeMap, HashMap};

/// Ops whose output has the same bytes as their first input.
pub const VIEW_OPS: &[&str] = &["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"];

/// A program and the constant data its weight slots refer to (`WeightRef::entry` indexes it).
pub struct Lowered {
    pub program: Program,
    pub weights: Vec<SharedBytes>,
}

/// Lowers an optimised graph. `bounds` gives the upper bound of each symbolic dim, if known.
pub fn lower(g: &Graph, bounds: &BTreeMap<String, u64>) -> Result<Lowered, CompileError> {
    let mut slots: HashMap<ValueId, u32> = HashMap::new();
    let mut program = Program { alignment: 64, ..Default::default() };
    let mut weights = Vec::new();
    let lookup = |s: &str| bounds.get(s).map(|&b| (0, b as i64));

    let mut slot_of = |id: ValueId,
                       program: &mut Program,
                       weights: &mut Vec<SharedBytes>|
     -> Result<u32, CompileError> {
        if let Some(&s) = slots.get(&id) {
            return Ok(s);
        }
        let v = &g.values[id];
        let dtype = v.dtype.ok_or_else(|| CompileError::Model(format!("value '{}' has no inferred type", v.name)))?;
        let shape =
            v.shape.as_ref().ok_or_else(|| CompileError::Model(format!("value '{}' has no inferred shape", v.name)))?;
        let storage = match &v.constant {
            Some(bytes) => {
                weights.push(bytes.clone());
                program.weights.push(WeightRef {
                    entry: (weights.len() - 1) as u32,
                    offset: 0,
                    len: bytes.len() as u64,
                });
                Storage::weight((program.weights.len() - 1) as u32)
            }
            None => Storage::dynamic(),
        };
        program.values.push(ValueInfo {
            name: v.name.clone(),
            dtype: dtype.onnx_code(),
            dims: shape.iter().map(|d| DimInfo::from_dim(d, d.bounds(&lookup).map(|(_, hi)| hi))).collect(),
            storage: Some(storage),
        });
        let s = (program.values.len() - 1) as u32;
        slots.insert(id, s);
        Ok(s)
    };

    for &i in &g.inputs {
        let s = slot_of(i, &mut program, &mut weights)?;
        program.inputs.push(s);
    }
    for n in &g.nodes {
        let mut inputs = Vec::with_capacity(n.inputs.len());
        for i in &n.inputs {
            inputs.push(match i {
                Some(id) => slot_of(*id, &mut program, &mut weights)?,
                None => NO_VALUE,
            });
        }
        let mut outputs = Vec::with_capacity(n.outputs.len());
        for &o in &n.outputs {
            outputs.push(slot_of(o, &mut program, &mut weights)?);
        }
        if VIEW_OPS.contains(&n.op.as_str()) && n.domain.is_empty() && inputs[0] != NO_VALUE {
            program.values[outputs[0] as usize].storage = Some(Storage::alias(inputs[0]));
        }
        program.steps.push(Step {
            op: n.op.clone(),
            domain: n.domain.clone(),
            inputs,
            outputs,
            attrs: n.attrs.clone(),
            name: n.name.clone(),
            opset: n.opset,
            in_place: 0,
            device: 0,
        });
    }
    for &o in &g.outputs {
        let s = slot_of(o, &mut program, &mut weights)?;
        program.outputs.push(s);
    }
    for (out, pieces, axis) in &g.assembled {
        let index = g
            .outputs
            .iter()
            .position(|o| o == out)
            .ok_or_else(|| CompileError::Model("assembled value is not an output".into()))?;
        let pieces = pieces.iter().map(|&p| slot_of(p, &mut program, &mut weights)).collect::<Result<_, _>>()?;
        program.assembled.push(AssembledOutput { output: index as u32, pieces, axis: *axis as u32 });
    }
    for (i, st) in g.states.iter().enumerate() {
        let [past, present] = [st.past, st.present].map(|v| slots.get(&v).copied());
        let (Some(past), Some(present)) = (past, present) else {
            return Err(CompileError::Model(format!("KV state '{}' is not read and written", g.values[st.past].name)));
        };
        for s in [past, present] {
            program.values[s as usize].storage = Some(Storage::state(i as u32));
        }
        program.states.push(StateInfo {
            name: g.values[st.past].name.clone(),
            dtype: program.values[past as usize].dtype,
            dims: st.dims.clone(),
            axis: st.axis as u32,
            past,
            present,
        });
    }
    program.symbols = bounds.iter().map(|(name, &max)| SymbolBound { name: name.clone(), max }).collect();
    Ok(Lowered { program, weights })
}
