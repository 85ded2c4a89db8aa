//! Running a program's GPU steps: the model's device-side weights, a session's device-side arena,
//! and the command stream. Dispatches are recorded into one command encoder and submitted only
//! when the host needs a result (a `kiln::ToCpu`) or the run ends, so a run of GPU steps costs one
//! submission. Uploads are recorded as buffer copies in the same stream, so they land after the
//! dispatches recorded before them, as the plan's reuse of arena ranges requires.

use super::kernels::{Arg, Call, Dispatch, GpuOp};
use super::support;
use super::{Gpu, GpuError};
use crate::error::KernelError;
use crate::model::Place;
use kiln_formats::program::{Device, Program, NO_VALUE};
use kiln_formats::SharedBytes;
use std::collections::HashMap;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Extra bytes past every device buffer's end, so that a 4-byte-rounded binding of the last value
/// (or of an empty one) stays inside it.
const SLACK: u64 = 16;

/// What a model keeps on the device: its weights (those GPU steps read) and prepared kernels.
pub(crate) struct GpuModel {
    pub gpu: Arc<Gpu>,
    weights: Vec<Option<wgpu::Buffer>>,
    ops: Vec<Option<GpuOp>>,
}

/// Checks a placed program against the device and uploads what its GPU steps read.
/// `homes` gives each slot's device, `roots` the slot owning its bytes.
pub(crate) fn prepare(
    gpu: Arc<Gpu>,
    program: &Program,
    places: &[Place],
    roots: &[usize],
    homes: &[Device],
    weights: &[SharedBytes],
    value_inputs: &dyn Fn(usize) -> Vec<usize>,
) -> Result<GpuModel, GpuError> {
    let limits = &gpu.limits;
    let align = u64::from(limits.min_storage_buffer_offset_alignment);
    let max_binding = limits.max_storage_buffer_binding_size;
    let name = |i: usize| program.values[i].name.as_str();
    let dtype = |i: u32| program.values.get(i as usize).and_then(|v| v.dtype());
    // Arena buffers the device holds, and every device value's range within its limits.
    for (i, &place) in places.iter().enumerate() {
        if homes[i] != Device::Gpu || roots[i] != i {
            continue;
        }
        if let Place::Arena { buffer, offset, capacity } = place {
            if !(offset as u64).is_multiple_of(align) {
                return Err(GpuError::Limit(format!(
                    "value '{}' is at arena offset {offset}, which is not a multiple of this device's \
                     storage offset alignment ({align} bytes); recompile for this device",
                    name(i)
                )));
            }
            let size = program.buffers[buffer];
            if padded(size) > limits.max_buffer_size || capacity as u64 > max_binding {
                return Err(GpuError::Limit(format!(
                    "arena buffer {buffer} ({size} bytes, value '{}' of {capacity}) exceeds this device's \
                     largest buffer ({} bytes) or binding ({max_binding} bytes); recompile with \
                     --max-buffer {max_binding}",
                    name(i),
                    limits.max_buffer_size
                )));
            }
        }
    }
    // A state is bound whole.
    for st in &program.states {
        let bytes = st.dims.iter().product::<u64>() * 4;
        if homes[st.present as usize] == Device::Gpu && bytes > max_binding {
            return Err(GpuError::Limit(format!(
                "KV state '{}' holds {bytes} bytes, more than this device's largest binding ({max_binding} \
                 bytes); compile with a smaller --max-context",
                st.name
            )));
        }
    }
    let mut ops = Vec::with_capacity(program.steps.len());
    let mut uploads = vec![false; weights.len()];
    let step_err = |si: usize, what: String| {
        let s = &program.steps[si];
        GpuError::Limit(format!("step {si} ({} '{}'): {what}", s.op, s.name))
    };
    for (si, step) in program.steps.iter().enumerate() {
        let shapes_only = support::reads_shapes_only(step);
        let values = value_inputs(si);
        for (k, &input) in step.inputs.iter().enumerate() {
            if input == NO_VALUE {
                continue;
            }
            let root = roots[input as usize];
            let weight = match places[root] {
                Place::Weight(w) => Some(w),
                _ => None,
            };
            let on_gpu = step.on_gpu() && step.op != support::TO_GPU && !values.contains(&k);
            let want = if on_gpu || step.op == support::TO_CPU { Device::Gpu } else { Device::Cpu };
            match weight {
                Some(w) if on_gpu => uploads[w] = true,
                Some(_) => {}
                None if shapes_only || homes[root] == want => {}
                None => {
                    return Err(step_err(
                        si,
                        format!("reads '{}' from {:?} memory but runs on {want:?}", name(input as usize), homes[root]),
                    ))
                }
            }
        }
        let views_only = !step.outputs.is_empty() && step.outputs.iter().all(|&o| roots[o as usize] != o as usize);
        if !step.on_gpu() || step.op == support::TO_GPU || views_only {
            ops.push(None);
            continue;
        }
        support::check(step, &dtype).map_err(|e| step_err(si, e))?;
        ops.push(Some(GpuOp::new(step, &dtype).map_err(|e| step_err(si, e.to_string()))?));
    }
    let mut buffers = Vec::with_capacity(weights.len());
    for (w, bytes) in weights.iter().enumerate() {
        if !uploads[w] {
            buffers.push(None);
            continue;
        }
        if bytes.len() as u64 > max_binding {
            return Err(GpuError::Limit(format!(
                "weight {w} has {} bytes, more than this device's largest binding ({max_binding} bytes); \
                 recompile with --max-buffer {max_binding} so the compiler splits it",
                bytes.len()
            )));
        }
        // Written straight from the mapped bundle into the mapped buffer: no host copy.
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("weight"),
            size: padded(bytes.len() as u64),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        {
            let mut view = buffer.get_mapped_range_mut(..).map_err(|e| GpuError::Device(e.to_string()))?;
            view.slice(..bytes.len()).copy_from_slice(bytes.as_slice());
        }
        buffer.unmap();
        buffers.push(Some(buffer));
    }
    Ok(GpuModel { gpu, weights: buffers, ops })
}

