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

use super::codebook::{best_index_iq4, KVALUES_IQ4NL};
use super::rounding::{abs_max, nearest_int, read_f16, write_f16};
use super::scale_fit::GROUP_MAX_EPS;
use super::search::{row_weights, single, sq_err, Grid, TwoLevel};

pub const NL_BLOCK: usize = 32;
pub const NL_BYTES: usize = 18;
pub const XS_BLOCK: usize = 256;
pub const XS_BYTES: usize = 136;

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
/// Writes the levels for the first estimate into `l` and returns the scale,
/// or 0 for an all-(near-)zero block.
fn block_scale(xb: &[f32], weight: &[f32], l: &mut [u8], ntry: i32) -> f32 {
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
        l[j] = idx as u8;
        let q = VALUES[idx] as f32;
        let w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    // The 2*ntry+1 trials are independent: accumulate them side by side (each
    // in ggml's order), then pick the best in ggml's order.
    const MAXT: usize = 15;
    let nt = (2 * ntry + 1).clamp(0, MAXT as i32) as usize;
    let mut ids = [0f32; MAXT];
    for (t, id) in ids.iter_mut().enumerate().take(nt) {
        *id = (t as i32 - ntry + VALUES[0] as i32) as f32 / max;
    }
    let mut sqx = [0f32; MAXT];
    let mut sq2 = [0f32; MAXT];
    for j in 0..xb.len() {
        let (xj, w) = (xb[j], weight[j]);
        for t in 0..nt {
            let q = VALUES[best_index_iq4(ids[t] * xj)] as f32;
            sqx[t] += w * q * xj;
            sq2[t] += w * q * q;
        }
    }
    for t in 0..nt {
        let (sumqx, sumq2) = (sqx[t], sq2[t]);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Packs 32 indices into 16 bytes.
#[inline]
pub fn pack32(l: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
}

/// Unpacks the 32 indices of 16 bytes.
#[inline]
pub fn unpack32(qs: &[u8]) -> [u8; 32] {
    std::array::from_fn(|j| {
        if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        }
    })
}

/// `quantize_iq4_nl` (ntry = 7, as `ggml_quantize_chunk` uses) for one block.
pub fn nl_ref_block(x: &[f32], b: &mut [u8], qw: Option<&[f32]>) {
    let mut weight = [0f32; NL_BLOCK];
    let s2 = if qw.is_some() { sigma2(x) } else { 0.0 };
    weights_into(x, qw, s2, &mut weight);
    let mut l = [0u8; NL_BLOCK];
    let scale = block_scale(x, &weight, &mut l, 7);
    write_f16(b, scale);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for j in 0..NL_BLOCK {
        l[j] = best_index_iq4(id * x[j]) as u8;
    }
    pack32(&l, &mut b[2..18]);
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
        let d = block_scale(xb, &weight, &mut l, 7);
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
            l[j] = best_index_iq4(idl * xb[j]) as u8;
        }
        xs_set_scale(b, ib, (ls + 32) as u8);
        pack32(&l, &mut b[8 + 16 * ib..8 + 16 * ib + 16]);
    }
}

/// Row quantizer for `ggml_quantize_chunk(IQ4_NL, ..)`.
pub fn nl_quantize_row_ref(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    for (i, (xb, b)) in x
        .chunks_exact(NL_BLOCK)
        .zip(out.chunks_exact_mut(NL_BYTES))
        .enumerate()
    {
        nl_ref_block(
            xb,
            b,
            imatrix.map(|q| &q[NL_BLOCK * i..NL_BLOCK * i + NL_BLOCK]),
        );
    }
}

/// Row quantizer for `ggml_quantize_chunk(IQ4_XS, ..)`.
pub fn xs_quantize_row_ref(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    for (i, (xb, b)) in x
        .chunks_exact(XS_BLOCK)
        .zip(out.chunks_exact_mut(XS_BYTES))
        .enumerate()
    {
        xs_ref_block(
            xb,
            b,
            imatrix.map(|q| &q[XS_BLOCK * i..XS_BLOCK * i + XS_BLOCK]),
        );
    }
}

