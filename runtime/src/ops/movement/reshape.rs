//! Reshape, Flatten, Squeeze, Unsqueeze and Identity: ops that only relabel the shape. The
//! executor may give their output the input's storage and skip `run`; when it does call `run`,
//! the bytes are copied unchanged.

use super::common::{check_int, copy_all, fresh_dims, known_ints, normalize_axes, vector_len};
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use kiln_formats::Dim;

/// The shared `run` of every view op: a byte copy of input 0.
fn copy_run(inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
    let x = required(inputs, 0)?;
    let out = outputs.first_mut().ok_or_else(|| KernelError::invalid("missing output"))?;
    copy_all(x.data, out.data)
}

/// Reshape: target shape from input 1 (or the `shape` attribute before opset 5).
pub struct Reshape {
    allowzero: bool,
    shape_attr: Option<Vec<i64>>,
}

impl Reshape {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let shape_attr = if spec.opset < 5 {
            Some(
                spec.attrs
                    .ints("shape")?
                    .ok_or_else(|| KernelError::attr("shape", "is required before opset 5"))?
                    .to_vec(),
            )
        } else {
            None
        };
        Ok(Reshape { allowzero: spec.attrs.int("allowzero", 0)? != 0, shape_attr })
    }
}

/// The output shape of reshaping `input` to `target` (ONNX rules: 0 copies the input dim unless
/// `allowzero`, one -1 is inferred from the element count).
pub(super) fn reshape_dims(input: &[Dim], target: &[Dim], allowzero: bool) -> Result<Vec<Dim>, KernelError> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        match t {
            Dim::Known(-1) => {
                if infer_at.replace(i).is_some() {
                    return Err(KernelError::invalid(format!("shape {target:?} has more than one -1")));
                }
                out.push(Dim::Known(1));
            }
            Dim::Known(0) if !allowzero => out.push(
                input
                    .get(i)
                    .ok_or_else(|| {
                        KernelError::invalid(format!(
                            "shape {target:?} copies dim {i} (a 0) but the input {input:?} has rank {}",
                            input.len()
                        ))
                    })?
                    .clone(),
            ),
            Dim::Known(v) if *v < 0 => {
                return Err(KernelError::invalid(format!("shape {target:?} has the invalid dim {v}")))
            }
            _ => out.push(t.clone()),
        }
    }
    let total = Dim::product(input);
    match infer_at {
        Some(i) => {
            let rest = Dim::product(&out);
            if rest == Dim::Known(0) {
                return Err(KernelError::invalid(format!(
                    "cannot infer the -1 in {target:?}: the other dims hold no elements"
                )));
            }
            if let (Dim::Known(t), Dim::Known(r)) = (&total, &rest) {
                if t % r != 0 {
                    return Err(KernelError::invalid(format!("cannot reshape {input:?} ({t} elements) to {target:?}")));
                }
            }
            out[i] = total.floor_div(&rest).ok_or_else(|| KernelError::invalid("division by zero inferring -1"))?;
        }
        None => {
            if let (Dim::Known(a), Dim::Known(b)) = (&total, &Dim::product(&out)) {
                if a != b {
                    return Err(KernelError::invalid(format!(
                        "cannot reshape {input:?} ({a} elements) to {target:?} ({b} elements)"
                    )));
                }
            }
        }
    }
    Ok(out)
}

impl Kernel for Reshape {
    fn value_inputs(&self) -> &[usize] {
        if self.shape_attr.is_some() {
            &[]
        } else {
            &[1]
        }
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let target: Vec<Dim> = match &self.shape_attr {
            Some(s) => s.iter().map(|&v| Dim::Known(v)).collect(),
            None => {
                let s = required(inputs, 1)?;
                check_int(&s, 1)?;
                let n = vector_len(&s, 1)?;
                match s.value {
                    Some(v) if v.len() == n => v.to_vec(),
                    Some(v) => {
                        return Err(KernelError::input(1, format!("{} values for a shape of length {n}", v.len())))
                    }
                    None => return Ok(vec![OutputInfo::new(x.dtype, fresh_dims(cx, n, "reshape")?)]),
                }
            }
        };
        let shape = reshape_dims(x.shape, &target, self.allowzero)?;
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        copy_run(inputs, outputs)
    }
}

/// Flatten to 2-D around `axis`.
pub struct Flatten {
    axis: i64,
}

impl Flatten {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        Ok(Flatten { axis: spec.attrs.int("axis", 1)? })
    }
}

impl Kernel for Flatten {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let r = x.shape.len() as i64;
        let a = if self.axis < 0 { self.axis + r } else { self.axis };
        if a < 0 || a > r {
            return Err(KernelError::attr("axis", format!("{} is out of range for rank {r}", self.axis)));
        }
        let (head, tail) = x.shape.split_at(a as usize);
        Ok(vec![OutputInfo::new(x.dtype, vec![Dim::product(head), Dim::product(tail)])])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        copy_run(inputs, outputs)
    }
}