/// The size of the device buffer that holds `bytes`: whole words plus [`SLACK`].
fn padded(bytes: u64) -> u64 {
    bytes.next_multiple_of(4) + SLACK
}

/// A zeroed buffer of `size` bytes that kernels bind and transfers copy into and out of.
fn value_buffer(device: &wgpu::Device, label: &str, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A zeroed device buffer for a KV state of `bytes`.
pub(crate) fn state_buffer(device: &wgpu::Device, bytes: usize) -> wgpu::Buffer {
    value_buffer(device, "kv state", padded(bytes as u64))
}

/// A session's device memory and pending commands.
pub(crate) struct GpuMemory {
    arena: Vec<Option<wgpu::Buffer>>,
    dynamic: HashMap<usize, wgpu::Buffer>,
    encoder: Option<wgpu::CommandEncoder>,
}

/// Bytes rounded up to whole 4-byte words (bindings and copies are in words), at least one word.
fn words_len(len: usize) -> u64 {
    (len.max(1) as u64).next_multiple_of(4)
}

impl GpuMemory {
    /// Allocates the arena buffers that hold device values.
    pub fn new(gm: &GpuModel, program: &Program, places: &[Place], homes: &[Device]) -> GpuMemory {
        let mut used = vec![false; program.buffers.len()];
        for (i, p) in places.iter().enumerate() {
            if let (Place::Arena { buffer, .. }, Device::Gpu) = (p, homes[i]) {
                used[*buffer] = true;
            }
        }
        let arena = program
            .buffers
            .iter()
            .zip(used)
            .map(|(&size, used)| used.then(|| value_buffer(&gm.gpu.device, "arena", padded(size))))
            .collect();
        GpuMemory { arena, dynamic: HashMap::new(), encoder: None }
    }

    /// The device buffer and byte offset holding `root` (a slot owning its bytes), making room
    /// for `len` bytes when the slot is sized at run time.
    fn locate<'a>(
        &'a mut self,
        gm: &'a GpuModel,
        places: &[Place],
        states: &'a [wgpu::Buffer],
        root: usize,
        len: usize,
        dtype_name: &str,
    ) -> Result<(&'a wgpu::Buffer, u64), KernelError> {
        match places[root] {
            Place::Arena { buffer, offset, .. } => self
                .arena
                .get(buffer)
                .and_then(Option::as_ref)
                .map(|b| (b, offset as u64))
                .ok_or_else(|| KernelError::invalid(format!("'{dtype_name}' is not in device memory"))),
            Place::Weight(w) => gm
                .weights
                .get(w)
                .and_then(Option::as_ref)
                .map(|b| (b, 0))
                .ok_or_else(|| KernelError::invalid(format!("weight '{dtype_name}' was not uploaded"))),
            Place::Dynamic => {
                let need = words_len(len) + SLACK;
                if self.dynamic.get(&root).is_none_or(|b| b.size() < need) {
                    if need > gm.gpu.limits.max_storage_buffer_binding_size {
                        return Err(KernelError::invalid(format!(
                            "'{dtype_name}' needs {len} bytes at run time, more than this GPU's largest binding"
                        )));
                    }
                    let buffer = value_buffer(&gm.gpu.device, "dynamic", need.next_power_of_two());
                    self.dynamic.insert(root, buffer);
                }
                Ok((&self.dynamic[&root], 0))
            }
            Place::State(i) => states
                .get(i)
                .map(|b| (b, 0))
                .ok_or_else(|| KernelError::invalid(format!("KV state '{dtype_name}' is not in device memory"))),
        }
    }

    fn encoder(&mut self, gpu: &Gpu) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| gpu.device.create_command_encoder(&Default::default()))
    }

    /// Records the launches of GPU step `si`; `slots` and `lens` give each binding's slot root
    /// and byte length.
    pub fn run(&mut self, gm: &GpuModel, ctx: &StepContext, call: &Call) -> Result<(), KernelError> {
        let op = gm.ops.get(ctx.step).and_then(Option::as_ref).ok_or_else(|| KernelError::invalid("no GPU kernel"))?;
        for d in op.dispatches(call)? {
            self.launch(gm, ctx, &d)?;
        }
        Ok(())
    }

    fn launch(&mut self, gm: &GpuModel, ctx: &StepContext, d: &Dispatch) -> Result<(), KernelError> {
        let gpu = &gm.gpu;
        let pipeline = gpu.pipeline(d.shader).map_err(KernelError::invalid)?;
        let params = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::cast_slice(if d.params.is_empty() { &[0u32][..] } else { &d.params }),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let mut bound = Vec::with_capacity(d.args.len());
        for arg in &d.args {
            let (root, len, name) = match *arg {
                Arg::In(k) => ctx.inputs.get(k).copied().flatten(),
                Arg::Out(k) => ctx.outputs.get(k).copied(),
            }
            .ok_or_else(|| KernelError::invalid(format!("binding {arg:?} has no value")))?;
            let (buffer, offset) = self.locate(gm, ctx.places, ctx.states, root, len, name)?;
            // A state is bound whole: its views are pitched, their rows spread over all of it.
            let size = match ctx.places[root] {
                Place::State(_) => buffer.size() - SLACK,
                _ => words_len(len),
            };
            bound.push((buffer.clone(), offset, size));
        }
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() }];
        for (j, (buffer, offset, size)) in bound.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: j as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: *offset,
                    size: wgpu::BufferSize::new(*size),
                }),
            });
        }
        let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(d.shader.name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let encoder = self.encoder(gpu);
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        Ok(())
    }

    /// Records a copy of host bytes into device value `root`.
    pub fn upload(
        &mut self,
        gm: &GpuModel,
        places: &[Place],
        root: usize,
        name: &str,
        data: &[u8],
    ) -> Result<(), KernelError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut padded = data.to_vec();
        padded.resize(words_len(data.len()) as usize, 0);
        let staging = gm.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("upload"),
            contents: &padded,
            usage: wgpu::BufferUsages::COPY_SRC,
        });
        let (buffer, offset) = self.locate(gm, places, &[], root, data.len(), name)?;
        let buffer = buffer.clone();
        self.encoder(&gm.gpu).copy_buffer_to_buffer(&staging, 0, &buffer, offset, padded.len() as u64);
        Ok(())
    }

    /// Runs everything recorded, then copies device value `root` into `out`.
    pub fn download(
        &mut self,
        gm: &GpuModel,
        places: &[Place],
        root: usize,
        name: &str,
        out: &mut [u8],
    ) -> Result<(), KernelError> {
        if out.is_empty() {
            return self.finish(gm);
        }
        let size = words_len(out.len());
        let (buffer, offset) = self.locate(gm, places, &[], root, out.len(), name)?;
        let buffer = buffer.clone();
        let staging = gm.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.encoder(&gm.gpu).copy_buffer_to_buffer(&buffer, offset, &staging, 0, size);
        self.finish(gm)?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        wait(&gm.gpu)?;
        // Another thread's poll of the same device may be the one running this callback: wait
        // for it rather than assume this thread's wait ran it.
        let started = std::time::Instant::now();
        let mapped = loop {
            match rx.recv_timeout(std::time::Duration::from_millis(2)) {
                Ok(r) => break r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if started.elapsed().as_secs() < 60 => {
                    let _ = gm.gpu.device.poll(wgpu::PollType::Poll);
                }
                Err(_) => {
                    return Err(KernelError::invalid(format!("reading '{name}' back from the GPU did not complete")))
                }
            }
        };
        if let Err(e) = mapped {
            return Err(KernelError::invalid(format!("reading '{name}' back from the GPU: {e}")));
        }
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| KernelError::invalid(format!("reading '{name}' back from the GPU: {e}")))?;
            out.copy_from_slice(&view[..out.len()]);
        }
        staging.unmap();
        Ok(())
    }

    /// Submits what was recorded and waits for it, turning any error the device reported into
    /// this run's error.
    pub fn finish(&mut self, gm: &GpuModel) -> Result<(), KernelError> {
        if let Some(encoder) = self.encoder.take() {
            gm.gpu.queue.submit([encoder.finish()]);
        }
        wait(&gm.gpu)
    }
}

fn wait(gpu: &Gpu) -> Result<(), KernelError> {
    let polled = gpu.device.poll(wgpu::PollType::wait_indefinitely());
    if let Some(e) = gpu.take_error() {
        return Err(KernelError::invalid(format!("the GPU reported: {e}")));
    }
    polled.map(|_| ()).map_err(|e| KernelError::invalid(format!("waiting for the GPU: {e}")))
}

/// Where one step's values are, for binding them: per input and output, (root slot, bytes, name).
pub(crate) struct StepContext<'a> {
    pub step: usize,
    pub places: &'a [Place],
    /// The device buffers of the run's KV states.
    pub states: &'a [wgpu::Buffer],
    pub inputs: Vec<Option<(usize, usize, &'a str)>>,
    pub outputs: Vec<(usize, usize, &'a str)>,
}
