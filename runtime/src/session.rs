//! Executes a [`Model`]: one kernel call per step, each writing into the storage the plan gave its
//! outputs (an arena range, or a per-session buffer reused across runs for unplanned values).

use crate::error::{KernelError, RuntimeError};
use crate::infer_memo::InferMemo;
use crate::kernel::{RunCx, ShapeInput};
use crate::model::{Model, Place};
use crate::state::KvState;
use crate::view::{TensorMut, TensorRef};
use kiln_formats::program::NO_VALUE;
use kiln_formats::tensor::{byte_size, read_i64};
use kiln_formats::{AlignedBuf, Dim, Tensor};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A step's inputs or outputs, on the stack for up to six.
type Steps<T> = SmallVec<[T; 6]>;

/// Per-thread execution state over a shared [`Model`].
pub struct Session {
    model: Arc<Model>,
    arena: Vec<AlignedBuf>,
    dynamic: Vec<AlignedBuf>,
    shapes: Vec<Vec<usize>>,
    /// Where in-place steps copy a chunk of the input they overwrite.
    scratch: AlignedBuf,
    profile: Option<Profile>,
    /// The KV cache of the run in progress (the caller's, swapped in for the run).
    state: KvState,
    /// The cache [`Session::run`] uses for a program that keeps one: emptied before each run.
    own_state: Option<KvState>,
    /// Most bytes the values sized at run time (outside the plan) may hold together.
    dynamic_limit: Option<usize>,
    /// Device memory, when the model runs its GPU steps on a GPU.
    #[cfg(feature = "gpu")]
    gpu: Option<crate::gpu::exec::GpuMemory>,
    /// Per step, its last shape inference (CPU models only: GPU steps need inference's values).
    memos: Vec<Option<InferMemo>>,
}

/// Where a session's time went, by op type; copying the caller's inputs in and the outputs out
/// are counted as `(inputs)` and `(outputs)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Op type → (total time, calls).
    pub ops: BTreeMap<String, (Duration, u64)>,
}

impl Profile {
    fn add(&mut self, key: &str, d: Duration) {
        let e = self.ops.entry(key.to_string()).or_default();
        e.0 += d;
        e.1 += 1;
    }

    /// Total time recorded.
    pub fn total(&self) -> Duration {
        self.ops.values().map(|(d, _)| *d).sum()
    }
}

impl Session {
    /// A session with its arena allocated once, up front.
    pub fn new(model: Arc<Model>) -> Session {
        // With a GPU, the host allocates only the buffers holding host values.
        let mut on_host = vec![!model.runs_on_gpu(); model.program.buffers.len()];
        for (i, p) in model.places.iter().enumerate() {
            if let (Place::Arena { buffer, .. }, kiln_formats::program::Device::Cpu) = (p, model.homes[i]) {
                on_host[*buffer] = true;
            }
        }
        let arena = model
            .program
            .buffers
            .iter()
            .zip(on_host)
            .map(|(&b, host)| if host { AlignedBuf::zeroed(b as usize) } else { AlignedBuf::default() })
            .collect();
        #[cfg(feature = "gpu")]
        let gpu = model
            .gpu
            .as_ref()
            .map(|g| crate::gpu::exec::GpuMemory::new(g, &model.program, &model.places, &model.homes));
        let n = model.program.values.len();
        // Constants have fixed shapes, checked against their bytes when the model was loaded.
        let shapes = (0..n)
            .map(|i| match model.places[i] {
                Place::Weight(_) => model.program.values[i].dims.iter().map(|d| d.value as usize).collect(),
                _ => Vec::new(),
            })
            .collect();
        Session {
            model,
            arena,
            dynamic: vec![AlignedBuf::default(); n],
            shapes,
            scratch: AlignedBuf::default(),
            profile: None,
            state: KvState::default(),
            own_state: None,
            dynamic_limit: crate::memory::default_dynamic_limit(),
            #[cfg(feature = "gpu")]
            gpu,
            memos: Vec::new(),
        }
    }

    /// Bounds the bytes this session allocates at run time for values whose size the plan could
    /// not know (data-dependent shapes); default half the machine's memory, `None` for no bound.
    pub fn set_dynamic_limit(&mut self, bytes: Option<usize>) {
        self.dynamic_limit = bytes;
    }

