//! Constant (a tensor from its attributes) and ConstantOfShape (a shape filled with one value).

use super::common::{check_int, copy_all, elems_mut, fresh_dims, out0, vector_len};
use crate::error::KernelError;
use crate::kernel::{known_shape, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use crate::with_any;
use kiln_formats::program::TensorValue;
use kiln_formats::tensor::byte_size;
use kiln_formats::{DType, Dim};

/// A tensor attribute's dtype, shape and bytes, checked to agree.
fn tensor_attr(name: &str, t: &TensorValue) -> Result<(DType, Vec<usize>, Vec<u8>), KernelError> {
    let dtype = DType::from_onnx_code(t.dtype)
        .ok_or_else(|| KernelError::unsupported(format!("attribute '{name}' of type {}", DType::onnx_name(t.dtype))))?;
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| KernelError::attr(name, format!("negative dim in {:?}", t.dims)))?;
    if byte_size(dtype, &shape) != Some(t.data.len()) {
        return Err(KernelError::attr(
            name,
            format!("{} bytes do not hold a {dtype} tensor of shape {shape:?}", t.data.len()),
        ));
    }
    Ok((dtype, shape, t.data.clone()))
}

/// Constant: no inputs, one output fixed by the attributes.
pub struct Constant {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Constant {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let a = spec.attrs;
        for name in ["sparse_value", "value_string", "value_strings"] {
            if a.has(name) {
                return Err(KernelError::unsupported(format!("Constant with '{name}'")));
            }
        }
        let le = |v: &[u8]| v.to_vec();
        let (dtype, shape, bytes) = if let Some(t) = a.tensor("value")? {
            tensor_attr("value", t)?
        } else if let Some(f) = a.float_opt("value_float")? {
            (DType::F32, vec![], le(&f.to_le_bytes()))
        } else if let Some(fs) = a.floats("value_floats")? {
            let b: Vec<u8> = fs.iter().flat_map(|f| f.to_le_bytes()).collect();
            (DType::F32, vec![fs.len()], b)
        } else if let Some(i) = a.int_opt("value_int")? {
            (DType::I64, vec![], le(&i.to_le_bytes()))
        } else if let Some(is) = a.ints("value_ints")? {
            let b: Vec<u8> = is.iter().flat_map(|i| i.to_le_bytes()).collect();
            (DType::I64, vec![is.len()], b)
        } else {
            return Err(KernelError::attr("value", "Constant needs a value attribute"));
        };
        Ok(Constant { dtype, shape, bytes })
    }
}

impl Kernel for Constant {
    fn infer(&self, _inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        Ok(vec![OutputInfo::new(self.dtype, known_shape(&self.shape))])
    }

    fn run(&self, _inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        copy_all(&self.bytes, out0(outputs)?.data)
    }
}

/// ConstantOfShape: the shape from input 0, every element the `value` attribute (float 0 by
/// default).
pub struct ConstantOfShape {
    dtype: DType,
    value: Vec<u8>,
}

impl ConstantOfShape {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let (dtype, value) = match spec.attrs.tensor("value")? {
            Some(t) => {
                let (dtype, shape, bytes) = tensor_attr("value", t)?;
                if shape.iter().product::<usize>() != 1 {
                    return Err(KernelError::attr("value", "must hold exactly one element"));
                }
                (dtype, bytes)
            }
            None => (DType::F32, 0f32.to_le_bytes().to_vec()),
        };
        Ok(ConstantOfShape { dtype, value })
    }
}

impl Kernel for ConstantOfShape {
    fn value_inputs(&self) -> &[usize] {
        &[0]
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let s = required(inputs, 0)?;
        check_int(&s, 0)?;
        let n = vector_len(&s, 0)?;
        let shape = match s.value {
            Some(v) => {
                if let Some(bad) = v.iter().find(|d| matches!(d, Dim::Known(x) if *x < 0)) {
                    return Err(KernelError::input(0, format!("shape has the dim {bad}")));
                }
                v.to_vec()
            }
            None => fresh_dims(cx, n, "filled")?,
        };
        Ok(vec![OutputInfo::new(self.dtype, shape)])
    }

    fn run(&self, _inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let out = out0(outputs)?;
        with_any!(self.dtype, T => {
            let v: T = bytemuck::pod_read_unaligned(&self.value);
            elems_mut::<T>(out.data)?.fill(v);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::{Attribute, TensorValue};
    use kiln_formats::DType;

    #[test]
    fn constants() {
        let t = TensorValue {
            dtype: DType::I32.onnx_code(),
            dims: vec![2],
            data: [3i32.to_le_bytes(), (-4i32).to_le_bytes()].concat(),
        };
        let out = run("Constant", 13, &[Attribute::tensor("value", t)], &[]).unwrap();
        assert_eq!(out[0].as_slice::<i32>().unwrap(), &[3, -4]);
        let out = run("Constant", 13, &[Attribute::float("value_float", 2.5)], &[]).unwrap();
        assert_eq!(out[0].shape, Vec::<usize>::new());
        assert_eq!(vals_f32(&out[0]), vec![2.5]);
        let out = run("Constant", 13, &[Attribute::ints("value_ints", vec![1, 2])], &[]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![1, 2]);
        let out = run("Constant", 13, &[Attribute::int("value_int", 7)], &[]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![7]);
        let out = run("Constant", 13, &[Attribute::floats("value_floats", vec![1., 2.])], &[]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![1., 2.]);
        assert!(kernel("Constant", 13, &[]).is_err());
        let bad = TensorValue { dtype: DType::F32.onnx_code(), dims: vec![3], data: vec![0; 4] };
        assert!(kernel("Constant", 13, &[Attribute::tensor("value", bad)]).is_err());
    }

    #[test]
    fn constant_of_shape() {
        let out = run("ConstantOfShape", 9, &[], &[Some(&i64s(&[2], &[2, 3]))]).unwrap();
        assert_eq!(out[0].shape, vec![2, 3]);
        assert_eq!(vals_f32(&out[0]), vec![0.; 6]);
        let v = TensorValue { dtype: DType::I64.onnx_code(), dims: vec![1], data: 5i64.to_le_bytes().to_vec() };
        let a = [Attribute::tensor("value", v)];
        let out = run("ConstantOfShape", 9, &a, &[Some(&i64s(&[1], &[3]))]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![5, 5, 5]);
        let out = run("ConstantOfShape", 9, &a, &[Some(&i64s(&[0], &[]))]).unwrap();
        assert_eq!(out[0].shape, Vec::<usize>::new());
        assert_eq!(vals_i64(&out[0]), vec![5]);
        assert!(run("ConstantOfShape", 9, &a, &[Some(&i64s(&[1], &[-1]))]).is_err());
        let out = infer("ConstantOfShape", 9, &a, &[val_in(vec![s("b"), k(4)])]).unwrap();
        assert_eq!(out[0].shape, vec![s("b"), k(4)]);
        assert_eq!(out[0].dtype, DType::I64);
    }
}
