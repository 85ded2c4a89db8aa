//! Shape and Size: int64 tensors describing the input's shape.

use super::common::{elems_mut, out0};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::{DType, Dim};

/// Shape, with the opset-15 `start`/`end` window over the dims.
pub struct Shape {
    start: i64,
    end: Option<i64>,
}

impl Shape {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        Ok(Shape { start: spec.attrs.int("start", 0)?, end: spec.attrs.int_opt("end")? })
    }

    /// The window of dims reported, clamped to `[0, rank]` as the spec says.
    fn window(&self, rank: usize) -> (usize, usize) {
        let r = rank as i64;
        let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let start = fix(self.start);
        let end = fix(self.end.unwrap_or(r));
        (start, end.max(start))
    }
}

impl Kernel for Shape {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let (s, e) = self.window(x.shape.len());
        Ok(vec![OutputInfo::new(DType::I64, vec![Dim::from(e - s)])])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let (s, e) = self.window(x.shape.len());
        let out = elems_mut::<i64>(out0(outputs)?.data)?;
        if out.len() != e - s {
            return Err(KernelError::invalid("output is not sized for the shape"));
        }
        for (o, &d) in out.iter_mut().zip(&x.shape[s..e]) {
            *o = d as i64;
        }
        Ok(())
    }
}

/// Size: the element count as an int64 scalar.
pub struct Size;

impl Kernel for Size {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        required(inputs, 0)?;
        Ok(vec![OutputInfo::new(DType::I64, vec![])])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let out = elems_mut::<i64>(out0(outputs)?.data)?;
        let o = out.first_mut().ok_or_else(|| KernelError::invalid("output is not sized for a scalar"))?;
        *o = x.numel() as i64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn shape_windows() {
        let x = iota(&[2, 3, 4, 5]);
        let out = run("Shape", 13, &[], &[Some(&x)]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![2, 3, 4, 5]);
        let a = [Attribute::int("start", 1), Attribute::int("end", -1)];
        let out = run("Shape", 15, &a, &[Some(&x)]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![3, 4]);
        let a = [Attribute::int("start", -10), Attribute::int("end", 10)];
        let out = run("Shape", 15, &a, &[Some(&x)]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![2, 3, 4, 5]);
        let a = [Attribute::int("start", 3), Attribute::int("end", 1)];
        let out = run("Shape", 15, &a, &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![0]);
        let out = infer("Shape", 15, &[], &[sym_in(DType::F32, vec![s("b"), k(2)])]).unwrap();
        assert_eq!(out[0].shape, ks(&[2]));
    }

    #[test]
    fn size_counts() {
        let out = run("Size", 13, &[], &[Some(&iota(&[2, 3]))]).unwrap();
        assert_eq!(out[0].shape, Vec::<usize>::new());
        assert_eq!(vals_i64(&out[0]), vec![6]);
    }
}
