//! Placing a GPU program's steps: each runs on the GPU when the backend has a kernel for its op
//! and dtypes (`kiln_runtime::gpu::support`), else on CPU. Every value then lives on the device of
//! the step that makes it (the caller's inputs on CPU; constants on both, since the runtime
//! uploads those a GPU step reads), and where a step reads a value living on the other device a
//! `kiln::ToGpu` or `kiln::ToCpu` step is inserted before it. Outputs are handed back on CPU.
//!
//! A GPU step still reads the inputs its shapes depend on (Reshape's shape, Slice's starts) on
//! CPU, where shape inference runs; steps that only make views (Reshape and the like) run where
//! their data lives, as they move nothing.

use kiln_formats::program::{Device, Program, Step, Storage, StorageKind, ValueInfo, NO_VALUE};
use kiln_formats::DType;
use kiln_runtime::gpu::support::{self, TO_CPU, TO_GPU};
use kiln_runtime::kernel::{Attrs, OpSpec};
use kiln_runtime::ops;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// What placement decided, for `compile` to print.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlacementReport {
    /// Steps with a GPU kernel.
    pub gpu_steps: usize,
    /// Steps left on CPU (views and shape arithmetic included).
    pub cpu_steps: usize,
    /// Op → (steps left on CPU for that reason, the reason), for ops that do real work.
    pub cpu_ops: BTreeMap<String, (usize, String)>,
    /// Transfers inserted: (to GPU, to CPU).
    pub transfers: (usize, usize),
}

