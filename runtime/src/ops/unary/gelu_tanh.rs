//! `kiln::GeluTanh(x)` = `(x·half)·(tanh((x + (x·x·x)·cube_scale)·scale) + one)`: the tanh
//! approximation of GELU as GPT-2-style models write it (transformers' `gelu_new`, half 0.5,
//! cube_scale 0.044715, scale √(2/π), one 1), which exporters spell as seven steps: Mul, Pow,
//! Mul, Add, Mul, Tanh, Add and Mul. The compiler's fusion makes one step of them, with the
//! graph's own constants; each operation rounds to the element type in the same order as the
//! separate kernels, so results are the same bits.

use super::MathExt;
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::binary::strided::map;
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};

/// The op's name in the kiln domain.
pub const GELU_TANH: &str = "GeluTanh";

/// Prepares `kiln::GeluTanh`, or `None` for another kiln op.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == GELU_TANH).then(|| {
        let c = |name: &str, default: f32| spec.attrs.float(name, default);
        Ok(Box::new(GeluTanh {
            half: c("half", 0.5)?,
            cube_scale: c("cube_scale", 0.044715)?,
            scale: c("scale", std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2)?,
            one: c("one", 1.0)?,
        }) as Box<dyn Kernel>)
    })
}

/// The graph's constants, as the separate steps read them.
struct GeluTanh {
    half: f32,
    cube_scale: f32,
    scale: f32,
    one: f32,
}

impl Kernel for GeluTanh {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        if !x.dtype.is_float() {
            return Err(KernelError::input(0, format!("{} is not a float type", x.dtype)));
        }
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != x.dtype || out.data.len() != x.data.len() {
            return Err(KernelError::invalid("x and the output differ in type or size"));
        }
        crate::with_float!(x.dtype, T => self.run_typed::<T>(x.typed()?, out.typed()?)?,
            _ => return Err(KernelError::unsupported(format!("GeluTanh on {}", x.dtype))));
        Ok(())
    }
}

impl GeluTanh {
    fn run_typed<T: Float>(&self, x: &[T], out: &mut [T]) -> Result<(), KernelError>
    where
        T::Acc: MathExt,
    {
        // Each constant as the graph holds it (a T), read as the binary kernels read it.
        let c = |v: f32| T::from_acc(T::Acc::from_f64(v as f64)).to_acc();
        let (half, cube_scale, scale, one) = (c(self.half), c(self.cube_scale), c(self.scale), c(self.one));
        let r = T::from_acc;
        map(x, out, |v: T| {
            let v = v.to_acc();
            let cube = r(v * v * v).to_acc();
            let inner = r(v + r(cube * cube_scale).to_acc()).to_acc();
            let t = r(r(inner * scale).to_acc().tanh_v()).to_acc();
            r(r(v * half).to_acc() * r(t + one).to_acc())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::unary::expf;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    fn run(attrs: &[Attribute], x: &[f32]) -> Vec<f32> {
        let spec =
            OpSpec { op: GELU_TANH, domain: crate::ops::KILN_DOMAIN, opset: 1, attrs: crate::kernel::Attrs(attrs) };
        let k = build_kiln(&spec).unwrap().unwrap();
        let shape = [x.len()];
        let xr = TensorRef { dtype: DType::F32, shape: &shape, data: bytemuck::cast_slice(x) };
        let mut out = vec![0f32; x.len()];
        let mut om = TensorMut { dtype: DType::F32, shape: &shape, data: bytemuck::cast_slice_mut(&mut out) };
        k.run(&[Some(xr)], std::slice::from_mut(&mut om)).unwrap();
        out
    }

    /// The eight steps one after another, as the separate f32 kernels compute them.
    fn steps(v: f32, half: f32, cube_scale: f32, scale: f32) -> f32 {
        let cube = v * v * v;
        let t = expf::tanh((v + cube * cube_scale) * scale);
        (v * half) * (t + 1.0)
    }

    #[test]
    fn the_same_bits_as_the_separate_steps() {
        // Large enough to split across threads, with the edges of tanh and of the cube.
        let mut x: Vec<f32> = (0..100_003).map(|i| ((i * 7919 % 20011) as f32 - 10_000.0) / 900.0).collect();
        x.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1e20, -1e20, f32::NAN, 1e-30, -5e-39]);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (b, s) = (0.044715f32, (2.0f64 / std::f64::consts::PI).sqrt() as f32);
        let attrs = [Attribute::float("half", 0.5), Attribute::float("cube_scale", b), Attribute::float("scale", s)];
        let want: Vec<f32> = x.iter().map(|&v| steps(v, 0.5, b, s)).collect();
        assert_eq!(bits(&run(&attrs, &x)), bits(&want));
        // Another model's constants are its own.
        let attrs =
            [Attribute::float("half", 0.5), Attribute::float("cube_scale", 0.05), Attribute::float("scale", 0.8)];
        let want: Vec<f32> = x.iter().map(|&v| steps(v, 0.5, 0.05, 0.8)).collect();
        assert_eq!(bits(&run(&attrs, &x)), bits(&want));
    }
}