/// `dequantize_row_iq4_nl`.
pub fn nl_dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src
        .chunks_exact(NL_BYTES)
        .zip(dst.chunks_exact_mut(NL_BLOCK))
    {
        let d = read_f16(b);
        for (yi, q) in y.iter_mut().zip(unpack32(&b[2..18])) {
            *yi = d * VALUES[q as usize] as f32;
        }
    }
}

/// `dequantize_row_iq4_xs`.
pub fn xs_dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src
        .chunks_exact(XS_BYTES)
        .zip(dst.chunks_exact_mut(XS_BLOCK))
    {
        let d = read_f16(b);
        for ib in 0..8 {
            let dl = d * (xs_scale(b, ib) as i32 - 32) as f32;
            let q = unpack32(&b[8 + 16 * ib..8 + 16 * ib + 16]);
            for (yi, qi) in y[32 * ib..32 * ib + 32].iter_mut().zip(q) {
                *yi = dl * VALUES[qi as usize] as f32;
            }
        }
    }
}

/// Search grid for both IQ4 formats.
const GRID: Grid = Grid {
    levels: &KVALUES_IQ4NL,
    uniform: false,
    lo: 0.6,
    hi: 1.5,
};

/// Search row quantizer for IQ4_NL: exact per-block scale search, kept only
/// where it beats ggml's block (by weighted error).
pub fn nl_quantize_row_search(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    let w = row_weights(x, imatrix);
    let mut y = [0f32; NL_BLOCK];
    for (i, b) in out.chunks_exact_mut(NL_BYTES).enumerate() {
        let r = NL_BLOCK * i..NL_BLOCK * (i + 1);
        let (xb, wb) = (&x[r.clone()], &w[r.clone()]);
        nl_ref_block(xb, b, imatrix.map(|q| &q[r]));
        nl_dequantize(b, &mut y);
        let e_ref = sq_err(xb, wb, &y);
        if let Some(s) = single(xb, wb, &GRID) {
            if s.err < e_ref {
                b[..2].copy_from_slice(&s.d_bits.to_le_bytes());
                pack32(&s.q, &mut b[2..18]);
            }
        }
    }
}

/// IQ4_XS two-level layout: fp16 `d`, 6-bit signed sub-scales, 32 per sub-block.
const XS_LAYOUT: TwoLevel = TwoLevel {
    grid: GRID,
    sub: 32,
    lmin: -32,
    lmax: 31,
    span: 9,
};

/// Search row quantizer for IQ4_XS: exact per-sub-block scale search, joint
/// choice of `d` and the sub-scales, refit of `d`; kept only where it beats
/// ggml's super-block (by weighted error).
pub fn xs_quantize_row_search(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    let w = row_weights(x, imatrix);
    let mut y = [0f32; XS_BLOCK];
    for (i, b) in out.chunks_exact_mut(XS_BYTES).enumerate() {
        let r = XS_BLOCK * i..XS_BLOCK * (i + 1);
        let (xb, wb) = (&x[r.clone()], &w[r.clone()]);
        xs_ref_block(xb, b, imatrix.map(|q| &q[r]));
        xs_dequantize(b, &mut y);
        let e_ref = sq_err(xb, wb, &y);
        if let Some(s) = XS_LAYOUT.search(xb, wb) {
            if s.err < e_ref {
                b[..XS_BYTES].iter_mut().for_each(|v| *v = 0);
                b[..2].copy_from_slice(&s.d_bits.to_le_bytes());
                for ib in 0..8 {
                    xs_set_scale(b, ib, (s.l[ib] + 32) as u8);
                    pack32(
                        &s.q[32 * ib..32 * ib + 32],
                        &mut b[8 + 16 * ib..8 + 16 * ib + 16],
                    );
                }
            }
        }
    }
}