/// Squeeze: axes from the attribute before opset 13, from optional input 1 since.
pub struct Squeeze {
    axes_attr: Option<Vec<i64>>,
    axes_input: bool,
}

impl Squeeze {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let axes_input = spec.opset >= 13;
        let axes_attr = if axes_input { None } else { spec.attrs.ints("axes")?.map(<[i64]>::to_vec) };
        Ok(Squeeze { axes_attr, axes_input })
    }
}

impl Kernel for Squeeze {
    fn value_inputs(&self) -> &[usize] {
        if self.axes_input {
            &[1]
        } else {
            &[]
        }
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let r = x.shape.len();
        let axes = match (self.axes_input, inputs.get(1).copied().flatten()) {
            (false, _) => self.axes_attr.clone(),
            (true, None) => None,
            (true, Some(a)) => {
                check_int(&a, 1)?;
                match known_ints(&a) {
                    Some(v) => Some(v),
                    None => {
                        let n = vector_len(&a, 1)?;
                        let kept =
                            r.checked_sub(n).ok_or_else(|| KernelError::input(1, format!("{n} axes for rank {r}")))?;
                        return Ok(vec![OutputInfo::new(x.dtype, fresh_dims(cx, kept, "squeeze")?)]);
                    }
                }
            }
        };
        // No axes (or an empty list, as onnxruntime reads it) removes every dim known to be 1;
        // a symbolic dim is taken to be larger.
        let shape = match axes.filter(|a| !a.is_empty()) {
            None => x.shape.iter().filter(|d| **d != Dim::Known(1)).cloned().collect(),
            Some(axes) => {
                let axes = normalize_axes(&axes, r)?;
                for &a in &axes {
                    if let Dim::Known(d) = x.shape[a] {
                        if d != 1 {
                            return Err(KernelError::invalid(format!("cannot squeeze axis {a} of size {d}")));
                        }
                    }
                }
                x.shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect()
            }
        };
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        copy_run(inputs, outputs)
    }
}

/// Unsqueeze: axes (of the output) from the attribute before opset 13, from input 1 since.
pub struct Unsqueeze {
    axes_attr: Option<Vec<i64>>,
}

impl Unsqueeze {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let axes_attr = if spec.opset >= 13 {
            None
        } else {
            Some(
                spec.attrs
                    .ints("axes")?
                    .ok_or_else(|| KernelError::attr("axes", "is required before opset 13"))?
                    .to_vec(),
            )
        };
        Ok(Unsqueeze { axes_attr })
    }
}

impl Kernel for Unsqueeze {
    fn value_inputs(&self) -> &[usize] {
        if self.axes_attr.is_some() {
            &[]
        } else {
            &[1]
        }
    }

