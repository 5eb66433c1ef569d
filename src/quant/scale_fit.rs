//! ggml's scale-fitting helpers (`make_qx_quants`, `make_qkx2_quants`,
//! `make_qkx3_quants`, `make_qp_quants`), reimplemented with the same float
//! operation order so that the reference quantizers are byte-identical.

use super::rounding::nearest_int;

/// `GROUP_MAX_EPS`: groups whose magnitude is below this quantize to zero.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)`: symmetric quantization
/// to levels `-nmax..nmax-1`, weighted least squares over 19 trial scales.
/// Writes `L[i] = level + nmax` and returns the scale.
/// Weights are `qw` when given, else `x^2`.
///
/// ggml tries the first estimate, then 18 more inverse scales one after
/// another, keeping each that beats the best so far. The sums of a trial do
/// not depend on the others, so here all trials are summed side by side, one
/// lane each (each lane adds in ggml's order, so every sum is bit-identical),
/// and only the choice among them runs in ggml's sequence. The levels are
/// written once, for the trial ggml would have kept last.
#[inline(always)]
pub fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let (amax, max) = super::rounding::abs_max(x);
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let clampl = |v: f32| nearest_int(v).clamp(-nmax, nmax - 1);
    let nmaxf = nmax as f32;
    // Lane 0: the first estimate; lanes 1..=18: is = -9..=-1, 1..=9; the
    // padding lanes (inverse scale 0) sum to 0 and are never chosen.
    let mut iscale = [0f32; TRIAL_LANES];
    iscale[0] = -nmaxf / max;
    for (lane, is) in (-9..=9).filter(|&is| is != 0).enumerate() {
        iscale[lane + 1] = -(nmaxf + 0.1f32 * is as f32) / max;
    }
    let mut sumlx = [0f32; TRIAL_LANES];
    let mut suml2 = [0f32; TRIAL_LANES];
    for (i, &xi) in x.iter().enumerate() {
        let w = match qw {
            Some(q) => q[i],
            None => xi * xi,
        };
        for t in 0..TRIAL_LANES {
            let l = clampl(iscale[t] * xi) as f32;
            sumlx[t] += w * xi * l;
            suml2[t] += w * l * l;
        }
    }
    let mut scale = if suml2[0] != 0.0 {
        sumlx[0] / suml2[0]
    } else {
        0.0
    };
    let mut best = scale * sumlx[0];
    let mut kept = 0;
    for t in 1..TRIALS {
        if suml2[t] > 0.0 && sumlx[t] * sumlx[t] > best * suml2[t] {
            scale = sumlx[t] / suml2[t];
            best = scale * sumlx[t];
            kept = t;
        }
    }
    for (l, &xi) in l_out.iter_mut().zip(x) {
        *l = (nmax + clampl(iscale[kept] * xi)) as i8;
    }
    scale
}

/// Trials of `make_qx_quants` (the first estimate and 18 more).
const TRIALS: usize = 19;
/// Its lanes, padded to a multiple of 8.
const TRIAL_LANES: usize = 24;

/// Parameters of the trial-scale sweep of `make_qkx2/3_quants`.
#[derive(Clone, Copy)]
pub struct Sweep {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// Which ggml variant of the affine (scale + min) fit to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Qkx {
    /// `make_qkx2_quants` (used by `quantize_row_q4_K_ref`).
    V2,
    /// `make_qkx3_quants` (used by the imatrix Q4_K path).
    V3,
}

/// Affine fit `x ≈ scale * L - min` with `L` in `0..=nmax`, minimizing the
/// `weights`-weighted squared error (`use_mad = false` in ggml).
/// Returns `(scale, min)` where `min >= 0` is the *subtracted* offset.
pub fn make_qkx_quants(
    variant: Qkx,
    x: &[f32],
    nmax: i32,
    weights: &[f32],
    l_out: &mut [u8],
    sweep: Sweep,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let degenerate = match variant {
        Qkx::V2 => max == min,
        Qkx::V3 => max <= min,
    };
    if degenerate {
        l_out[..n].iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if sweep.nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    for is in 0..=sweep.nstep {
        iscale = (sweep.rmin + sweep.rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = match variant {
                Qkx::V2 => nearest_int(iscale * (x[i] - min)).clamp(0, nmax),
                Qkx::V3 => {
                    let v = iscale * (x[i] - min);
                    if v > 0.0 {
                        nearest_int(if v < nmaxf { v } else { nmaxf })
                    } else {
                        0
                    }
                }
            };
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qp_quants(n, nmax, x, L, quant_weights)`: quantizes non-negative
/// values `x` (sub-block scales or mins) to `0..=nmax` with one shared scale.
pub fn make_qp_quants(x: &[f32], nmax: i32, l_out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = qw[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}
