//! Cast and CastLike: element type conversion between every dtype kiln stores, with numpy's
//! `astype` rules (float to int truncates toward zero, int to int wraps, anything to bool is
//! `x != 0`).

use crate::error::KernelError;
use crate::kernel::{required, InferCx, Kernel, OpSpec, OutputInfo, ShapeInput};
use crate::ops::binary::strided;
use crate::view::{TensorMut, TensorRef};
use half::{bf16, f16};
use kiln_formats::tensor::Element;
use kiln_formats::DType;

/// Runs `$body` with `$T` bound to the Rust type of numeric dtype `$dt` (bool as u8).
macro_rules! with_num {
    ($dt:expr, $T:ident => $body:expr, _ => $other:expr) => {
        $crate::with_float!($dt, $T => $body, _ => $crate::with_int!($dt, $T => $body, _ => $other))
    };
}
pub(crate) use with_num;

/// Op types this family has kernels for.
pub const OPS: &[&str] = &["Cast", "CastLike"];

/// Prepares this family's kernel for `spec`, or `None` when the op is not in this family.
pub fn build(spec: &OpSpec) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let kernel = match spec.op {
        "Cast" => target_dtype(spec).map(|to| Cast { to: Some(to) }),
        "CastLike" => Ok(Cast { to: None }),
        _ => return None,
    };
    Some(kernel.map(|k| Box::new(k) as Box<dyn Kernel>))
}

/// The `to` attribute: a `TensorProto.DataType` code, or (opset 1 to 5) a type name.
fn target_dtype(spec: &OpSpec) -> Result<DType, KernelError> {
    let code = match spec.attrs.int_opt("to") {
        Ok(Some(code)) => code,
        Ok(None) => return Err(KernelError::attr("to", "is required")),
        Err(int_err) => {
            let Ok(Some(name)) = spec.attrs.string_opt("to") else {
                return Err(int_err);
            };
            legacy_code(&name).ok_or_else(|| KernelError::attr("to", format!("unknown type {name}")))?
        }
    };
    let code = i32::try_from(code).map_err(|_| KernelError::attr("to", "is out of range"))?;
    DType::from_onnx_code(code).ok_or_else(|| KernelError::unsupported(format!("Cast to {}", DType::onnx_name(code))))
}

/// Opset 1 spelled the target type as the `TensorProto.DataType` enum name.
fn legacy_code(name: &str) -> Option<i64> {
    Some(match name.to_ascii_uppercase().as_str() {
        "FLOAT" => 1,
        "UINT8" => 2,
        "INT8" => 3,
        "UINT16" => 4,
        "INT16" => 5,
        "INT32" => 6,
        "INT64" => 7,
        "STRING" => 8,
        "BOOL" => 9,
        "FLOAT16" => 10,
        "DOUBLE" => 11,
        "UINT32" => 12,
        "UINT64" => 13,
        "BFLOAT16" => 16,
        _ => return None,
    })
}

/// Cast (`to` fixed) or CastLike (`to` taken from input 1's dtype).
struct Cast {
    to: Option<DType>,
}

impl Cast {
    fn target(&self, like: Option<DType>) -> Result<DType, KernelError> {
        match self.to {
            Some(to) => Ok(to),
            None => like.ok_or_else(|| KernelError::input(1, "is required")),
        }
    }
}

impl Kernel for Cast {
    fn infer(&self, inputs: &[Option<ShapeInput>], _cx: &mut dyn InferCx) -> Result<Vec<OutputInfo>, KernelError> {
        let x = required(inputs, 0)?;
        let like = inputs.get(1).copied().flatten().map(|t| t.dtype);
        let to = self.target(like)?;
        Ok(vec![OutputInfo::new(to, x.shape.to_vec())])
    }

    fn run(&self, inputs: &[Option<TensorRef>], outputs: &mut [TensorMut]) -> Result<(), KernelError> {
        let x = required(inputs, 0)?;
        let like = inputs.get(1).copied().flatten().map(|t| t.dtype);
        let to = self.target(like)?;
        let out = outputs.first_mut().ok_or_else(|| KernelError::invalid("Cast needs one output"))?;
        if out.dtype != to {
            return Err(KernelError::invalid(format!("Cast output is {}, expected {to}", out.dtype)));
        }
        cast_into(x, out)
    }
}

