//! IQ4_NL and IQ4_XS: 4-bit indices into the non-linear grid `KVALUES_IQ4NL`.
//!
//! IQ4_NL block (32 weights, 18 bytes): `d: f16`, `qs[16]` (byte `j` holds
//! weight `j` in the low nibble and `j + 16` in the high nibble). Weight value:
//! `d * kvalues[q]`.
//!
//! IQ4_XS super-block (256 weights, 136 bytes): `d: f16`, `scales_h: u16`
//! (2 high bits of each sub-block scale), `scales_l[4]` (4 low bits, two per
//! byte, even sub-block in the low nibble), `qs[128]` (16 bytes per sub-block
//! of 32, packed as in IQ4_NL). Sub-block `ib` has the 6-bit scale `ls`, and
//! its weights are `(d * (ls - 32)) * kvalues[q]`.

use super::block::{pack_nibbles, unpack_nibbles, write_d_qs, BlockFormat, Proposal, Row};
use super::codebook::{best_index_iq4, iq4_index, iq4_level, KVALUES_IQ4NL};
use super::rounding::{abs_max, nearest_int, read_f16, write_f16};
use super::scale_fit::GROUP_MAX_EPS;
use super::search::{single, Grid, TwoLevel};
use crate::ggml_type::GgmlType;

const NL_BLOCK: usize = Iq4Nl::QK;
const XS_BYTES: usize = Iq4Xs::BYTES;

const VALUES: &[i8; 16] = &KVALUES_IQ4NL;

/// Per-weight weights of ggml's IQ4 quantizer: `qw * sqrt(sigma2 + x^2)` with
/// an imatrix, else `x^2`. `sigma2` is `2 * mean(x^2)` over the super-block.
pub fn weights_into(x: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    match qw {
        Some(q) => {
            for ((wi, &xi), &qi) in w.iter_mut().zip(x).zip(q) {
                *wi = qi * (sigma2 + xi * xi).sqrt();
            }
        }
        None => {
            for (wi, &xi) in w.iter_mut().zip(x) {
                *wi = xi * xi;
            }
        }
    }
}

/// `sigma2` of `quantize_row_iq4_nl_impl` over a super-block.
pub fn sigma2(x: &[f32]) -> f32 {
    let s = x.iter().fold(0.0f32, |s, v| s + v * v);
    s * (2.0 / x.len() as f32)
}

/// ggml's per-32 scale search (`ntry` trial inverse scales each side).
/// Returns the scale, or 0 for an all-(near-)zero block.
#[inline(always)]
fn block_scale(xb: &[f32], weight: &[f32], ntry: i32) -> f32 {
    if ntry == 7 && xb.len() == NL_BLOCK {
        block_scale7(xb.try_into().unwrap(), weight.try_into().unwrap())
    } else {
        block_scale_scalar(xb, weight, ntry)
    }
}

