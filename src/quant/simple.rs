//! Plain float types and Q8_0.

use super::block::{BlockFormat, Proposal, Row};
use super::rounding::read_f16;
use crate::ggml_type::GgmlType;
use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

pub fn row_f32(src: &[f32], dst: &mut [u8], _im: Option<&[f32]>) {
    for (d, v) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

pub fn row_f16(src: &[f32], dst: &mut [u8], _im: Option<&[f32]>) {
    for (d, v) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
    }
}

/// ggml_compute_fp32_to_bf16: round to nearest even; NaN made quiet.
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

pub fn row_bf16(src: &[f32], dst: &mut [u8], _im: Option<&[f32]>) {
    for (d, v) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
    }
}

pub fn deq_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

pub fn deq_f16(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

pub fn deq_bf16(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

/// ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Signed 8-bit levels.
    pub qs: [i8; 32],
}

/// Q8_0 (blocks of 32: `d: f16`, `qs: [i8; 32]`) as a block format. Search
/// proposals: weighted least-squares refits of `d` (levels re-derived each time).
pub struct Q8_0;

impl BlockFormat for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const SEARCH_STEPS: usize = 2;
    type Block = BlockQ8_0;
    /// `quantize_row_q8_0_ref` (ggml ignores the imatrix for Q8_0).
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut BlockQ8_0, _qw: Option<&[f32]>, _row: &Row) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d).to_le_bytes();
        for (q, v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }

    #[inline(always)]
    fn search_block(p: &Proposal<BlockQ8_0>, cand: &mut BlockQ8_0, y: &mut [f32]) -> Option<f64> {
        let (x, w) = (p.x, p.w);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for j in 0..32 {
            let q = p.best.qs[j] as f64;
            s1 += w[j] as f64 * x[j] as f64 * q;
            s2 += w[j] as f64 * q * q;
        }
        if s2.is_nan() || s2 <= 0.0 {
            return None;
        }
        let d = f16::from_f32((s1 / s2) as f32);
        let dv = d.to_f32();
        if !dv.is_finite() || dv == 0.0 {
            return None;
        }
        cand.d = d.to_le_bytes();
        for (q, &xj) in cand.qs.iter_mut().zip(x) {
            *q = (xj / dv).round().clamp(-128.0, 127.0) as i8;
        }
        Some(Self::error(x, w, cand, y))
    }

    /// `dequantize_row_q8_0`.
    #[inline(always)]
    fn dequantize_block(b: &BlockQ8_0, y: &mut [f32]) {
        let d = read_f16(&b.d);
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}
