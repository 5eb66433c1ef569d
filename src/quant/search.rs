//! Error-minimizing ("search") block fitting shared by the formats whose
//! weights are `scale * level` with levels from a fixed sorted grid.
//!
//! For one block with inverse scale `s`, the best level of weight `x_j` is the
//! grid level nearest `s * x_j`. `best_scale` evaluates the nearest-level
//! assignment at 2 × 16 trial inverse scales side by side (vectorized: the
//! largest weight mapped to either end level of the grid, times factors
//! dense around 1), keeping the running sums `S1 = Σ w x k`, `S2 = Σ w k²`
//! per trial; the best `S1² / S2` gives the least-squares scale `S1 / S2`,
//! refined by re-assigning at it while that helps. Candidate errors are
//! compared in f32 over chunked lanes; the final choice's error is exact
//! (f64), and callers keep ggml's block where it is not beaten.
//!
//! Weights are `x²`, or `qw * sqrt(sigma2 + x²)` with an importance vector
//! `qw`, where `sigma2 = 2 * mean(x²)` over the whole row.

use super::codebook::{iq4_index, iq4_level};
use super::rounding::{f16_bits, f16_to_f32};

/// A sorted level grid plus the range of the trial scales.
pub struct Grid {
    pub levels: &'static [i8],
    /// Levels are the consecutive integers `levels[0]..` (else the IQ4 grid).
    pub uniform: bool,
    /// Trial inverse scales map the block's largest-magnitude weight to an
    /// end level of the grid times a factor in `lo..=hi`.
    pub lo: f32,
    pub hi: f32,
}

/// Trial scales per sign in `best_scale`.
const NT: usize = 16;

/// Where the trials sit in `lo..=hi` (as fractions): dense in the middle,
/// `0.5 ± 0.5 |t|^1.7` for `t` evenly spaced in `-1..=1`.
const PROFILE: [f32; NT] = [
    0.0, 0.1080, 0.2049, 0.2902, 0.3631, 0.4228, 0.4676, 0.4950, 0.5050, 0.5324, 0.5772, 0.6369,
    0.7098, 0.7951, 0.8920, 1.0,
];

impl Grid {
    /// The level nearest `v` (any tie-break is fine for search), as f32.
    #[inline(always)]
    fn level(&self, v: f32) -> f32 {
        if !self.uniform {
            return iq4_level(v);
        }
        let lo = self.levels[0] as f32;
        let hi = self.levels[self.levels.len() - 1] as f32;
        // Round half to even by the 1.5 * 2^23 trick (|v| is small).
        const MAGIC: f32 = 12_582_912.0;
        (v.clamp(lo, hi) + MAGIC) - MAGIC
    }

