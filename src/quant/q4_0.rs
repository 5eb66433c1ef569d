//! Q4_0: blocks of 32 weights, 18 bytes each.
//!
//! Layout per block (`BlockQ4_0`): `d: f16` (little-endian), then `qs[16]`:
//! byte `j` holds weight `j` in its low nibble and weight `j + 16` in its high
//! nibble. A nibble `q` dequantizes to `(q - 8) * d`.

use super::block::{pack_nibbles as pack, write_d_qs, BlockFormat, BlockNibbles32, Proposal, Row};
use super::codebook::Q4_0_LEVELS;
use super::rounding::{read_f16, write_f16};
use super::scale_fit::make_qx_quants;
use super::search::{single, Grid};
use crate::ggml_type::GgmlType;

const QK: usize = Q4_0::QK;

/// ggml's `block_q4_0`.
pub type BlockQ4_0 = BlockNibbles32;

/// `quantize_row_q4_0_ref` for one block.
pub fn ref_block(x: &[f32], b: &mut BlockQ4_0) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    write_f16(&mut b.d, d);
    let mut l = [0u8; QK];
    for (lj, &v) in l.iter_mut().zip(x) {
        // ggml: MIN(15, (int8_t)(x*id + 8.5f)); truncation toward zero.
        *lj = ((v * id + 8.5) as i8).min(15) as u8;
    }
    pack(&l, &mut b.qs);
}

/// Q4_0 as a block format.
pub struct Q4_0;

impl BlockFormat for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    type Block = BlockQ4_0;
    /// `quantize_row_q4_0_ref` without an imatrix, `quantize_row_q4_0_impl` with one.
    #[inline(always)]
    fn ref_block(x: &[f32], b: &mut BlockQ4_0, qw: Option<&[f32]>, row: &Row) {
        let Some(qw) = qw else {
            ref_block(x, b);
            return;
        };
        let sigma2 = row.mean_sq();
        let weight: [f32; QK] = std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt());
        let mut l = [0i8; QK];
        let d = make_qx_quants(x, 8, &mut l, Some(&weight));
        write_f16(&mut b.d, d);
        let lu: [u8; QK] = std::array::from_fn(|j| l[j] as u8);
        pack(&lu, &mut b.qs);
    }

    /// Per-block scale search.
    #[inline(always)]
    fn search_block(p: &Proposal<BlockQ4_0>, cand: &mut BlockQ4_0, _y: &mut [f32]) -> Option<f64> {
        single(p.x, p.w, &GRID).map(|s| write_d_qs(&s, cand))
    }

    /// `dequantize_row_q4_0`.
    #[inline(always)]
    fn dequantize_block(b: &BlockQ4_0, y: &mut [f32]) {
        let d = read_f16(&b.d);
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

const GRID: Grid = Grid {
    levels: &Q4_0_LEVELS,
    uniform: true,
    lo: 0.4,
    hi: 1.6,
};
