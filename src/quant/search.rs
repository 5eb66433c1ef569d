//! Error-minimizing ("search") block fitting shared by the formats whose
//! weights are `scale * level` with levels from a fixed sorted grid.
//!
//! For one block with inverse scale `s`, the best level of weight `x_j` is the
//! grid level nearest `s * x_j`; this assignment changes only when `s * x_j`
//! crosses a midpoint between two levels, i.e. at the breakpoints
//! `s = mid / x_j`. Sweeping the breakpoints in order and keeping the running
//! sums `S1 = Σ w x k` and `S2 = Σ w k²` gives, for every assignment met, the
//! weighted-least-squares scale `S1 / S2` and its error reduction `S1² / S2`;
//! the best one over the sweep is the exact optimum within the swept range of
//! `s` (which covers the plausible range around `max|x|`).
//!
//! Weights are `x²`, or `qw * sqrt(sigma2 + x²)` with an importance vector
//! `qw`, where `sigma2 = 2 * mean(x²)` over the whole row.

use super::codebook::best_index_iq4;
use super::rounding::{f16_bits, f16_to_f32, nearest_int};

/// A sorted level grid plus the swept range of `s * max|x|`, as fractions of
/// the largest level magnitude.
pub struct Grid {
    pub levels: &'static [i8],
    /// Levels are the consecutive integers `levels[0]..` (else the IQ4 grid).
    pub uniform: bool,
    /// Sweep `s * max|x|` from `lo * kmax` to `hi * kmax`.
    pub lo: f32,
    pub hi: f32,
}

impl Grid {
    fn kmax(&self) -> f32 {
        let n = self.levels.len();
        (self.levels[0] as f32).abs().max(self.levels[n - 1] as f32)
    }

    #[inline]
    fn mid(&self, i: usize) -> f32 {
        0.5 * (self.levels[i] as f32 + self.levels[i + 1] as f32)
    }

    /// Index of the level nearest `v` (any tie-break is fine for search).
    #[inline]
    fn nearest(&self, v: f32) -> usize {
        if !self.uniform {
            return best_index_iq4(v);
        }
        // Uniform integer grid `levels[0]..`.
        let lo = self.levels[0] as f32;
        let hi = (self.levels.len() - 1) as f32;
        let i = (v - lo).clamp(0.0, hi);
        nearest_int(i) as usize
    }
}

/// The search weights for a row (see the module docs).
pub fn row_weights(x: &[f32], imatrix: Option<&[f32]>) -> Vec<f32> {
    match imatrix {
        None => x.iter().map(|v| v * v).collect(),
        Some(qw) => {
            let sigma2 = 2.0 * x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
            x.iter()
                .zip(qw)
                .map(|(&v, &q)| (q as f64 * (sigma2 + v as f64 * v as f64).sqrt()) as f32)
                .collect()
        }
    }
}

/// Weighted squared error of a reconstruction.
#[inline]
pub fn sq_err(x: &[f32], w: &[f32], y: &[f32]) -> f64 {
    let mut e = 0.0f64;
    for i in 0..x.len() {
        let d = x[i] as f64 - y[i] as f64;
        e += w[i] as f64 * d * d;
    }
    e
}

/// Optimal scale of one block: `(d, Σ w k²)` for the best assignment found,
/// or None when the block has no weight.
pub fn best_scale(x: &[f32], w: &[f32], grid: &Grid) -> Option<(f64, f64)> {
    if x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let amax = x
        .iter()
        .zip(w)
        .filter(|(_, &wi)| wi > 0.0)
        .fold(0.0f32, |m, (v, _)| m.max(v.abs()));
    if amax.is_nan() || amax <= 0.0 || !amax.is_finite() {
        return None;
    }
    let kmax = grid.kmax();
    let s_lo = grid.lo * kmax / amax;
    let s_hi = grid.hi * kmax / amax;
    let mut best: Option<(f64, f64, f64)> = None; // (S1, S2, sign)
    for sign in [1.0f32, -1.0] {
        if let Some((s1, s2)) = sweep(x, w, grid, sign, s_lo, s_hi) {
            let better = match best {
                None => true,
                Some((b1, b2, _)) => s1 * s1 * b2 > b1 * b1 * s2,
            };
            if better {
                best = Some((s1, s2, sign as f64));
            }
        }
    }
    best.map(|(s1, s2, sign)| (sign * s1 / s2, s2))
}

