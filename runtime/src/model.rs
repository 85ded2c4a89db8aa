//! A loaded program: validated, its kernels prepared and its weights resolved, ready to hand out
//! sessions. Validation here is what makes the executor's unchecked memory access sound.

use crate::error::RuntimeError;
use crate::kernel::{Attrs, Kernel, OpSpec};
use crate::ops;
use kiln_formats::bundle::WeightCheck;
use kiln_formats::program::{Device, Program, StorageKind, NO_VALUE};
use kiln_formats::tensor::byte_size;
use kiln_formats::{DType, SharedBytes};
use std::sync::Arc;

/// Where a slot's bytes live, resolved from its [`kiln_formats::program::Storage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Dynamic,
    Arena {
        buffer: usize,
        offset: usize,
        capacity: usize,
    },
    Weight(usize),
    /// A view of the caller's KV cache state (index into [`Program::states`]).
    State(usize),
}

/// A program ready to run. Cheap to share between threads; each thread runs its own [`crate::Session`].
pub struct Model {
    pub(crate) program: Program,
    pub(crate) kernels: Vec<Box<dyn Kernel>>,
    pub(crate) weights: Vec<SharedBytes>,
    pub(crate) dtypes: Vec<DType>,
    /// For each slot, the slot that owns its bytes (itself unless it is a view).
    pub(crate) roots: Vec<usize>,
    pub(crate) places: Vec<Place>,
    /// Bytes of each state's buffer.
    pub(crate) state_bytes: Vec<usize>,
    /// Each slot's device: where the step that makes its bytes runs (inputs, constants: CPU).
    pub(crate) homes: Vec<Device>,
    /// The device side, when the model was loaded onto a GPU ([`Model::new_on_gpu`]); without
    /// it, every step runs on CPU whatever its placement.
    #[cfg(feature = "gpu")]
    pub(crate) gpu: Option<crate::gpu::exec::GpuModel>,
    /// The weights' checksums still being verified in the background, when the model was
    /// loaded from a bundle opened so: each run waits for the verdict before it returns outputs.
    pub(crate) weight_check: Option<WeightCheck>,
}

impl Model {
    /// Validates `program`, prepares its kernels, and resolves its weights from `entries` (the
    /// byte sources [`kiln_formats::program::WeightRef::entry`] indexes).
    pub fn new(program: Program, entries: &[SharedBytes]) -> Result<Arc<Model>, RuntimeError> {
        Self::build(program, entries).map(Arc::new)
    }

    /// Like [`Model::new`] (or [`Model::new_on_gpu`] with `gpu`), for weights whose checksums
    /// `check` is still verifying: every run waits for its verdict before returning outputs, and
    /// fails with the checksum error if the weights are damaged.
    pub fn new_checked(
        program: Program,
        entries: &[SharedBytes],
        check: Option<WeightCheck>,
        #[cfg(feature = "gpu")] gpu: Option<Arc<crate::gpu::Gpu>>,
    ) -> Result<Arc<Model>, RuntimeError> {
        #[cfg(feature = "gpu")]
        let mut model = match gpu {
            Some(gpu) => Model::build_on_gpu(program, entries, gpu)?,
            None => Model::build(program, entries)?,
        };
        #[cfg(not(feature = "gpu"))]
        let mut model = Model::build(program, entries)?;
        model.weight_check = check;
        Ok(Arc::new(model))
    }

    /// Waits for the background verification of the weights' checksums, if one is running;
    /// whether it had to wait.
    pub(crate) fn wait_for_weights(&self) -> Result<bool, RuntimeError> {
        let Some(check) = &self.weight_check else { return Ok(false) };
        let waiting = !check.is_done();
        check.wait()?;
        Ok(waiting)
    }

