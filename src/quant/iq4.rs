//! IQ4_NL and IQ4_XS: 4-bit indices into the non-linear grid `KVALUES_IQ4NL`.
//!
//! IQ4_NL block (`BlockIq4Nl`, 32 weights, 18 bytes): `d: f16`, `qs[16]`
//! (byte `j` holds weight `j` in the low nibble and `j + 16` in the high
//! nibble). Weight value: `d * kvalues[q]`.
//!
//! IQ4_XS super-block (`BlockIq4Xs`, 256 weights, 136 bytes): `d: f16`,
//! `scales_h: u16` (2 high bits of each sub-block scale), `scales_l[4]` (4 low
//! bits, two per byte, even sub-block in the low nibble), `qs[128]` (16 bytes
//! per sub-block of 32, packed as in IQ4_NL). Sub-block `ib` has the 6-bit
//! scale `ls`, and its weights are `(d * (ls - 32)) * kvalues[q]`.

use super::block::{
    pack_nibbles, unpack_nibbles, write_d_qs, BlockFormat, BlockNibbles32, Proposal, Row,
};
use super::codebook::{best_index_iq4, iq4_index, iq4_level, Iq4Window, KVALUES_IQ4NL};
use super::rounding::{abs_max, nearest_int, read_f16, write_f16};
use super::scale_fit::GROUP_MAX_EPS;
use super::search::{single, Grid, TwoLevel};
use crate::ggml_type::GgmlType;
use bytemuck::{Pod, Zeroable};

const NL_BLOCK: usize = Iq4Nl::QK;
const XS_QK: usize = Iq4Xs::QK;

/// ggml's `block_iq4_nl`.
pub type BlockIq4Nl = BlockNibbles32;

/// ggml's `block_iq4_xs`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq4Xs {
    /// Super-block scale (f16).
    pub d: [u8; 2],
    /// High 2 bits of the 8 sub-block scales (`u16`, little-endian).
    pub scales_h: [u8; 2],
    /// Low 4 bits of the sub-block scales, two per byte (even sub-block low).
    pub scales_l: [u8; XS_QK / 64],
    /// Grid indices, 16 bytes per sub-block of 32 (packed as in IQ4_NL).
    pub qs: [u8; XS_QK / 2],
}

impl BlockIq4Xs {
    /// Sets the 6-bit scale `ls` (`0..=63`) of sub-block `ib`.
    #[inline(always)]
    pub fn set_scale(&mut self, ib: usize, ls: u8) {
        let mut h = u16::from_le_bytes(self.scales_h);
        h &= !(3 << (2 * ib));
        h |= ((ls >> 4) as u16) << (2 * ib);
        self.scales_h = h.to_le_bytes();
        let s = &mut self.scales_l[ib / 2];
        if ib.is_multiple_of(2) {
            *s = (*s & 0xf0) | (ls & 0xf);
        } else {
            *s = (*s & 0x0f) | ((ls & 0xf) << 4);
        }
    }

