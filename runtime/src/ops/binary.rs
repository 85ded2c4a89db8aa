//! Elementwise ops over two or more inputs with numpy broadcasting: arithmetic, Pow, Mod,
//! comparisons, logic, Where, and the variadic Sum / Mean / Max / Min.

pub(crate) mod strided;
#[cfg(test)]
pub(crate) mod testutil;

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::broadcast::broadcast_shapes;
use crate::ops::cast::{with_num, Scalar};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use crate::{with_any, with_float, with_int};
use kiln_formats::{DType, Dim};
use std::ops::Rem;
use strided::{update, zip2, zip3, Layout};

/// Op types this family has kernels for.
pub const OPS: &[&str] = &[
    "Add",
    "And",
    "Div",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Max",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Or",
    "Pow",
    "Sub",
    "Sum",
    "Where",
    "Xor",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    /// `fmod`: C remainder (sign of the dividend) instead of Python's (sign of the divisor).
    Mod {
        fmod: bool,
    },
    Max,
    Min,
    Mean,
    Sum,
    And,
    Or,
    Xor,
    Equal,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Where,
}

impl Op {
    fn variadic(self) -> bool {
        matches!(self, Op::Max | Op::Min | Op::Mean | Op::Sum)
    }

    fn comparison(self) -> bool {
        matches!(self, Op::Equal | Op::Greater | Op::GreaterOrEqual | Op::Less | Op::LessOrEqual)
    }

    fn logical(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Xor)
    }
}

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let op = match spec.op {
        "Add" => Op::Add,
        "Sub" => Op::Sub,
        "Mul" => Op::Mul,
        "Div" => Op::Div,
        "Pow" => Op::Pow,
        "Mod" => Op::Mod { fmod: false },
        "Max" => Op::Max,
        "Min" => Op::Min,
        "Mean" => Op::Mean,
        "Sum" => Op::Sum,
        "And" => Op::And,
        "Or" => Op::Or,
        "Xor" => Op::Xor,
        "Equal" => Op::Equal,
        "Greater" => Op::Greater,
        "GreaterOrEqual" => Op::GreaterOrEqual,
        "Less" => Op::Less,
        "LessOrEqual" => Op::LessOrEqual,
        "Where" => Op::Where,
        _ => return None,
    };
    Some(make(op, spec).map(|k| Box::new(k) as Box<dyn Kernel>))
}

fn make(op: Op, spec: &OpSpec) -> Result<Elementwise, KernelError> {
    let op = match op {
        Op::Mod { .. } => match spec.attrs.int("fmod", 0)? {
            0 => Op::Mod { fmod: false },
            1 => Op::Mod { fmod: true },
            v => return Err(KernelError::attr("fmod", format!("must be 0 or 1, got {v}"))),
        },
        op => op,
    };
    // Before opset 7, broadcasting was opt-in (`broadcast`) and could align B at `axis` of A
    // instead of at the trailing dims.
    let legacy_axis =
        if spec.opset < 7 && spec.attrs.int("broadcast", 0)? != 0 { spec.attrs.int_opt("axis")? } else { None };
    Ok(Elementwise { op, legacy_axis })
}

/// One elementwise op over broadcast inputs.
struct Elementwise {
    op: Op,
    legacy_axis: Option<i64>,
}

/// B's shape placed at `axis` of a rank-`rank_a` shape and padded with ones (opset < 7).
fn legacy_align<D: Clone>(b: &[D], rank_a: usize, axis: i64, one: D) -> Result<Vec<D>, KernelError> {
    let ra = rank_a as i64;
    let ax = if axis < 0 { axis + ra } else { axis };
    if ax < 0 || ax + b.len() as i64 > ra {
        return Err(KernelError::attr(
            "axis",
            format!("{axis} does not place a rank-{} input inside rank {rank_a}", b.len()),
        ));
    }
    let mut v = vec![one.clone(); ax as usize];
    v.extend(b.iter().cloned());
    v.resize(rank_a, one);
    Ok(v)
}

impl Elementwise {
    fn arity_ok(&self, n: usize) -> bool {
        match self.op {
            Op::Where => n == 3,
            op if op.variadic() => n >= 1,
            _ => n == 2,
        }
    }