    fn build(program: Program, entries: &[SharedBytes]) -> Result<Model, RuntimeError> {
        let bad = |m: String| RuntimeError::Program(m);
        let n = program.values.len();
        let name = |i: usize| program.values[i].name.clone();

        let mut dtypes = Vec::with_capacity(n);
        for (i, v) in program.values.iter().enumerate() {
            dtypes.push(v.dtype().ok_or_else(|| bad(format!("value {i} '{}' has unknown dtype {}", v.name, v.dtype)))?);
        }

        let mut weights = Vec::with_capacity(program.weights.len());
        for (i, w) in program.weights.iter().enumerate() {
            let entry = entries
                .get(w.entry as usize)
                .ok_or_else(|| bad(format!("weight {i} refers to entry {} of {}", w.entry, entries.len())))?;
            let range = usize::try_from(w.offset).ok().zip(usize::try_from(w.offset.saturating_add(w.len)).ok());
            let bytes = range.and_then(|(a, b)| entry.slice(a..b)).ok_or_else(|| {
                bad(format!(
                    "weight {i}: bytes {}..{} lie outside its entry ({} bytes)",
                    w.offset,
                    w.offset.saturating_add(w.len),
                    entry.len()
                ))
            })?;
            weights.push(bytes);
        }

        crate::verify::verify(&program).map_err(|e| bad(format!("the memory plan fails verification: {e}")))?;
        let mut places = Vec::with_capacity(n);
        let mut alias_of = vec![None; n];
        for (i, v) in program.values.iter().enumerate() {
            let s = v.storage.clone().unwrap_or_default();
            let place = match StorageKind::try_from(s.kind) {
                Ok(StorageKind::Dynamic) => Place::Dynamic,
                Ok(StorageKind::Arena) => {
                    let buffer = s.index as usize;
                    let size = *program.buffers.get(buffer).ok_or_else(|| {
                        bad(format!("value '{}' is in arena buffer {buffer} of {}", v.name, program.buffers.len()))
                    })?;
                    let end = s.offset.checked_add(s.capacity).filter(|&e| e <= size);
                    if end.is_none() {
                        return Err(bad(format!(
                            "value '{}' at bytes {}..{} overflows arena buffer {buffer} ({size} bytes)",
                            v.name,
                            s.offset,
                            s.offset.saturating_add(s.capacity)
                        )));
                    }
                    Place::Arena { buffer, offset: s.offset as usize, capacity: s.capacity as usize }
                }
                Ok(StorageKind::Weight) => {
                    let w = weights.get(s.index as usize).ok_or_else(|| {
                        bad(format!("value '{}' refers to weight {} of {}", v.name, s.index, weights.len()))
                    })?;
                    let dims: Option<Vec<usize>> = v
                        .dims
                        .iter()
                        .map(|d| (d.symbol.is_empty() && d.value >= 0).then_some(d.value as usize))
                        .collect();
                    let want = dims.as_deref().and_then(|d| byte_size(dtypes[i], d));
                    if want != Some(w.len()) {
                        return Err(bad(format!(
                            "weight value '{}' has {} bytes but its shape needs {want:?}",
                            v.name,
                            w.len()
                        )));
                    }
                    Place::Weight(s.index as usize)
                }
                Ok(StorageKind::Alias) => {
                    if s.index as usize >= n {
                        return Err(bad(format!("value '{}' aliases slot {} of {n}", v.name, s.index)));
                    }
                    alias_of[i] = Some(s.index as usize);
                    Place::Dynamic
                }
                Ok(StorageKind::State) => {
                    let state = program.states.get(s.index as usize).ok_or_else(|| {
                        bad(format!("value '{}' is a view of state {} of {}", v.name, s.index, program.states.len()))
                    })?;
                    if state.past as usize != i && state.present as usize != i {
                        return Err(bad(format!(
                            "value '{}' is neither past nor present of state '{}'",
                            v.name, state.name
                        )));
                    }
                    Place::State(s.index as usize)
                }
                Err(_) => return Err(bad(format!("value '{}' has unknown storage kind {}", v.name, s.kind))),
            };
            places.push(place);
        }
        let mut roots = Vec::with_capacity(n);
        for i in 0..n {
            let mut r = i;
            for _ in 0..=n {
                match alias_of[r] {
                    Some(next) => r = next,
                    None => break,
                }
            }
            if alias_of[r].is_some() {
                return Err(bad(format!("value '{}' is part of an alias cycle", name(i))));
            }
            roots.push(r);
        }

        let state_bytes = check_states(&program, &dtypes, &places, &roots)?;
        // Every slot is written once, by an input, a weight, a state or one step, before it is read.
        let mut written = vec![false; n];
        for s in &program.states {
            written[s.past as usize] = true;
        }
        for &i in &program.inputs {
            let i = i as usize;
            if i >= n || written[i] {
                return Err(bad(format!("input slot {i} is out of range or listed twice")));
            }
            written[i] = true;
        }
        for (i, p) in places.iter().enumerate() {
            if matches!(p, Place::Weight(_)) {
                written[i] = true;
            }
        }
        let mut kernels = Vec::with_capacity(program.steps.len());
        for (si, step) in program.steps.iter().enumerate() {
            let step_err = |m: String| bad(format!("step {si} ({} '{}'): {m}", step.op, step.name));
            for &i in &step.inputs {
                if i != NO_VALUE && (i as usize >= n || !written[i as usize]) {
                    return Err(step_err(format!("reads slot {i} before it is written")));
                }
            }
            for &o in &step.outputs {
                let o = o as usize;
                if o >= n || written[o] {
                    return Err(step_err(format!("writes slot {o}, which is out of range or already written")));
                }
                if alias_of[o].is_some_and(|a| !step.inputs.contains(&(a as u32))) {
                    return Err(step_err(format!(
                        "output '{}' is a view of a value that is not this step's input",
                        name(o)
                    )));
                }
                written[o] = true;
            }
            let spec = OpSpec { op: &step.op, domain: &step.domain, opset: step.opset, attrs: Attrs(&step.attrs) };
            let kernel = ops::build(&spec).map_err(|reason| RuntimeError::Step {
                step: si,
                op: step.op.clone(),
                node: step.name.clone(),
                reason,
            })?;
            kernels.push(kernel);
        }
        for a in &program.assembled {
            let whole = program
                .outputs
                .get(a.output as usize)
                .ok_or_else(|| bad(format!("assembled output {} does not exist", a.output)))?;
            let rank = program.values.get(*whole as usize).map_or(0, |v| v.dims.len());
            if a.pieces.is_empty() || a.axis as usize >= rank {
                return Err(bad(format!(
                    "assembled output {} has no pieces or axis {} outside rank {rank}",
                    a.output, a.axis
                )));
            }
        }
        for i in 0..program.outputs.len() {
            for o in program.output_slots(i) {
                if o as usize >= n || !written[o as usize] {
                    return Err(bad(format!("output slot {o} is never written")));
                }
            }
        }
        let homes = crate::gpu::support::homes(&program);
        let homes = roots.iter().map(|&r| homes[r]).collect();
        Ok(Model {
            program,
            kernels,
            weights,
            dtypes,
            roots,
            places,
            state_bytes,
            homes,
            #[cfg(feature = "gpu")]
            gpu: None,
            weight_check: None,
        })
    }