    /// Starts (or stops) recording time per op type; starting clears what was recorded.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Profile::default);
    }

    /// What was recorded since profiling started, leaving an empty record behind.
    pub fn take_profile(&mut self) -> Option<Profile> {
        self.profile.as_mut().map(std::mem::take)
    }

    fn record(&mut self, key: &str, since: Option<Instant>) {
        if let (Some(p), Some(t)) = (self.profile.as_mut(), since) {
            p.add(key, t.elapsed());
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Runs the program on `inputs` (in [`Model::input_names`] order) and returns the outputs. A
    /// program that keeps a KV cache ([`Model::has_state`]) starts from an empty one.
    pub fn run(&mut self, inputs: &[TensorRef]) -> Result<Vec<Tensor>, RuntimeError> {
        if !self.model.has_state() {
            return self.run_steps(inputs);
        }
        let mut state = self.own_state.take().unwrap_or_else(|| KvState::new(&self.model));
        state.clear();
        let result = self.run_with_state(inputs, &mut state);
        self.own_state = Some(state);
        result
    }

    /// Runs the program after the positions already in `state` (made by [`KvState::new`] for
    /// this program or one with the same states), appending this run's positions to it.
    pub fn run_with_state(&mut self, inputs: &[TensorRef], state: &mut KvState) -> Result<Vec<Tensor>, RuntimeError> {
        state.check(&self.model)?;
        std::mem::swap(&mut self.state, state);
        let result = self.run_steps(inputs);
        std::mem::swap(&mut self.state, state);
        result
    }

    fn run_steps(&mut self, inputs: &[TensorRef]) -> Result<Vec<Tensor>, RuntimeError> {
        crate::warm_pool::on_pool(|| self.run_steps_in_pool(inputs))
    }

    fn run_steps_in_pool(&mut self, inputs: &[TensorRef]) -> Result<Vec<Tensor>, RuntimeError> {
        let model = self.model.clone();
        let prog = &model.program;
        if inputs.len() != prog.inputs.len() {
            return Err(RuntimeError::Input {
                name: "(all)".into(),
                reason: format!(
                    "the model takes {} inputs ({}), got {}",
                    prog.inputs.len(),
                    model.input_names().join(", "),
                    inputs.len()
                ),
            });
        }
        let started = self.profile.is_some().then(Instant::now);
        for (&slot, t) in prog.inputs.iter().zip(inputs) {
            self.set_input(slot as usize, t)?;
        }
        for (i, s) in prog.states.iter().enumerate() {
            self.shapes[s.past as usize] = self.state.filled_shape(i);
        }
        self.record("(inputs)", started);
        for si in 0..prog.steps.len() {
            let started = self.profile.is_some().then(Instant::now);
            self.step(&model, si).map_err(|source| {
                let step = &prog.steps[si];
                RuntimeError::Step { step: si, op: step.op.clone(), node: step.name.clone(), reason: source }
            })?;
            self.record(&prog.steps[si].op, started);
        }
        #[cfg(feature = "gpu")]
        if let (Some(mem), Some(gm)) = (self.gpu.as_mut(), model.gpu.as_ref()) {
            mem.finish(gm).map_err(|reason| RuntimeError::Step {
                step: prog.steps.len(),
                op: "(end of run)".into(),
                node: String::new(),
                reason,
            })?;
        }
        for (i, s) in prog.states.iter().enumerate() {
            let filled = self.shapes[s.present as usize].get(s.axis as usize).copied().unwrap_or(0);
            self.state.set_filled(i, filled);
        }
        // Outputs computed from weights whose checksums do not match never leave the run.
        let started = self.profile.is_some().then(Instant::now);
        if model.wait_for_weights()? {
            self.record("(weight checksums)", started);
        }
        let started = self.profile.is_some().then(Instant::now);
        let outputs = (0..prog.outputs.len()).map(|i| self.output(&model, i)).collect();
        self.record("(outputs)", started);
        outputs
    }

    /// Output `i` as an owned tensor: one slot's bytes, or its pieces concatenated.
    fn output(&self, model: &Model, i: usize) -> Result<Tensor, RuntimeError> {
        let prog = &model.program;
        let whole = prog.outputs[i] as usize;
        let err = |reason: String| RuntimeError::Value { name: prog.values[whole].name.clone(), reason };
        let pieces = prog.output_slots(i);
        let axis = prog.assembled.iter().find(|a| a.output as usize == i).map_or(0, |a| a.axis as usize);
        let first = pieces[0] as usize;
        let mut shape = self.shapes[first].clone();
        if pieces.len() > 1 && axis >= shape.len() {
            return Err(err(format!(
                "axis {axis} is outside piece '{}' of rank {}",
                prog.values[first].name,
                shape.len()
            )));
        }
        if pieces.len() > 1 {
            shape[axis] = pieces.iter().map(|&p| self.shapes[p as usize].get(axis).copied().unwrap_or(0)).sum();
        }
        let mut out = Tensor::zeros(model.dtypes[first], &shape).map_err(|e| err(e.to_string()))?;
        // Rows of the pieces interleave along `axis`: copy each piece's inner blocks in turn.
        let outer: usize = shape[..axis].iter().product();
        let es = model.dtypes[first].size();
        let row = shape[axis..].iter().product::<usize>() * es;
        let mut col = 0;
        for &p in &pieces {
            let p = p as usize;
            if self.shapes[p].len() != shape.len() || model.dtypes[p] != model.dtypes[first] {
                return Err(err(format!("piece '{}' does not match the other pieces", prog.values[p].name)));
            }
            let (ptr, len) = self.bytes(model, p);
            // SAFETY: `bytes` returns a range inside storage this session or the model owns.
            let data = unsafe { std::slice::from_raw_parts(ptr, len) };
            let block = self.shapes[p][axis..].iter().product::<usize>() * es;
            if block * outer != len {
                return Err(err(format!(
                    "piece '{}' holds {len} bytes, expected {}",
                    prog.values[p].name,
                    block * outer
                )));
            }
            for r in 0..outer {
                out.bytes_mut()[r * row + col..r * row + col + block]
                    .copy_from_slice(&data[r * block..(r + 1) * block]);
            }
            col += block;
        }
        if col != row {
            return Err(err(format!("pieces cover {col} of {row} bytes per row")));
        }
        Ok(out)
    }

    fn set_input(&mut self, slot: usize, t: &TensorRef) -> Result<(), RuntimeError> {
        let model = self.model.clone();
        let info = &model.program.values[slot];
        let err = |reason: String| RuntimeError::Input { name: info.name.clone(), reason };
        if t.dtype != model.dtypes[slot] {
            return Err(err(format!("expected {} data, got {}", model.dtypes[slot], t.dtype)));
        }
        if t.shape.len() != info.dims.len() {
            return Err(err(format!(
                "expected rank {} ({}), got shape {:?}",
                info.dims.len(),
                describe_dims(info),
                t.shape
            )));
        }
        for (axis, (d, &got)) in info.dims.iter().zip(t.shape).enumerate() {
            if d.symbol.is_empty() && d.value != got as i64 {
                return Err(err(format!("dim {axis} must be {}, got {got} (shape {:?})", d.value, t.shape)));
            }
        }
        let len = t.data.len();
        if byte_size(t.dtype, t.shape) != Some(len) {
            return Err(err(format!("{} bytes do not hold shape {:?}", len, t.shape)));
        }
        self.shapes[slot] = t.shape.to_vec();
        let dst = self.storage_for(&model, slot, len).map_err(|e| err(e.to_string()))?;
        dst.copy_from_slice(t.data);
        Ok(())
    }

    /// Makes room for `len` bytes of `slot` (a root) and returns them.
    fn storage_for(&mut self, model: &Model, slot: usize, len: usize) -> Result<&mut [u8], KernelError> {
        match model.places[slot] {
            Place::Dynamic => {
                if let Some(limit) = self.dynamic_limit {
                    let others: usize =
                        self.dynamic.iter().map(AlignedBuf::len).sum::<usize>() - self.dynamic[slot].len();
                    if others.saturating_add(len) > limit {
                        return Err(KernelError::invalid(format!(
                            "value '{}' needs {len} bytes at run time; with the {others} bytes of other run-time \
                             values that exceeds the session's limit of {limit} bytes",
                            model.program.values[slot].name
                        )));
                    }
                }
                self.dynamic[slot].resize(len);
                Ok(self.dynamic[slot].as_mut_slice())
            }
            Place::Arena { buffer, offset, capacity } => {
                if len > capacity {
                    return Err(KernelError::invalid(format!(
                        "value '{}' needs {len} bytes but the plan reserved {capacity}: an input exceeds the dim bounds it was compiled for",
                        model.program.values[slot].name
                    )));
                }
                Ok(&mut self.arena[buffer].as_mut_slice()[offset..offset + len])
            }
            Place::Weight(_) => Err(KernelError::invalid("a constant cannot be written")),
            Place::State(i) => {
                let extent = self.state.extent(i, &self.shapes[slot]).ok_or_else(|| {
                    KernelError::invalid(format!(
                        "KV state value '{}' of shape {:?} does not fit the cache",
                        model.program.values[slot].name, self.shapes[slot]
                    ))
                })?;
                Ok(&mut self.state.buffer_mut(i).as_mut_slice()[..extent])
            }
        }
    }

    /// Pointer and current byte length of a slot's data.
    fn bytes(&self, model: &Model, slot: usize) -> (*const u8, usize) {
        let root = model.roots[slot];
        if self.on_device(model, slot) {
            return ([].as_ptr(), 0);
        }
        let len = byte_size(model.dtypes[slot], &self.shapes[slot]).unwrap_or(0);
        match model.places[root] {
            Place::Dynamic => (self.dynamic[root].as_slice().as_ptr(), len.min(self.dynamic[root].len())),
            Place::Arena { buffer, offset, capacity } => {
                (self.arena[buffer].as_slice()[offset..].as_ptr(), len.min(capacity))
            }
            Place::Weight(w) => (model.weights[w].as_slice().as_ptr(), len.min(model.weights[w].len())),
            // A state view spans its rows at the cache's pitch.
            Place::State(i) => {
                (self.state.buffer(i).as_slice().as_ptr(), self.state.extent(i, &self.shapes[root]).unwrap_or(0))
            }
        }
    }

    /// Whether `slot`'s bytes are in device memory (so the host cannot read them).
    fn on_device(&self, model: &Model, slot: usize) -> bool {
        model.runs_on_gpu()
            && model.homes[slot] == kiln_formats::program::Device::Gpu
            && !matches!(model.places[model.roots[slot]], Place::Weight(_))
    }

    fn step(&mut self, model: &Model, si: usize) -> Result<(), KernelError> {
        let step = &model.program.steps[si];
        let kernel = &model.kernels[si];
        let value_inputs = kernel.value_inputs();

        // Stack vectors: a step runs about 1500 times per decoded token, and these were six of
        // its allocations.
        let in_slots: Steps<Option<usize>> =
            step.inputs.iter().map(|&i| (i != NO_VALUE).then_some(i as usize)).collect();
        // The state a step appends to is handed to it as its output only; the input view of it
        // carries just its shape.
        let written_state = step.outputs.iter().find_map(|&o| match model.places[o as usize] {
            Place::State(i) => Some(i),
            _ => None,
        });
        let in_data: Steps<Option<&[u8]>> = in_slots
            .iter()
            .map(|s| {
                s.filter(|&s| !self.on_device(model, s)).map(|s| {
                    if written_state.is_some_and(|i| model.places[model.roots[s]] == Place::State(i)) {
                        return &[][..];
                    }
                    let (p, l) = self.bytes(model, s);
                    // SAFETY: a range inside live storage; nothing writes it during this step's inference.
                    unsafe { std::slice::from_raw_parts(p, l) }
                })
            })
            .collect();
        let mut in_values = Vec::new();
        let memo = if model.runs_on_gpu() { None } else { self.memos.get_mut(si).and_then(Option::take) };
        let lens = match memo.filter(|m| m.matches(&self.shapes, &in_slots, &in_data, value_inputs)) {
            Some(memo) => {
                for (&o, shape) in step.outputs.iter().zip(&memo.outputs) {
                    self.shapes[o as usize].clone_from(shape);
                }
                let lens = Steps::from_slice(&memo.lens);
                self.memos[si] = Some(memo);
                lens
            }
            None => Steps::from_vec(self.infer_step(model, si, &in_slots, &in_data, &mut in_values)?),
        };
        if lens.iter().all(Option::is_none) {
            return Ok(());
        }
        #[cfg(feature = "gpu")]
        if model.runs_on_gpu() && (step.on_gpu() || step.op == crate::gpu::support::TO_CPU) {
            return self.gpu_step(model, si, &in_slots, &in_values);
        }

        let mut out_ptrs: Steps<_> = SmallVec::with_capacity(step.outputs.len());
        for (&o, len) in step.outputs.iter().zip(&lens) {
            out_ptrs.push(match *len {
                Some(len) => {
                    let buf = self.storage_for(model, o as usize, len)?;
                    Some((buf.as_mut_ptr(), buf.len()))
                }
                None => None,
            });
        }
        if let (Some(x), Some(Some((ptr, len)))) = (step.in_place_input(), out_ptrs.first()) {
            if std::ptr::eq(self.bytes(model, x as usize).0, *ptr) {
                return self.run_in_place(model, si, x as usize, *ptr, *len);
            }
        }
        let inputs: Steps<Option<TensorRef>> = in_slots
            .iter()
            .zip(&in_data)
            .map(|(s, d)| {
                s.map(|s| TensorRef { dtype: model.dtypes[s], shape: &self.shapes[s], data: d.unwrap_or_default() })
            })
            .collect();
        let mut outputs: Steps<TensorMut> = SmallVec::with_capacity(out_ptrs.len());
        for (k, p) in out_ptrs.iter().enumerate() {
            let o = step.outputs[k] as usize;
            let data: &mut [u8] = match p {
                // SAFETY: the range was just sized for this output; the plan (checked by the
                // verifier) keeps it disjoint from every input and other output of this step.
                Some((ptr, len)) => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
                // A view output of a step that also writes real outputs: the view aliases its
                // input, so it is given an empty buffer rather than a second mutable alias.
                None => &mut [],
            };
            outputs.push(TensorMut { dtype: model.dtypes[o], shape: &self.shapes[o], data });
        }
        kernel.run(&inputs, &mut outputs)
    }
}

#[cfg(feature = "gpu")]
impl Session {
    /// Runs step `si` on the device (or, for a `kiln::ToCpu`, copies its input back to the host).
    fn gpu_step(
        &mut self,
        model: &Model,
        si: usize,
        in_slots: &[Option<usize>],
        in_values: &[Option<Vec<Dim>>],
    ) -> Result<(), KernelError> {
        use crate::gpu::exec::StepContext;
        use crate::gpu::kernels::Call;
        use crate::gpu::support::{TO_CPU, TO_GPU};
        let step = &model.program.steps[si];
        let name = |i: usize| model.program.values[i].name.as_str();
        let gm = model.gpu.as_ref().ok_or_else(|| KernelError::invalid("no GPU"))?;
        let x = in_slots.first().copied().flatten();
        if step.domain == crate::ops::KILN_DOMAIN && (step.op == TO_GPU || step.op == TO_CPU) {
            let (x, o) = (x.ok_or_else(|| KernelError::input(0, "is required"))?, step.outputs[0] as usize);
            let len = self.len_of(model, o);
            if step.op == TO_GPU {
                let (p, l) = self.bytes(model, x);
                // SAFETY: `bytes` returns a range inside live host storage.
                let data = unsafe { std::slice::from_raw_parts(p, l.min(len)) };
                let mem = self.gpu.as_mut().ok_or_else(|| KernelError::invalid("no GPU memory"))?;
                return mem.upload(gm, &model.places, model.roots[o], name(o), data);
            }
            let out = self.storage_for(model, o, len)?;
            let (ptr, out_len) = (out.as_mut_ptr(), out.len());
            // SAFETY: the range was just sized for this output, in host storage no input shares.
            let out = unsafe { std::slice::from_raw_parts_mut(ptr, out_len) };
            let mem = self.gpu.as_mut().ok_or_else(|| KernelError::invalid("no GPU memory"))?;
            return mem.download(gm, &model.places, model.roots[x], name(x), out);
        }
        let inputs: Vec<Option<Vec<usize>>> = in_slots.iter().map(|s| s.map(|s| self.shapes[s].clone())).collect();
        let values: Vec<Option<Vec<i64>>> =
            in_values.iter().map(|v| v.as_ref().map(|v| v.iter().filter_map(Dim::known).collect())).collect();
        let outputs: Vec<Vec<usize>> = step.outputs.iter().map(|&o| self.shapes[o as usize].clone()).collect();
        let ctx = StepContext {
            step: si,
            places: &model.places,
            states: &self.state.device,
            inputs: in_slots.iter().map(|s| s.map(|s| (model.roots[s], self.len_of(model, s), name(s)))).collect(),
            outputs: step
                .outputs
                .iter()
                .map(|&o| (model.roots[o as usize], self.len_of(model, o as usize), name(o as usize)))
                .collect(),
        };
        let mem = self.gpu.as_mut().ok_or_else(|| KernelError::invalid("no GPU memory"))?;
        mem.run(gm, &ctx, &Call { inputs: &inputs, values: &values, outputs: &outputs })
    }
}

impl Session {
    /// Bytes of `slot` at its current shape.
    fn len_of(&self, model: &Model, slot: usize) -> usize {
        byte_size(model.dtypes[slot], &self.shapes[slot]).unwrap_or(0)
    }

    /// Shape inference for step `si` (inputs `in_slots`, their bytes `in_data`): sets its
    /// outputs' shapes, remembers the answer, and returns the bytes each output needs stored.
    /// `values_out` receives the value inputs' elements (the GPU steps read them).
    fn infer_step(
        &mut self,
        model: &Model,
        si: usize,
        in_slots: &[Option<usize>],
        in_data: &[Option<&[u8]>],
        values_out: &mut Vec<Option<Vec<Dim>>>,
    ) -> Result<Vec<Option<usize>>, KernelError> {
        let step = &model.program.steps[si];
        let kernel = &model.kernels[si];
        let value_inputs = kernel.value_inputs();
        let in_dims: Vec<Vec<Dim>> = in_slots
            .iter()
            .map(|s| s.map(|s| self.shapes[s].iter().map(|&d| Dim::Known(d as i64)).collect()).unwrap_or_default())
            .collect();
        let in_values: Vec<Option<Vec<Dim>>> = in_slots
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let s = (*s)?;
                if !value_inputs.contains(&k) {
                    return None;
                }
                let dt = model.dtypes[s];
                let data = in_data[k]?;
                let n = data.len() / dt.size();
                (0..n).map(|i| read_i64(dt, data, i).map(Dim::Known)).collect()
            })
            .collect();
        let shape_inputs: Vec<Option<ShapeInput>> = in_slots
            .iter()
            .enumerate()
            .map(|(k, s)| {
                s.map(|s| ShapeInput {
                    dtype: model.dtypes[s],
                    shape: &in_dims[k],
                    value: in_values[k].as_deref(),
                    data: in_data[k],
                })
            })
            .collect();
        let memo = (!model.runs_on_gpu()).then(|| InferMemo::key(&self.shapes, in_slots, in_data, value_inputs));
        let outs = kernel.infer(&shape_inputs, &mut RunCx)?;
        if outs.len() < step.outputs.len() {
            return Err(KernelError::invalid(format!(
                "kernel produced {} outputs, the program expects {}",
                outs.len(),
                step.outputs.len()
            )));
        }
        drop(shape_inputs);
        let lens = self.set_output_shapes(model, si, &outs)?;
        if let Some(mut memo) = memo {
            memo.outputs = step.outputs.iter().map(|&o| self.shapes[o as usize].clone()).collect();
            memo.lens = lens.clone();
            if self.memos.len() != model.program.steps.len() {
                self.memos = (0..model.program.steps.len()).map(|_| None).collect();
            }
            self.memos[si] = Some(memo);
        }
        *values_out = in_values;
        Ok(lens)
    }

    /// Records the shapes inference gave step `si`'s outputs, checking them against the program;
    /// returns each output's byte length, or `None` for a view (whose bytes are its source's).
    fn set_output_shapes(
        &mut self,
        model: &Model,
        si: usize,
        outs: &[crate::kernel::OutputInfo],
    ) -> Result<Vec<Option<usize>>, KernelError> {
        let step = &model.program.steps[si];
        let mut lens = Vec::with_capacity(step.outputs.len());
        for (k, &o) in step.outputs.iter().enumerate() {
            let o = o as usize;
            let info = &outs[k];
            if info.dtype != model.dtypes[o] {
                return Err(KernelError::invalid(format!(
                    "output '{}' is {} but the program declares {}",
                    model.program.values[o].name, info.dtype, model.dtypes[o]
                )));
            }
            let shape = crate::kernel::concrete(&info.shape)?;
            let len = byte_size(info.dtype, &shape)
                .ok_or_else(|| KernelError::invalid(format!("output shape {shape:?} overflows")))?;
            self.shapes[o] = shape;
            if model.roots[o] == o {
                lens.push(Some(len));
                continue;
            }
            let root_len = self.len_of(model, model.roots[o]);
            if len != root_len {
                return Err(KernelError::invalid(format!(
                    "view '{}' has {len} bytes, its source {root_len}",
                    model.program.values[o].name
                )));
            }
            lens.push(None);
        }
        Ok(lens)
    }
}