    /// The output dtype for these input dtypes, or why they are not accepted.
    fn out_dtype(&self, dts: &[DType]) -> Result<DType, KernelError> {
        let same = |from: usize| -> Result<(), KernelError> {
            match dts[from..].iter().position(|&d| d != dts[from]) {
                None => Ok(()),
                Some(i) => Err(KernelError::input(from + i, format!("is {}, expected {}", dts[from + i], dts[from]))),
            }
        };
        let numeric = |d: DType| d.is_float() || d.is_int();
        let d0 = dts[0];
        match self.op {
            Op::Where => {
                if d0 != DType::Bool {
                    return Err(KernelError::input(0, format!("condition is {d0}, expected bool")));
                }
                same(1)?;
                Ok(dts[1])
            }
            Op::Pow => {
                for (i, &d) in dts.iter().enumerate() {
                    if !numeric(d) {
                        return Err(KernelError::input(i, format!("Pow does not take {d}")));
                    }
                }
                Ok(d0)
            }
            op if op.logical() => {
                same(0)?;
                if d0 != DType::Bool {
                    return Err(KernelError::input(0, format!("is {d0}, expected bool")));
                }
                Ok(DType::Bool)
            }
            op if op.comparison() => {
                same(0)?;
                Ok(DType::Bool)
            }
            Op::Mean if !d0.is_float() => Err(KernelError::input(0, format!("Mean does not take {d0}"))),
            _ => {
                same(0)?;
                if !numeric(d0) {
                    return Err(KernelError::input(0, format!("arithmetic on {d0}")));
                }
                Ok(d0)
            }
        }
    }

    /// Input shapes as broadcasting sees them (B re-aligned under the opset < 7 rule).
    fn aligned<D: Clone>(&self, shapes: &mut [Vec<D>], one: D) -> Result<(), KernelError> {
        if let (Some(axis), 2) = (self.legacy_axis, shapes.len()) {
            shapes[1] = legacy_align(&shapes[1], shapes[0].len(), axis, one)?;
        }
        Ok(())
    }
}

impl Kernel for Elementwise {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        if !self.arity_ok(inputs.len()) {
            return Err(KernelError::invalid(format!("{:?} does not take {} inputs", self.op, inputs.len())));
        }
        let ins = (0..inputs.len()).map(|i| required(inputs, i)).collect::<Result<Vec<_>, _>>()?;
        let dts: Vec<DType> = ins.iter().map(|t| t.dtype).collect();
        let dtype = self.out_dtype(&dts)?;
        let mut shapes: Vec<Vec<Dim>> = ins.iter().map(|t| t.shape.to_vec()).collect();
        self.aligned(&mut shapes, Dim::Known(1))?;
        let refs: Vec<&[Dim]> = shapes.iter().map(|s| s.as_slice()).collect();
        Ok(vec![OutputInfo::new(dtype, broadcast_shapes(&refs)?)])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        if !self.arity_ok(inputs.len()) {
            return Err(KernelError::invalid(format!("{:?} does not take {} inputs", self.op, inputs.len())));
        }
        let ins = (0..inputs.len()).map(|i| required(inputs, i)).collect::<Result<Vec<_>, _>>()?;
        let dts: Vec<DType> = ins.iter().map(|t| t.dtype).collect();
        let dtype = self.out_dtype(&dts)?;
        let out = outputs.first_mut().ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != dtype {
            return Err(KernelError::invalid(format!("output is {}, expected {dtype}", out.dtype)));
        }
        let mut shapes: Vec<Vec<usize>> = ins.iter().map(|t| t.shape.to_vec()).collect();
        self.aligned(&mut shapes, 1)?;
        let ins: Vec<TensorRef> = ins.iter().zip(&shapes).map(|(t, s)| TensorRef { shape: s, ..*t }).collect();
        match (self.op, ins.as_slice()) {
            (Op::Where, [c, x, y]) => where_(*c, *x, *y, out),
            (op, [a, b]) => {
                let l = layout2(out, a, b)?;
                match op {
                    Op::Pow => pow(*a, *b, out, &l),
                    op if op.comparison() => compare(op, *a, *b, out, &l),
                    op if op.logical() => logic(op, *a, *b, out, &l),
                    op => arith(op, *a, *b, out, &l),
                }
            }
            (op, ins) => variadic(op, ins, out),
        }
    }
}

fn layout2(out: &TensorMut, a: &TensorRef, b: &TensorRef) -> Result<Layout<2>, KernelError> {
    Layout::new(out.shape, out.numel(), [(a.shape, elems(a)?), (b.shape, elems(b)?)])
}

/// Elements actually present in `t`'s buffer (checked against its shape by [`Layout::new`]).
fn elems(t: &TensorRef) -> Result<usize, KernelError> {
    let s = t.dtype.size();
    if !t.data.len().is_multiple_of(s) {
        return Err(KernelError::invalid(format!("{} buffer of {} bytes", t.dtype, t.data.len())));
    }
    Ok(t.data.len() / s)
}

