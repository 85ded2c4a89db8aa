//! exp, tanh and the logistic function for f32, written branch-free (selects, no table lookups,
//! no libm calls) so that loops over them vectorize; libm's `expf`/`tanhf` are scalar calls and
//! dominate activations otherwise. Accuracy is within a few ulp (tests bound it against f64).
//!
//! exp uses the usual reduction x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is
//! exact), e^r - 1 by its degree-7 Taylor polynomial (truncation error r^8/8! < 5.3e-9, below
//! half an f32 ulp), and 2^n assembled from exponent bits in two halves so that results in the
//! subnormal range and overflow to infinity come out right.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, with LN2_HI = 355/512 short enough that n * LN2_HI is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// (n, e^r - 1) with x = n ln2 + r; x must lie in [-150 ln2, 128 ln2] (callers clamp).
#[inline(always)]
fn reduce(x: f32) -> (i32, f32) {
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    // n sits in the low mantissa bits of k: reading it there avoids a float-to-int conversion,
    // which (saturating in Rust) would not vectorize.
    let ni = k.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    (ni, r + r * r * p)
}

/// 2^n for n in [-126, 127].
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// e^x.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Below -104 the result is 0 even as a subnormal; above 89 it is infinite.
    let (n, q) = reduce(x.clamp(-104.0, 89.0));
    let h = n >> 1;
    let v = (1.0 + q) * pow2(h) * pow2(n - h);
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// tanh(x) = e / (e + 2) with e = e^(2|x|) - 1, which keeps full relative precision near 0.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    // From 9.1 on, tanh rounds to 1 in f32.
    let a = x.abs().min(9.1);
    let (n, q) = reduce(2.0 * a);
    let s = pow2(n);
    // 2^n q + (2^n - 1): exact 2^n - 1 (n <= 27), and just q when n = 0.
    let e = s * q + (s - 1.0);
    let t = (e / (e + 2.0)).copysign(x);
    if x.is_nan() {
        x
    } else {
        t
    }
}

/// The logistic function 1 / (1 + e^-x) (e^-x overflowing to infinity gives 0).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        if a == b32 {
            return 0.0;
        }
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_within_two_ulp() {
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x < 88.7 {
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
            x += 0.0137;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // Subnormal results.
        let s = exp(-100.0);
        assert!(s > 0.0 && ((s as f64) - (-100f64).exp()).abs() < 2e-45);
    }

    #[test]
    fn tanh_and_sigmoid_are_close() {
        let mut worst_t: f64 = 0.0;
        let mut worst_s: f64 = 0.0;
        let mut x = -12.0f32;
        while x < 12.0 {
            worst_t = worst_t.max(ulps(tanh(x), (x as f64).tanh()));
            worst_s = worst_s.max(ulps(sigmoid(x), 1.0 / (1.0 + (-(x as f64)).exp())));
            x += 0.00731;
        }
        assert!(worst_t <= 3.0, "tanh {worst_t} ulp");
        assert!(worst_s <= 3.0, "sigmoid {worst_s} ulp");
        assert_eq!(tanh(1e-30), 1e-30);
        assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh(20.0), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert!(tanh(f32::NAN).is_nan());
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert!(sigmoid(f32::NAN).is_nan());
    }
}