    fn infer(&self, inputs: &[Option<ShapeInput>], cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let axes = match &self.axes_attr {
            Some(a) => a.clone(),
            None => {
                let a = required(inputs, 1)?;
                check_int(&a, 1)?;
                match known_ints(&a) {
                    Some(v) => v,
                    None => {
                        let n = vector_len(&a, 1)?;
                        return Ok(vec![OutputInfo::new(x.dtype, fresh_dims(cx, x.shape.len() + n, "unsqueeze")?)]);
                    }
                }
            }
        };
        let rank = x.shape.len() + axes.len();
        let axes = normalize_axes(&axes, rank)?;
        let mut rest = x.shape.iter();
        let shape = (0..rank)
            .map(|i| {
                if axes.contains(&i) {
                    Dim::Known(1)
                } else {
                    // Exactly rank - axes.len() = input rank positions remain.
                    rest.next().cloned().unwrap_or(Dim::Known(1))
                }
            })
            .collect();
        Ok(vec![OutputInfo::new(x.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        copy_run(inputs, outputs)
    }
}

/// Identity.
pub struct Identity;

impl Kernel for Identity {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        copy_run(inputs, outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn reshape_symbolic_with_copy_and_infer() {
        let x = sym_in(DType::F32, vec![s("batch"), s("seq"), k(768)]);
        let out = infer("Reshape", 14, &[], &[x, val_in(ks(&[0, 0, 12, -1]))]).unwrap();
        assert_eq!(out[0].shape, vec![s("batch"), s("seq"), k(12), k(64)]);

        let x = sym_in(DType::F32, vec![s("batch"), s("seq"), k(768)]);
        let target = vec![s("batch"), s("seq"), k(12), k(64)];
        let out = infer("Reshape", 14, &[], &[x, val_in(target.clone())]).unwrap();
        assert_eq!(out[0].shape, target);

        let x = sym_in(DType::F32, vec![s("batch"), s("seq"), k(12), k(64)]);
        let out = infer("Reshape", 14, &[], &[x, val_in(ks(&[-1, 768]))]).unwrap();
        assert_eq!(out[0].shape, vec![s("batch").mul(&s("seq")), k(768)]);

        // Unknown shape values: fresh dims of the right rank.
        let x = sym_in(DType::F32, vec![s("batch"), k(4)]);
        let sh = sym_in(DType::I64, ks(&[3]));
        let out = infer("Reshape", 14, &[], &[x, sh]).unwrap();
        assert_eq!(out[0].shape.len(), 3);
        assert!(out[0].shape.iter().all(|d| !d.is_known()));
    }

    #[test]
    fn reshape_runs_and_checks() {
        let x = iota(&[2, 3, 4]);
        let out = run("Reshape", 14, &[], &[Some(&x), Some(&i64s(&[2], &[-1, 4]))]).unwrap();
        assert_eq!(out[0].shape, vec![6, 4]);
        assert_eq!(vals_f32(&out[0]), vals_f32(&x));
        let out = run("Reshape", 14, &[], &[Some(&x), Some(&i64s(&[3], &[0, 4, 3]))]).unwrap();
        assert_eq!(out[0].shape, vec![2, 4, 3]);
        assert!(run("Reshape", 14, &[], &[Some(&x), Some(&i64s(&[2], &[5, -1]))]).is_err());
        assert!(run("Reshape", 14, &[], &[Some(&x), Some(&i64s(&[2], &[-1, -1]))]).is_err());
        assert!(run("Reshape", 14, &[], &[Some(&x), Some(&i64s(&[2], &[7, 3]))]).is_err());
        // allowzero: a 0 is a real zero-size dim.
        let e = iota(&[0, 3]);
        let az = [Attribute::int("allowzero", 1)];
        let out = run("Reshape", 14, &az, &[Some(&e), Some(&i64s(&[2], &[3, 0]))]).unwrap();
        assert_eq!(out[0].shape, vec![3, 0]);
        // Opset 1 takes the shape as an attribute.
        let a = [Attribute::ints("shape", vec![4, 6])];
        let out = run("Reshape", 1, &a, &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![4, 6]);
    }

    #[test]
    fn flatten_axes() {
        let x = iota(&[2, 3, 4]);
        for (axis, want) in [(0, [1, 24]), (1, [2, 12]), (3, [24, 1]), (-1, [6, 4])] {
            let out = run("Flatten", 13, &[Attribute::int("axis", axis)], &[Some(&x)]).unwrap();
            assert_eq!(out[0].shape, want.to_vec());
        }
        assert!(run("Flatten", 13, &[Attribute::int("axis", 4)], &[Some(&x)]).is_err());
        let out = infer("Flatten", 13, &[], &[sym_in(DType::F32, vec![s("b"), k(3), s("n")])]).unwrap();
        assert_eq!(out[0].shape, vec![s("b"), s("n").mul(&k(3))]);
    }

    #[test]
    fn squeeze_forms() {
        let x = iota(&[1, 3, 1, 2]);
        let out = run("Squeeze", 11, &[Attribute::ints("axes", vec![0, -2])], &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![3, 2]);
        let out = run("Squeeze", 13, &[], &[Some(&x), Some(&i64s(&[1], &[2]))]).unwrap();
        assert_eq!(out[0].shape, vec![1, 3, 2]);
        let out = run("Squeeze", 13, &[], &[Some(&x), None]).unwrap();
        assert_eq!(out[0].shape, vec![3, 2]);
        assert!(run("Squeeze", 13, &[], &[Some(&x), Some(&i64s(&[1], &[1]))]).is_err());
        assert!(run("Squeeze", 13, &[], &[Some(&x), Some(&i64s(&[1], &[4]))]).is_err());
        // Symbolic dims are assumed not to be 1.
        let out = infer("Squeeze", 13, &[], &[sym_in(DType::F32, vec![k(1), s("seq"), k(1)]), None]).unwrap();
        assert_eq!(out[0].shape, vec![s("seq")]);
    }

    #[test]
    fn unsqueeze_forms() {
        let x = iota(&[3, 2]);
        let out = run("Unsqueeze", 11, &[Attribute::ints("axes", vec![0, -1])], &[Some(&x)]).unwrap();
        assert_eq!(out[0].shape, vec![1, 3, 2, 1]);
        let out = run("Unsqueeze", 13, &[], &[Some(&x), Some(&i64s(&[2], &[1, 3]))]).unwrap();
        assert_eq!(out[0].shape, vec![3, 1, 2, 1]);
        assert!(run("Unsqueeze", 13, &[], &[Some(&x), Some(&i64s(&[2], &[1, 1]))]).is_err());
        assert!(run("Unsqueeze", 13, &[], &[Some(&x), Some(&i64s(&[1], &[5]))]).is_err());
        let out = infer("Unsqueeze", 13, &[], &[sym_in(DType::F32, vec![s("b"), s("t")]), val_in(ks(&[1]))]).unwrap();
        assert_eq!(out[0].shape, vec![s("b"), k(1), s("t")]);
    }

    #[test]
    fn identity_copies_any_dtype() {
        let x = i64s(&[2], &[7, -8]);
        let out = run("Identity", 16, &[], &[Some(&x)]).unwrap();
        assert_eq!(vals_i64(&out[0]), vec![7, -8]);
    }
}