fn bad_dtype(d: DType) -> Result<(), KernelError> {
    Err(KernelError::unsupported(format!("elementwise op on {d}")))
}

/// NaN-propagating maximum (numpy `maximum`, ONNX Max).
#[inline(always)]
fn fmax<A: AccFloat>(x: A, y: A) -> A {
    if x.is_nan() || y.is_nan() {
        x + y
    } else if x >= y {
        x
    } else {
        y
    }
}

/// NaN-propagating minimum.
#[inline(always)]
fn fmin<A: AccFloat>(x: A, y: A) -> A {
    if x.is_nan() || y.is_nan() {
        x + y
    } else if x <= y {
        x
    } else {
        y
    }
}

/// Python's float modulo: the result takes the divisor's sign.
#[inline(always)]
fn py_fmod<A: AccFloat + Rem<Output = A>>(x: A, y: A) -> A {
    let r = x % y;
    if r != A::ZERO && ((r < A::ZERO) != (y < A::ZERO)) {
        r + y
    } else {
        r
    }
}

fn arith(op: Op, a: TensorRef, b: TensorRef, out: &mut TensorMut, l: &Layout<2>) -> Result<(), KernelError> {
    with_float!(a.dtype, T => {
        arith_float::<T>(op, a.typed()?, b.typed()?, out.typed()?, l)
    }, _ => with_int!(a.dtype, T => {
        arith_int::<T>(op, a.typed()?, b.typed()?, out.typed()?, l)
    }, _ => bad_dtype(a.dtype)))
}

fn arith_float<T: Float>(op: Op, a: &[T], b: &[T], o: &mut [T], l: &Layout<2>) -> Result<(), KernelError>
where
    T::Acc: Rem<Output = T::Acc>,
{
    macro_rules! go {
        (|$x:ident, $y:ident| $e:expr) => {
            zip2(l, a, b, o, |p: T, q: T| {
                let ($x, $y) = (p.to_acc(), q.to_acc());
                T::from_acc($e)
            })
        };
    }
    let two = T::Acc::from_f64(2.0);
    match op {
        Op::Add | Op::Sum => go!(|x, y| x + y),
        Op::Sub => go!(|x, y| x - y),
        Op::Mul => go!(|x, y| x * y),
        Op::Div => go!(|x, y| x / y),
        Op::Mean => go!(|x, y| (x + y) / two),
        Op::Max => go!(|x, y| fmax(x, y)),
        Op::Min => go!(|x, y| fmin(x, y)),
        Op::Mod { fmod: true } => go!(|x, y| x % y),
        Op::Mod { fmod: false } => go!(|x, y| py_fmod(x, y)),
        op => return Err(KernelError::invalid(format!("{op:?} is not arithmetic"))),
    }
    Ok(())
}

fn arith_int<T: Int>(op: Op, a: &[T], b: &[T], o: &mut [T], l: &Layout<2>) -> Result<(), KernelError> {
    match op {
        Op::Add | Op::Sum => zip2(l, a, b, o, T::wadd),
        Op::Sub => zip2(l, a, b, o, T::wsub),
        Op::Mul => zip2(l, a, b, o, T::wmul),
        Op::Div => zip2(l, a, b, o, T::div_trunc),
        Op::Max => zip2(l, a, b, o, |p: T, q: T| if p >= q { p } else { q }),
        Op::Min => zip2(l, a, b, o, |p: T, q: T| if p <= q { p } else { q }),
        Op::Mod { fmod: true } => zip2(l, a, b, o, T::rem_trunc),
        Op::Mod { fmod: false } => zip2(l, a, b, o, T::rem_floor),
        op => return Err(KernelError::invalid(format!("{op:?} on integers"))),
    }
    Ok(())
}

