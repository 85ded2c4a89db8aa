//! Split along one axis: sizes from the `split` attribute (before opset 13) or optional input 1
//! (from 13), else equal chunks over `num_outputs` (opset 18; the last chunk may be smaller).

use super::common::{check_data, check_int, fresh_dims, vector_len};
use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;

pub struct Split {
    axis: i64,
    split_attr: Option<Vec<i64>>,
    split_input: bool,
    num_outputs: Option<i64>,
}

impl Split {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let split_input = spec.opset >= 13;
        let split_attr =
            if split_input { None } else { spec.attrs.ints("split")?.filter(|s| !s.is_empty()).map(<[i64]>::to_vec) };
        // `num_outputs` is an opset-18 attribute, read at every opset: before 18 the count of
        // equal chunks is the node's output count, which the kernel only learns this way.
        let num_outputs = spec.attrs.int_opt("num_outputs")?;
        if num_outputs.is_some_and(|n| n < 1) {
            return Err(KernelError::attr("num_outputs", "must be at least 1"));
        }
        Ok(Split { axis: spec.attrs.int("axis", 0)?, split_attr, split_input, num_outputs })
    }

    /// Chunk sizes for `n` outputs over a dim of size `d`: equal, the last one smaller when `d`
    /// does not divide.
    fn even(d: &Dim, n: i64) -> Result<Vec<Dim>, KernelError> {
        let nd = Dim::Known(n);
        let q = d.floor_div(&nd).unwrap_or(Dim::Known(0));
        if q.mul(&nd) == *d {
            return Ok(vec![q; n as usize]);
        }
        let chunk = d.add(&Dim::Known(n - 1)).floor_div(&nd).unwrap_or(q);
        let last = d.sub(&chunk.mul(&Dim::Known(n - 1)));
        if let Dim::Known(l) = last {
            if l < 0 {
                return Err(KernelError::invalid(format!("a dim of {d} cannot be split into {n} outputs")));
            }
        }
        let mut v = vec![chunk; n as usize - 1];
        v.push(last);
        Ok(v)
    }
}

impl Kernel for Split {
    fn value_inputs(&self) -> &[usize] {
        if self.split_input {
            &[1]
        } else {
            &[]
        }
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let d = &x.shape[axis];
        let given = if self.split_input { inputs.get(1).copied().flatten() } else { None };
        let sizes: Vec<Dim> = match (given, &self.split_attr) {
            (Some(s), _) if vector_len(&s, 1)? > 0 => {
                check_int(&s, 1)?;
                match s.value {
                    Some(v) => v.to_vec(),
                    None => fresh_dims(cx, vector_len(&s, 1)?, "split")?,
                }
            }
            (_, Some(a)) => a.iter().map(|&v| Dim::Known(v)).collect(),
            _ => {
                let n = self.num_outputs.ok_or_else(|| {
                    KernelError::attr(
                        "num_outputs",
                        "is needed when no split sizes are given (the count of equal chunks)",
                    )
                })?;
                Self::even(d, n)?
            }
        };
        if sizes.iter().any(|s| matches!(s, Dim::Known(v) if *v < 0)) {
            return Err(KernelError::invalid(format!("split sizes {sizes:?} are negative")));
        }
        if let (Dim::Known(total), Dim::Known(sum)) = (d, &sum_dims(&sizes)) {
            if total != sum {
                return Err(KernelError::invalid(format!("split sizes {sizes:?} do not add up to the dim {total}")));
            }
        }
        Ok(sizes
            .into_iter()
            .map(|s| {
                let mut shape = x.shape.to_vec();
                shape[axis] = s;
                OutputInfo::new(x.dtype, shape)
            })
            .collect())
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let es = x.dtype.size();
        let outer: usize = x.shape[..axis].iter().product();
        let inner: usize = x.shape[axis + 1..].iter().product::<usize>() * es;
        let row = x.shape[axis] * inner;
        check_data(&x, 0)?;
        let mut off = 0;
        for (i, out) in outputs.iter_mut().enumerate() {
            if out.shape.len() != x.shape.len() {
                return Err(KernelError::invalid(format!("output {i} has the wrong rank")));
            }
            let block = out.shape[axis] * inner;
            if off + block > row || out.data.len() != outer * block {
                return Err(KernelError::invalid(format!(
                    "output {i} of shape {:?} does not fit the input {:?}",
                    out.shape, x.shape
                )));
            }
            for o in 0..outer {
                out.data[o * block..(o + 1) * block].copy_from_slice(&x.data[o * row + off..o * row + off + block]);
            }
            off += block;
        }
        Ok(())
    }
}

fn sum_dims(dims: &[Dim]) -> Dim {
    dims.iter().fold(Dim::Known(0), |a, d| a.add(d))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn split_forms() {
        let x = iota(&[2, 6]);
        let a = [Attribute::int("axis", 1), Attribute::ints("split", vec![2, 4])];
        let out = run("Split", 11, &a, &[Some(&x)]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 1., 6., 7.]);
        assert_eq!(vals_f32(&out[1]), vec![2., 3., 4., 5., 8., 9., 10., 11.]);

        let a = [Attribute::int("axis", -1)];
        let out = run("Split", 13, &a, &[Some(&x), Some(&i64s(&[3], &[1, 1, 4]))]).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].shape, vec![2, 4]);
        assert!(run("Split", 13, &a, &[Some(&x), Some(&i64s(&[2], &[1, 1]))]).is_err());

        // Opset 18: chunks of ceil(6/4) = 2, the last one what remains.
        let a = [Attribute::int("axis", 1), Attribute::int("num_outputs", 4)];
        let out = run("Split", 18, &a, &[Some(&x), None]).unwrap();
        let sizes: Vec<usize> = out.iter().map(|t| t.shape[1]).collect();
        assert_eq!(sizes, vec![2, 2, 2, 0]);
        let x7 = iota(&[7]);
        let a = [Attribute::int("num_outputs", 3)];
        let out = run("Split", 18, &a, &[Some(&x7), None]).unwrap();
        let sizes: Vec<usize> = out.iter().map(|t| t.shape[0]).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        assert_eq!(vals_f32(&out[2]), vec![6.]);
        assert!(run("Split", 18, &[], &[Some(&x7), None]).is_err());
    }

    #[test]
    fn symbolic_split() {
        let a = [Attribute::int("axis", 2), Attribute::int("num_outputs", 3)];
        let x = sym_in(DType::F32, vec![s("b"), s("t"), k(2304)]);
        let out = infer("Split", 18, &a, &[x, None]).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].shape, vec![s("b"), s("t"), k(768)]);
        let a = [Attribute::int("num_outputs", 2)];
        let x = sym_in(DType::F32, vec![s("n").mul(&k(2))]);
        let out = infer("Split", 18, &a, &[x, None]).unwrap();
        assert_eq!(out[0].shape, vec![s("n")]);
    }
}
