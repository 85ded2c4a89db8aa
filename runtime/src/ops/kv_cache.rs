//! `kiln::KvAppend(past, new)`: the KV cache kept in place. The compiler turns an exported
//! `Concat(past, new)` over a cache's sequence axis into this op when the cache is a state
//! ([`kiln_formats::program::StateInfo`]): the state's buffer holds `capacity` positions per
//! (batch, head) and the step writes only the new positions after the filled ones, so a forward
//! pass never copies the cache.
//!
//! Contract with the executor: input 0 (`past`) carries only its shape (how many positions are
//! filled); its bytes are the state's, which output 0 covers whole: the output view's shape is
//! `past + new` positions, its data the full buffer with `capacity` positions along `axis`.
//!
//! A cache may be stored narrower than the values appended to it: an f16 state takes f32
//! positions, rounded to nearest (`--kv-cache f16`), which halves the bytes attention reads per
//! decoded token.

use crate::error::KernelError;
use crate::kernel::{normalize_axis, required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::view::{TensorMut, TensorRef};
use half::f16;
use half::slice::HalfFloatSliceExt;
use kiln_formats::{DType, Dim};

/// Op type of the append in the `kiln` domain.
pub const KV_APPEND: &str = "KvAppend";

/// The attribute through which kiln op `op`, reading a KV state as its input `input`, takes the
/// state's pitch (rows stored per matrix), for the ops that can read a state in place: the
/// products' B operand and fused attention's k and v. The compiler sets it, the loader checks it.
pub fn pitch_attr(op: &str, input: usize) -> Option<&'static str> {
    match (op, input) {
        ("MatMul" | "MatMulTransB", 1) => Some("b_pitch"),
        (crate::ops::attention::fused::FUSED_ATTENTION, 1) => Some("k_pitch"),
        (crate::ops::attention::fused::FUSED_ATTENTION, 2) => Some("v_pitch"),
        _ => None,
    }
}

/// Kernels of the `kiln` domain this family owns.
pub fn build_kiln(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    (spec.op == KV_APPEND).then(|| KvAppend::new(spec).map(|k| Box::new(k) as Box<dyn Kernel>))
}

/// Whether positions of type `new` can be appended to a cache of type `cache`: the same type, or
/// f32 into an f16 cache.
pub fn appendable(cache: DType, new: DType) -> bool {
    cache == new || (cache == DType::F16 && new == DType::F32)
}

/// Appends `new` after the filled positions of a state buffer.
pub struct KvAppend {
    axis: i64,
    capacity: usize,
}

impl KvAppend {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let capacity = spec.attrs.req_int("capacity")?;
        let capacity = usize::try_from(capacity)
            .map_err(|_| KernelError::attr("capacity", format!("{capacity} is not a position count")))?;
        Ok(KvAppend { axis: spec.attrs.req_int("axis")?, capacity })
    }
}

