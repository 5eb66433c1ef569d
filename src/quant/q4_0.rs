//! Q4_0: blocks of 32 weights, 18 bytes each.
//!
//! Layout per block: `d: f16` (little-endian), then `qs[16]`: byte `j` holds
//! weight `j` in its low nibble and weight `j + 16` in its high nibble.
//! A nibble `q` dequantizes to `(q - 8) * d`.

use super::codebook::Q4_0_LEVELS;
use super::rounding::{read_f16, sum_sq, write_f16};
use super::scale_fit::make_qx_quants;
use super::search::{row_weights, single, sq_err, Grid};

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 18;

/// Packs 32 nibbles (already offset, `0..=15`) into `qs`.
#[inline]
pub fn pack(l: &[u8; QK], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
}

/// `quantize_row_q4_0_ref` for one block.
pub fn ref_block(x: &[f32], b: &mut [u8]) {
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
    write_f16(b, d);
    let mut l = [0u8; QK];
    for (lj, &v) in l.iter_mut().zip(x) {
        // ggml: MIN(15, (int8_t)(x*id + 8.5f)); truncation toward zero.
        *lj = ((v * id + 8.5) as i8).min(15) as u8;
    }
    pack(&l, &mut b[2..]);
}

/// Row quantizer for `ggml_quantize_chunk(Q4_0, ..)`: `quantize_row_q4_0_ref`
/// without an imatrix, `quantize_row_q4_0_impl` with one.
pub fn quantize_row_ref(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    let Some(qw) = imatrix else {
        for (xb, b) in x.chunks_exact(QK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
            ref_block(xb, b);
        }
        return;
    };
    let sigma2 = sum_sq(x) / x.len() as f32;
    let mut weight = [0f32; QK];
    let mut l = [0i8; QK];
    for ((xb, b), qwb) in x
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(BLOCK_BYTES))
        .zip(qw.chunks_exact(QK))
    {
        for j in 0..QK {
            weight[j] = qwb[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let d = make_qx_quants(xb, 8, &mut l, Some(&weight));
        write_f16(b, d);
        let lu: [u8; QK] = std::array::from_fn(|j| l[j] as u8);
        pack(&lu, &mut b[2..]);
    }
}

/// `dequantize_row_q4_0`.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(BLOCK_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(b);
        for j in 0..16 {
            let q = b[2 + j];
            y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

const GRID: Grid = Grid {
    levels: &Q4_0_LEVELS,
    uniform: true,
    lo: 0.6,
    hi: 1.6,
};

/// Search row quantizer for Q4_0: exact per-block scale search, kept only
/// where it beats ggml's block (by weighted error).
pub fn quantize_row_search(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    quantize_row_ref(x, out, imatrix);
    let w = row_weights(x, imatrix);
    let mut y = [0f32; QK];
    for (i, b) in out.chunks_exact_mut(BLOCK_BYTES).enumerate() {
        let r = QK * i..QK * (i + 1);
        let (xb, wb) = (&x[r.clone()], &w[r]);
        dequantize(b, &mut y);
        let e_ref = sq_err(xb, wb, &y);
        if let Some(s) = single(xb, wb, &GRID) {
            if s.err < e_ref {
                b[..2].copy_from_slice(&s.d_bits.to_le_bytes());
                pack(&s.q, &mut b[2..]);
            }
        }
    }
}