/// Converts every element of `x` into `out` (same element count, any dtypes).
pub(crate) fn cast_into(x: TensorRef, out: &mut TensorMut) -> Result<(), KernelError> {
    if x.numel() != out.numel() || x.data.len() != x.numel() * x.dtype.size() {
        return Err(KernelError::invalid(format!("Cast of {} elements into {}", x.numel(), out.numel())));
    }
    if x.dtype == out.dtype {
        out.data.copy_from_slice(x.data);
        return Ok(());
    }
    if out.dtype == DType::Bool {
        let o = out.typed::<u8>()?;
        return with_num!(x.dtype, S => {
            strided::map(x.typed::<S>()?, o, |v: S| u8::from(v.as_f64() != 0.0))
        }, _ => unreachable_dtype(x.dtype));
    }
    // Bools are 0 or 1, so reading them as u8 converts them exactly.
    let src = if x.dtype == DType::Bool { DType::U8 } else { x.dtype };
    let x = TensorRef { dtype: src, ..x };
    with_num!(out.dtype, D => {
        let o = out.typed::<D>()?;
        with_num!(src, S => {
            strided::map(x.typed::<S>()?, o, convert::<S, D>)
        }, _ => unreachable_dtype(src))
    }, _ => unreachable_dtype(out.dtype))
}

fn unreachable_dtype(d: DType) -> Result<(), KernelError> {
    Err(KernelError::unsupported(format!("Cast of {d}")))
}

/// One element converted with numpy `astype` semantics.
#[inline(always)]
pub(crate) fn convert<S: Scalar, D: Scalar>(x: S) -> D {
    if S::FLOAT {
        D::from_f64_as(x.as_f64())
    } else if S::SIGNED {
        D::from_i64_as(x.as_i64())
    } else {
        D::from_u64_as(x.as_u64())
    }
}

/// A numeric element and its conversions; bool is handled by callers as u8.
pub(crate) trait Scalar: Element + Copy + PartialOrd + Send + Sync {
    const FLOAT: bool;
    const SIGNED: bool;
    const ZERO: Self;
    /// The value as f64 (rounded for 64-bit integers beyond 2^53).
    fn as_f64(self) -> f64;
    /// Integer value as i64 (u64 wraps); floats truncate toward zero, saturating.
    fn as_i64(self) -> i64;
    /// Integer value as u64 (negative values wrap); floats as [`Scalar::as_i64`].
    fn as_u64(self) -> u64;
    /// Floats round to nearest; integers truncate toward zero then wrap like C on x86 (NaN is 0).
    fn from_f64_as(v: f64) -> Self;
    /// Integers wrap; floats round to nearest.
    fn from_i64_as(v: i64) -> Self;
    /// Integers wrap; floats round to nearest.
    fn from_u64_as(v: u64) -> Self;
}

macro_rules! scalar_int {
    ($($t:ty, $signed:expr);*) => {$(
        impl Scalar for $t {
            const FLOAT: bool = false;
            const SIGNED: bool = $signed;
            const ZERO: Self = 0;
            #[inline(always)]
            fn as_f64(self) -> f64 { self as f64 }
            #[inline(always)]
            fn as_i64(self) -> i64 { self as i64 }
            #[inline(always)]
            fn as_u64(self) -> u64 { self as u64 }
            #[inline(always)]
            fn from_f64_as(v: f64) -> Self {
                // Through a 64-bit integer so that out-of-range values wrap the way numpy's
                // astype does on x86 (e.g. -1.0 to uint8 is 255) instead of saturating.
                let t = v.trunc();
                if t >= (1u64 << 63) as f64 { (t as u64) as $t } else { (t as i64) as $t }
            }
            #[inline(always)]
            fn from_i64_as(v: i64) -> Self { v as $t }
            #[inline(always)]
            fn from_u64_as(v: u64) -> Self { v as $t }
        }
    )*};
}
scalar_int!(i8, true; i16, true; i32, true; i64, true; u8, false; u16, false; u32, false; u64, false);