/// Places every step of `p` and inserts the transfers; `p` must not be planned yet.
pub fn place(p: &mut Program) -> PlacementReport {
    let mut report = PlacementReport::default();
    let n = p.values.len();
    let kind = |p: &Program, i: usize| p.values[i].storage.as_ref().map_or(StorageKind::Dynamic as i32, |s| s.kind);
    let mut root: Vec<usize> = (0..n).collect();
    for i in 0..n {
        if kind(p, i) == StorageKind::Alias as i32 {
            let of = p.values[i].storage.as_ref().map_or(i, |s| s.index as usize);
            root[i] = if of < i { root[of] } else { of.min(n - 1) };
        }
    }
    // None: a constant, readable on both devices.
    let mut home: Vec<Option<Device>> =
        (0..n).map(|i| (kind(p, root[i]) != StorageKind::Weight as i32).then_some(Device::Cpu)).collect();
    // A KV state lives on the GPU when its append and every product reading it have GPU
    // kernels (they read its pitched layout in place, so it cannot be copied across); else
    // all of them run on CPU.
    let mut forced_cpu = vec![false; p.steps.len()];
    for st in &p.states {
        let slots = [st.past, st.present];
        let users: Vec<usize> = (0..p.steps.len())
            .filter(|&si| {
                let step = &p.steps[si];
                !support::reads_shapes_only(step)
                    && (step.outputs.iter().chain(&step.inputs)).any(|i| slots.contains(i))
            })
            .collect();
        let dtype = |i: u32| p.values.get(i as usize).and_then(ValueInfo::dtype);
        let on_gpu = users.iter().all(|&si| support::check(&p.steps[si], &dtype).is_ok());
        for &si in &users {
            forced_cpu[si] |= !on_gpu;
        }
        let device = if on_gpu { Device::Gpu } else { Device::Cpu };
        for slot in slots {
            home[slot as usize] = Some(device);
        }
    }
    // (slot, device) → the slot holding its copy on that device.
    let mut copies: HashMap<(usize, i32), u32> = HashMap::new();
    let mut steps = Vec::with_capacity(p.steps.len());
    let old_steps = std::mem::take(&mut p.steps);
    for (si, mut step) in old_steps.into_iter().enumerate() {
        let dtype = |i: u32| p.values.get(i as usize).and_then(ValueInfo::dtype);
        let views_only =
            !step.outputs.is_empty() && step.outputs.iter().all(|&o| kind(p, o as usize) == StorageKind::Alias as i32);
        let value_inputs: Vec<usize> =
            ops::build(&OpSpec { op: &step.op, domain: &step.domain, opset: step.opset, attrs: Attrs(&step.attrs) })
                .map(|k| k.value_inputs().to_vec())
                .unwrap_or_default();
        let device = if views_only {
            let data = step.inputs.first().copied().filter(|&i| i != NO_VALUE);
            data.and_then(|i| home[root[i as usize]]).unwrap_or(Device::Cpu)
        } else {
            let check = match forced_cpu[si] {
                true => Err("reads a KV cache kept in host memory (another of its readers has no GPU kernel)".into()),
                false => support::check(&step, &dtype),
            };
            match check {
                Ok(()) => Device::Gpu,
                Err(reason) => {
                    if !support::reads_shapes_only(&step) && !is_shape_arithmetic(&step, &dtype) {
                        let e = report.cpu_ops.entry(op_name(&step)).or_insert((0, reason));
                        e.0 += 1;
                    }
                    Device::Cpu
                }
            }
        };
        step.device = device as i32;
        if !support::reads_shapes_only(&step) {
            for k in 0..step.inputs.len() {
                let i = step.inputs[k];
                if i == NO_VALUE {
                    continue;
                }
                let want = if device == Device::Gpu && !value_inputs.contains(&k) { Device::Gpu } else { Device::Cpu };
                let have = home[root[i as usize]];
                if have.is_none() || have == Some(want) {
                    continue;
                }
                step.inputs[k] = *copies.entry((i as usize, want as i32)).or_insert_with(|| {
                    let copy = transfer(p, &mut steps, i, want, &mut report);
                    root.push(copy as usize);
                    home.push(Some(want));
                    copy
                });
            }
        }
        for &o in &step.outputs {
            if root[o as usize] == o as usize {
                home[o as usize] = Some(device);
            }
        }
        match device {
            Device::Gpu => report.gpu_steps += 1,
            Device::Cpu => report.cpu_steps += 1,
        }
        steps.push(step);
    }
    // Outputs go back to the caller from host memory; the output keeps its name (the signature's),
    // its GPU original is renamed.
    for k in 0..p.outputs.len() {
        for slot in p.output_slots(k) {
            if home[root[slot as usize]] != Some(Device::Gpu) {
                continue;
            }
            let host = transfer(p, &mut steps, slot, Device::Cpu, &mut report);
            let (a, b) = (slot as usize, host as usize);
            let name = std::mem::take(&mut p.values[a].name);
            p.values[a].name = format!("{name}@gpu");
            p.values[b].name = name;
            let rename = |s: &mut u32| {
                if *s == slot {
                    *s = host
                }
            };
            p.outputs.iter_mut().for_each(rename);
            p.assembled.iter_mut().flat_map(|a| a.pieces.iter_mut()).for_each(rename);
        }
    }
    p.steps = steps;
    report
}

/// Appends a step copying `slot` to `to` and returns the copy's slot.
fn transfer(p: &mut Program, steps: &mut Vec<Step>, slot: u32, to: Device, report: &mut PlacementReport) -> u32 {
    let src = &p.values[slot as usize];
    let (op, suffix) = match to {
        Device::Gpu => (TO_GPU, "@gpu"),
        Device::Cpu => (TO_CPU, "@cpu"),
    };
    let copy = p.values.len() as u32;
    p.values.push(ValueInfo {
        name: format!("{}{suffix}", src.name),
        dtype: src.dtype,
        dims: src.dims.clone(),
        storage: Some(Storage::dynamic()),
    });
    // The upload is carried out by the GPU side, the download by the host side.
    steps.push(Step {
        op: op.into(),
        domain: "kiln".into(),
        inputs: vec![slot],
        outputs: vec![copy],
        name: format!("{op} {}", p.values[slot as usize].name),
        opset: 1,
        device: to as i32,
        ..Default::default()
    });
    match to {
        Device::Gpu => report.transfers.0 += 1,
        Device::Cpu => report.transfers.1 += 1,
    }
    copy
}

