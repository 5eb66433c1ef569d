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
/// ggml's `x - lo < hi - x` equals `x < mid` (checked in the tests). A NaN is
/// below no midpoint, so it lands on the top level as in ggml.
#[inline(always)]
pub fn iq4_level(x: f32) -> f32 {
    let mut q = KVALUES_IQ4NL[0] as f32;
    for k in 0..15 {
        q += if x < IQ4_MID[k] { 0.0 } else { IQ4_GAP[k] };
    }
    q
}

/// `v` followed by `fill` up to `N` entries.
const fn padded<const N: usize>(v: [f32; 15], fill: f32) -> [f32; N] {
    let mut p = [fill; N];
    let mut i = 0;
    while i < 15 {
        p[i] = v[i];
        i += 1;
    }
    p
}

/// `IQ4_MID`, then `+inf`: any level index reads two midpoints, and the
/// padding never compares true.
const IQ4_MID_PAD: [f32; 17] = padded(IQ4_MID, f32::INFINITY);

/// `IQ4_GAP`, then zeros (see `IQ4_MID_PAD`).
const IQ4_GAP_PAD: [f32; 16] = padded(IQ4_GAP, 0.0);

/// The levels as f32.
const IQ4_LEVEL: [f32; 16] = {
    let mut v = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        v[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    v
};

/// The part of the IQ4 grid that values in `[lo, hi]` can land on, when the
/// span crosses at most one midpoint: their level is `base`, plus `gap` at
/// or above `mid` (see [`Iq4Window::level`]).
#[derive(Clone, Copy, Default)]
pub struct Iq4Window {
    base: f32,
    mid: f32,
    gap: f32,
}

impl Iq4Window {
    /// The window for every value between `lo` and `hi` (`lo <= hi`, or both
    /// NaN), given `il = iq4_index(lo)` (the caller computes it, e.g. for a
    /// whole block at once); None when a second midpoint lies between them
    /// or only one is NaN.
    #[inline(always)]
    pub fn new(il: u8, lo: f32, hi: f32) -> Option<Self> {
        let il = il as usize;
        // Midpoints below `il` are <= lo and midpoint `il` is above it; the
        // window holds when the next one is above hi. For NaN, il = 15: the
        // level is 113 as in `iq4_level`, and the +inf padding never counts.
        let holds = if lo.is_nan() || hi.is_nan() {
            lo.is_nan() && hi.is_nan()
        } else {
            hi < IQ4_MID_PAD[il + 1]
        };
        holds.then(|| Self {
            base: IQ4_LEVEL[il],
            mid: IQ4_MID_PAD[il],
            gap: IQ4_GAP_PAD[il],
        })
    }

    /// `iq4_level(x)` for `x` in the window's `[lo, hi]` (exact: levels and
    /// gaps are small integers, so the sum does not depend on its order).
    #[inline(always)]
    pub fn level(&self, x: f32) -> f32 {
        self.base + if x < self.mid { 0.0 } else { self.gap }
    }
}

/// `best_index_iq4(x)` for any `x`, branch-free (see `iq4_level`).
#[inline(always)]
pub fn iq4_index(x: f32) -> u8 {
    let mut i = 0u32;
    for m in IQ4_MID {
        i += if x < m { 0 } else { 1 };
    }
    i as u8
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
    fn window_level_equals_full_level_inside_its_span() {
        // Spans around every midpoint, narrow and up to two midpoints wide.
        let mut n_some = 0;
        for lo_i in -1300..1200 {
            let lo = lo_i as f32 * 0.1;
            for span in [0.0f32, 0.05, 3.0, 11.0, 14.0, 30.0] {
                let hi = lo + span;
                let crossed = IQ4_MID.iter().filter(|&&m| lo < m && m <= hi).count();
                match Iq4Window::new(iq4_index(lo), lo, hi) {
                    None => assert!(crossed > 1, "[{lo}, {hi}] crosses {crossed}"),
                    Some(w) => {
                        assert!(crossed <= 1, "[{lo}, {hi}] crosses {crossed}");
                        n_some += 1;
                        for k in 0..=16 {
                            let x = lo + span * k as f32 / 16.0;
                            assert_eq!(w.level(x), iq4_level(x), "x = {x} in [{lo}, {hi}]");
                        }
                        for x in [lo, hi] {
                            assert_eq!(w.level(x), iq4_level(x), "x = {x}");
                        }
                    }
                }
            }
        }
        assert!(n_some > 10_000);
        for m in IQ4_MID {
            let below = f32::from_bits(m.to_bits() - 1);
            let w = Iq4Window::new(iq4_index(below), below, m).expect("one midpoint");
            assert_eq!(w.level(below), iq4_level(below));
            assert_eq!(w.level(m), iq4_level(m));
        }
        let nan = Iq4Window::new(iq4_index(f32::NAN), f32::NAN, f32::NAN).expect("both NaN");
        assert_eq!(nan.level(f32::NAN), iq4_level(f32::NAN));
        assert!(Iq4Window::new(iq4_index(f32::NAN), f32::NAN, 1.0).is_none());
        let inf = Iq4Window::new(0, f32::NEG_INFINITY, f32::NEG_INFINITY).expect("-inf");
        assert_eq!(inf.level(f32::NEG_INFINITY), iq4_level(f32::NEG_INFINITY));
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