/// One direction of the breakpoint sweep over `s` in `[s_lo, s_hi]` for
/// `sign * x`. Returns the `(S1, S2)` with the largest `S1² / S2`.
fn sweep(x: &[f32], w: &[f32], grid: &Grid, sign: f32, s_lo: f32, s_hi: f32) -> Option<(f64, f64)> {
    let n = x.len();
    let nl = grid.levels.len();
    debug_assert!(n <= 32);
    let mut idx = [0u8; 32];
    let mut events = [0u64; 1024];
    let mut ne = 0usize;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for j in 0..n {
        let xs = sign * x[j];
        let i0 = grid.nearest(s_lo * xs);
        idx[j] = i0 as u8;
        if w[j] <= 0.0 {
            continue;
        }
        let k = grid.levels[i0] as f64;
        s1 += w[j] as f64 * xs as f64 * k;
        s2 += w[j] as f64 * k * k;
        let inv = 1.0 / xs;
        if xs > 0.0 {
            for i in i0..nl - 1 {
                let bp = grid.mid(i) * inv;
                if bp.is_nan() || bp > s_hi || ne == events.len() {
                    break;
                }
                events[ne] = ((bp.to_bits() as u64) << 32) | ((j as u64) << 1) | 1;
                ne += 1;
            }
        } else if xs < 0.0 {
            for i in (1..=i0).rev() {
                let bp = grid.mid(i - 1) * inv;
                if bp.is_nan() || bp > s_hi || ne == events.len() {
                    break;
                }
                events[ne] = ((bp.to_bits() as u64) << 32) | ((j as u64) << 1);
                ne += 1;
            }
        }
    }
    let events = &mut events[..ne];
    events.sort_unstable();
    let mut best = (s1, s2);
    let better = |a: (f64, f64), b: (f64, f64)| {
        a.1 > 0.0 && (b.1 <= 0.0 || a.0 * a.0 * b.1 > b.0 * b.0 * a.1)
    };
    for &e in events.iter() {
        let j = ((e >> 1) & 0x7fff_ffff) as usize;
        let up = e & 1 == 1;
        let old = idx[j] as usize;
        let new = if up { old + 1 } else { old - 1 };
        idx[j] = new as u8;
        let (ko, kn) = (grid.levels[old] as f64, grid.levels[new] as f64);
        let wj = w[j] as f64;
        s1 += wj * (sign * x[j]) as f64 * (kn - ko);
        s2 += wj * (kn * kn - ko * ko);
        if better((s1, s2), best) {
            best = (s1, s2);
        }
    }
    (best.1 > 0.0).then_some(best)
}

/// Nearest-level assignment for scale `scale` (as stored), writing level
/// indices to `q`; returns the weighted error of `scale * level`.
#[inline]
pub fn assign(x: &[f32], w: &[f32], grid: &Grid, scale: f32, q: &mut [u8]) -> f64 {
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut e = 0.0f64;
    for j in 0..x.len() {
        let i = grid.nearest(inv * x[j]);
        q[j] = i as u8;
        let y = scale * grid.levels[i] as f32;
        let d = x[j] as f64 - y as f64;
        e += w[j] as f64 * d * d;
    }
    e
}

/// Weighted least-squares scale for fixed level indices `q` (level values
/// multiplied by `mult`).
#[inline]
fn refit(x: &[f32], w: &[f32], grid: &Grid, q: &[u8], mult: f64) -> Option<f64> {
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for j in 0..x.len() {
        let k = grid.levels[q[j] as usize] as f64 * mult;
        s1 += w[j] as f64 * x[j] as f64 * k;
        s2 += w[j] as f64 * k * k;
    }
    (s2 > 0.0).then(|| s1 / s2)
}

/// fp16 rounding of a scale; None when it is not finite.
#[inline]
fn to_f16(d: f64) -> Option<(u16, f32)> {
    let bits = f16_bits(d as f32);
    let v = f16_to_f32(bits);
    v.is_finite().then_some((bits, v))
}

/// Result of a single-scale block search.
pub struct Single {
    pub d_bits: u16,
    pub q: [u8; 32],
    pub err: f64,
}

/// Best fp16 scale and levels for a block of at most 32 weights with one
/// scale (IQ4_NL, Q4_0): exact sweep, fp16 rounding (and its neighbours),
/// nearest re-assignment and refits.
pub fn single(x: &[f32], w: &[f32], grid: &Grid) -> Option<Single> {
    let (d, _) = best_scale(x, w, grid)?;
    let mut best: Option<Single> = None;
    let mut q = [0u8; 32];
    let n = x.len();
    let try_d = |d: f64, best: &mut Option<Single>, q: &mut [u8; 32]| -> Option<f64> {
        let (bits, v) = to_f16(d)?;
        let e = assign(x, w, grid, v, &mut q[..n]);
        if best.as_ref().is_none_or(|b| e < b.err) {
            *best = Some(Single {
                d_bits: bits,
                q: *q,
                err: e,
            });
        }
        refit(x, w, grid, &q[..n], 1.0)
    };
    let mut cur = d;
    for _ in 0..3 {
        match try_d(cur, &mut best, &mut q) {
            Some(r) if r != cur => cur = r,
            _ => break,
        }
    }
    // fp16 neighbours of the best scale.
    if let Some(b) = best.as_ref() {
        let bits = b.d_bits;
        for nb in [bits.wrapping_add(1), bits.wrapping_sub(1)] {
            let v = f16_to_f32(nb);
            if v.is_finite() && (v > 0.0) == (f16_to_f32(bits) > 0.0) {
                try_d(v as f64, &mut best, &mut q);
            }
        }
    }
    best
}

