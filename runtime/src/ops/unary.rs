//! Elementwise ops over one input: math functions, activations, predicates, and Clip.

mod erf;
pub(crate) mod expf;
pub mod gelu_tanh;
pub mod silu;

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::binary::strided::map;
use crate::ops::cast::{with_num, Scalar};
use crate::ops::num::num_like::AccFloat;
use crate::ops::num::Float;
use crate::view::{TensorMut, TensorRef};
use crate::{with_float, with_int};
use kiln_formats::{DType, Dim};

/// Op types this family has kernels for.
pub const OPS: &[&str] = &[
    "Abs",
    "Ceil",
    "Clip",
    "Cos",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "IsInf",
    "IsNaN",
    "Log",
    "Neg",
    "Not",
    "Reciprocal",
    "Relu",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sqrt",
    "Tanh",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Abs,
    Ceil,
    Cos,
    Erf,
    Exp,
    Floor,
    /// `tanh`: the tanh approximation instead of the exact erf form.
    Gelu {
        tanh: bool,
    },
    IsInf {
        negative: bool,
        positive: bool,
    },
    IsNaN,
    Log,
    Neg,
    Not,
    Reciprocal,
    Relu,
    Sigmoid,
    Sign,
    Sin,
    Sqrt,
    Tanh,
}

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let op = match spec.op {
        "Abs" => Op::Abs,
        "Ceil" => Op::Ceil,
        "Cos" => Op::Cos,
        "Erf" => Op::Erf,
        "Exp" => Op::Exp,
        "Floor" => Op::Floor,
        "Gelu" => Op::Gelu { tanh: false },
        "IsInf" => Op::IsInf { negative: true, positive: true },
        "IsNaN" => Op::IsNaN,
        "Log" => Op::Log,
        "Neg" => Op::Neg,
        "Not" => Op::Not,
        "Reciprocal" => Op::Reciprocal,
        "Relu" => Op::Relu,
        "Sigmoid" => Op::Sigmoid,
        "Sign" => Op::Sign,
        "Sin" => Op::Sin,
        "Sqrt" => Op::Sqrt,
        "Tanh" => Op::Tanh,
        "Clip" => return Some(Clip::new(spec).map(|k| Box::new(k) as Box<dyn Kernel>)),
        _ => return None,
    };
    Some(configure(op, spec).map(|op| Box::new(Unary { op }) as Box<dyn Kernel>))
}

fn configure(op: Op, spec: &OpSpec) -> Result<Op, KernelError> {
    Ok(match op {
        Op::Gelu { .. } => match spec.attrs.string("approximate", "none")?.as_str() {
            "none" => Op::Gelu { tanh: false },
            "tanh" => Op::Gelu { tanh: true },
            other => {
                return Err(KernelError::attr("approximate", format!("must be \"none\" or \"tanh\", got \"{other}\"")))
            }
        },
        Op::IsInf { .. } => Op::IsInf {
            negative: spec.attrs.int("detect_negative", 1)? != 0,
            positive: spec.attrs.int("detect_positive", 1)? != 0,
        },
        op => op,
    })
}

/// Which element types an op accepts.
#[derive(PartialEq)]
enum Accepts {
    Float,
    /// Floats and integers.
    Numeric,
    Bool,
}

impl Op {
    fn accepts(self) -> Accepts {
        match self {
            Op::Abs | Op::Neg | Op::Relu | Op::Sign => Accepts::Numeric,
            Op::Not => Accepts::Bool,
            _ => Accepts::Float,
        }
    }

    fn out_dtype(self, d: DType) -> Result<DType, KernelError> {
        let ok = match self.accepts() {
            Accepts::Float => d.is_float(),
            Accepts::Numeric => d.is_float() || d.is_int(),
            Accepts::Bool => d == DType::Bool,
        };
        if !ok {
            return Err(KernelError::input(0, format!("{self:?} does not take {d}")));
        }
        Ok(match self {
            Op::IsInf { .. } | Op::IsNaN => DType::Bool,
            _ => d,
        })
    }
}