/// Integer arithmetic on shapes: small, and on CPU by design, so not worth reporting.
fn is_shape_arithmetic(step: &Step, dtype: &dyn Fn(u32) -> Option<DType>) -> bool {
    step.outputs.iter().all(|&o| matches!(dtype(o), Some(DType::I64 | DType::I32 | DType::Bool)))
        && step.inputs.iter().filter(|&&i| i != NO_VALUE).all(|&i| dtype(i).is_some_and(|d| d != DType::F32))
}

fn op_name(step: &Step) -> String {
    match step.domain.as_str() {
        "" | "ai.onnx" => step.op.clone(),
        d => format!("{d}::{}", step.op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::program::DimInfo;

    fn value(name: &str, dtype: DType, storage: Storage) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: dtype.onnx_code(),
            dims: vec![DimInfo { value: 4, symbol: String::new() }],
            storage: Some(storage),
        }
    }

    fn step(op: &str, inputs: Vec<u32>, outputs: Vec<u32>) -> Step {
        Step { op: op.into(), inputs, outputs, name: op.to_lowercase(), opset: 13, ..Default::default() }
    }

    #[test]
    fn data_crosses_only_through_transfers_and_outputs_come_back_by_name() {
        // y = Relu(x); z = Cumsum-like CPU-only op (TopK has no GPU kernel) on y; w = Exp(z).
        let mut p = Program {
            values: vec![
                value("x", DType::F32, Storage::dynamic()),
                value("y", DType::F32, Storage::dynamic()),
                value("z", DType::F32, Storage::dynamic()),
                value("w", DType::F32, Storage::dynamic()),
            ],
            steps: vec![step("Relu", vec![0], vec![1]), step("Erf", vec![1], vec![2]), step("Exp", vec![2], vec![3])],
            inputs: vec![0],
            outputs: vec![3],
            ..Default::default()
        };
        p.steps[1].op = "Hardmax".into(); // no GPU kernel
        let r = place(&mut p);
        let ops: Vec<String> = p.steps.iter().map(|s| format!("{}@{}", s.op, s.device)).collect();
        assert_eq!(ops, ["ToGpu@1", "Relu@1", "ToCpu@0", "Hardmax@0", "ToGpu@1", "Exp@1", "ToCpu@0"]);
        assert_eq!(r.transfers, (2, 2));
        assert_eq!(r.cpu_ops["Hardmax"].0, 1);
        let out = p.outputs[0] as usize;
        assert_eq!(p.values[out].name, "w");
        assert_eq!(p.steps.last().unwrap().outputs, vec![out as u32]);
        assert_eq!(p.values[3].name, "w@gpu");
        let homes = support::homes(&p);
        for s in &p.steps {
            for &i in &s.inputs {
                let want = if s.on_gpu() && s.op != TO_GPU { Device::Gpu } else { Device::Cpu };
                let want = if s.op == TO_CPU { Device::Gpu } else { want };
                assert_eq!(homes[i as usize], want, "{} reads {}", s.op, p.values[i as usize].name);
            }
        }
    }

    #[test]
    fn int64_arithmetic_stays_on_cpu_unreported_and_constants_need_no_transfer() {
        let mut p = Program {
            values: vec![
                value("x", DType::F32, Storage::dynamic()),
                value("w", DType::F32, Storage::weight(0)),
                value("y", DType::F32, Storage::dynamic()),
                value("a", DType::I64, Storage::dynamic()),
                value("b", DType::I64, Storage::dynamic()),
            ],
            steps: vec![step("Add", vec![0, 1], vec![2]), step("Add", vec![3, 3], vec![4])],
            inputs: vec![0, 3],
            outputs: vec![2, 4],
            ..Default::default()
        };
        let r = place(&mut p);
        assert!(r.cpu_ops.is_empty(), "{:?}", r.cpu_ops);
        assert_eq!(r.transfers, (1, 1));
        assert_eq!(p.steps[1].inputs[1], 1, "the constant is read where it is");
    }
}
