//! Concat along one axis (negative counts from the end).

use super::common::{agree, out0};
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};

pub struct Concat {
    axis: i64,
}

impl Concat {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        // Concat-1 defaulted the axis to 1; it is required from opset 4.
        let axis = if spec.opset < 4 { spec.attrs.int("axis", 1)? } else { spec.attrs.req_int("axis")? };
        Ok(Concat { axis })
    }
}

impl Kernel for Concat {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let first = required(inputs, 0)?;
        let rank = first.shape.len();
        let axis = normalize_axis(self.axis, rank)?;
        let mut shape = first.shape.to_vec();
        for i in 1..inputs.len() {
            let x = required(inputs, i)?;
            if x.dtype != first.dtype {
                return Err(KernelError::input(i, format!("is {} but input 0 is {}", x.dtype, first.dtype)));
            }
            if x.shape.len() != rank {
                return Err(KernelError::input(i, format!("has rank {} but input 0 has rank {rank}", x.shape.len())));
            }
            for (a, d) in x.shape.iter().enumerate() {
                shape[a] = if a == axis {
                    shape[a].add(d)
                } else {
                    agree(&shape[a], d, || format!("input {i} differs from input 0 in dim {a} of {:?}", x.shape))?
                };
            }
        }
        Ok(vec![OutputInfo::new(first.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let out = out0(outputs)?;
        let axis = normalize_axis(self.axis, out.shape.len())?;
        let es = out.dtype.size();
        let outer: usize = out.shape[..axis].iter().product();
        let row = out.data.len() / outer.max(1);
        let mut off = 0;
        for i in 0..inputs.len() {
            let x = required(inputs, i)?;
            if x.shape.len() != out.shape.len() || x.dtype.size() != es {
                return Err(KernelError::input(i, "does not match the output"));
            }
            let block = x.shape[axis..].iter().product::<usize>() * es;
            if off + block > row || x.data.len() != outer * block {
                return Err(KernelError::input(
                    i,
                    format!("shape {:?} does not fit the output {:?}", x.shape, out.shape),
                ));
            }
            for o in 0..outer {
                out.data[o * row + off..o * row + off + block].copy_from_slice(&x.data[o * block..(o + 1) * block]);
            }
            off += block;
        }
        if off != row {
            return Err(KernelError::invalid("inputs do not fill the output"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn concats() {
        let a = iota(&[2, 2]);
        let b = f32s(&[2, 1], &[9., 8.]);
        let ax = [Attribute::int("axis", -1)];
        let out = run("Concat", 13, &ax, &[Some(&a), Some(&b)]).unwrap();
        assert_eq!(out[0].shape, vec![2, 3]);
        assert_eq!(vals_f32(&out[0]), vec![0., 1., 9., 2., 3., 8.]);
        let ax0 = [Attribute::int("axis", 0)];
        let out = run("Concat", 13, &ax0, &[Some(&a), Some(&a)]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 1., 2., 3., 0., 1., 2., 3.]);
        assert!(run("Concat", 13, &ax0, &[Some(&a), Some(&b)]).is_err());
        assert!(run("Concat", 13, &[Attribute::int("axis", 2)], &[Some(&a)]).is_err());
        let e = iota(&[0]);
        let out = run("Concat", 13, &ax0, &[Some(&e), Some(&iota(&[2]))]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 1.]);
    }

    #[test]
    fn symbolic_kv_cache() {
        let ax = [Attribute::int("axis", 2)];
        let past = sym_in(DType::F32, vec![s("b"), k(12), s("past"), k(64)]);
        let new = sym_in(DType::F32, vec![s("b"), k(12), s("seq"), k(64)]);
        let out = infer("Concat", 13, &ax, &[past, new]).unwrap();
        assert_eq!(out[0].shape, vec![s("b"), k(12), s("past").add(&s("seq")), k(64)]);
        let x = sym_in(DType::F32, vec![k(1), k(2)]);
        let y = sym_in(DType::F32, vec![k(1), k(3)]);
        assert!(infer("Concat", 13, &[Attribute::int("axis", 0)], &[x, y]).is_err());
    }
}