    /// Index of the level nearest `v`, consistent with `level`.
    #[inline(always)]
    fn nearest(&self, v: f32) -> usize {
        if !self.uniform {
            return iq4_index(v) as usize;
        }
        (self.level(v) - self.levels[0] as f32) as usize
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

/// Weighted sums `(Σ w x q, Σ w q²)` of the nearest-level assignment at
/// inverse scale `ids[k]`, for every lane `k`, in f32.
#[inline(always)]
fn trial_sums<const L: usize>(
    x: &[f32],
    w: &[f32],
    grid: &Grid,
    ids: &[f32; L],
) -> ([f32; L], [f32; L]) {
    let mut sxq = [0f32; L];
    let mut sqq = [0f32; L];
    for (&xj, &wj) in x.iter().zip(w) {
        for k in 0..L {
            let q = grid.level(ids[k] * xj);
            let wq = wj * q;
            sxq[k] += wq * xj;
            sqq[k] += wq * q;
        }
    }
    (sxq, sqq)
}

/// Good scale of one block: `(d, Σ w k²)` for the best nearest-level
/// assignment over `2 * NT` trial scales (both signs) and least-squares
/// refits, or None when the block has no weight.
#[inline(always)]
pub fn best_scale(x: &[f32], w: &[f32], grid: &Grid) -> Option<(f64, f64)> {
    let mut amax = 0.0f32;
    let mut xmax = 0.0f32;
    let mut finite = true;
    for (&v, &wi) in x.iter().zip(w) {
        finite &= v.is_finite() && wi.is_finite();
        if wi > 0.0 && v.abs() > amax {
            amax = v.abs();
            xmax = v;
        }
    }
    if !finite || amax <= 0.0 || !amax.is_finite() {
        return None;
    }
    let top = grid.levels[grid.levels.len() - 1] as f32;
    let bot = grid.levels[0] as f32;
    let mut ids = [0f32; 2 * NT];
    for i in 0..NT {
        let f = grid.lo + (grid.hi - grid.lo) * PROFILE[i];
        ids[i] = top * f / xmax;
        ids[NT + i] = bot * f / xmax;
    }
    let (sxq, sqq) = trial_sums(x, w, grid, &ids);
    // Best S1² / S2 (compared in f64: no overflow).
    let mut best: Option<(f64, f64)> = None;
    for k in 0..2 * NT {
        let (s1, s2) = (sxq[k] as f64, sqq[k] as f64);
        if s2 > 0.0 && best.is_none_or(|(b1, b2)| s1 * s1 * b2 > b1 * b1 * s2) {
            best = Some((s1, s2));
        }
    }
    let (mut s1, mut s2) = best?;
    // Least-squares refits: re-assign at the fitted scale while it helps.
    for _ in 0..2 {
        let d = s1 / s2;
        if d == 0.0 {
            break;
        }
        let (r1, r2) = sums_at(x, w, grid, (1.0 / d) as f32);
        let (r1, r2) = (r1 as f64, r2 as f64);
        if r2 > 0.0 && r1 * r1 * s2 > s1 * s1 * r2 {
            (s1, s2) = (r1, r2);
        } else {
            break;
        }
    }
    Some((s1 / s2, s2))
}

/// Lanes of the chunked reductions below (lengths are multiples of 8 in use;
/// any remainder is summed in the same lanes).
const LN: usize = 8;

/// Weighted error, `Σ w x q` and `Σ w q²` of the nearest-level assignment
/// for scale `scale`, in f32 (for comparing candidates).
#[inline(always)]
fn eval(x: &[f32], w: &[f32], grid: &Grid, scale: f32) -> (f32, f32, f32) {
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    lane_sums::<true>(x, w, grid, inv, scale)
}

/// `(Σ w x q, Σ w q²)` of the nearest-level assignment at inverse scale
/// `inv`, in f32.
#[inline(always)]
fn sums_at(x: &[f32], w: &[f32], grid: &Grid, inv: f32) -> (f32, f32) {
    let (_, sxq, sqq) = lane_sums::<false>(x, w, grid, inv, 0.0);
    (sxq, sqq)
}

/// `(Σ w (x - scale q)², Σ w x q, Σ w q²)` of the nearest-level assignment
/// at inverse scale `inv`, over `LN` lanes (the error only when `ERR`).
/// Plain loops, no closures: closures do not inherit `#[target_feature]`
/// and would not be inlined into the vectorized callers.
#[inline(always)]
fn lane_sums<const ERR: bool>(
    x: &[f32],
    w: &[f32],
    grid: &Grid,
    inv: f32,
    scale: f32,
) -> (f32, f32, f32) {
    let (mut e, mut sxq, mut sqq) = ([0f32; LN], [0f32; LN], [0f32; LN]);
    let (xc, wc) = (x.chunks_exact(LN), w.chunks_exact(LN));
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (xc, wc) in xc.zip(wc) {
        for k in 0..LN {
            let (xj, wj) = (xc[k], wc[k]);
            let q = grid.level(inv * xj);
            if ERR {
                let d = xj - scale * q;
                e[k] += wj * d * d;
            }
            let wq = wj * q;
            sxq[k] += wq * xj;
            sqq[k] += wq * q;
        }
    }
    for (k, (&xj, &wj)) in xr.iter().zip(wr).enumerate() {
        let q = grid.level(inv * xj);
        if ERR {
            let d = xj - scale * q;
            e[k] += wj * d * d;
        }
        let wq = wj * q;
        sxq[k] += wq * xj;
        sqq[k] += wq * q;
    }
    (e.iter().sum(), sxq.iter().sum(), sqq.iter().sum())
}

/// Nearest-level assignment for scale `scale` (as stored), writing level
/// indices to `q`; returns the weighted error of `scale * level` (f64).
#[inline(always)]
pub fn assign(x: &[f32], w: &[f32], grid: &Grid, scale: f32, q: &mut [u8]) -> f64 {
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut e = [0f64; LN];
    // Element `i` goes to lane `i % LN`, in order; chunked so that it vectorizes.
    let (xc, wc) = (x.chunks_exact(LN), w.chunks_exact(LN));
    let (xr, wr) = (xc.remainder(), wc.remainder());
    let mut qc = q.chunks_exact_mut(LN);
    for ((xc, wc), qc) in xc.zip(wc).zip(&mut qc) {
        for k in 0..LN {
            let v = inv * xc[k];
            qc[k] = grid.nearest(v) as u8;
            let d = xc[k] as f64 - (scale * grid.level(v)) as f64;
            e[k] += wc[k] as f64 * d * d;
        }
    }
    for (k, ((&xj, &wj), qj)) in xr.iter().zip(wr).zip(qc.into_remainder()).enumerate() {
        let v = inv * xj;
        *qj = grid.nearest(v) as u8;
        let d = xj as f64 - (scale * grid.level(v)) as f64;
        e[k] += wj as f64 * d * d;
    }
    e.iter().sum()
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
/// scale (IQ4_NL, Q4_0): trial search, fp16 rounding, refits and the fp16
/// neighbours of the best, then nearest assignment (exact f64 error).
#[inline(always)]
pub fn single(x: &[f32], w: &[f32], grid: &Grid) -> Option<Single> {
    let (d, _) = best_scale(x, w, grid)?;
    let mut best: Option<(u16, f32)> = None;
    let mut cur = d;
    for _ in 0..3 {
        let Some((bits, _)) = to_f16(cur) else { break };
        match try_bits(x, w, grid, bits, &mut best) {
            Some(r) if f16_bits(r as f32) != bits => cur = r,
            _ => break,
        }
    }
    let (bits, _) = best?;
    for nb in [bits.wrapping_add(1), bits.wrapping_sub(1)] {
        let v = f16_to_f32(nb);
        if v.is_finite() && (v > 0.0) == (f16_to_f32(bits) > 0.0) {
            try_bits(x, w, grid, nb, &mut best);
        }
    }
    let (bits, _) = best?;
    let mut q = [0u8; 32];
    let err = assign(x, w, grid, f16_to_f32(bits), &mut q[..x.len()]);
    Some(Single {
        d_bits: bits,
        q,
        err,
    })
}

/// Evaluates fp16 scale `bits` for `single`, keeping it in `best` when its
/// error is lower; returns the least-squares refit scale.
#[inline(always)]
fn try_bits(
    x: &[f32],
    w: &[f32],
    grid: &Grid,
    bits: u16,
    best: &mut Option<(u16, f32)>,
) -> Option<f64> {
    let v = f16_to_f32(bits);
    if !v.is_finite() {
        return None;
    }
    let (e, sxq, sqq) = eval(x, w, grid, v);
    if best.is_none_or(|b| e < b.1) {
        *best = Some((bits, e));
    }
    (sqq > 0.0).then(|| sxq as f64 / sqq as f64)
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

/// Per-sub-block choice of `l` for one `d` (f32 errors).
struct Pick {
    d_bits: u16,
    l: [i32; 16],
    sxq: [f32; 16],
    sqq: [f32; 16],
    err: f64,
}

impl TwoLevel {
    /// For fp16 scale `d`, chooses each sub-block's `l` among the integers
    /// next to `t / d` by actual (f32) error of the nearest assignment.
    #[inline(always)]
    fn pick(&self, x: &[f32], w: &[f32], d_bits: u16, t: &[f64]) -> Pick {
        let d = f16_to_f32(d_bits);
        let mut p = Pick {
            d_bits,
            l: [0; 16],
            sxq: [0.0; 16],
            sqq: [0.0; 16],
            err: 0.0,
        };
        for (ib, &tb) in t.iter().enumerate() {
            let r = ib * self.sub..(ib + 1) * self.sub;
            let (xb, wb) = (&x[r.clone()], &w[r]);
            let c = if d != 0.0 {
                (tb / d as f64).round() as i32
            } else {
                0
            };
            let mut best = f32::INFINITY;
            let mut tried = [i32::MIN; 3];
            for (n, l) in [c, c - 1, c + 1].into_iter().enumerate() {
                let l = l.clamp(self.lmin, self.lmax);
                if tried.contains(&l) {
                    continue;
                }
                tried[n] = l;
                let (e, sxq, sqq) = eval(xb, wb, &self.grid, d * l as f32);
                if e < best {
                    best = e;
                    p.l[ib] = l;
                    p.sxq[ib] = sxq;
                    p.sqq[ib] = sqq;
                }
            }
            p.err += best as f64;
        }
        p
    }

    /// Quadratic model of the sub-blocks' error around their optima `t`
    /// (curvatures `a`) at super-block scale `d`, with each `l` rounded;
    /// returns the modelled error and the least-squares `d` for those `l`.
    #[inline(always)]
    fn cost(&self, t: &[f64], a: &[f64], d: f64) -> (f64, f64) {
        let (mut c, mut num, mut den) = (0.0, 0.0, 0.0);
        for (&tb, &ab) in t.iter().zip(a) {
            let l = ((tb / d).round() as i32).clamp(self.lmin, self.lmax) as f64;
            c += ab * (d * l - tb).powi(2);
            num += ab * l * tb;
            den += ab * l * l;
        }
        (c, if den > 0.0 { num / den } else { d })
    }

    /// Search a super-block; None when no weight is non-zero.
    #[inline(always)]
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
        let mut best_d = t[m] / self.lmin as f64;
        let mut best_c = f64::INFINITY;
        let lcands =
            (self.lmin..self.lmin + self.span).chain(self.lmax + 1 - self.span..=self.lmax);
        for lm in lcands {
            if lm == 0 {
                continue;
            }
            let d0 = t[m] / lm as f64;
            let (c0, d1) = self.cost(t, a, d0);
            let (c1, _) = self.cost(t, a, d1);
            for (c, d) in [(c0, d0), (c1, d1)] {
                if c < best_c {
                    best_c = c;
                    best_d = d;
                }
            }
        }
        let (bits, _) = to_f16(best_d)?;
        let mut best = self.pick(x, w, bits, t);
        // Refit d given the integer l's and levels, then re-pick.
        for _ in 0..2 {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for ib in 0..nsub {
                let l = best.l[ib] as f64;
                s1 += l * best.sxq[ib] as f64;
                s2 += l * l * best.sqq[ib] as f64;
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
            let cand = self.pick(x, w, b2, t);
            if cand.err < best.err {
                best = cand;
            } else {
                break;
            }
        }
        // Levels and exact error of the choice.
        let d = f16_to_f32(best.d_bits);
        let mut out = Double {
            d_bits: best.d_bits,
            l: best.l,
            q: [0; 256],
            err: 0.0,
        };
        for ib in 0..nsub {
            let r = ib * self.sub..(ib + 1) * self.sub;
            let dl = d * best.l[ib] as f32;
            out.err += assign(&x[r.clone()], &w[r.clone()], &self.grid, dl, &mut out.q[r]);
        }
        Some(out)
    }
}
