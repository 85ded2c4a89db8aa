//! ScatterND: a copy of the data with the slices addressed by index tuples replaced by (or,
//! with `reduction`, combined with) the updates, applied in order.

use super::common::{agree, check_data, check_index_dtype, copy_all, elems, elems_mut, out0, strides_of, Indices};
use super::gather::tuple_len;
use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use crate::{with_any, with_float, with_int};
use kiln_formats::{DType, Dim};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

pub struct ScatterNd {
    reduction: Reduction,
}

impl ScatterNd {
    pub fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let r = spec.attrs.string("reduction", "none")?;
        let reduction = match r.as_str() {
            "none" => Reduction::None,
            "add" => Reduction::Add,
            "mul" => Reduction::Mul,
            "max" => Reduction::Max,
            "min" => Reduction::Min,
            _ => return Err(KernelError::attr("reduction", format!("unknown value '{r}'"))),
        };
        Ok(ScatterNd { reduction })
    }
}

/// Applies `f(old, update)` over each addressed slice of `dst`.
fn apply<T: Copy>(dst: &mut [T], upd: &[T], starts: &[usize], inner: usize, f: impl Fn(T, T) -> T) {
    for (t, &s) in starts.iter().enumerate() {
        for (d, &u) in dst[s..s + inner].iter_mut().zip(&upd[t * inner..]) {
            *d = f(*d, u);
        }
    }
}

fn apply_float<T: Float>(dst: &mut [T], upd: &[T], starts: &[usize], inner: usize, r: Reduction) {
    let op = move |a: T, b: T| {
        let (x, y) = (a.to_acc(), b.to_acc());
        T::from_acc(match r {
            Reduction::Add => x + y,
            Reduction::Mul => x * y,
            Reduction::Max => x.max_of(y),
            Reduction::Min => x.min_of(y),
            Reduction::None => y,
        })
    };
    apply(dst, upd, starts, inner, op);
}