/// Integer arithmetic that never panics: overflow wraps (as numpy and C on two's complement),
/// division and remainder by zero give 0 (numpy's result, after its warning).
pub(crate) trait Int: Scalar + Ord {
    fn wadd(self, o: Self) -> Self;
    fn wsub(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
    /// Quotient truncated toward zero.
    fn div_trunc(self, o: Self) -> Self;
    /// Remainder with the dividend's sign (C `%`).
    fn rem_trunc(self, o: Self) -> Self;
    /// Remainder with the divisor's sign (Python `%`).
    fn rem_floor(self, o: Self) -> Self;
    /// `self` to an integer power; negative powers truncate toward zero (so 0 unless |self| = 1).
    fn pow_i(self, e: i64) -> Self;
}

macro_rules! int_impl {
    ($($t:ty),*) => {$(
        impl Int for $t {
            #[inline(always)]
            fn wadd(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline(always)]
            fn wsub(self, o: Self) -> Self { self.wrapping_sub(o) }
            #[inline(always)]
            fn wmul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline(always)]
            fn div_trunc(self, o: Self) -> Self {
                if o == 0 { 0 } else { self.wrapping_div(o) }
            }
            #[inline(always)]
            fn rem_trunc(self, o: Self) -> Self {
                if o == 0 { 0 } else { self.wrapping_rem(o) }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn rem_floor(self, o: Self) -> Self {
                if o == 0 {
                    return 0;
                }
                let r = self.wrapping_rem(o);
                if r != 0 && ((r < 0) != (o < 0)) { r.wrapping_add(o) } else { r }
            }
            #[allow(unused_comparisons)]
            fn pow_i(self, e: i64) -> Self {
                if e < 0 {
                    return match self.as_i64() {
                        1 => 1,
                        -1 if self < 0 => if e % 2 == 0 { 1 } else { self },
                        _ => 0,
                    };
                }
                let (mut base, mut e, mut acc) = (self, e as u64, 1 as $t);
                while e > 0 {
                    if e & 1 == 1 {
                        acc = acc.wrapping_mul(base);
                    }
                    base = base.wrapping_mul(base);
                    e >>= 1;
                }
                acc
            }
        }
    )*};
}
int_impl!(i8, i16, i32, i64, u8, u16, u32, u64);

fn pow(a: TensorRef, b: TensorRef, out: &mut TensorMut, l: &Layout<2>) -> Result<(), KernelError> {
    with_float!(a.dtype, T => {
        let (x, o) = (a.typed::<T>()?, out.typed::<T>()?);
        // Pow(x, 2) is how exported LayerNorms and variances square, Pow(x, 3) the cube of
        // GPT-2's tanh GELU: plain products for them, as onnxruntime computes them, where powf
        // took a sixth of a GPT-2 prefill.
        if b.numel() == 1 && x.len() == o.len() && b.data.len() == b.dtype.size() {
            let e = b.get_f64(0);
            if e == 2.0 || e == 3.0 {
                let cube = e == 3.0;
                return strided::map(x, o, |v: T| {
                    let v = v.to_acc();
                    T::from_acc(if cube { v * v * v } else { v * v })
                });
            }
            if e == 1.0 {
                return strided::map(x, o, |v: T| v);
            }
        }
        with_num!(b.dtype, E => {
            zip2(l, x, b.typed::<E>()?, o, |p: T, q: E| {
                T::from_acc(p.to_acc().powf(<T as Float>::Acc::from_f64(q.as_f64())))
            });
            Ok(())
        }, _ => bad_dtype(b.dtype))
    }, _ => with_int!(a.dtype, T => {
        let (x, o) = (a.typed::<T>()?, out.typed::<T>()?);
        with_num!(b.dtype, E => {
            zip2(l, x, b.typed::<E>()?, o, |p: T, q: E| {
                // numpy computes int ** float in float64 and casts back.
                if E::FLOAT { T::from_f64_as(p.as_f64().powf(q.as_f64())) } else { p.pow_i(q.as_i64()) }
            });
            Ok(())
        }, _ => bad_dtype(b.dtype))
    }, _ => bad_dtype(a.dtype)))
}

fn compare(op: Op, a: TensorRef, b: TensorRef, out: &mut TensorMut, l: &Layout<2>) -> Result<(), KernelError> {
    let o = out.typed::<u8>()?;
    with_num!(a.dtype, T => {
        let (x, y) = (a.typed::<T>()?, b.typed::<T>()?);
        match op {
            Op::Equal => zip2(l, x, y, o, |p: T, q: T| u8::from(p == q)),
            Op::Greater => zip2(l, x, y, o, |p: T, q: T| u8::from(p > q)),
            Op::GreaterOrEqual => zip2(l, x, y, o, |p: T, q: T| u8::from(p >= q)),
            Op::Less => zip2(l, x, y, o, |p: T, q: T| u8::from(p < q)),
            Op::LessOrEqual => zip2(l, x, y, o, |p: T, q: T| u8::from(p <= q)),
            op => return Err(KernelError::invalid(format!("{op:?} is not a comparison"))),
        }
        Ok(())
    }, _ => bad_dtype(a.dtype))
}

fn logic(op: Op, a: TensorRef, b: TensorRef, out: &mut TensorMut, l: &Layout<2>) -> Result<(), KernelError> {
    let (x, y, o) = (a.typed::<u8>()?, b.typed::<u8>()?, out.typed::<u8>()?);
    match op {
        Op::And => zip2(l, x, y, o, |p, q| u8::from(p != 0 && q != 0)),
        Op::Or => zip2(l, x, y, o, |p, q| u8::from(p != 0 || q != 0)),
        Op::Xor => zip2(l, x, y, o, |p, q| u8::from((p != 0) != (q != 0))),
        op => return Err(KernelError::invalid(format!("{op:?} is not logical"))),
    }
    Ok(())
}

fn where_(c: TensorRef, x: TensorRef, y: TensorRef, out: &mut TensorMut) -> Result<(), KernelError> {
    let l = Layout::new(out.shape, out.numel(), [(c.shape, elems(&c)?), (x.shape, elems(&x)?), (y.shape, elems(&y)?)])?;
    let cond = c.typed::<u8>()?;
    let misaligned = |e: bytemuck::PodCastError| KernelError::invalid(format!("misaligned data: {e:?}"));
    // Pure data movement: pick the element type by size so every dtype shares four loops.
    with_any!(x.dtype, T => {
        let xs = bytemuck::try_cast_slice::<u8, T>(x.data).map_err(misaligned)?;
        let ys = bytemuck::try_cast_slice::<u8, T>(y.data).map_err(misaligned)?;
        let o = bytemuck::try_cast_slice_mut::<u8, T>(out.data).map_err(misaligned)?;
        zip3(&l, cond, xs, ys, o, |k, p, q| if k != 0 { p } else { q });
    });
    Ok(())
}

/// Sum / Mean / Max / Min of one or three or more inputs: copy the first (broadcast) into the
/// output, then fold each further input into it in place.
fn variadic(op: Op, ins: &[TensorRef], out: &mut TensorMut) -> Result<(), KernelError> {
    let shape = out.shape;
    let layout = |t: &TensorRef| -> Result<Layout<1>, KernelError> {
        Layout::new(shape, shape.iter().product(), [(t.shape, elems(t)?)])
    };
    let n = ins.len();
    let d = ins[0].dtype;
    with_float!(d, T => {
        let o = out.typed::<T>()?;
        for (i, t) in ins.iter().enumerate() {
            let l = layout(t)?;
            let y = t.typed::<T>()?;
            macro_rules! fold {
                (|$p:ident, $q:ident| $e:expr) => {
                    update(&l, y, o, |a: T, b: T| {
                        let ($p, $q) = (a.to_acc(), b.to_acc());
                        T::from_acc($e)
                    })
                };
            }
            match op {
                _ if i == 0 => update(&l, y, o, |_, b: T| b),
                Op::Sum | Op::Mean => fold!(|p, q| p + q),
                Op::Max => fold!(|p, q| fmax(p, q)),
                Op::Min => fold!(|p, q| fmin(p, q)),
                op => return Err(KernelError::invalid(format!("{op:?} is not variadic"))),
            }
        }
        if op == Op::Mean {
            let k = <T as Float>::Acc::from_f64(n as f64);
            strided::map_in_place(o, |v: T| T::from_acc(v.to_acc() / k));
        }
        Ok(())
    }, _ => with_int!(d, T => {
        let o = out.typed::<T>()?;
        for (i, t) in ins.iter().enumerate() {
            let l = layout(t)?;
            let y = t.typed::<T>()?;
            match op {
                _ if i == 0 => update(&l, y, o, |_, b: T| b),
                Op::Sum => update(&l, y, o, T::wadd),
                Op::Max => update(&l, y, o, |p: T, q: T| if p >= q { p } else { q }),
                Op::Min => update(&l, y, o, |p: T, q: T| if p <= q { p } else { q }),
                op => return Err(KernelError::invalid(format!("{op:?} on integers"))),
            }
        }
        Ok(())
    }, _ => bad_dtype(d)))
}

#[cfg(test)]
mod tests {
    use super::testutil::{dims, infer_op, run_op, values};
    use super::*;
    use half::f16;
    use kiln_formats::program::Attribute;
    use kiln_formats::Tensor;

