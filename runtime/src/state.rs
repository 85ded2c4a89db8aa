//! KV cache states: the tensors a causal LM keeps from one forward pass to the next, allocated
//! once for the context the bundle was compiled for and filled in place
//! ([`kiln_formats::program::StateInfo`]). A [`KvState`] belongs to the caller, so one cache can
//! serve several programs (a bundle's `prefill` and `decode`) and several caches one program.

use crate::error::RuntimeError;
use crate::model::Model;
use kiln_formats::program::StateInfo;
use kiln_formats::tensor::byte_size;
use kiln_formats::{AlignedBuf, DType};

/// The buffers of a program's states and how many positions of them are filled.
#[derive(Debug, Default)]
pub struct KvState {
    layout: Vec<StateInfo>,
    /// Host buffers (empty when the states live on the GPU).
    buffers: Vec<AlignedBuf>,
    /// Bytes of each state.
    sizes: Vec<usize>,
    filled: Vec<usize>,
    /// Device buffers, when the model keeps its states on the GPU.
    #[cfg(feature = "gpu")]
    pub(crate) device: Vec<wgpu::Buffer>,
}

impl KvState {
    /// Empty states for `model`'s program (none when it keeps no state), in host memory or, for
    /// a model that appends to them on the GPU, in device memory.
    pub fn new(model: &Model) -> KvState {
        let layout = model.program.states.clone();
        // Sizes were checked when the model was loaded.
        let sizes = model.state_bytes.clone();
        #[cfg(feature = "gpu")]
        if let Some(device) = model.state_device() {
            let device = sizes.iter().map(|&b| crate::gpu::exec::state_buffer(device, b)).collect();
            return KvState { filled: vec![0; layout.len()], layout, buffers: Vec::new(), sizes, device };
        }
        let buffers = sizes.iter().map(|&b| AlignedBuf::zeroed(b)).collect();
        KvState {
            filled: vec![0; layout.len()],
            layout,
            buffers,
            sizes,
            #[cfg(feature = "gpu")]
            device: Vec::new(),
        }
    }

    /// Fails unless `model` declares exactly these states (names, types, capacities, order) and
    /// keeps them where this cache lives (host or GPU memory).
    pub fn check(&self, model: &Model) -> Result<(), RuntimeError> {
        same_states(&self.layout, &model.program.states)?;
        let where_ = |gpu: bool| if gpu { "GPU" } else { "host" };
        let (ours, theirs) = (self.on_gpu(), model.keeps_state_on_gpu());
        if self.layout.is_empty() || ours == theirs {
            return Ok(());
        }
        Err(RuntimeError::Program(format!(
            "the program keeps its KV cache in {} memory, this cache lives in {} memory",
            where_(theirs),
            where_(ours)
        )))
    }

    /// Whether the buffers are in GPU memory.
    fn on_gpu(&self) -> bool {
        #[cfg(feature = "gpu")]
        return !self.device.is_empty();
        #[cfg(not(feature = "gpu"))]
        false
    }

    /// Forgets every position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.filled.iter_mut().for_each(|f| *f = 0);
    }

    /// Positions filled so far (the same in every state after a successful run).
    pub fn positions(&self) -> usize {
        self.filled.iter().copied().max().unwrap_or(0)
    }

    /// The shape of state `i`'s filled part.
    pub(crate) fn filled_shape(&self, i: usize) -> Vec<usize> {
        let s = &self.layout[i];
        let mut shape: Vec<usize> = s.dims.iter().map(|&d| d as usize).collect();
        shape[s.axis as usize] = self.filled[i];
        shape
    }

    /// Records how many positions state `i` holds after a run.
    pub(crate) fn set_filled(&mut self, i: usize, positions: usize) {
        self.filled[i] = positions;
    }

    /// Bytes of state `i` a view of `shape` spans: its rows before the axis, each a full capacity.
    pub(crate) fn extent(&self, i: usize, shape: &[usize]) -> Option<usize> {
        let s = &self.layout[i];
        let mut pitched = shape.to_vec();
        *pitched.get_mut(s.axis as usize)? = s.dims[s.axis as usize] as usize;
        let dtype = DType::from_onnx_code(s.dtype)?;
        byte_size(dtype, &pitched).filter(|&n| n <= self.sizes[i])
    }

    pub(crate) fn buffer(&self, i: usize) -> &AlignedBuf {
        &self.buffers[i]
    }

    pub(crate) fn buffer_mut(&mut self, i: usize) -> &mut AlignedBuf {
        &mut self.buffers[i]
    }
}

/// Fails unless two programs keep the same states (names, types, capacities, order), so that one
/// [`KvState`] serves both. Compares layouts only: nothing is allocated.
pub fn same_states(ours: &[StateInfo], theirs: &[StateInfo]) -> Result<(), RuntimeError> {
    let same =
        |a: &StateInfo, b: &StateInfo| (&a.name, a.dtype, &a.dims, a.axis) == (&b.name, b.dtype, &b.dims, b.axis);
    if theirs.len() == ours.len() && theirs.iter().zip(ours).all(|(a, b)| same(a, b)) {
        return Ok(());
    }
    let names = |l: &[StateInfo]| l.iter().map(|s| format!("{} {:?}", s.name, s.dims)).collect::<Vec<_>>().join(", ");
    Err(RuntimeError::Program(format!(
        "the program keeps states [{}], this KV cache holds [{}]",
        names(theirs),
        names(ours)
    )))
}