/// Bytes of the input copied aside per chunk when a step overwrites its own input.
const IN_PLACE_CHUNK: usize = 64 * 1024;

impl Session {
    /// Runs an elementwise step whose output occupies the bytes of its input `x`: a chunk of `x`
    /// at a time is copied aside and the kernel reads the copy while writing that chunk of the
    /// output, so no input and output slices ever alias. The other operand is read in matching
    /// chunks (same shape) or whole (broadcast over leading axes); any other broadcast copies
    /// all of `x` aside first.
    fn run_in_place(
        &mut self,
        model: &Model,
        si: usize,
        x: usize,
        out: *mut u8,
        len: usize,
    ) -> Result<(), KernelError> {
        let step = &model.program.steps[si];
        let kernel = &model.kernels[si];
        let o = step.outputs[0] as usize;
        let dtype = model.dtypes[o];
        let es = dtype.size();
        let shape = self.shapes[o].clone();
        if model.dtypes[x] != dtype || self.shapes[x] != shape || self.bytes(model, x).1 != len {
            return Err(KernelError::invalid(format!(
                "in place: '{}' {:?} cannot hold '{}' {:?}",
                model.program.values[x].name, self.shapes[x], model.program.values[o].name, shape
            )));
        }
        let j = step.in_place as usize - 1;
        let others: Vec<(usize, usize)> = step
            .inputs
            .iter()
            .enumerate()
            .filter(|&(k, &i)| k != j && i != NO_VALUE)
            .map(|(k, &i)| (k, i as usize))
            .collect();
        if others.iter().any(|&(_, i)| model.roots[i] == model.roots[x]) || others.len() > 1 {
            return Err(KernelError::invalid(
                "in place: the overwritten input is read twice, or there are over two operands",
            ));
        }
        let numel = len / es.max(1);
        // Whole repeats of the block from axis `t` go in one chunk; `None`: chunks of any size.
        let block_axis = match others.first() {
            Some(&(_, i)) if self.shapes[i] != shape => Some(repeat_axis(&self.shapes[i], &shape).unwrap_or(0)),
            _ => None,
        };
        let period = block_axis.map_or(1, |t| shape[t..].iter().product::<usize>().max(1));
        let rows_per_chunk = (IN_PLACE_CHUNK / (period * es).max(1)).max(1);
        let chunk_elems = rows_per_chunk * period;
        if self.scratch.len() < chunk_elems.min(numel) * es {
            self.scratch.resize(chunk_elems.min(numel) * es);
        }
        let other = others.first().map(|&(k, i)| {
            let (p, l) = self.bytes(model, i);
            // SAFETY: a live value the verifier keeps disjoint from this step's output.
            (k, i, unsafe { std::slice::from_raw_parts(p, l) })
        });
        let mut start = 0;
        while start < numel {
            let n = chunk_elems.min(numel - start);
            let (a, b) = (start * es, (start + n) * es);
            // SAFETY: `out` holds `len` bytes of this session's arena, exclusively this step's.
            let src = unsafe { std::slice::from_raw_parts(out.add(a), b - a) };
            self.scratch.as_mut_slice()[..b - a].copy_from_slice(src);
            let chunk_shape: Vec<usize> = match block_axis {
                None => vec![n],
                Some(t) => chunk_shape(&shape, t, n / period, other.map_or(0, |(_, i, _)| self.shapes[i].len())),
            };
            let mut inputs: Vec<Option<TensorRef>> = vec![None; step.inputs.len()];
            inputs[j] = Some(TensorRef { dtype, shape: &chunk_shape, data: &self.scratch.as_slice()[..b - a] });
            if let Some((k, i, data)) = other {
                inputs[k] = Some(match block_axis.is_some() {
                    true => TensorRef { dtype: model.dtypes[i], shape: &self.shapes[i], data },
                    false => TensorRef { dtype: model.dtypes[i], shape: &chunk_shape, data: &data[a..b] },
                });
            }
            // SAFETY: as above; the scratch copy, not this range, is what the kernel reads.
            let data = unsafe { std::slice::from_raw_parts_mut(out.add(a), b - a) };
            kernel.run(&inputs, &mut [TensorMut { dtype, shape: &chunk_shape, data }])?;
            start += n;
        }
        Ok(())
    }
}

