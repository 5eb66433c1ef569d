//! Scalar codebooks: the non-linear IQ4 grid and the uniform integer grids of
//! the legacy/k-quant formats, with nearest-value lookup.

/// `kvalues_iq4nl`: the 16 non-linear 4-bit levels used by IQ4_NL and IQ4_XS.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Q4_0 levels: stored nibble `q` means `q - 8`.
pub const Q4_0_LEVELS: [i8; 16] = [-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7];

/// Q6_K levels: stored 6-bit `q` means `q - 32`.
pub const Q6_K_LEVELS: [i8; 64] = {
    let mut v = [0i8; 64];
    let mut i = 0;
    while i < 64 {
        v[i] = i as i8 - 32;
        i += 1;
    }
    v
};

/// ggml's `best_index_int8`: index of the level nearest to `x` in the sorted
/// `values` (ties go up), by bisection with the same comparisons as ggml.
#[cfg(test)]
pub fn best_index_int8(values: &[i8], x: f32) -> usize {
    let n = values.len();
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[n - 1] as f32 {
        return n - 1;
    }
    let (mut ml, mut mu) = (0usize, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

/// `MU_IQ4[f + 127]` = the first index whose level is greater than the
/// integer `f`, for `f` in `-127..=112`; `MU_IQ4[240] = 15` (for `f = 113`).
const MU_IQ4: [u8; 241] = {
    let mut t = [15u8; 241];
    let mut f = -127i32;
    while f <= 112 {
        let mut mu = 0;
        while (KVALUES_IQ4NL[mu] as i32) <= f {
            mu += 1;
        }
        t[(f + 127) as usize] = mu as u8;
        f += 1;
    }
    t
};

/// `best_index_int8(16, kvalues_iq4nl, x)` with a table instead of the
/// bisection, and without data-dependent branches; the final comparison is
/// ggml's, so results are identical for every input.
#[inline]
pub fn best_index_iq4(x: f32) -> usize {
    const V: &[i8; 16] = &KVALUES_IQ4NL;
    if x.is_nan() {
        return 15;
    }
    // Out-of-range values land on the end levels through the same comparison.
    let x = x.clamp(-127.0, 113.0);
    let t = x as i32;
    let f = t - ((t as f32 > x) as i32); // exact floor
    let mu = MU_IQ4[((f + 127) as usize).min(240)] as usize;
    let lower = x - (V[mu - 1] as f32) < V[mu] as f32 - x;
    mu - lower as usize
}

/// Midpoints between consecutive IQ4 levels (exact half-integers).
pub const IQ4_MID: [f32; 15] = {
    let mut m = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (KVALUES_IQ4NL[i] as f32 + KVALUES_IQ4NL[i + 1] as f32) * 0.5;
        i += 1;
    }
    m
};

/// Gaps between consecutive IQ4 levels.
const IQ4_GAP: [f32; 15] = {
    let mut g = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        g[i] = (KVALUES_IQ4NL[i + 1] as i32 - KVALUES_IQ4NL[i] as i32) as f32;
        i += 1;
    }
    g
};

/// `KVALUES_IQ4NL[best_index_iq4(x)]` as f32 for any `x`, branch-free
/// and vectorizable: the level is `-127` plus the gaps of every midpoint at
/// or below `x`. Near a midpoint `x - lo` and `hi - x` are exact in f32, so
/// ggml's `x - lo < hi - x` equals `x < mid` (checked in the tests).
#[inline(always)]
pub fn iq4_level(x: f32) -> f32 {
    let mut q = KVALUES_IQ4NL[0] as f32;
    for k in 0..15 {
        q += if x >= IQ4_MID[k] { IQ4_GAP[k] } else { 0.0 };
    }
    if x.is_nan() {
        KVALUES_IQ4NL[15] as f32
    } else {
        q
    }
}

/// `best_index_iq4(x)` for any `x`, branch-free (see `iq4_level`).
#[inline(always)]
pub fn iq4_index(x: f32) -> u8 {
    let mut i = 0u8;
    for m in IQ4_MID {
        i += (x >= m) as u8;
    }
    if x.is_nan() {
        15
    } else {
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midpoint_count_equals_bisection() {
        let mut x = -140.0f32;
        let mut n = 0u64;
        // Every f32 in [-140, 130) around the midpoints, plus a strided scan.
        while x < 130.0 {
            let i = best_index_iq4(x);
            assert_eq!(iq4_index(x) as usize, i, "x = {x}");
            assert_eq!(iq4_level(x), KVALUES_IQ4NL[i] as f32, "x = {x}");
            let near = IQ4_MID.iter().any(|&m| (x - m).abs() < 1e-3);
            let step = if near { 1 } else { 997 };
            x = f32::from_bits(if x >= 0.0 {
                x.to_bits() + step
            } else if x.to_bits() > 0x8000_0000 + step {
                x.to_bits() - step
            } else {
                0
            });
            n += 1;
        }
        assert!(n > 100_000);
        // Exhaustive over all f32 in (-256, 256) when asked for.
        if std::env::var_os("IQ4_EXHAUSTIVE").is_some() {
            for bits in 0..0x4380_0000u32 {
                for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                    assert_eq!(iq4_index(x) as usize, best_index_iq4(x), "x = {x}");
                }
            }
        }
        for x in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            0.0,
            -0.0,
        ] {
            assert_eq!(iq4_level(x), KVALUES_IQ4NL[best_index_iq4(x)] as f32);
            assert_eq!(iq4_index(x) as usize, best_index_iq4(x), "x = {x}");
        }
    }

    #[test]
    fn best_index_matches_linear_scan() {
        for i in -1400..1400 {
            let x = i as f32 * 0.1;
            let got = best_index_int8(&KVALUES_IQ4NL, x);
            // Linear scan; on exact ties ggml's final comparison picks the upper one.
            let mut best = 0;
            for (j, &v) in KVALUES_IQ4NL.iter().enumerate() {
                if (x - v as f32).abs() <= (x - KVALUES_IQ4NL[best] as f32).abs() {
                    best = j;
                }
            }
            assert_eq!(got, best, "x = {x}");
        }
    }

    #[test]
    fn table_lookup_equals_bisection() {
        let mut probes = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        for v in -130i32..=130 {
            for d in [0.0f32, 1e-6, -1e-6, 0.5, -0.5, 0.25] {
                let x = v as f32 + d;
                probes.extend([
                    x,
                    f32::from_bits(x.to_bits() + 1),
                    f32::from_bits(x.to_bits().saturating_sub(1)),
                ]);
            }
        }
        for x in probes {
            assert_eq!(
                best_index_iq4(x),
                best_index_int8(&KVALUES_IQ4NL, x),
                "x = {x}"
            );
        }
    }
}