impl Scalar for f32 {
    const FLOAT: bool = true;
    const SIGNED: bool = true;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn as_i64(self) -> i64 {
        self as i64
    }
    #[inline(always)]
    fn as_u64(self) -> u64 {
        self as i64 as u64
    }
    #[inline(always)]
    fn from_f64_as(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn from_i64_as(v: i64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn from_u64_as(v: u64) -> Self {
        v as f32
    }
}

impl Scalar for f64 {
    const FLOAT: bool = true;
    const SIGNED: bool = true;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn as_i64(self) -> i64 {
        self as i64
    }
    #[inline(always)]
    fn as_u64(self) -> u64 {
        self as i64 as u64
    }
    #[inline(always)]
    fn from_f64_as(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn from_i64_as(v: i64) -> Self {
        v as f64
    }
    #[inline(always)]
    fn from_u64_as(v: u64) -> Self {
        v as f64
    }
}

/// f64 to f32 rounded to odd: truncate, then set the last bit when inexact. Rounding that to a
/// narrower float (f16, bf16) to nearest gives the correctly rounded result, which rounding to
/// nearest twice would not (half's own `from_f64` drops the low mantissa bits first, too).
#[inline(always)]
fn f64_to_f32_odd(v: f64) -> f32 {
    let f = v as f32;
    if !f.is_finite() || f as f64 == v {
        return f;
    }
    let mut bits = f.to_bits();
    if (f as f64).abs() > v.abs() {
        // Rounded away from zero: step the magnitude back down.
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

macro_rules! scalar_half {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            const FLOAT: bool = true;
            const SIGNED: bool = true;
            const ZERO: Self = <$t>::ZERO;
            #[inline(always)]
            fn as_f64(self) -> f64 { self.to_f64() }
            #[inline(always)]
            fn as_i64(self) -> i64 { self.to_f32() as i64 }
            #[inline(always)]
            fn as_u64(self) -> u64 { self.to_f32() as i64 as u64 }
            #[inline(always)]
            fn from_f64_as(v: f64) -> Self { <$t>::from_f32(f64_to_f32_odd(v)) }
            #[inline(always)]
            fn from_i64_as(v: i64) -> Self { Self::from_f64_as(v as f64) }
            #[inline(always)]
            fn from_u64_as(v: u64) -> Self { Self::from_f64_as(v as f64) }
        }
    )*};
}
scalar_half!(f16, bf16);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::binary::testutil::{infer_op, run_op};
    use kiln_formats::program::Attribute;
    use kiln_formats::{Dim, Tensor};

    fn cast(x: &Tensor, to: DType) -> Tensor {
        let attrs = [Attribute::int("to", to.onnx_code() as i64)];
        run_op("Cast", 21, &attrs, &[Some(x)]).unwrap().remove(0)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        (0..t.numel()).map(|i| t.get_f64(i)).collect()
    }

    #[test]
    fn float_to_int_truncates_toward_zero() {
        let x = Tensor::from_vec(&[5], vec![1.9f32, -1.9, 0.5, -0.5, 300.0]);
        assert_eq!(values(&cast(&x, DType::I32)), [1.0, -1.0, 0.0, 0.0, 300.0]);
        assert_eq!(values(&cast(&x, DType::I64)), [1.0, -1.0, 0.0, 0.0, 300.0]);
        // numpy on x86 wraps out-of-range values through a 64-bit integer.
        assert_eq!(values(&cast(&x, DType::U8)), [1.0, 255.0, 0.0, 0.0, 44.0]);
        assert_eq!(values(&cast(&x, DType::I8)), [1.0, -1.0, 0.0, 0.0, 44.0]);
    }

    #[test]
    fn to_and_from_bool() {
        let x = Tensor::from_vec(&[4], vec![0.0f32, -0.0, 2.5, f32::NAN]);
        assert_eq!(values(&cast(&x, DType::Bool)), [0.0, 0.0, 1.0, 1.0]);
        let b = Tensor::from_bools(&[3], &[true, false, true]);
        assert_eq!(values(&cast(&b, DType::F32)), [1.0, 0.0, 1.0]);
        assert_eq!(values(&cast(&b, DType::I64)), [1.0, 0.0, 1.0]);
        assert_eq!(values(&cast(&b, DType::F16)), [1.0, 0.0, 1.0]);
        let i = Tensor::from_vec(&[3], vec![0i64, 7, -1]);
        assert_eq!(values(&cast(&i, DType::Bool)), [0.0, 1.0, 1.0]);
    }

    #[test]
    fn floats_round_once() {
        // 1 + 2^-11 + 2^-30 rounds up to 1 + 2^-10 in f16 only if rounded directly from f64.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-30);
        let x = Tensor::from_vec(&[1], vec![v]);
        assert_eq!(cast(&x, DType::F16).get_f64(0), 1.0 + 2f64.powi(-10));
        let y = Tensor::from_vec(&[2], vec![f16::from_f32(0.5), f16::from_f32(-2.0)]);
        assert_eq!(values(&cast(&y, DType::BF16)), [0.5, -2.0]);
        assert_eq!(values(&cast(&y, DType::F64)), [0.5, -2.0]);
        let z = Tensor::from_vec(&[2], vec![-3i8, 100]);
        assert_eq!(values(&cast(&z, DType::BF16)), [-3.0, 100.0]);
    }

    #[test]
    fn ints_wrap() {
        let x = Tensor::from_vec(&[3], vec![-1i64, 256, 4294967297]);
        assert_eq!(values(&cast(&x, DType::U8)), [255.0, 0.0, 1.0]);
        assert_eq!(values(&cast(&x, DType::I32)), [-1.0, 256.0, 1.0]);
        assert_eq!(cast(&x, DType::U64).as_slice::<u64>().unwrap()[0], u64::MAX);
    }

    #[test]
    fn same_type_copies() {
        let x = Tensor::from_vec(&[2, 2], vec![1i32, 2, 3, 4]);
        let y = cast(&x, DType::I32);
        assert_eq!(y.shape, [2, 2]);
        assert_eq!(y.as_slice::<i32>().unwrap(), [1, 2, 3, 4]);
    }

    #[test]
    fn cast_like_takes_the_second_dtype() {
        let x = Tensor::from_vec(&[2], vec![1.5f64, -2.5]);
        let like = Tensor::from_vec(&[0], Vec::<i16>::new());
        let y = run_op("CastLike", 21, &[], &[Some(&x), Some(&like)]).unwrap().remove(0);
        assert_eq!(y.dtype, DType::I16);
        assert_eq!(values(&y), [1.0, -2.0]);
    }

    #[test]
    fn legacy_string_attribute() {
        let x = Tensor::from_vec(&[1], vec![3.7f32]);
        let attrs = [Attribute::string("to", "INT64")];
        let y = run_op("Cast", 1, &attrs, &[Some(&x)]).unwrap().remove(0);
        assert_eq!(y.as_slice::<i64>().unwrap(), [3]);
    }

    #[test]
    fn infer_is_symbolic_and_checks_attributes() {
        let s = vec![Dim::sym("batch"), Dim::Known(3)];
        let attrs = [Attribute::int("to", 7)];
        let out = infer_op("Cast", 21, &attrs, &[Some((DType::F32, s.clone()))]).unwrap();
        assert_eq!(out, vec![OutputInfo::new(DType::I64, s.clone())]);
        // String tensors and float8 are not kiln dtypes.
        let bad = [Attribute::int("to", 8)];
        assert!(infer_op("Cast", 21, &bad, &[Some((DType::F32, s.clone()))]).is_err());
        let f8 = [Attribute::int("to", 17)];
        assert!(infer_op("Cast", 21, &f8, &[Some((DType::F32, s.clone()))]).is_err());
        assert!(infer_op("Cast", 21, &[], &[Some((DType::F32, s.clone()))]).is_err());
        assert!(infer_op("CastLike", 21, &[], &[Some((DType::F32, s))]).is_err());
    }

    #[test]
    fn every_pair_converts_small_values() {
        let dtypes = DType::ALL;
        for &from in &dtypes {
            let src = Tensor::from_vec(&[3], vec![0.0f64, 1.0, 2.0]);
            let src = if from == DType::F64 { src } else { cast(&src, from) };
            for &to in &dtypes {
                let want: Vec<f64> =
                    if to == DType::Bool || from == DType::Bool { vec![0.0, 1.0, 1.0] } else { vec![0.0, 1.0, 2.0] };
                assert_eq!(values(&cast(&src, to)), want, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn large_tensors_use_every_element() {
        let n = 200_000;
        let x = Tensor::from_vec(&[n], (0..n).map(|i| i as f32).collect());
        let y = cast(&x, DType::I32);
        let y = y.as_slice::<i32>().unwrap();
        assert!(y.iter().enumerate().all(|(i, &v)| v == i as i32));
    }
}
