//! Q4_K: super-blocks of 256 weights, 144 bytes each.
//!
//! Layout per super-block (`BlockQ4K`): `d: f16`, `dmin: f16`, `scales[12]`
//! (eight 6-bit sub-block scales and eight 6-bit mins, packed as in
//! `get_scale_min_k4`), then `qs[128]`. The 256 weights form 8 sub-blocks of
//! 32; sub-block pairs `(2p, 2p+1)` share the 32 bytes `qs[32p..32p+32]`, the
//! first in the low nibbles, the second in the high nibbles. Weight value:
//! `d * sc[j] * q - dmin * m[j]`.

use super::block::{BlockFormat, Proposal, Row};
use super::rounding::{nearest_int, read_f16, write_f16};
use super::scale_fit::{make_qkx_quants, make_qp_quants, Qkx, Sweep};
use crate::ggml_type::GgmlType;
use bytemuck::{Pod, Zeroable};

const QK: usize = Q4K::QK;
/// ggml's `K_SCALE_SIZE`.
const K_SCALE_SIZE: usize = 12;

/// ggml's `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale of the quantized scales (f16).
    pub d: [u8; 2],
    /// Super-block scale of the quantized mins (f16).
    pub dmin: [u8; 2],
    /// 6-bit scales and mins (see `scale_min`).
    pub scales: [u8; K_SCALE_SIZE],
    /// 4-bit levels: 32 bytes per sub-block pair.
    pub qs: [u8; QK / 2],
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`.
#[inline(always)]
pub fn scale_min(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 6-bit scales `ls` and mins `lm` into the 12 scale bytes.
pub fn pack_scales(ls: &[u8; 8], lm: &[u8; 8], s: &mut [u8; K_SCALE_SIZE]) {
    *s = [0; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Final step shared by both ggml paths: with `d`, `dmin` and the scales
/// already written to `b`, re-derive the levels (sub-blocks whose scale is
/// zero keep the levels in `l`) and pack them.
fn finish(x: &[f32], b: &mut BlockQ4K, l: &mut [u8; QK]) {
    let d_all = read_f16(&b.d);
    let m_all = read_f16(&b.dmin);
    for j in 0..8 {
        let (sc, m) = scale_min(j, &b.scales);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15) as u8;
        }
    }
    pack_levels(l, &mut b.qs);
}

/// Packs 256 levels (`0..=15`) into `qs[128]`.
pub fn pack_levels(l: &[u8; QK], qs: &mut [u8; QK / 2]) {
    for (p, q) in qs.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        for i in 0..32 {
            q[i] = l[64 * p + i] | (l[64 * p + 32 + i] << 4);
        }
    }
}

/// `quantize_row_q4_K_ref` for one super-block.
pub fn ref_block(x: &[f32], b: &mut BlockQ4K) {
    let mut l = [0u8; QK];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    let sweep = Sweep {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
    };
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx_quants(
            Qkx::V2,
            xs,
            15,
            &weights,
            &mut l[32 * j..32 * j + 32],
            sweep,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    pack_scales(&ls, &lm, &mut b.scales);
    write_f16(&mut b.d, max_scale / 63.0);
    write_f16(&mut b.dmin, max_min / 63.0);
    finish(x, b, &mut l);
}

/// `quantize_row_q4_K_impl` (the imatrix path) for one super-block;
/// `qw` holds the 256 importance values of these columns.
pub fn imatrix_block(x: &[f32], b: &mut BlockQ4K, qw: &[f32]) {
    let sum_x2 = x.iter().fold(0.0f32, |s, v| s + v * v);
    let sigma2 = 2.0 * sum_x2 / QK as f32;
    let mut weights = [[0f32; 32]; 8];
    for j in 0..8 {
        for i in 0..32 {
            let v = x[32 * j + i];
            weights[j][i] = qw[32 * j + i] * (sigma2 + v * v).sqrt();
        }
    }
    fit_block(x, &weights, b);
}

/// Fits a super-block the way `quantize_row_q4_K_impl` does, for any
/// per-weight `weights`, and writes it to `b`.
pub fn fit_block(x: &[f32], weights: &[[f32; 32]; 8], b: &mut BlockQ4K) {
    let mut l = [0u8; QK];
    let mut sw = [0f32; 8];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let sweep = Sweep {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
    };
    for j in 0..8 {
        sw[j] = weights[j].iter().fold(0.0f32, |s, w| s + w);
        let (s, m) = make_qkx_quants(
            Qkx::V3,
            &x[32 * j..32 * j + 32],
            15,
            &weights[j],
            &mut l[32 * j..32 * j + 32],
            sweep,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
    let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
    pack_scales(&ls, &lm, &mut b.scales);
    write_f16(&mut b.d, d_block);
    write_f16(&mut b.dmin, m_block);
    finish(x, b, &mut l);
}

/// Unpacks the 256 levels of a super-block.
fn unpack_levels(qs: &[u8; QK / 2]) -> [u8; QK] {
    let mut l = [0u8; QK];
    for (p, q) in qs.as_chunks::<32>().0.iter().enumerate() {
        for i in 0..32 {
            l[64 * p + i] = q[i] & 0xf;
            l[64 * p + 32 + i] = q[i] >> 4;
        }
    }
    l
}

/// Refits the fp16 `d` and `dmin` of block `b` by weighted least squares for
/// its 6-bit scales/mins and levels, then re-derives the levels. Returns
/// false when the system is degenerate.
fn refit(x: &[f32], w: &[f32], b: &mut BlockQ4K) -> bool {
    let l = unpack_levels(&b.qs);
    let (mut saa, mut sab, mut sbb, mut sax, mut sbx) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for j in 0..8 {
        let (sc, m) = scale_min(j, &b.scales);
        for i in 32 * j..32 * j + 32 {
            let a = sc as f64 * l[i] as f64;
            let bb = -(m as f64);
            let (wi, xi) = (w[i] as f64, x[i] as f64);
            saa += wi * a * a;
            sab += wi * a * bb;
            sbb += wi * bb * bb;
            sax += wi * a * xi;
            sbx += wi * bb * xi;
        }
    }
    let det = saa * sbb - sab * sab;
    if det.is_nan() || det <= 0.0 {
        return false;
    }
    let d = (sax * sbb - sbx * sab) / det;
    let m = (saa * sbx - sab * sax) / det;
    if !(d as f32).is_finite() || !(m as f32).is_finite() {
        return false;
    }
    write_f16(&mut b.d, d as f32);
    write_f16(&mut b.dmin, m as f32);
    let mut lu = l;
    finish(x, b, &mut lu);
    true
}

/// Q4_K as a block format. Search proposals: the imatrix-style fit run with
/// the search weights, then least-squares refits of `d`/`dmin` of the best block.
pub struct Q4K;

impl BlockFormat for Q4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    const SEARCH_STEPS: usize = 3;
    type Block = BlockQ4K;
    /// `quantize_row_q4_K_ref`, or `quantize_row_q4_K_impl` with an imatrix.
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut BlockQ4K, qw: Option<&[f32]>, _row: &Row) {
        match qw {
            None => ref_block(x, b),
            Some(qw) => imatrix_block(x, b, qw),
        }
    }

    #[inline(always)]
    fn search_block(p: &Proposal<BlockQ4K>, cand: &mut BlockQ4K, y: &mut [f32]) -> Option<f64> {
        if p.step == 0 {
            let weights: [[f32; 32]; 8] =
                std::array::from_fn(|j| std::array::from_fn(|k| p.w[32 * j + k]));
            fit_block(p.x, &weights, cand);
        } else {
            *cand = *p.best;
            if !refit(p.x, p.w, cand) {
                return None;
            }
        }
        Some(Self::error(p.x, p.w, cand, y))
    }

    /// The refits start from whichever of the reference block and the fit won.
    #[inline(always)]
    fn continue_after_miss(step: usize) -> bool {
        step == 0
    }

    /// `dequantize_row_q4_K`.
    #[inline(always)]
    fn dequantize_block(b: &BlockQ4K, y: &mut [f32]) {
        let d = read_f16(&b.d);
        let min = read_f16(&b.dmin);
        let scales = &b.scales;
        for (p, q) in b.qs.as_chunks::<32>().0.iter().enumerate() {
            let (sc1, m1) = scale_min(2 * p, scales);
            let (sc2, m2) = scale_min(2 * p + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let y = &mut y[64 * p..64 * p + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xf) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}
