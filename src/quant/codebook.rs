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

#[cfg(test)]
mod tests {
    use super::*;

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
