//! Q6_K: super-blocks of 256 weights, 210 bytes each.
//!
//! Layout per super-block (`BlockQ6K`): `ql[128]` (low 4 bits of each 6-bit
//! level), `qh[64]` (high 2 bits), `scales[16]` (signed 8-bit, one per
//! sub-block of 16), `d: f16`. Within each half of 128 weights, `ql[l]` holds
//! weights `l` (low nibble) and `l + 64` (high nibble), `ql[l + 32]` holds
//! `l + 32` and `l + 96`, and `qh[l]` holds the high bits of
//! `l, l+32, l+64, l+96` in bit pairs 0, 2, 4, 6. Weight value: `d * scales[j] * (q - 32)`.

use super::block::{BlockFormat, Proposal, Row};
use super::codebook::Q6_K_LEVELS;
use super::rounding::{nearest_int, read_f16, write_f16};
use super::scale_fit::{make_qx_quants, GROUP_MAX_EPS};
use super::search::{Grid, TwoLevel};
use crate::ggml_type::GgmlType;
use bytemuck::{Pod, Zeroable};

const QK: usize = Q6K::QK;

/// ggml's `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits of the levels.
    pub ql: [u8; QK / 2],
    /// High 2 bits of the levels.
    pub qh: [u8; QK / 4],
    /// Sub-block scales (one per 16 weights).
    pub scales: [i8; QK / 16],
    /// Super-block scale (f16).
    pub d: [u8; 2],
}

/// Packs 256 levels (`0..=63`) into `ql`/`qh` of `b`.
#[inline(always)]
pub fn pack_levels(l: &[u8; QK], b: &mut BlockQ6K) {
    let halves = l.as_chunks::<128>().0.iter();
    let ql = b.ql.as_chunks_mut::<64>().0.iter_mut();
    let qh = b.qh.as_chunks_mut::<32>().0.iter_mut();
    for ((lv, ql), qh) in halves.zip(ql).zip(qh) {
        for i in 0..32 {
            let (q1, q2, q3, q4) = (lv[i], lv[i + 32], lv[i + 64], lv[i + 96]);
            ql[i] = (q1 & 0xf) | ((q3 & 0xf) << 4);
            ql[i + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
            qh[i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

/// Unpacks the 256 levels (`0..=63`) of a super-block.
#[inline(always)]
pub fn unpack_levels(b: &BlockQ6K) -> [u8; QK] {
    let mut l = [0u8; QK];
    let halves = l.as_chunks_mut::<128>().0.iter_mut();
    let ql = b.ql.as_chunks::<64>().0.iter();
    let qh = b.qh.as_chunks::<32>().0.iter();
    for ((lv, ql), qh) in halves.zip(ql).zip(qh) {
        for i in 0..32 {
            lv[i] = (ql[i] & 0xf) | ((qh[i] & 3) << 4);
            lv[i + 32] = (ql[i + 32] & 0xf) | (((qh[i] >> 2) & 3) << 4);
            lv[i + 64] = (ql[i] >> 4) | (((qh[i] >> 4) & 3) << 4);
            lv[i + 96] = (ql[i + 32] >> 4) | (((qh[i] >> 6) & 3) << 4);
        }
    }
    l
}

/// `quantize_row_q6_K_ref` (qw = None) / `quantize_row_q6_K_impl` for one
/// super-block. Note ggml passes the raw importance values as the weights.
#[inline(always)]
pub fn ref_block(x: &[f32], b: &mut BlockQ6K, qw: Option<&[f32]>) {
    let mut l = [0i8; QK];
    let mut scales = [0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for (ib, sc) in scales.iter_mut().enumerate() {
        let r = 16 * ib..16 * ib + 16;
        let s = make_qx_quants(&x[r.clone()], 32, &mut l[r.clone()], qw.map(|w| &w[r]));
        *sc = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *b = BlockQ6K::zeroed();
        write_f16(&mut b.d, 0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = write_f16(&mut b.d, 1.0 / iscale);
    for (sc, &s) in b.scales.iter_mut().zip(&scales) {
        *sc = nearest_int(iscale * s).min(127) as i8;
    }
    for j in 0..16 {
        let dj = d * b.scales[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let v = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            l[16 * j + ii] = (v + 32) as i8;
        }
    }
    let lu: [u8; QK] = std::array::from_fn(|i| l[i] as u8);
    pack_levels(&lu, b);
}

/// Q6_K as a block format.
pub struct Q6K;

impl BlockFormat for Q6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    type Block = BlockQ6K;
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut BlockQ6K, qw: Option<&[f32]>, _row: &Row) {
        ref_block(x, b, qw)
    }

    /// Per-sub-block scale search, joint choice of `d` and the sub-scales.
    #[inline(always)]
    fn search_block(p: &Proposal<BlockQ6K>, cand: &mut BlockQ6K, _y: &mut [f32]) -> Option<f64> {
        let s = LAYOUT.search(p.x, p.w)?;
        cand.d = s.d_bits.to_le_bytes();
        for ib in 0..16 {
            cand.scales[ib] = s.l[ib] as i8;
        }
        pack_levels(&s.q, cand);
        Some(s.err)
    }

    /// `dequantize_row_q6_K`.
    #[inline(always)]
    fn dequantize_block(b: &BlockQ6K, y: &mut [f32]) {
        let d = read_f16(&b.d);
        let l = unpack_levels(b);
        for (i, (yi, li)) in y.iter_mut().zip(l).enumerate() {
            let sc = b.scales[i / 16];
            *yi = d * sc as f32 * (li as i32 - 32) as f32;
        }
    }
}

/// Q6_K two-level layout: fp16 `d`, signed 8-bit sub-scales, 16 per sub-block.
const LAYOUT: TwoLevel = TwoLevel {
    grid: Grid {
        levels: &Q6_K_LEVELS,
        uniform: true,
        lo: 0.6,
        hi: 1.4,
    },
    sub: 16,
    lmin: -128,
    lmax: 127,
    span: 12,
};