    /// Like [`Model::new`], then checks the program's placement and plan against `gpu`'s limits
    /// and uploads the weights its GPU steps read. The program's GPU steps then run on `gpu`.
    #[cfg(feature = "gpu")]
    pub fn new_on_gpu(
        program: Program,
        entries: &[SharedBytes],
        gpu: Arc<crate::gpu::Gpu>,
    ) -> Result<Arc<Model>, RuntimeError> {
        Model::build_on_gpu(program, entries, gpu).map(Arc::new)
    }

    #[cfg(feature = "gpu")]
    fn build_on_gpu(
        program: Program,
        entries: &[SharedBytes],
        gpu: Arc<crate::gpu::Gpu>,
    ) -> Result<Model, RuntimeError> {
        let mut model = Model::build(program, entries)?;
        let value_inputs = |si: usize| model.kernels[si].value_inputs().to_vec();
        let prepared = crate::gpu::exec::prepare(
            gpu,
            &model.program,
            &model.places,
            &model.roots,
            &model.homes,
            &model.weights,
            &value_inputs,
        )
        .map_err(|e| RuntimeError::Program(e.to_string()))?;
        model.gpu = Some(prepared);
        Ok(model)
    }

    /// The GPU this model runs its GPU steps on, if it was loaded onto one.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&Arc<crate::gpu::Gpu>> {
        self.gpu.as_ref().map(|g| &g.gpu)
    }

    /// The device holding this model's KV states, when it appends to them on a GPU.
    #[cfg(feature = "gpu")]
    pub(crate) fn state_device(&self) -> Option<&wgpu::Device> {
        let gpu = self.gpu.as_ref()?;
        self.keeps_state_on_gpu().then_some(&gpu.gpu.device)
    }

    /// Whether this model appends to its KV states on a GPU (so they live in its memory).
    pub(crate) fn keeps_state_on_gpu(&self) -> bool {
        self.runs_on_gpu() && self.program.states.first().is_some_and(|s| self.homes[s.present as usize] == Device::Gpu)
    }

    /// Whether GPU steps run on a GPU (else every step runs on CPU).
    pub fn runs_on_gpu(&self) -> bool {
        #[cfg(feature = "gpu")]
        return self.gpu.is_some();
        #[cfg(not(feature = "gpu"))]
        false
    }

    /// Steps placed on (GPU, CPU), transfers excluded.
    pub fn placement_counts(&self) -> (usize, usize) {
        let transfers = |s: &&kiln_formats::program::Step| {
            s.domain == ops::KILN_DOMAIN && matches!(s.op.as_str(), "ToGpu" | "ToCpu")
        };
        let gpu = self.program.steps.iter().filter(|s| s.on_gpu() && !transfers(s)).count();
        let cpu = self.program.steps.iter().filter(|s| !s.on_gpu() && !transfers(s)).count();
        (gpu, cpu)
    }

    /// The program this model runs.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Bytes of weights one run reads whole: every constant a step takes, each counted once,
    /// except the tables `Gather` reads only rows of (embeddings). The weight traffic of a
    /// decoded token, for a roofline against the machine's read bandwidth.
    pub fn weight_bytes_read(&self) -> u64 {
        let mut read = vec![false; self.weights.len()];
        for step in &self.program.steps {
            let gathered = step.op == "Gather" && matches!(step.domain.as_str(), "" | "ai.onnx");
            for (i, &slot) in step.inputs.iter().enumerate() {
                // A view of a weight (a reshaped one) reads the weight its root is.
                if let Some(&Place::Weight(w)) = self.roots.get(slot as usize).map(|&root| &self.places[root]) {
                    read[w] |= !(gathered && i == 0);
                }
            }
        }
        self.weights.iter().zip(&read).filter(|(_, &r)| r).map(|(w, _)| w.len() as u64).sum()
    }

    /// Bytes a session of this model allocates up front: the sum of its arena buffers.
    pub fn arena_bytes(&self) -> u64 {
        self.program.buffers.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// Names of the inputs, in the order [`crate::Session::run`] takes them.
    pub fn input_names(&self) -> Vec<&str> {
        self.program.inputs.iter().map(|&i| self.program.values[i as usize].name.as_str()).collect()
    }

    /// Whether the program keeps a KV cache state between runs ([`crate::KvState`]).
    pub fn has_state(&self) -> bool {
        !self.program.states.is_empty()
    }

    /// Names of the outputs, in the order [`crate::Session::run`] returns them.
    pub fn output_names(&self) -> Vec<&str> {
        self.program.outputs.iter().map(|&i| self.program.values[i as usize].name.as_str()).collect()
    }
}