/// Two-level layout: super-block scale `d` (fp16) times an integer sub-block
/// scale `l` in `lmin..=lmax` times a grid level (IQ4_XS, Q6_K).
pub struct TwoLevel {
    pub grid: Grid,
    pub sub: usize,
    pub lmin: i32,
    pub lmax: i32,
    /// How many integer values next to each end of the `l` range the largest
    /// sub-block scale is tried at.
    pub span: i32,
}

/// Result of a two-level super-block search (up to 256 weights, 16 sub-blocks).
pub struct Double {
    pub d_bits: u16,
    pub l: [i32; 16],
    pub q: [u8; 256],
    pub err: f64,
}

impl TwoLevel {
    /// Assigns levels of every sub-block for fp16 scale `d`, choosing each
    /// sub-block's `l` among the integers next to `t / d` by actual error.
    fn assign_all(&self, x: &[f32], w: &[f32], d_bits: u16, t: &[f64], out: &mut Double) {
        let d = f16_to_f32(d_bits);
        out.d_bits = d_bits;
        out.err = 0.0;
        let mut qtmp = [0u8; 32];
        for (ib, &tb) in t.iter().enumerate() {
            let r = ib * self.sub..(ib + 1) * self.sub;
            let (xb, wb) = (&x[r.clone()], &w[r.clone()]);
            let c = if d != 0.0 {
                (tb / d as f64).round() as i32
            } else {
                0
            };
            let mut best = f64::INFINITY;
            for l in [c, c - 1, c + 1] {
                let l = l.clamp(self.lmin, self.lmax);
                let dl = d * l as f32;
                let e = assign(xb, wb, &self.grid, dl, &mut qtmp[..self.sub]);
                if e < best {
                    best = e;
                    out.l[ib] = l;
                    out.q[r.clone()].copy_from_slice(&qtmp[..self.sub]);
                }
            }
            out.err += best;
        }
    }

    /// Search a super-block; None when no weight is non-zero.
    pub fn search(&self, x: &[f32], w: &[f32]) -> Option<Double> {
        let nsub = x.len() / self.sub;
        let mut t = [0f64; 16];
        let mut a = [0f64; 16];
        let mut m = None::<usize>;
        for ib in 0..nsub {
            let r = ib * self.sub..(ib + 1) * self.sub;
            if let Some((d, s2)) = best_scale(&x[r.clone()], &w[r], &self.grid) {
                t[ib] = d;
                a[ib] = s2;
                if m.is_none_or(|mm| d.abs() > t[mm].abs()) {
                    m = Some(ib);
                }
            }
        }
        let m = m?;
        let (t, a) = (&t[..nsub], &a[..nsub]);
        // Quadratic model of each sub-block's error around its optimum.
        let cost = |d: f64| -> (f64, f64) {
            let (mut c, mut num, mut den) = (0.0, 0.0, 0.0);
            for ib in 0..nsub {
                let l = ((t[ib] / d).round() as i32).clamp(self.lmin, self.lmax) as f64;
                c += a[ib] * (d * l - t[ib]).powi(2);
                num += a[ib] * l * t[ib];
                den += a[ib] * l * l;
            }
            (c, if den > 0.0 { num / den } else { d })
        };
        let mut best_d = t[m] / self.lmin as f64;
        let mut best_c = f64::INFINITY;
        let lcands =
            (self.lmin..self.lmin + self.span).chain(self.lmax + 1 - self.span..=self.lmax);
        for lm in lcands {
            if lm == 0 {
                continue;
            }
            let d0 = t[m] / lm as f64;
            let (c0, d1) = cost(d0);
            let (c1, _) = cost(d1);
            for (c, d) in [(c0, d0), (c1, d1)] {
                if c < best_c {
                    best_c = c;
                    best_d = d;
                }
            }
        }
        let (bits, _) = to_f16(best_d)?;
        let mut best = Double {
            d_bits: bits,
            l: [0; 16],
            q: [0; 256],
            err: f64::INFINITY,
        };
        self.assign_all(x, w, bits, t, &mut best);
        // Refit d given the integer l's and levels, then re-assign.
        let mut cand = Double {
            d_bits: 0,
            l: [0; 16],
            q: [0; 256],
            err: 0.0,
        };
        for _ in 0..2 {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for ib in 0..nsub {
                for j in ib * self.sub..(ib + 1) * self.sub {
                    let k = best.l[ib] as f64 * self.grid.levels[best.q[j] as usize] as f64;
                    s1 += w[j] as f64 * x[j] as f64 * k;
                    s2 += w[j] as f64 * k * k;
                }
            }
            if s2 <= 0.0 {
                break;
            }
            let Some((b2, _)) = to_f16(s1 / s2) else {
                break;
            };
            if b2 == best.d_bits {
                break;
            }
            self.assign_all(x, w, b2, t, &mut cand);
            if cand.err < best.err {
                std::mem::swap(&mut best, &mut cand);
            } else {
                break;
            }
        }
        Some(best)
    }
}