impl Kernel for KvAppend {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let past = required(inputs, 0)?;
        let new = required(inputs, 1)?;
        if !appendable(past.dtype, new.dtype) {
            return Err(KernelError::input(1, format!("is {} but the cache is {}", new.dtype, past.dtype)));
        }
        if past.shape.len() != new.shape.len() {
            return Err(KernelError::input(1, format!("has rank {}, the cache {}", new.shape.len(), past.shape.len())));
        }
        let axis = normalize_axis(self.axis, past.shape.len())?;
        let mut shape = past.shape.to_vec();
        for (a, (p, n)) in past.shape.iter().zip(new.shape).enumerate() {
            if a == axis {
                shape[a] = p.add(n);
            } else if let (Dim::Known(x), Dim::Known(y)) = (p, n) {
                if x != y {
                    return Err(KernelError::input(1, format!("dim {a} is {y}, the cache's {x}")));
                }
            }
        }
        if let Some(total) = shape[axis].known().filter(|&t| t > self.capacity as i64) {
            return Err(KernelError::invalid(format!(
                "the KV cache holds {} positions; {total} do not fit (the context is full)",
                self.capacity
            )));
        }
        Ok(vec![OutputInfo::new(past.dtype, shape)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let past = required(inputs, 0)?;
        let new = required(inputs, 1)?;
        let out = outputs.get_mut(0).ok_or_else(|| KernelError::invalid("missing output"))?;
        let axis = normalize_axis(self.axis, out.shape.len())?;
        let (filled, adding) = (past.shape.get(axis).copied(), new.shape.get(axis).copied());
        let (Some(filled), Some(adding)) = (filled, adding) else {
            return Err(KernelError::invalid("the cache and the new positions differ in rank"));
        };
        if out.dtype != past.dtype
            || !appendable(out.dtype, new.dtype)
            || out.shape.get(axis) != Some(&(filled + adding))
        {
            return Err(KernelError::invalid("the output view does not cover past + new positions"));
        }
        if filled + adding > self.capacity {
            return Err(KernelError::invalid(format!(
                "the KV cache holds {} positions; {} do not fit (the context is full)",
                self.capacity,
                filled + adding
            )));
        }
        let outer: usize = out.shape[..axis].iter().product();
        let inner: usize = out.shape[axis + 1..].iter().product::<usize>();
        if new.shape[..axis] != out.shape[..axis] || new.shape[axis + 1..] != out.shape[axis + 1..] {
            return Err(KernelError::input(1, format!("shape {:?} does not fit the cache {:?}", new.shape, out.shape)));
        }
        // In elements: a block of new positions per row, and a row of the state.
        let (block, row) = (adding * inner, self.capacity * inner);
        if new.data.len() != outer * block * new.dtype.size() || out.data.len() != outer * row * out.dtype.size() {
            return Err(KernelError::invalid(format!(
                "{} new bytes or a {}-byte state do not match {outer} rows of {block} elements (capacity {})",
                new.data.len(),
                out.data.len(),
                self.capacity
            )));
        }
        let place = |o: usize| (o * row + filled * inner, o * block);
        if out.dtype == new.dtype {
            let es = out.dtype.size();
            for o in 0..outer {
                let (at, from) = place(o);
                out.data[at * es..(at + block) * es].copy_from_slice(&new.data[from * es..(from + block) * es]);
            }
            return Ok(());
        }
        let new: &[f32] = new.typed()?;
        let state: &mut [f16] = out.typed()?;
        for o in 0..outer {
            let (at, from) = place(o);
            state[at..at + block].convert_from_f32_slice(&new[from..from + block]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Attrs;
    use kiln_formats::program::Attribute;

    fn kernel(capacity: i64) -> KvAppend {
        let attrs = [Attribute::int("axis", 2), Attribute::int("capacity", capacity)];
        KvAppend::new(&OpSpec { op: KV_APPEND, domain: "kiln", opset: 1, attrs: Attrs(&attrs) }).unwrap()
    }

    /// Appends `new` ([1, 2, n, 3]) to a state of 2 heads × 4 positions × 3 holding `filled`.
    fn append(state: &mut [f32], filled: usize, new: &[f32]) -> Result<(), KernelError> {
        let n = new.len() / 6;
        let (past, add, total) = ([1, 2, filled, 3], [1, 2, n, 3], [1, 2, filled + n, 3]);
        let inputs = [
            Some(TensorRef { dtype: DType::F32, shape: &past, data: &[] }),
            Some(TensorRef { dtype: DType::F32, shape: &add, data: bytemuck::cast_slice(new) }),
        ];
        let mut out = [TensorMut { dtype: DType::F32, shape: &total, data: bytemuck::cast_slice_mut(state) }];
        kernel(4).run(&inputs, &mut out)
    }

    #[test]
    fn new_positions_land_after_the_filled_ones_of_every_head() {
        let mut state = vec![0f32; 2 * 4 * 3];
        append(&mut state, 0, &[1., 1., 1., 2., 2., 2., 5., 5., 5., 6., 6., 6.]).unwrap();
        append(&mut state, 2, &[3., 3., 3., 7., 7., 7.]).unwrap();
        let head = |h: usize| state[h * 12..h * 12 + 9].to_vec();
        assert_eq!(head(0), [1., 1., 1., 2., 2., 2., 3., 3., 3.]);
        assert_eq!(head(1), [5., 5., 5., 6., 6., 6., 7., 7., 7.]);
        assert_eq!(&state[9..12], [0., 0., 0.], "positions past the filled ones are untouched");
    }

    #[test]
    fn a_full_cache_is_an_error_not_an_overwrite() {
        let mut state = vec![0f32; 2 * 4 * 3];
        let err = append(&mut state, 3, &[9f32; 12]).unwrap_err();
        assert!(err.to_string().contains("holds 4 positions"), "{err}");
        assert!(state.iter().all(|&v| v == 0.));
        let p = [Dim::Known(1), Dim::Known(2), Dim::sym("past"), Dim::Known(3)];
        let n = [Dim::Known(1), Dim::Known(2), Dim::Known(1), Dim::Known(3)];
        let shape = |s| ShapeInput { dtype: DType::F32, shape: s, value: None, data: None };
        let out = kernel(4).infer(&[Some(shape(&p)), Some(shape(&n))], &mut crate::kernel::RunCx).unwrap();
        assert_eq!(out[0].shape[2], Dim::sym("past").add(&Dim::Known(1)));
        let heads = [Dim::Known(1), Dim::Known(3), Dim::Known(1), Dim::Known(3)];
        assert!(kernel(4).infer(&[Some(shape(&p)), Some(shape(&heads))], &mut crate::kernel::RunCx).is_err());
    }

    #[test]
    fn f32_positions_land_rounded_in_an_f16_cache() {
        let mut state = vec![f16::ZERO; 2 * 4 * 3];
        let new: Vec<f32> = (0..12).map(|i| i as f32 / 3.0 + 1000.0).collect();
        let (past, add, total) = ([1, 2, 1, 3], [1, 2, 2, 3], [1, 2, 3, 3]);
        let inputs = [
            Some(TensorRef { dtype: DType::F16, shape: &past, data: &[] }),
            Some(TensorRef { dtype: DType::F32, shape: &add, data: bytemuck::cast_slice(&new) }),
        ];
        let mut out = [TensorMut { dtype: DType::F16, shape: &total, data: bytemuck::cast_slice_mut(&mut state) }];
        kernel(4).run(&inputs, &mut out).unwrap();
        for h in 0..2 {
            let want: Vec<f16> = new[h * 6..h * 6 + 6].iter().map(|&v| f16::from_f32(v)).collect();
            assert_eq!(state[h * 12 + 3..h * 12 + 9], want[..], "head {h}: positions 1 and 2");
            assert_eq!(state[h * 12..h * 12 + 3], [f16::ZERO; 3], "head {h}: position 0 untouched");
        }
        let p = [Dim::Known(1), Dim::Known(2), Dim::sym("past"), Dim::Known(3)];
        let n = [Dim::Known(1), Dim::Known(2), Dim::Known(1), Dim::Known(3)];
        let shape = |dtype, s| ShapeInput { dtype, shape: s, value: None, data: None };
        let out =
            kernel(4).infer(&[Some(shape(DType::F16, &p)), Some(shape(DType::F32, &n))], &mut crate::kernel::RunCx);
        assert_eq!(out.unwrap()[0].dtype, DType::F16, "the output is the cache's type");
        let narrowing =
            kernel(4).infer(&[Some(shape(DType::F32, &p)), Some(shape(DType::F16, &n))], &mut crate::kernel::RunCx);
        assert!(narrowing.is_err(), "f16 positions into an f32 cache");
    }
}
