//! q8's and q4's per-block parameters (scales, and q4's minimums) as little-endian IEEE half
//! floats, as llama.cpp's Q8_0 and Q4_1 store theirs: 2 bytes instead of 4 per parameter, which
//! is 5.6% of a q8 row and 17% of a q4 row, bytes every decoded token streams. Parameters are
//! rounded once at compile time; the weights' levels are then chosen against the rounded values,
//! so the rounding costs at most a few levels' worth of the block's step, not a bias.

use half::f16;

/// Largest magnitude a parameter can hold.
pub const MAX: f32 = 65504.0;

/// The f32 value of a stored parameter.
#[inline(always)]
pub fn read(p: [u8; 2]) -> f32 {
    f16::from_le_bytes(p).to_f32()
}

/// `x` rounded to the nearest parameter (`x` finite, at most [`MAX`] in magnitude).
pub fn nearest(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// The largest parameter not above `x` (`x` finite, at most [`MAX`] in magnitude).
pub fn at_most(x: f32) -> [u8; 2] {
    let h = f16::from_f32(x);
    if h.to_f32() <= x {
        return h.to_le_bytes();
    }
    step(h, false).to_le_bytes()
}

/// The smallest parameter not below `x` (`x` finite, at most [`MAX`] in magnitude).
pub fn at_least(x: f32) -> [u8; 2] {
    let h = f16::from_f32(x);
    if h.to_f32() >= x {
        return h.to_le_bytes();
    }
    step(h, true).to_le_bytes()
}

/// The half float next to `h` upwards or downwards (`h` finite; never called past [`MAX`], as
/// rounding to nearest already gave the bound).
fn step(h: f16, up: bool) -> f16 {
    let bits = h.to_bits();
    if bits & 0x7fff == 0 {
        // From ±0 the neighbour is the smallest subnormal of the direction's sign.
        return f16::from_bits(if up { 0x0001 } else { 0x8001 });
    }
    // Magnitudes order as their bits: away from zero is one more, towards zero one less.
    let away = (bits & 0x8000 == 0) == up;
    let next = if away { bits + 1 } else { bits - 1 };
    f16::from_bits(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directed_rounding_brackets_every_value() {
        for x in [0.1f32, -0.1, 1.0 / 3.0, -1.0 / 3.0, 1e-6, -1e-6, 0.0, -0.0, 3.0e-8, 65000.3, -65000.3, 0.75] {
            let (lo, hi, near) = (read(at_most(x)), read(at_least(x)), read(nearest(x)));
            assert!(lo <= x && x <= hi, "{x}: {lo} .. {hi}");
            assert!(near == lo || near == hi, "{x}: nearest {near} outside {lo} .. {hi}");
            if f16::from_f32(x).to_f32() == x {
                assert_eq!((lo, hi), (x, x), "{x} is a half float");
            } else {
                assert_eq!(step(f16::from_f32(lo), true).to_f32(), hi, "{x}: {lo} and {hi} are neighbours");
            }
        }
    }
}
