//! `kiln::ToGpu` and `kiln::ToCpu`: where a GPU program's data crosses between host and device
//! memory. The executor carries them out as uploads and downloads; run on CPU (a GPU program on a
//! machine without a GPU) they copy, so every GPU program also runs on CPU.

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};

/// Kernels of the `kiln` domain this family owns.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    use crate::gpu::support::{TO_CPU, TO_GPU};
    (spec.op == TO_GPU || spec.op == TO_CPU).then(|| Ok(Box::new(Transfer) as Box<dyn Kernel>))
}

/// Output = input, on the other device.
struct Transfer;

impl Kernel for Transfer {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let out = outputs.first_mut().ok_or_else(|| KernelError::invalid("no output"))?;
        if out.data.len() != x.data.len() {
            return Err(KernelError::invalid(format!("{} bytes into {}", x.data.len(), out.data.len())));
        }
        out.data.copy_from_slice(x.data);
        Ok(())
    }
}