    fn run2(op: &str, a: &Tensor, b: &Tensor) -> Tensor {
        run_op(op, 17, &[], &[Some(a), Some(b)]).unwrap().remove(0)
    }

    fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape, v.to_vec())
    }

    #[test]
    fn arithmetic_broadcasts() {
        let a = f32s(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let bias = f32s(&[3], &[10.0, 20.0, 30.0]);
        let y = run2("Add", &a, &bias);
        assert_eq!(y.shape, [2, 3]);
        assert_eq!(values(&y), [11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        let s = f32s(&[], &[2.0]);
        assert_eq!(values(&run2("Sub", &s, &a)), [1.0, 0.0, -1.0, -2.0, -3.0, -4.0]);
        assert_eq!(values(&run2("Mul", &a, &s)), [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        let col = f32s(&[2, 1], &[1.0, 2.0]);
        assert_eq!(values(&run2("Div", &a, &col)), [1.0, 2.0, 3.0, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn half_precision_computes_in_f32() {
        let a = Tensor::from_vec(&[2], vec![f16::from_f32(1.5), f16::from_f32(-2.0)]);
        let b = Tensor::from_vec(&[1], vec![f16::from_f32(0.25)]);
        let y = run2("Add", &a, &b);
        assert_eq!(y.dtype, DType::F16);
        assert_eq!(values(&y), [1.75, -1.75]);
    }

    #[test]
    fn integer_division_truncates() {
        let a = Tensor::from_vec(&[4], vec![7i32, -7, 7, -7]);
        let b = Tensor::from_vec(&[4], vec![2i32, 2, -2, -2]);
        assert_eq!(values(&run2("Div", &a, &b)), [3.0, -3.0, -3.0, 3.0]);
        let z = Tensor::from_vec(&[2], vec![i64::MIN, 5]);
        let d = Tensor::from_vec(&[2], vec![-1i64, 0]);
        let y = run2("Div", &z, &d);
        assert_eq!(y.as_slice::<i64>().unwrap(), [i64::MIN, 0]);
    }

    #[test]
    fn modulo_follows_fmod() {
        let a = Tensor::from_vec(&[4], vec![7i64, -7, 7, -7]);
        let b = Tensor::from_vec(&[4], vec![3i64, 3, -3, -3]);
        assert_eq!(values(&run2("Mod", &a, &b)), [1.0, 2.0, -2.0, -1.0]);
        let fmod = [Attribute::int("fmod", 1)];
        let y = run_op("Mod", 13, &fmod, &[Some(&a), Some(&b)]).unwrap().remove(0);
        assert_eq!(values(&y), [1.0, -1.0, 1.0, -1.0]);
        let x = f32s(&[2], &[-4.3, 5.5]);
        let m = f32s(&[1], &[2.0]);
        let y = run_op("Mod", 13, &fmod, &[Some(&x), Some(&m)]).unwrap().remove(0);
        let v = values(&y);
        assert!((v[0] + 0.3).abs() < 1e-6 && (v[1] - 1.5).abs() < 1e-6);
        let y = run2("Mod", &x, &m);
        let v = values(&y);
        assert!((v[0] - 1.7).abs() < 1e-6 && (v[1] - 1.5).abs() < 1e-6);
        let u = Tensor::from_vec(&[2], vec![7u8, 9]);
        let w = Tensor::from_vec(&[2], vec![4u8, 0]);
        assert_eq!(values(&run2("Mod", &u, &w)), [3.0, 0.0]);
        assert!(run_op("Mod", 13, &[Attribute::int("fmod", 2)], &[Some(&a), Some(&b)]).is_err());
    }

    #[test]
    fn pow_mixes_types() {
        let x = f32s(&[3], &[2.0, -3.0, 4.0]);
        let e = Tensor::from_vec(&[3], vec![3i64, 2, -1]);
        assert_eq!(values(&run2("Pow", &x, &e)), [8.0, 9.0, 0.25]);
        let two = f32s(&[], &[2.0]);
        assert_eq!(values(&run2("Pow", &x, &two)), [4.0, 9.0, 16.0]);
        // A cube is x·x·x, rounded twice as onnxruntime's is, not powf's correctly rounded one.
        let cube_of = |v: f32| values(&run2("Pow", &f32s(&[1], &[v]), &f32s(&[], &[3.0])))[0];
        for v in [1.1f32, -0.7, 3.3e-5, 17.25] {
            assert_eq!((cube_of(v) as f32).to_bits(), (v * v * v).to_bits(), "{v}");
        }
        let half = f32s(&[1], &[0.5]);
        assert_eq!(values(&run2("Pow", &x, &half))[2], 2.0);
        let xi = Tensor::from_vec(&[3], vec![1i32, 2, 3]);
        let ef = f32s(&[3], &[4.0, 5.0, 6.0]);
        let y = run2("Pow", &xi, &ef);
        assert_eq!(y.dtype, DType::I32);
        assert_eq!(values(&y), [1.0, 32.0, 729.0]);
        let ei = Tensor::from_vec(&[3], vec![62i64, -1, 0]);
        let b = Tensor::from_vec(&[3], vec![2i64, -1, 5]);
        assert_eq!(run2("Pow", &b, &ei).as_slice::<i64>().unwrap(), [1i64 << 62, -1, 1]);
    }

    #[test]
    fn max_min_propagate_nan_and_take_many_inputs() {
        let a = f32s(&[3], &[1.0, f32::NAN, 5.0]);
        let b = f32s(&[3], &[2.0, 0.0, f32::NAN]);
        let y = values(&run2("Max", &a, &b));
        assert_eq!(y[0], 2.0);
        assert!(y[1].is_nan() && y[2].is_nan());
        let y = values(&run2("Min", &a, &b));
        assert_eq!(y[0], 1.0);
        assert!(y[1].is_nan() && y[2].is_nan());

        let p = f32s(&[2, 1], &[1.0, 8.0]);
        let q = f32s(&[3], &[2.0, 5.0, 9.0]);
        let r = f32s(&[], &[4.0]);
        let ins = [Some(&p), Some(&q), Some(&r)];
        let y = run_op("Max", 13, &[], &ins).unwrap().remove(0);
        assert_eq!(y.shape, [2, 3]);
        assert_eq!(values(&y), [4.0, 5.0, 9.0, 8.0, 8.0, 9.0]);
        let y = run_op("Min", 13, &[], &ins).unwrap().remove(0);
        assert_eq!(values(&y), [1.0, 1.0, 1.0, 2.0, 4.0, 4.0]);
        let y = run_op("Sum", 13, &[], &ins).unwrap().remove(0);
        assert_eq!(values(&y), [7.0, 10.0, 14.0, 14.0, 17.0, 21.0]);
        let y = run_op("Mean", 13, &[], &ins).unwrap().remove(0);
        assert_eq!(values(&y)[0], (7.0f32 / 3.0) as f64);
        let y = run_op("Mean", 13, &[], &[Some(&p), Some(&q)]).unwrap().remove(0);
        assert_eq!(values(&y), [1.5, 3.0, 5.0, 5.0, 6.5, 8.5]);
        let y = run_op("Sum", 13, &[], &[Some(&p)]).unwrap().remove(0);
        assert_eq!(values(&y), [1.0, 8.0]);

        let i = Tensor::from_vec(&[2], vec![3i32, -4]);
        let j = Tensor::from_vec(&[2], vec![1i32, 9]);
        let k = Tensor::from_vec(&[1], vec![2i32]);
        let y = run_op("Max", 13, &[], &[Some(&i), Some(&j), Some(&k)]).unwrap().remove(0);
        assert_eq!(values(&y), [3.0, 9.0]);
        assert!(run_op("Mean", 13, &[], &[Some(&i), Some(&j)]).is_err());
    }

    #[test]
    fn comparisons_and_logic_give_bools() {
        let a = Tensor::from_vec(&[3], vec![1i64, 2, 3]);
        let b = Tensor::from_vec(&[], vec![2i64]);
        let cases = [
            ("Equal", [0.0, 1.0, 0.0]),
            ("Greater", [0.0, 0.0, 1.0]),
            ("GreaterOrEqual", [0.0, 1.0, 1.0]),
            ("Less", [1.0, 0.0, 0.0]),
            ("LessOrEqual", [1.0, 1.0, 0.0]),
        ];
        for (op, want) in cases {
            let y = run2(op, &a, &b);
            assert_eq!(y.dtype, DType::Bool);
            assert_eq!(values(&y), want, "{op}");
        }
        let n = f32s(&[2], &[f32::NAN, 1.0]);
        assert_eq!(values(&run2("Equal", &n, &n)), [0.0, 1.0]);
        let p = Tensor::from_bools(&[4], &[true, true, false, false]);
        let q = Tensor::from_bools(&[4], &[true, false, true, false]);
        assert_eq!(values(&run2("And", &p, &q)), [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(values(&run2("Or", &p, &q)), [1.0, 1.0, 1.0, 0.0]);
        assert_eq!(values(&run2("Xor", &p, &q)), [0.0, 1.0, 1.0, 0.0]);
        assert_eq!(values(&run2("Equal", &p, &q)), [1.0, 0.0, 0.0, 1.0]);
        assert!(run_op("And", 7, &[], &[Some(&a), Some(&a)]).is_err());
    }

    #[test]
    fn where_broadcasts_three_ways() {
        let c = Tensor::from_bools(&[2, 1], &[true, false]);
        let x = f32s(&[3], &[1.0, 2.0, 3.0]);
        let y = f32s(&[], &[-1.0]);
        let out = run_op("Where", 16, &[], &[Some(&c), Some(&x), Some(&y)]).unwrap().remove(0);
        assert_eq!(out.shape, [2, 3]);
        assert_eq!(values(&out), [1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
        let xb = Tensor::from_bools(&[2], &[true, true]);
        let yb = Tensor::from_bools(&[2], &[false, false]);
        let cb = Tensor::from_bools(&[2], &[false, true]);
        let out = run_op("Where", 16, &[], &[Some(&cb), Some(&xb), Some(&yb)]).unwrap().remove(0);
        assert_eq!(values(&out), [0.0, 1.0]);
        let xi = Tensor::from_vec(&[2], vec![1i64, 2]);
        assert!(run_op("Where", 16, &[], &[Some(&cb), Some(&xi), Some(&x)]).is_err());
        assert!(run_op("Where", 16, &[], &[Some(&x), Some(&x), Some(&x)]).is_err());
    }

    #[test]
    fn legacy_axis_broadcast() {
        let a = f32s(&[2, 3, 2], &[0.0; 12]);
        let b = f32s(&[3], &[1.0, 2.0, 3.0]);
        let attrs = [Attribute::int("broadcast", 1), Attribute::int("axis", 1)];
        let y = run_op("Add", 6, &attrs, &[Some(&a), Some(&b)]).unwrap().remove(0);
        assert_eq!(y.shape, [2, 3, 2]);
        assert_eq!(values(&y), [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        let bad = [Attribute::int("broadcast", 1), Attribute::int("axis", 2)];
        assert!(run_op("Add", 6, &bad, &[Some(&a), Some(&b)]).is_err());
    }

    #[test]
    fn infer_is_symbolic_and_checks_inputs() {
        let s = vec![Dim::sym("batch"), Dim::sym("seq"), Dim::Known(768)];
        let bias = dims(&[768]);
        let out = infer_op("Add", 14, &[], &[Some((DType::F32, s.clone())), Some((DType::F32, bias.clone()))]).unwrap();
        assert_eq!(out, vec![OutputInfo::new(DType::F32, s.clone())]);
        let mask = vec![Dim::sym("batch"), Dim::Known(1), Dim::Known(1)];
        let out = infer_op(
            "Where",
            16,
            &[],
            &[Some((DType::Bool, mask)), Some((DType::F16, s.clone())), Some((DType::F16, vec![]))],
        )
        .unwrap();
        assert_eq!(out[0].shape, s);
        assert_eq!(out[0].dtype, DType::F16);
        let out = infer_op("Less", 13, &[], &[Some((DType::I64, s.clone())), Some((DType::I64, vec![]))]).unwrap();
        assert_eq!(out[0].dtype, DType::Bool);
        // Mismatched dtypes, shapes and arity are errors.
        assert!(infer_op("Add", 14, &[], &[Some((DType::F32, s.clone())), Some((DType::F16, bias))]).is_err());
        assert!(infer_op("Add", 14, &[], &[Some((DType::F32, s.clone())), Some((DType::F32, dims(&[5])))]).is_err());
        assert!(infer_op("Add", 14, &[], &[Some((DType::F32, s.clone()))]).is_err());
        assert!(infer_op("Add", 14, &[], &[Some((DType::F32, s.clone())), None]).is_err());
        assert!(infer_op("Sum", 13, &[], &[]).is_err());
        assert!(infer_op("Add", 14, &[], &[Some((DType::Bool, s.clone())), Some((DType::Bool, s))]).is_err());
    }

    #[test]
    fn run_rejects_shapes_that_do_not_broadcast() {
        let a = f32s(&[3], &[1.0, 2.0, 3.0]);
        let b = f32s(&[2], &[1.0, 2.0]);
        assert!(run_op("Add", 14, &[], &[Some(&a), Some(&b)]).is_err());
    }

    #[test]
    fn large_same_shape_runs_in_parallel() {
        let n = 300_001;
        let a = Tensor::from_vec(&[n], (0..n).map(|i| i as f32).collect());
        let b = Tensor::from_vec(&[n], vec![1.0f32; n]);
        let y = run2("Add", &a, &b);
        let y = y.as_slice::<f32>().unwrap();
        assert!(y.iter().enumerate().all(|(i, &v)| v == i as f32 + 1.0));
    }
}
