//! Scalar rounding helpers shared by the quantizers, matching ggml bit for bit.

use half::f16;

/// ggml's `nearest_int`: round to nearest (ties to even) through the
/// `1.5 * 2^23` trick. Only meaningful for `|v| <= 4194303`, as in ggml.
#[inline]
pub fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// f32 -> IEEE half bits, round to nearest even (as `GGML_FP32_TO_FP16`).
#[inline]
pub fn f16_bits(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// IEEE half bits -> f32 (exact, as `GGML_FP16_TO_FP32`).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Reads a little-endian half (a block's `ggml_half` field).
#[inline(always)]
pub fn read_f16(b: &[u8; 2]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

/// Writes `v` as a little-endian half (a block's `ggml_half` field) and
/// returns the value that a reader will see.
#[inline(always)]
pub fn write_f16(b: &mut [u8; 2], v: f32) -> f32 {
    let bits = f16_bits(v);
    *b = bits.to_le_bytes();
    f16_to_f32(bits)
}

/// Sum of squares in order (ggml accumulates in f32, left to right).
#[inline]
pub fn sum_sq(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |s, v| s + v * v)
}

/// The value with the largest magnitude (first one on ties), as ggml's
/// `if (ax > amax) { amax = ax; max = x; }` loops; returns `(amax, max)`.
#[inline]
pub fn abs_max(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    (amax, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-0.4), 0);
        assert_eq!(nearest_int(31.6), 32);
        assert_eq!(nearest_int(-4_000_000.2), -4_000_000);
    }

    #[test]
    fn f16_round_trip() {
        let mut b = [0u8; 2];
        assert_eq!(write_f16(&mut b, 1.0), 1.0);
        assert_eq!(b, [0x00, 0x3c]);
        assert_eq!(read_f16(&b), 1.0);
        assert_eq!(write_f16(&mut b, -0.0).to_bits(), (-0.0f32).to_bits());
    }
}
