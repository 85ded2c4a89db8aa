//! The GPU backend, on wgpu: Metal on macOS, Vulkan elsewhere. A GPU program (compiled with
//! `--target gpu`) says where each step runs; [`Gpu`] opens the device and probes its limits, and
//! a [`crate::Model`] loaded onto it uploads the weights its GPU steps read, once, and checks its
//! plan against the device. Sessions then keep the GPU steps' values in device buffers and run
//! the WGSL kernels in `kernels/`. See `README.md` beside this file for what differs on Metal.

pub mod support;

#[cfg(feature = "gpu")]
mod device;
#[cfg(feature = "gpu")]
pub(crate) mod exec;
#[cfg(feature = "gpu")]
pub(crate) mod kernels;

#[cfg(feature = "gpu")]
pub use device::Gpu;

/// Why the GPU cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter: no GPU, or no Vulkan/Metal driver.
    #[error("no GPU adapter found ({0}); on Linux install a Vulkan driver (e.g. Debian's mesa-vulkan-drivers)")]
    NoAdapter(String),
    #[error("the GPU device could not be opened: {0}")]
    Device(String),
    /// The program's plan needs more than the device allows.
    #[error("the program does not fit this GPU: {0}")]
    Limit(String),
    #[error("this kiln was built without the `gpu` feature")]
    NotBuilt,
}

/// Stand-in when the `gpu` feature is off: opening always fails, so callers fall back to CPU.
#[cfg(not(feature = "gpu"))]
pub struct Gpu;

#[cfg(not(feature = "gpu"))]
impl Gpu {
    /// Always [`GpuError::NotBuilt`].
    pub fn open() -> Result<std::sync::Arc<Gpu>, GpuError> {
        Err(GpuError::NotBuilt)
    }

    /// Never called: no `Gpu` exists without the feature.
    pub fn describe(&self) -> String {
        String::new()
    }
}