/// One single-input elementwise op.
struct Unary {
    op: Op,
}

impl Kernel for Unary {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        Ok(vec![OutputInfo::new(self.op.out_dtype(x.dtype)?, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let dtype = self.op.out_dtype(x.dtype)?;
        let out = outputs.first_mut().ok_or_else(|| KernelError::invalid("missing output"))?;
        if out.dtype != dtype {
            return Err(KernelError::invalid(format!("output is {}, expected {dtype}", out.dtype)));
        }
        match self.op {
            Op::Not => map(x.typed::<u8>()?, out.typed::<u8>()?, |v| u8::from(v == 0)),
            Op::IsNaN => with_float!(x.dtype, T => {
                map(x.typed::<T>()?, out.typed::<u8>()?, |v: T| u8::from(v.to_acc().is_nan()))
            }, _ => bad_dtype(x.dtype)),
            Op::IsInf { negative, positive } => with_float!(x.dtype, T => {
                map(x.typed::<T>()?, out.typed::<u8>()?, |v: T| {
                    let v = v.to_acc().to_f64();
                    u8::from((positive && v == f64::INFINITY) || (negative && v == f64::NEG_INFINITY))
                })
            }, _ => bad_dtype(x.dtype)),
            op => with_float!(x.dtype, T => {
                float_op::<T>(op, x.typed()?, out.typed()?)
            }, _ => with_int!(x.dtype, T => {
                int_op::<T>(op, x.typed()?, out.typed()?)
            }, _ => bad_dtype(x.dtype))),
        }
    }
}

fn bad_dtype(d: DType) -> Result<(), KernelError> {
    Err(KernelError::unsupported(format!("elementwise op on {d}")))
}

/// Float functions the shared accumulator trait lacks.
pub(crate) trait MathExt: AccFloat {
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn erf(self) -> Self;
    fn signum0(self) -> Self;
    /// exp, tanh and logistic: vectorizable forms for f32, std for f64.
    fn exp_v(self) -> Self;
    fn tanh_v(self) -> Self;
    fn sigmoid_v(self) -> Self;
}

macro_rules! math_ext {
    ($t:ty, $erf:path, $exp:expr, $tanh:expr, $sigmoid:expr) => {
        impl MathExt for $t {
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn exp_v(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn tanh_v(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn sigmoid_v(self) -> Self {
                $sigmoid(self)
            }
            /// numpy's sign: 0 for zeros, NaN for NaN.
            #[inline(always)]
            fn signum0(self) -> Self {
                if self > 0.0 {
                    1.0
                } else if self < 0.0 {
                    -1.0
                } else {
                    self
                }
            }
        }
    };
}
math_ext!(f32, erf::erf32, expf::exp, expf::tanh, expf::sigmoid);
math_ext!(f64, erf::erf64, f64::exp, f64::tanh, sigmoid);

/// The f64 logistic function without overflow: exp is only taken of non-positive arguments.
#[inline(always)]
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn float_op<T: Float>(op: Op, x: &[T], o: &mut [T]) -> Result<(), KernelError>
where
    T::Acc: MathExt,
{
    macro_rules! go {
        (|$v:ident| $e:expr) => {
            map(x, o, |p: T| {
                let $v = p.to_acc();
                T::from_acc($e)
            })
        };
    }
    let c = |v: f64| T::Acc::from_f64(v);
    let (half, one) = (c(0.5), T::Acc::ONE);
    match op {
        Op::Abs => go!(|v| v.abs()),
        Op::Neg => go!(|v| -v),
        Op::Ceil => go!(|v| v.ceil()),
        Op::Floor => go!(|v| v.floor()),
        Op::Cos => go!(|v| v.cos()),
        Op::Sin => go!(|v| v.sin()),
        Op::Erf => go!(|v| v.erf()),
        Op::Exp => go!(|v| v.exp_v()),
        Op::Log => go!(|v| v.ln()),
        Op::Sqrt => go!(|v| v.sqrt()),
        Op::Tanh => go!(|v| v.tanh_v()),
        Op::Reciprocal => go!(|v| one / v),
        Op::Sigmoid => go!(|v| v.sigmoid_v()),
        Op::Sign => go!(|v| v.signum0()),
        // max(x, 0) that keeps NaN.
        Op::Relu => go!(|v| if v < T::Acc::ZERO { T::Acc::ZERO } else { v }),
        Op::Gelu { tanh: false } => {
            let r = c(std::f64::consts::FRAC_1_SQRT_2);
            go!(|v| half * v * (one + (v * r).erf()))
        }
        Op::Gelu { tanh: true } => {
            let (k, a) = (c((2.0 / std::f64::consts::PI).sqrt()), c(0.044715));
            go!(|v| half * v * (one + (k * (v + a * v * v * v)).tanh_v()))
        }
        op => Err(KernelError::invalid(format!("{op:?} is not a float map"))),
    }
}

/// Integer Abs, Neg, Relu and Sign (wrapping, as numpy: Abs and Neg of the minimum stay put).
fn int_op<T: IntUnary>(op: Op, x: &[T], o: &mut [T]) -> Result<(), KernelError> {
    match op {
        Op::Abs => map(x, o, T::abs_w),
        Op::Neg => map(x, o, T::neg_w),
        Op::Relu => map(x, o, |v: T| if v < T::ZERO { T::ZERO } else { v }),
        Op::Sign => map(x, o, T::sign),
        op => Err(KernelError::invalid(format!("{op:?} does not take integers"))),
    }
}

trait IntUnary: Scalar {
    fn abs_w(self) -> Self;
    fn neg_w(self) -> Self;
    fn sign(self) -> Self;
}

macro_rules! int_unary {
    ($($t:ty),*) => {$(
        impl IntUnary for $t {
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn abs_w(self) -> Self { if self < 0 { self.wrapping_neg() } else { self } }
            #[inline(always)]
            fn neg_w(self) -> Self { self.wrapping_neg() }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn sign(self) -> Self {
                if self > 0 { 1 } else if self < 0 { (0 as $t).wrapping_sub(1) } else { 0 }
            }
        }
    )*};
}
int_unary!(i8, i16, i32, i64, u8, u16, u32, u64);

/// Clip: bounds from attributes (opset < 11, floats) or from optional scalar inputs 1 and 2.
struct Clip {
    /// (min, max) attributes before opset 11; `None` once the bounds are inputs.
    attrs: Option<(Option<f32>, Option<f32>)>,
}

impl Clip {
    fn new(spec: &OpSpec) -> Result<Self, KernelError> {
        let attrs =
            if spec.opset < 11 { Some((spec.attrs.float_opt("min")?, spec.attrs.float_opt("max")?)) } else { None };
        Ok(Clip { attrs })
    }

    /// Checks the input dtype and that the bound inputs match it and hold one element.
    fn check(&self, x: DType, bounds: [Option<(DType, Option<usize>)>; 2]) -> Result<(), KernelError> {
        let ok = match self.attrs {
            Some(_) => x.is_float(),
            None => x.is_float() || x.is_int(),
        };
        if !ok {
            return Err(KernelError::input(0, format!("Clip does not take {x}")));
        }
        for (i, b) in bounds.into_iter().enumerate() {
            let Some((d, n)) = b else { continue };
            if self.attrs.is_some() {
                return Err(KernelError::input(i + 1, "bounds are attributes before opset 11"));
            }
            if d != x {
                return Err(KernelError::input(i + 1, format!("is {d}, expected {x}")));
            }
            if let Some(n) = n.filter(|&n| n != 1) {
                return Err(KernelError::input(i + 1, format!("must hold one value, has {n}")));
            }
        }
        Ok(())
    }
}

/// Element count of a shape when every dim is known.
fn known_count(shape: &[Dim]) -> Option<usize> {
    shape.iter().map(|d| d.known().and_then(|v| usize::try_from(v).ok())).product()
}

impl Kernel for Clip {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let bound = |i: usize| inputs.get(i).copied().flatten().map(|t| (t.dtype, known_count(t.shape)));
        self.check(x.dtype, [bound(1), bound(2)])?;
        Ok(vec![OutputInfo::new(x.dtype, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let bound = |i: usize| inputs.get(i).copied().flatten();
        let (lo, hi) = (bound(1), bound(2));
        let shape_of = |t: Option<TensorRef>| t.map(|t| (t.dtype, Some(t.numel())));
        self.check(x.dtype, [shape_of(lo), shape_of(hi)])?;
        let out = outputs.first_mut().ok_or_else(|| KernelError::invalid("missing output"))?;
        with_num!(x.dtype, T => {
            let read = |t: Option<TensorRef>, attr: Option<f32>| -> Result<Option<T>, KernelError> {
                Ok(match t {
                    Some(t) => Some(*t.typed::<T>()?.first().ok_or_else(|| KernelError::invalid("empty Clip bound"))?),
                    None => attr.map(|a| T::from_f64_as(a as f64)),
                })
            };
            let (alo, ahi) = self.attrs.unwrap_or((None, None));
            let (lo, hi) = (read(lo, alo)?, read(hi, ahi)?);
            clip(x.typed::<T>()?, out.typed::<T>()?, lo, hi)
        }, _ => bad_dtype(x.dtype))
    }
}

/// numpy's clip: max with `lo` then min with `hi` (so `hi` wins when `lo > hi`); NaN stays NaN.
fn clip<T: Scalar>(x: &[T], o: &mut [T], lo: Option<T>, hi: Option<T>) -> Result<(), KernelError> {
    match (lo, hi) {
        (Some(l), Some(h)) => map(x, o, |v: T| {
            let v = if v < l { l } else { v };
            if v > h {
                h
            } else {
                v
            }
        }),
        (Some(l), None) => map(x, o, |v: T| if v < l { l } else { v }),
        (None, Some(h)) => map(x, o, |v: T| if v > h { h } else { v }),
        (None, None) => map(x, o, |v: T| v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::binary::testutil::{infer_op, run_op, values};
    use half::{bf16, f16};
    use kiln_formats::program::Attribute;
    use kiln_formats::Tensor;

    fn run1(op: &str, x: &Tensor) -> Tensor {
        run_op(op, 20, &[], &[Some(x)]).unwrap().remove(0)
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn float_functions() {
        let x = Tensor::from_vec(&[4], vec![-1.5f32, -0.0, 0.5, 2.0]);
        assert_eq!(values(&run1("Abs", &x)), [1.5, 0.0, 0.5, 2.0]);
        assert_eq!(values(&run1("Neg", &x)), [1.5, 0.0, -0.5, -2.0]);
        assert_eq!(values(&run1("Ceil", &x)), [-1.0, 0.0, 1.0, 2.0]);
        assert_eq!(values(&run1("Floor", &x)), [-2.0, 0.0, 0.0, 2.0]);
        assert_eq!(values(&run1("Relu", &x)), [0.0, 0.0, 0.5, 2.0]);
        assert_eq!(values(&run1("Sign", &x)), [-1.0, 0.0, 1.0, 1.0]);
        assert_eq!(values(&run1("Reciprocal", &x))[3], 0.5);
        let xs = [-1.5f64, -0.0, 0.5, 2.0];
        let tol = 1e-6;
        close(&values(&run1("Exp", &x)), &xs.map(f64::exp), tol * 8.0);
        close(&values(&run1("Sin", &x)), &xs.map(f64::sin), tol);
        close(&values(&run1("Cos", &x)), &xs.map(f64::cos), tol);
        close(&values(&run1("Tanh", &x)), &xs.map(f64::tanh), tol);
        close(&values(&run1("Sigmoid", &x)), &xs.map(|v| 1.0 / (1.0 + (-v).exp())), tol);
        let p = Tensor::from_vec(&[3], vec![4.0f64, 1.0, -1.0]);
        let s = values(&run1("Sqrt", &p));
        assert_eq!(&s[..2], [2.0, 1.0]);
        assert!(s[2].is_nan());
        let l = values(&run1("Log", &p));
        assert_eq!(l[1], 0.0);
        assert!(l[2].is_nan());
    }

    #[test]
    fn sigmoid_saturates_without_nan() {
        let x = Tensor::from_vec(&[2], vec![-1000.0f32, 1000.0]);
        assert_eq!(values(&run1("Sigmoid", &x)), [0.0, 1.0]);
    }

    #[test]
    fn erf_and_gelu() {
        let x = Tensor::from_vec(&[3], vec![-1.0f32, 0.0, 0.5]);
        close(&values(&run1("Erf", &x)), &[-0.8427007929497149, 0.0, 0.5204998778130465], 1e-7);
        let phi = |v: f64| 0.5 * v * (1.0 + erf::erf64(v / 2f64.sqrt()));
        close(&values(&run1("Gelu", &x)), &[phi(-1.0), 0.0, phi(0.5)], 1e-7);
        let tanh = [Attribute::string("approximate", "tanh")];
        let y = run_op("Gelu", 20, &tanh, &[Some(&x)]).unwrap().remove(0);
        let approx =
            |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
        close(&values(&y), &[approx(-1.0), 0.0, approx(0.5)], 1e-7);
        let bad = [Attribute::string("approximate", "fast")];
        assert!(run_op("Gelu", 20, &bad, &[Some(&x)]).is_err());
    }

    #[test]
    fn half_types() {
        let x = Tensor::from_vec(&[2], vec![f16::from_f32(-2.0), f16::from_f32(0.0)]);
        let y = run1("Exp", &x);
        assert_eq!(y.dtype, DType::F16);
        close(&values(&y), &[(-2f64).exp(), 1.0], 1e-3);
        let b = Tensor::from_vec(&[1], vec![bf16::from_f32(4.0)]);
        assert_eq!(values(&run1("Sqrt", &b)), [2.0]);
    }

    #[test]
    fn integer_ops() {
        let x = Tensor::from_vec(&[4], vec![-3i32, 0, 5, i32::MIN]);
        assert_eq!(run1("Abs", &x).as_slice::<i32>().unwrap(), [3, 0, 5, i32::MIN]);
        assert_eq!(run1("Neg", &x).as_slice::<i32>().unwrap(), [3, 0, -5, i32::MIN]);
        assert_eq!(values(&run1("Relu", &x)), [0.0, 0.0, 5.0, 0.0]);
        assert_eq!(values(&run1("Sign", &x)), [-1.0, 0.0, 1.0, -1.0]);
        let u = Tensor::from_vec(&[2], vec![0u8, 7]);
        assert_eq!(values(&run1("Sign", &u)), [0.0, 1.0]);
        assert!(run_op("Exp", 13, &[], &[Some(&x)]).is_err());
    }

    #[test]
    fn predicates() {
        let x = Tensor::from_vec(&[4], vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0]);
        let y = run1("IsInf", &x);
        assert_eq!(y.dtype, DType::Bool);
        assert_eq!(values(&y), [1.0, 1.0, 0.0, 0.0]);
        let neg_only = [Attribute::int("detect_positive", 0)];
        let y = run_op("IsInf", 20, &neg_only, &[Some(&x)]).unwrap().remove(0);
        assert_eq!(values(&y), [0.0, 1.0, 0.0, 0.0]);
        assert_eq!(values(&run1("IsNaN", &x)), [0.0, 0.0, 1.0, 0.0]);
        let b = Tensor::from_bools(&[2], &[true, false]);
        assert_eq!(values(&run1("Not", &b)), [0.0, 1.0]);
        assert!(run_op("Not", 1, &[], &[Some(&x)]).is_err());
    }

    #[test]
    fn clip_forms() {
        let x = Tensor::from_vec(&[4], vec![-2.0f32, 0.5, 3.0, f32::NAN]);
        let lo = Tensor::from_vec(&[], vec![-1.0f32]);
        let hi = Tensor::from_vec(&[1], vec![1.0f32]);
        let y = run_op("Clip", 13, &[], &[Some(&x), Some(&lo), Some(&hi)]).unwrap().remove(0);
        let v = values(&y);
        assert_eq!(&v[..3], [-1.0, 0.5, 1.0]);
        assert!(v[3].is_nan());
        let y = run_op("Clip", 13, &[], &[Some(&x), None, Some(&hi)]).unwrap().remove(0);
        assert_eq!(&values(&y)[..3], [-2.0, 0.5, 1.0]);
        let y = run_op("Clip", 13, &[], &[Some(&x)]).unwrap().remove(0);
        assert_eq!(&values(&y)[..3], [-2.0, 0.5, 3.0]);
        // min > max: everything becomes max, as numpy.
        let y = run_op("Clip", 13, &[], &[Some(&x), Some(&hi), Some(&lo)]).unwrap().remove(0);
        assert_eq!(&values(&y)[..3], [-1.0, -1.0, -1.0]);
        // Opset 6 attributes.
        let attrs = [Attribute::float("min", 0.0), Attribute::float("max", 2.0)];
        let y = run_op("Clip", 6, &attrs, &[Some(&x)]).unwrap().remove(0);
        assert_eq!(&values(&y)[..3], [0.0, 0.5, 2.0]);
        // Integers.
        let i = Tensor::from_vec(&[3], vec![-5i64, 3, 10]);
        let l = Tensor::from_vec(&[], vec![0i64]);
        let h = Tensor::from_vec(&[], vec![5i64]);
        let y = run_op("Clip", 13, &[], &[Some(&i), Some(&l), Some(&h)]).unwrap().remove(0);
        assert_eq!(y.as_slice::<i64>().unwrap(), [0, 3, 5]);
        // Bad bounds.
        let two = Tensor::from_vec(&[2], vec![0i64, 1]);
        assert!(run_op("Clip", 13, &[], &[Some(&i), Some(&two)]).is_err());
        assert!(run_op("Clip", 13, &[], &[Some(&i), Some(&lo)]).is_err());
    }

    #[test]
    fn infer_is_symbolic() {
        let s = vec![Dim::sym("batch"), Dim::Known(4)];
        let out = infer_op("Gelu", 20, &[], &[Some((DType::F32, s.clone()))]).unwrap();
        assert_eq!(out, vec![OutputInfo::new(DType::F32, s.clone())]);
        let out = infer_op("IsNaN", 20, &[], &[Some((DType::F16, s.clone()))]).unwrap();
        assert_eq!(out[0].dtype, DType::Bool);
        let out =
            infer_op("Clip", 13, &[], &[Some((DType::F32, s.clone())), Some((DType::F32, vec![Dim::sym("n")])), None])
                .unwrap();
        assert_eq!(out[0].shape, s);
        assert!(infer_op("Sqrt", 13, &[], &[Some((DType::I64, s.clone()))]).is_err());
        assert!(infer_op("Sqrt", 13, &[], &[None]).is_err());
        assert!(infer_op("Clip", 13, &[], &[Some((DType::F32, s.clone())), Some((DType::F64, vec![]))]).is_err());
        assert!(infer_op("Clip", 6, &[], &[Some((DType::I32, s))]).is_err());
    }

    #[test]
    fn large_inputs_are_fully_written() {
        let n = 100_003;
        let x = Tensor::from_vec(&[n], (0..n).map(|i| i as f32 - 50_000.0).collect());
        let y = run1("Relu", &x);
        let y = y.as_slice::<f32>().unwrap();
        assert!(y.iter().enumerate().all(|(i, &v)| v == (i as f32 - 50_000.0).max(0.0)));
    }
}