/// Checks the program's states and returns their buffer sizes: each has a sane layout, its past
/// and present slots match it, `present` is written by one `kiln::KvAppend` of its capacity, and
/// every step that reads a state can read its pitched layout (an append, a `Shape`, or a kiln op
/// reading it where [`ops::kv_cache::pitch_attr`] names a pitch attribute, equal to the
/// capacity). No view may alias a state.
fn check_states(
    program: &Program,
    dtypes: &[DType],
    places: &[Place],
    roots: &[usize],
) -> Result<Vec<usize>, RuntimeError> {
    let bad = |m: String| RuntimeError::Program(m);
    let n = program.values.len();
    let mut sizes = Vec::with_capacity(program.states.len());
    for (i, s) in program.states.iter().enumerate() {
        let err = |m: String| bad(format!("state {i} '{}': {m}", s.name));
        let dtype = DType::from_onnx_code(s.dtype).ok_or_else(|| err(format!("unknown dtype {}", s.dtype)))?;
        let axis = s.axis as usize;
        let dims: Option<Vec<usize>> = s.dims.iter().map(|&d| usize::try_from(d).ok()).collect();
        let size = dims.as_deref().and_then(|d| byte_size(dtype, d)).filter(|&b| b <= isize::MAX as usize);
        let (Some(dims), Some(size)) = (dims, size) else {
            return Err(err(format!("dims {:?} overflow", s.dims)));
        };
        if axis >= dims.len() {
            return Err(err(format!("axis {axis} is outside rank {}", dims.len())));
        }
        for (what, slot) in [("past", s.past), ("present", s.present)] {
            let slot = slot as usize;
            if slot >= n || places[slot] != Place::State(i) || dtypes[slot] != dtype {
                return Err(err(format!("its {what} slot {slot} is not a {dtype} view of it")));
            }
            let v = &program.values[slot];
            let fits = v.dims.len() == dims.len()
                && v.dims
                    .iter()
                    .zip(&dims)
                    .enumerate()
                    .all(|(a, (d, &c))| a == axis || !d.symbol.is_empty() || d.value == c as i64);
            if !fits {
                return Err(err(format!("its {what} value '{}' does not match dims {:?}", v.name, s.dims)));
            }
        }
        if s.past == s.present
            || program.inputs.contains(&s.past)
            || (0..program.outputs.len())
                .any(|o| program.output_slots(o).iter().any(|&x| x == s.past || x == s.present))
        {
            return Err(err("its past and present must be two slots, neither an input nor an output".into()));
        }
        sizes.push(size);
    }
    for (i, &r) in roots.iter().enumerate() {
        if r != i && matches!(places[r], Place::State(_)) {
            return Err(bad(format!(
                "value '{}' is a view of KV state value '{}'",
                program.values[i].name, program.values[r].name
            )));
        }
    }
    let state_of = |slot: u32| match places.get(slot as usize) {
        Some(Place::State(i)) => Some(*i),
        _ => None,
    };
    let mut appended = vec![false; program.states.len()];
    for (si, step) in program.steps.iter().enumerate() {
        let err = |m: String| bad(format!("step {si} ({} '{}'): {m}", step.op, step.name));
        let attrs = Attrs(&step.attrs);
        let kiln = step.domain == ops::KILN_DOMAIN;
        if let Some(i) = step.outputs.iter().find_map(|&o| state_of(o)) {
            let s = &program.states[i];
            let ok = kiln
                && step.op == ops::kv_cache::KV_APPEND
                && step.outputs == [s.present]
                && step.inputs.first() == Some(&s.past)
                && attrs.int("capacity", -1).ok() == Some(s.dims[s.axis as usize] as i64)
                && attrs.int("axis", -1).ok() == Some(s.axis as i64)
                && !appended[i];
            if !ok {
                return Err(err(format!("writes KV state '{}' but is not its one append", s.name)));
            }
            appended[i] = true;
        }
        for (k, &x) in step.inputs.iter().enumerate() {
            let Some(i) = (x != NO_VALUE).then(|| state_of(x)).flatten() else { continue };
            let s = &program.states[i];
            let rank = s.dims.len();
            let pitch = kiln.then(|| ops::kv_cache::pitch_attr(&step.op, k)).flatten();
            let ok = if kiln && step.op == ops::kv_cache::KV_APPEND {
                k == 0 && x == s.past
            } else if let Some(pitch) = pitch {
                s.axis as usize + 2 == rank && attrs.int(pitch, 0).ok() == Some(s.dims[s.axis as usize] as i64)
            } else {
                step.op == "Shape" && step.domain.is_empty()
            };
            if !ok {
                return Err(err(format!("reads KV state '{}' but cannot read its pitched layout", s.name)));
            }
        }
    }
    if let Some(i) = appended.iter().position(|&a| !a) {
        return Err(bad(format!("state {i} '{}' is never appended to", program.states[i].name)));
    }
    Ok(sizes)
}
