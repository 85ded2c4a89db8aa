//! Opening the device and probing what it allows.

use super::GpuError;
use kiln_formats::target::TargetLimits;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An open GPU: device, queue, its limits, and compiled kernels (shared by every model on it).
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    /// Validation and out-of-memory errors wgpu reports asynchronously; a run checks after each
    /// wait (wgpu's default handler would panic instead).
    errors: Arc<Mutex<Vec<String>>>,
    pipelines: Mutex<HashMap<&'static str, Arc<wgpu::ComputePipeline>>>,
}

impl Gpu {
    /// Opens the first adapter wgpu finds (Metal on macOS, Vulkan elsewhere), with every limit the
    /// adapter supports.
    pub fn open() -> Result<Arc<Gpu>, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Arc::new(Gpu { device, queue, info: adapter.get_info(), limits, errors, pipelines: Mutex::default() }))
    }

    /// The adapter and backend, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub fn describe(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// The device's limits as kiln's planner sees them.
    pub fn target_limits(&self) -> TargetLimits {
        TargetLimits {
            name: "gpu".into(),
            alignment: u64::from(self.limits.min_storage_buffer_offset_alignment),
            max_buffer: self.limits.max_buffer_size,
            max_binding: self.limits.max_storage_buffer_binding_size,
        }
    }

    /// The first error wgpu reported since the last call, if any.
    pub(crate) fn take_error(&self) -> Option<String> {
        let mut v = self.errors.lock().ok()?;
        (!v.is_empty()).then(|| v.remove(0))
    }

    /// The compute pipeline of `shader`, compiled on first use.
    pub(crate) fn pipeline(&self, shader: &super::kernels::Shader) -> Result<Arc<wgpu::ComputePipeline>, String> {
        let mut cache = self.pipelines.lock().map_err(|_| "pipeline cache poisoned".to_string())?;
        if let Some(p) = cache.get(shader.name) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.source().into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shader.name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!("kernel '{}' does not compile: {e}", shader.name));
        }
        let p = Arc::new(pipeline);
        cache.insert(shader.name, p.clone());
        Ok(p)
    }
}