    /// The 6-bit scale of sub-block `ib`.
    #[inline(always)]
    pub fn scale(&self, ib: usize) -> u8 {
        let h = u16::from_le_bytes(self.scales_h);
        ((self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) | ((((h >> (2 * ib)) & 3) as u8) << 4)
    }

    /// The packed indices as 8 sub-blocks of 16 bytes.
    #[inline(always)]
    pub fn sub_qs(&self) -> &[[u8; 16]; 8] {
        bytemuck::cast_ref(&self.qs)
    }

    /// `sub_qs`, mutable.
    #[inline(always)]
    pub fn sub_qs_mut(&mut self) -> &mut [[u8; 16]; 8] {
        bytemuck::cast_mut(&mut self.qs)
    }
}

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

/// `block_scale` for `ntry = 7`, equal to `block_scale_scalar` bit for bit:
/// the 15 trials run as lanes side by side, each summed in ggml's order.
///
/// Trial `t` maps weight `x` to `ids[t] * x`, and `ids` grows with `t`, so a
/// weight's 15 trial values lie between its first and last one, at most
/// `14 * |x / max|` apart, around `127 * |x / max|`. Grid midpoints are 11.5
/// or more apart, and further apart away from zero, so the span crosses at
/// most one of them: each lane's level is one comparison in an
/// [`Iq4Window`] instead of fifteen (the full comparison where it is not).
/// The full-comparison loop stays here rather than a call to
/// `block_scale_scalar`: inlining that call cost ~20 % of this function's
/// instructions (callgrind).
#[inline(always)]
fn block_scale7(xb: &[f32; NL_BLOCK], weight: &[f32; NL_BLOCK]) -> f32 {
    let (amax, max) = abs_max(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = VALUES[0] as f32;
    let id0 = 1.0 / (-max / v0);
    // 15 trials and one spare lane (a copy of the last) for whole vectors.
    let ids: [f32; 16] =
        std::array::from_fn(|t| (t.min(14) as i32 - 7 + VALUES[0] as i32) as f32 / max);
    // Per weight, vectorized over the block: the first estimate's level, the
    // span of the trial values and the grid index of its low end.
    let q0: [f32; NL_BLOCK] = std::array::from_fn(|j| iq4_level(id0 * xb[j]));
    let span: [(f32, f32); NL_BLOCK] = std::array::from_fn(|j| {
        let (a, b) = (ids[0] * xb[j], ids[14] * xb[j]);
        (a.min(b), a.max(b))
    });
    let il: [u8; NL_BLOCK] = std::array::from_fn(|j| iq4_index(span[j].0));
    let mut win = [Iq4Window::default(); NL_BLOCK];
    let mut windows = true;
    for j in 0..NL_BLOCK {
        let (lo, hi) = span[j];
        match Iq4Window::new(il[j], lo, hi) {
            Some(w) => win[j] = w,
            None => windows = false,
        }
    }
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    let mut sqx = [0f32; 16];
    let mut sq2 = [0f32; 16];
    for j in 0..NL_BLOCK {
        let (xj, w) = (xb[j], weight[j]);
        let q = q0[j];
        sumqx += w * q * xj;
        sumq2 += w * q * q;
        if windows {
            let win = win[j];
            for k in 0..16 {
                let q = win.level(ids[k] * xj);
                sqx[k] += w * q * xj;
                sq2[k] += w * q * q;
            }
        } else {
            for k in 0..16 {
                let q = iq4_level(ids[k] * xj);
                sqx[k] += w * q * xj;
                sq2[k] += w * q * q;
            }
        }
    }
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for t in 0..15 {
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
pub fn nl_ref_block(x: &[f32], b: &mut BlockIq4Nl, qw: Option<&[f32]>) {
    let mut weight = [0f32; NL_BLOCK];
    let s2 = if qw.is_some() { sigma2(x) } else { 0.0 };
    weights_into(x, qw, s2, &mut weight);
    let mut l = [0u8; NL_BLOCK];
    let scale = block_scale(x, &weight, 7);
    write_f16(&mut b.d, scale);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for j in 0..NL_BLOCK {
        l[j] = iq4_index(id * x[j]);
    }
    pack_nibbles(&l, &mut b.qs);
}

/// `quantize_iq4_xs` (ntry = 7) for one super-block.
#[inline(always)]
pub fn xs_ref_block(x: &[f32], b: &mut BlockIq4Xs, qw: Option<&[f32]>) {
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
    *b = BlockIq4Xs::zeroed();
    let d = -max_scale / 32.0;
    write_f16(&mut b.d, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for ib in 0..8 {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let xb = &x[32 * ib..32 * ib + 32];
        for j in 0..32 {
            l[j] = iq4_index(idl * xb[j]);
        }
        b.set_scale(ib, (ls + 32) as u8);
        pack_nibbles(&l, &mut b.sub_qs_mut()[ib]);
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
    type Block = BlockIq4Nl;
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut BlockIq4Nl, qw: Option<&[f32]>, _row: &Row) {
        nl_ref_block(x, b, qw)
    }

    /// Per-block scale search.
    #[inline(always)]
    fn search_block(
        p: &Proposal<BlockIq4Nl>,
        cand: &mut BlockIq4Nl,
        _y: &mut [f32],
    ) -> Option<f64> {
        single(p.x, p.w, &GRID).map(|s| write_d_qs(&s, cand))
    }

    /// `dequantize_row_iq4_nl`.
    #[inline(always)]
    fn dequantize_block(b: &BlockIq4Nl, y: &mut [f32]) {
        let d = read_f16(&b.d);
        for (yi, q) in y.iter_mut().zip(unpack_nibbles(&b.qs)) {
            *yi = d * VALUES[q as usize] as f32;
        }
    }
}

/// IQ4_XS as a block format.
pub struct Iq4Xs;

impl BlockFormat for Iq4Xs {
    const TYPE: GgmlType = GgmlType::Iq4Xs;
    type Block = BlockIq4Xs;
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut BlockIq4Xs, qw: Option<&[f32]>, _row: &Row) {
        xs_ref_block(x, b, qw)
    }

    /// Per-sub-block scale search, joint choice of `d` and the sub-scales,
    /// refit of `d`.
    #[inline(always)]
    fn search_block(
        p: &Proposal<BlockIq4Xs>,
        cand: &mut BlockIq4Xs,
        _y: &mut [f32],
    ) -> Option<f64> {
        let s = XS_LAYOUT.search(p.x, p.w)?;
        *cand = BlockIq4Xs::zeroed();
        cand.d = s.d_bits.to_le_bytes();
        let q: &[[u8; 32]; 8] = bytemuck::cast_ref(&s.q);
        for (ib, q) in q.iter().enumerate() {
            cand.set_scale(ib, (s.l[ib] + 32) as u8);
            pack_nibbles(q, &mut cand.sub_qs_mut()[ib]);
        }
        Some(s.err)
    }

    /// `dequantize_row_iq4_xs`.
    #[inline(always)]
    fn dequantize_block(b: &BlockIq4Xs, y: &mut [f32]) {
        let d = read_f16(&b.d);
        for (ib, qs) in b.sub_qs().iter().enumerate() {
            let dl = d * (b.scale(ib) as i32 - 32) as f32;
            let q = unpack_nibbles(qs);
            for (yi, qi) in y[32 * ib..32 * ib + 32].iter_mut().zip(q) {
                *yi = dl * VALUES[qi as usize] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codebook::IQ4_MID;
    use super::*;

    /// Reproducible draws from the synthetic-checkpoint generator's splitmix64.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            crate::synth::splitmix(&mut self.0)
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Blocks from several families, including ones that put trial values on
    /// grid midpoints, huge and tiny magnitudes, zeros, infinities and NaN.
    fn block(rng: &mut Rng, family: u64) -> [f32; NL_BLOCK] {
        std::array::from_fn(|_| {
            let u = rng.unit() * 2.0 - 1.0;
            match family % 8 {
                0 => u,
                1 => u * u * u * 1e4,
                2 => (u * 16.0).round() / 16.0,
                3 => IQ4_MID[(rng.next() % 15) as usize] / 127.0 * u.signum(),
                4 => u * 1e-30,
                5 => {
                    if rng.next().is_multiple_of(8) {
                        0.0
                    } else {
                        u
                    }
                }
                6 => [u, f32::INFINITY, -f32::INFINITY, f32::NAN, 1e38][(rng.next() % 5) as usize],
                _ => (u * 127.0).round(),
            }
        })
    }

    #[test]
    fn lanes_with_windows_equal_ggml_scalar_search() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for n in 0..200_000u64 {
            let x = block(&mut rng, n);
            for imatrix in [false, true] {
                let mut w = [0f32; NL_BLOCK];
                if imatrix {
                    let qw: [f32; NL_BLOCK] = std::array::from_fn(|_| rng.unit() + 0.01);
                    weights_into(&x, Some(&qw), sigma2(&x), &mut w);
                } else {
                    weights_into(&x, None, 0.0, &mut w);
                }
                let fast = block_scale7(&x, &w);
                let slow = block_scale_scalar(&x, &w, 7);
                assert_eq!(
                    fast.to_bits(),
                    slow.to_bits(),
                    "block {n} (imatrix {imatrix}): {x:?}"
                );
            }
        }
    }
}
