//! Numeric element traits shared by the kernels: floats are computed in f32 (f16, bf16 converted
//! on the fly) or f64, so one generic body serves every float dtype.

use half::{bf16, f16};
use kiln_formats::tensor::Element;

/// A float element type and how to compute with it.
pub trait Float: Element + Copy + PartialOrd {
    /// The type arithmetic happens in: f64 for f64, f32 for everything else.
    type Acc: num_like::AccFloat;
    fn to_acc(self) -> Self::Acc;
    fn from_acc(v: Self::Acc) -> Self;
}

macro_rules! float_via {
    ($t:ty, $acc:ty, $to:expr, $from:expr) => {
        impl Float for $t {
            type Acc = $acc;
            #[inline(always)]
            fn to_acc(self) -> $acc {
                $to(self)
            }
            #[inline(always)]
            fn from_acc(v: $acc) -> Self {
                $from(v)
            }
        }
    };
}
float_via!(f32, f32, |x| x, |x| x);
float_via!(f64, f64, |x| x, |x| x);
float_via!(f16, f32, f16::to_f32, f16::from_f32);
float_via!(bf16, f32, bf16::to_f32, bf16::from_f32);

/// The accumulator types' arithmetic.
pub mod num_like {
    /// f32 or f64.
    pub trait AccFloat:
        Copy
        + PartialOrd
        + Send
        + Sync
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
        + std::ops::Neg<Output = Self>
        + std::ops::AddAssign
        + std::ops::MulAssign
    {
        const ZERO: Self;
        const ONE: Self;
        fn from_f64(v: f64) -> Self;
        fn to_f64(self) -> f64;
        fn exp(self) -> Self;
        fn ln(self) -> Self;
        fn sqrt(self) -> Self;
        fn tanh(self) -> Self;
        fn abs(self) -> Self;
        fn powf(self, e: Self) -> Self;
        fn max_of(self, o: Self) -> Self;
        fn min_of(self, o: Self) -> Self;
        fn is_nan(self) -> bool;
        fn neg_infinity() -> Self;
        fn infinity() -> Self;
    }

    macro_rules! acc {
        ($t:ty) => {
            impl AccFloat for $t {
                const ZERO: Self = 0.0;
                const ONE: Self = 1.0;
                #[inline(always)]
                fn from_f64(v: f64) -> Self {
                    v as $t
                }
                #[inline(always)]
                fn to_f64(self) -> f64 {
                    self as f64
                }
                #[inline(always)]
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                #[inline(always)]
                fn ln(self) -> Self {
                    <$t>::ln(self)
                }
                #[inline(always)]
                fn sqrt(self) -> Self {
                    <$t>::sqrt(self)
                }
                #[inline(always)]
                fn tanh(self) -> Self {
                    <$t>::tanh(self)
                }
                #[inline(always)]
                fn abs(self) -> Self {
                    <$t>::abs(self)
                }
                #[inline(always)]
                fn powf(self, e: Self) -> Self {
                    <$t>::powf(self, e)
                }
                #[inline(always)]
                fn max_of(self, o: Self) -> Self {
                    <$t>::max(self, o)
                }
                #[inline(always)]
                fn min_of(self, o: Self) -> Self {
                    <$t>::min(self, o)
                }
                #[inline(always)]
                fn is_nan(self) -> bool {
                    <$t>::is_nan(self)
                }
                fn neg_infinity() -> Self {
                    <$t>::NEG_INFINITY
                }
                fn infinity() -> Self {
                    <$t>::INFINITY
                }
            }
        };
    }
    acc!(f32);
    acc!(f64);
}

/// Runs `$body` with `$T` bound to the Rust type of float dtype `$dt`; evaluates `$other` for
/// non-float dtypes.
#[macro_export]
macro_rules! with_float {
    ($dt:expr, $T:ident => $body:expr, _ => $other:expr) => {
        match $dt {
            kiln_formats::DType::F32 => {
                type $T = f32;
                $body
            }
            kiln_formats::DType::F64 => {
                type $T = f64;
                $body
            }
            kiln_formats::DType::F16 => {
                type $T = half::f16;
                $body
            }
            kiln_formats::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            _ => $other,
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust type of integer dtype `$dt` (bool as u8).
#[macro_export]
macro_rules! with_int {
    ($dt:expr, $T:ident => $body:expr, _ => $other:expr) => {
        match $dt {
            kiln_formats::DType::I8 => {
                type $T = i8;
                $body
            }
            kiln_formats::DType::I16 => {
                type $T = i16;
                $body
            }
            kiln_formats::DType::I32 => {
                type $T = i32;
                $body
            }
            kiln_formats::DType::I64 => {
                type $T = i64;
                $body
            }
            kiln_formats::DType::U8 | kiln_formats::DType::Bool => {
                type $T = u8;
                $body
            }
            kiln_formats::DType::U16 => {
                type $T = u16;
                $body
            }
            kiln_formats::DType::U32 => {
                type $T = u32;
                $body
            }
            kiln_formats::DType::U64 => {
                type $T = u64;
                $body
            }
            _ => $other,
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust type of any dtype (bool as u8): for kernels that
/// only move elements.
#[macro_export]
macro_rules! with_any {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt.size() {
            1 => {
                type $T = u8;
                $body
            }
            2 => {
                type $T = u16;
                $body
            }
            4 => {
                type $T = u32;
                $body
            }
            _ => {
                type $T = u64;
                $body
            }
        }
    };
}