/// When `other` broadcasts over `shape` by repeating one trailing block (its dims are 1 up to
/// axis `t` and equal to `shape`'s from `t` on), `t`.
fn repeat_axis(other: &[usize], shape: &[usize]) -> Option<usize> {
    let pad = shape.len().checked_sub(other.len())?;
    let padded: Vec<usize> = std::iter::repeat_n(1, pad).chain(other.iter().copied()).collect();
    let t = padded.iter().position(|&d| d != 1).unwrap_or(shape.len());
    (padded[t..] == shape[t..]).then_some(t)
}

/// `rows` repeats of `shape`'s block from axis `t`, as `[rows, shape[t..]]` with leading 1s up to
/// `rank`, so that broadcasting with the other operand keeps this shape.
fn chunk_shape(shape: &[usize], t: usize, rows: usize, rank: usize) -> Vec<usize> {
    let mut out = vec![rows];
    out.extend_from_slice(&shape[t..]);
    while out.len() < rank {
        out.insert(0, 1);
    }
    out
}

fn describe_dims(info: &kiln_formats::program::ValueInfo) -> String {
    let dims: Vec<String> =
        info.dims.iter().map(|d| if d.symbol.is_empty() { d.value.to_string() } else { d.symbol.clone() }).collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::{chunk_shape, repeat_axis};

    #[test]
    fn a_run_time_size_over_the_limit_is_refused_by_name() {
        use crate::{Model, Session, TensorRef};
        use kiln_formats::program::{DimInfo, Program, Step, Storage, ValueInfo};
        use kiln_formats::DType;
        let value = |name: &str, dtype: DType, dims: Vec<DimInfo>| ValueInfo {
            name: name.into(),
            dtype: dtype.onnx_code(),
            dims,
            storage: Some(Storage::dynamic()),
        };
        let sym = |s: &str| DimInfo { value: -1, symbol: s.into() };
        // y = Expand(x, shape): y's size is whatever the shape input says.
        let program = Program {
            values: vec![
                value("x", DType::F32, vec![DimInfo { value: 1, symbol: String::new() }]),
                value("shape", DType::I64, vec![DimInfo { value: 2, symbol: String::new() }]),
                value("y", DType::F32, vec![sym("a"), sym("b")]),
            ],
            steps: vec![Step {
                op: "Expand".into(),
                inputs: vec![0, 1],
                outputs: vec![2],
                opset: 13,
                ..Default::default()
            }],
            inputs: vec![0, 1],
            outputs: vec![2],
            alignment: 64,
            ..Default::default()
        };
        let model = Model::new(program, &[]).unwrap();
        let mut session = Session::new(model);
        session.set_dynamic_limit(Some(1 << 20));
        let x = [1f32];
        let run = |session: &mut Session, dims: [i64; 2]| {
            session.run(&[
                TensorRef { dtype: DType::F32, shape: &[1], data: bytemuck::cast_slice(&x) },
                TensorRef { dtype: DType::I64, shape: &[2], data: bytemuck::cast_slice(&dims) },
            ])
        };
        assert_eq!(run(&mut session, [16, 16]).unwrap()[0].shape, vec![16, 16]);
        let err = run(&mut session, [1 << 20, 1 << 20]).unwrap_err().to_string();
        assert!(err.contains("value 'y' needs 4398046511104 bytes") && err.contains("limit of 1048576"), "{err}");
    }

    #[test]
    fn broadcast_operands_repeat_a_trailing_block_or_not() {
        assert_eq!(repeat_axis(&[520], &[64, 520]), Some(1));
        assert_eq!(repeat_axis(&[1, 1, 8], &[2, 3, 8]), Some(2));
        assert_eq!(repeat_axis(&[3, 8], &[2, 3, 8]), Some(1));
        assert_eq!(repeat_axis(&[1], &[2, 3]), Some(2)); // a scalar repeats every element
        assert_eq!(repeat_axis(&[64, 1], &[64, 520]), None);
        assert_eq!(repeat_axis(&[1, 2, 3], &[2, 3]), None);
    }

    #[test]
    fn chunks_keep_the_broadcast_rank() {
        assert_eq!(chunk_shape(&[64, 520], 1, 31, 1), vec![31, 520]);
        assert_eq!(chunk_shape(&[2, 3, 8], 2, 5, 3), vec![1, 5, 8]);
        assert_eq!(chunk_shape(&[2, 3], 2, 4, 1), vec![4]);
    }
}