/// `block_scale` for `ntry = 7`: the first estimate and the 15 trials run as
/// 16 lanes side by side, each summed in ggml's order, with the branch-free
/// `iq4_level` (equal to the table lookup).
#[inline(always)]
fn block_scale7(xb: &[f32; NL_BLOCK], weight: &[f32; NL_BLOCK]) -> f32 {
    let (amax, max) = abs_max(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = VALUES[0] as f32;
    let d0 = -max / v0;
    let mut ids = [0f32; 16];
    ids[0] = 1.0 / d0;
    for t in 0..15 {
        ids[t + 1] = (t as i32 - 7 + VALUES[0] as i32) as f32 / max;
    }
    let mut sqx = [0f32; 16];
    let mut sq2 = [0f32; 16];
    for j in 0..NL_BLOCK {
        let (xj, w) = (xb[j], weight[j]);
        for k in 0..16 {
            let q = iq4_level(ids[k] * xj);
            sqx[k] += w * q * xj;
            sq2[k] += w * q * q;
        }
    }
    let mut d = if sq2[0] > 0.0 { sqx[0] / sq2[0] } else { 0.0 };
    let mut best = d * sqx[0];
    for t in 1..16 {
        let (sumqx, sumq2) = (sqx[t], sq2[t]);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// ggml's per-32 scale search, scalar (any `ntry`).
fn block_scale_scalar(xb: &[f32], weight: &[f32], ntry: i32) -> f32 {
    let (amax, max) = abs_max(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = VALUES[0] as f32;
    let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for j in 0..xb.len() {
        let idx = best_index_iq4(id * xb[j]);
        let q = VALUES[idx] as f32;
        let w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for t in -ntry..=ntry {
        let id = (t + VALUES[0] as i32) as f32 / max;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..xb.len() {
            let q = VALUES[best_index_iq4(id * xb[j])] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// `quantize_iq4_nl` (ntry = 7, as `ggml_quantize_chunk` uses) for one block.
#[inline(always)]
pub fn nl_ref_block(x: &[f32], b: &mut [u8], qw: Option<&[f32]>) {
    let mut weight = [0f32; NL_BLOCK];
    let s2 = if qw.is_some() { sigma2(x) } else { 0.0 };
    weights_into(x, qw, s2, &mut weight);
    let mut l = [0u8; NL_BLOCK];
    let scale = block_scale(x, &weight, 7);
    write_f16(b, scale);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for j in 0..NL_BLOCK {
        l[j] = iq4_index(id * x[j]);
    }
    pack_nibbles(&l, &mut b[2..18]);
}

/// Sets the 6-bit scale `ls` (`0..=63`) of sub-block `ib` in an IQ4_XS block.
#[inline]
pub fn xs_set_scale(b: &mut [u8], ib: usize, ls: u8) {
    let mut h = u16::from_le_bytes([b[2], b[3]]);
    h &= !(3 << (2 * ib));
    h |= ((ls >> 4) as u16) << (2 * ib);
    b[2..4].copy_from_slice(&h.to_le_bytes());
    let s = &mut b[4 + ib / 2];
    if ib.is_multiple_of(2) {
        *s = (*s & 0xf0) | (ls & 0xf);
    } else {
        *s = (*s & 0x0f) | ((ls & 0xf) << 4);
    }
}

/// The 6-bit scale of sub-block `ib` of an IQ4_XS block.
#[inline]
pub fn xs_scale(b: &[u8], ib: usize) -> u8 {
    let h = u16::from_le_bytes([b[2], b[3]]);
    ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) | ((((h >> (2 * ib)) & 3) as u8) << 4)
}

/// `quantize_iq4_xs` (ntry = 7) for one super-block.
#[inline(always)]
pub fn xs_ref_block(x: &[f32], b: &mut [u8], qw: Option<&[f32]>) {
    let s2 = if qw.is_some() { sigma2(x) } else { 0.0 };
    let mut weight = [0f32; 32];
    let mut l = [0u8; 32];
    let mut scales = [0f32; 8];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        weights_into(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), s2, &mut weight);
        let d = block_scale(xb, &weight, 7);
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    b[..XS_BYTES].iter_mut().for_each(|v| *v = 0);
    let d = -max_scale / 32.0;
    write_f16(b, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for ib in 0..8 {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let xb = &x[32 * ib..32 * ib + 32];
        for j in 0..32 {
            l[j] = iq4_index(idl * xb[j]);
        }
        xs_set_scale(b, ib, (ls + 32) as u8);
        pack_nibbles(&l, &mut b[8 + 16 * ib..8 + 16 * ib + 16]);
    }
}

/// Search grid for both IQ4 formats.
const GRID: Grid = Grid {
    levels: &KVALUES_IQ4NL,
    uniform: false,
    lo: 0.6,
    hi: 1.4,
};

/// IQ4_XS two-level layout: fp16 `d`, 6-bit signed sub-scales, 32 per sub-block.
const XS_LAYOUT: TwoLevel = TwoLevel {
    grid: GRID,
    sub: 32,
    lmin: -32,
    lmax: 31,
    span: 9,
};

/// IQ4_NL as a block format.
pub struct Iq4Nl;

impl BlockFormat for Iq4Nl {
    const TYPE: GgmlType = GgmlType::Iq4Nl;
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut [u8], qw: Option<&[f32]>, _row: &Row) {
        nl_ref_block(x, b, qw)
    }

    /// Per-block scale search.
    #[inline(always)]
    fn search_block(p: &Proposal, cand: &mut [u8], _y: &mut [f32]) -> Option<f64> {
        single(p.x, p.w, &GRID).map(|s| write_d_qs(&s, cand))
    }

    /// `dequantize_row_iq4_nl`.
    #[inline(always)]
    fn dequantize_block(b: &[u8], y: &mut [f32]) {
        let d = read_f16(b);
        for (yi, q) in y.iter_mut().zip(unpack_nibbles(&b[2..18])) {
            *yi = d * VALUES[q as usize] as f32;
        }
    }
}

/// IQ4_XS as a block format.
pub struct Iq4Xs;

impl BlockFormat for Iq4Xs {
    const TYPE: GgmlType = GgmlType::Iq4Xs;
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut [u8], qw: Option<&[f32]>, _row: &Row) {
        xs_ref_block(x, b, qw)
    }

    /// Per-sub-block scale search, joint choice of `d` and the sub-scales,
    /// refit of `d`.
    #[inline(always)]
    fn search_block(p: &Proposal, cand: &mut [u8], _y: &mut [f32]) -> Option<f64> {
        let s = XS_LAYOUT.search(p.x, p.w)?;
        cand.iter_mut().for_each(|v| *v = 0);
        cand[..2].copy_from_slice(&s.d_bits.to_le_bytes());
        for ib in 0..8 {
            xs_set_scale(cand, ib, (s.l[ib] + 32) as u8);
            pack_nibbles(
                &s.q[32 * ib..32 * ib + 32],
                &mut cand[8 + 16 * ib..8 + 16 * ib + 16],
            );
        }
        Some(s.err)
    }

    /// `dequantize_row_iq4_xs`.
    #[inline(always)]
    fn dequantize_block(b: &[u8], y: &mut [f32]) {
        let d = read_f16(b);
        for ib in 0..8 {
            let dl = d * (xs_scale(b, ib) as i32 - 32) as f32;
            let q = unpack_nibbles(&b[8 + 16 * ib..8 + 16 * ib + 16]);
            for (yi, qi) in y[32 * ib..32 * ib + 32].iter_mut().zip(q) {
                *yi = dl * VALUES[qi as usize] as f32;
            }
        }
    }
}