impl Kernel for ScatterNd {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let idx = required(inputs, 1)?;
        let upd = required(inputs, 2)?;
        check_index_dtype(idx.dtype, 1)?;
        if upd.dtype != x.dtype {
            return Err(KernelError::input(2, format!("updates are {} but the data is {}", upd.dtype, x.dtype)));
        }
        let m = tuple_len(x.shape, idx.shape, 0)?;
        let q = idx.shape.len();
        let want: Vec<&Dim> = idx.shape[..q - 1].iter().chain(&x.shape[m..]).collect();
        if upd.shape.len() != want.len() {
            return Err(KernelError::input(
                2,
                format!("updates of rank {} where {} is needed", upd.shape.len(), want.len()),
            ));
        }
        for (a, (u, w)) in upd.shape.iter().zip(want).enumerate() {
            agree(u, w, || format!("updates dim {a}"))?;
        }
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let it = required(inputs, 1)?;
        let u = required(inputs, 2)?;
        let idx = Indices::new(&it, 1)?;
        check_data(&x, 0)?;
        check_data(&u, 2)?;
        let dims = |s: &[usize]| -> Vec<Dim> { s.iter().map(|&d| Dim::from(d)).collect() };
        let m = tuple_len(&dims(x.shape), &dims(it.shape), 0)?;
        let tuples = idx.len() / m;
        let inner: usize = x.shape[m..].iter().product();
        if u.numel() != tuples * inner || u.dtype != x.dtype {
            return Err(KernelError::input(2, "updates do not match data and indices"));
        }
        let st = strides_of(x.shape);
        let starts = (0..tuples)
            .map(|t| (0..m).try_fold(0usize, |off, k| Ok(off + idx.resolve(t * m + k, x.shape[k])? * st[k])))
            .collect::<Result<Vec<usize>, KernelError>>()?;
        let out = out0(outputs)?;
        copy_all(x.data, out.data)?;
        let r = self.reduction;
        if r == Reduction::None {
            with_any!(x.dtype, T => {
                apply(elems_mut::<T>(out.data)?, elems::<T>(u.data)?, &starts, inner, |_, b| b)
            });
            return Ok(());
        }
        with_float!(x.dtype, T => {
            apply_float(elems_mut::<T>(out.data)?, elems::<T>(u.data)?, &starts, inner, r)
        }, _ => {
            if x.dtype == DType::Bool {
                // Booleans combine logically: add is or, mul is and.
                let op = move |a: u8, b: u8| match r {
                    Reduction::Add | Reduction::Max => a | b,
                    _ => a & b,
                };
                apply(elems_mut::<u8>(out.data)?, elems::<u8>(u.data)?, &starts, inner, op);
                return Ok(());
            }
            with_int!(x.dtype, T => {
                let op = move |a: T, b: T| match r {
                    Reduction::Add => a.wrapping_add(b),
                    Reduction::Mul => a.wrapping_mul(b),
                    Reduction::Max => a.max(b),
                    Reduction::Min => a.min(b),
                    Reduction::None => b,
                };
                apply(elems_mut::<T>(out.data)?, elems::<T>(u.data)?, &starts, inner, op)
            }, _ => return Err(KernelError::unsupported(format!("ScatterND on {}", x.dtype))))
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::DType;

    #[test]
    fn scatters_slices_and_elements() {
        let x = iota(&[4, 2]);
        let idx = i64s(&[2, 1], &[1, -1]);
        let u = f32s(&[2, 2], &[10., 11., 20., 21.]);
        let out = run("ScatterND", 13, &[], &[Some(&x), Some(&idx), Some(&u)]).unwrap();
        assert_eq!(vals_f32(&out[0]), vec![0., 1., 10., 11., 4., 5., 20., 21.]);

        let idx = i64s(&[2, 2], &[0, 1, 0, 1]);
        let u = f32s(&[2], &[5., 7.]);
        let add = [Attribute::string("reduction", "add")];
        let out = run("ScatterND", 16, &add, &[Some(&x), Some(&idx), Some(&u)]).unwrap();
        assert_eq!(vals_f32(&out[0])[1], 13.);
        let mul = [Attribute::string("reduction", "mul")];
        let out = run("ScatterND", 16, &mul, &[Some(&x), Some(&idx), Some(&u)]).unwrap();
        assert_eq!(vals_f32(&out[0])[1], 35.);
        let max = [Attribute::string("reduction", "max")];
        let xi = i64s(&[3], &[1, 9, 3]);
        let out = run("ScatterND", 18, &max, &[Some(&xi), Some(&i32s(&[2, 1], &[1, 2])), Some(&i64s(&[2], &[4, 4]))])
            .unwrap();
        assert_eq!(vals_i64(&out[0]), vec![1, 9, 4]);
        let min = [Attribute::string("reduction", "min")];
        let out = run("ScatterND", 18, &min, &[Some(&xi), Some(&i32s(&[2, 1], &[1, 2])), Some(&i64s(&[2], &[4, 4]))])
            .unwrap();
        assert_eq!(vals_i64(&out[0]), vec![1, 4, 3]);
    }

    #[test]
    fn scatter_errors() {
        let x = iota(&[4, 2]);
        let idx = i64s(&[1, 1], &[4]);
        let u = f32s(&[1, 2], &[1., 1.]);
        let err = run("ScatterND", 13, &[], &[Some(&x), Some(&idx), Some(&u)]).unwrap_err();
        assert!(err.to_string().contains("index 4"), "{err}");
        let u3 = f32s(&[1, 3], &[1., 1., 1.]);
        let idx = i64s(&[1, 1], &[0]);
        assert!(run("ScatterND", 13, &[], &[Some(&x), Some(&idx), Some(&u3)]).is_err());
        let out = infer(
            "ScatterND",
            13,
            &[],
            &[
                sym_in(DType::F32, vec![s("n"), k(2)]),
                sym_in(DType::I64, vec![s("m"), k(1)]),
                sym_in(DType::F32, vec![s("m"), k(2)]),
            ],
        )
        .unwrap();
        assert_eq!(out[0].shape, vec![s("n"), k(2)]);
    }
}
