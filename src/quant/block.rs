//! The block formats quantized natively, and the one row driver they share:
//! ggml's reference block, then (search mode) the format's search proposals,
//! keeping whichever block has the lowest weighted error.
//!
//! Each format works on its typed block (`BlockFormat::Block`, a `#[repr(C)]`
//! struct of byte arrays laid out as ggml's `block_*`); only the driver here
//! views the byte buffers as blocks (through `bytemuck`, in safe code).

use super::rounding::sum_sq;
use super::search::{row_weights, sq_err, Single};
use crate::ggml_type::GgmlType;
use bytemuck::{Pod, Zeroable};
use std::cell::Cell;

/// Largest block (weights) of a native format.
const MAX_QK: usize = 256;

/// The block layout of a type that has one (checked at compile time).
const fn layout(t: GgmlType) -> (usize, usize) {
    match t.block_layout() {
        Some(l) => l,
        None => panic!("a block format's type has a block layout"),
    }
}

/// The whole row a block belongs to, for reference quantizers that look
/// beyond the block (Q4_0 weighs its importance by the row's mean square).
pub struct Row<'a> {
    x: &'a [f32],
    mean_sq: Cell<Option<f32>>,
}

impl Row<'_> {
    /// Mean square of the row, summed in order as ggml does (computed once).
    #[inline(always)]
    pub fn mean_sq(&self) -> f32 {
        if let Some(v) = self.mean_sq.get() {
            return v;
        }
        let v = sum_sq(self.x) / self.x.len() as f32;
        self.mean_sq.set(Some(v));
        v
    }
}

/// What a search proposal sees: the block's weights `x`, the search weights
/// `w`, the best encoding so far, and which proposal (`step`) is asked for.
pub struct Proposal<'a, B> {
    pub step: usize,
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub best: &'a B,
}

/// A ggml block format with a Rust quantizer and dequantizer.
///
/// Hot methods are `#[inline(always)]` in the implementations (and so are
/// their hot callees) so that they compile into the AVX2/AVX-512 versions of
/// the row driver.
pub trait BlockFormat {
    /// The ggml type this format encodes.
    const TYPE: GgmlType;
    /// Weights per block (from the type table).
    const QK: usize = layout(Self::TYPE).0;
    /// Bytes per block (from the type table).
    const BYTES: usize = layout(Self::TYPE).1;
    /// How many search proposals follow the reference block (see `search_block`).
    const SEARCH_STEPS: usize = 1;
    /// One block as ggml lays it out: `#[repr(C)]`, byte-array fields only
    /// (alignment 1), `BYTES` long (checked where blocks are viewed).
    type Block: Pod;

    /// ggml's reference quantizer (`ggml_quantize_chunk`) for one block;
    /// `qw` is the block's slice of the importance vector.
    fn ref_block(x: &[f32], b: &mut Self::Block, qw: Option<&[f32]>, row: &Row);

    /// Search proposal `p.step` for a block: writes a whole candidate block to
    /// `cand` and returns its weighted error, or None to end the search.
    /// `y` is scratch of `QK` floats.
    fn search_block(
        p: &Proposal<Self::Block>,
        cand: &mut Self::Block,
        y: &mut [f32],
    ) -> Option<f64>;

    /// Whether the search goes on after proposal `step` did not beat the best
    /// block (by default it stops).
    #[inline(always)]
    fn continue_after_miss(_step: usize) -> bool {
        false
    }

    /// ggml's `to_float` for one block.
    fn dequantize_block(b: &Self::Block, y: &mut [f32]);

    /// Weighted squared error of block `b` against `x` (`y`: scratch of `QK`).
    #[inline(always)]
    fn error(x: &[f32], w: &[f32], b: &Self::Block, y: &mut [f32]) -> f64 {
        Self::dequantize_block(b, y);
        sq_err(x, w, y)
    }
}

/// Quantizes one row to format `F`: reference blocks, and with `SEARCH` the
/// better of each reference block and the search proposals. Compiled for
/// AVX-512 or AVX2 when the CPU has it; float results are the same either way
/// (no FMA contraction), so reference output stays byte-identical.
pub fn quantize_row<F: BlockFormat, const SEARCH: bool>(
    x: &[f32],
    out: &mut [u8],
    imatrix: Option<&[f32]>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
        fn avx512<F: BlockFormat, const S: bool>(x: &[f32], out: &mut [u8], im: Option<&[f32]>) {
            drive::<F, S>(x, out, im)
        }
        #[target_feature(enable = "avx2")]
        fn avx2<F: BlockFormat, const S: bool>(x: &[f32], out: &mut [u8], im: Option<&[f32]>) {
            drive::<F, S>(x, out, im)
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU supports these features.
            return unsafe { avx512::<F, SEARCH>(x, out, imatrix) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            return unsafe { avx2::<F, SEARCH>(x, out, imatrix) };
        }
    }
    drive::<F, SEARCH>(x, out, imatrix)
}

/// `bytes` as blocks of format `F` (whole blocks; a partial tail is left out).
/// The one place byte buffers become typed blocks.
#[inline(always)]
fn blocks<F: BlockFormat>(bytes: &[u8]) -> impl Iterator<Item = &F::Block> {
    const { assert!(size_of::<F::Block>() == F::BYTES) };
    bytes.chunks_exact(F::BYTES).map(bytemuck::from_bytes)
}

/// `blocks`, mutable.
#[inline(always)]
fn blocks_mut<F: BlockFormat>(bytes: &mut [u8]) -> impl Iterator<Item = &mut F::Block> {
    const { assert!(size_of::<F::Block>() == F::BYTES) };
    bytes
        .chunks_exact_mut(F::BYTES)
        .map(bytemuck::from_bytes_mut)
}

#[inline(always)]
fn drive<F: BlockFormat, const SEARCH: bool>(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
    const { assert!(F::QK <= MAX_QK) };
    let row = Row {
        x,
        mean_sq: Cell::new(None),
    };
    let w = if SEARCH {
        row_weights(x, imatrix)
    } else {
        Vec::new()
    };
    let mut y = [0f32; MAX_QK];
    let y = &mut y[..F::QK];
    let mut cand = F::Block::zeroed();
    for (i, (xb, b)) in x.chunks_exact(F::QK).zip(blocks_mut::<F>(out)).enumerate() {
        let r = F::QK * i..F::QK * (i + 1);
        F::ref_block(xb, b, imatrix.map(|q| &q[r.clone()]), &row);
        if !SEARCH {
            continue;
        }
        let wb = &w[r];
        let mut best = F::error(xb, wb, b, y);
        for step in 0..F::SEARCH_STEPS {
            let p = Proposal {
                step,
                x: xb,
                w: wb,
                best: &*b,
            };
            let Some(e) = F::search_block(&p, &mut cand, y) else {
                break;
            };
            if e < best {
                best = e;
                *b = cand;
            } else if !F::continue_after_miss(step) {
                break;
            }
        }
    }
}

/// Dequantizes whole blocks of format `F`.
pub fn dequantize_blocks<F: BlockFormat>(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<F>(src).zip(dst.chunks_exact_mut(F::QK)) {
        F::dequantize_block(b, y);
    }
}

/// Packs 32 4-bit values into 16 bytes as ggml's 32-weight blocks do: byte
/// `j` holds value `j` in its low nibble and value `j + 16` in its high nibble.
#[inline(always)]
pub fn pack_nibbles(l: &[u8; 32], qs: &mut [u8; 16]) {
    for j in 0..16 {
        qs[j] = l[j] | (l[j + 16] << 4);
    }
}

/// The 32 values packed by `pack_nibbles`.
#[inline(always)]
pub fn unpack_nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|j| {
        if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        }
    })
}

/// A 32-weight block of one f16 scale and 32 packed 4-bit values: the
/// layout of ggml's `block_q4_0` (nibbles are levels around 8) and
/// `block_iq4_nl` (nibbles index the IQ4 grid).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockNibbles32 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Weight `j` in the low nibble of byte `j`, weight `j + 16` in the high one.
    pub qs: [u8; 16],
}

/// Writes a single-scale search result into a [`BlockNibbles32`] and
/// returns its error.
#[inline(always)]
pub fn write_d_qs(s: &Single, b: &mut BlockNibbles32) -> f64 {
    b.d = s.d_bits.to_le_bytes();
    pack_nibbles(&s.q, &mut b.qs);
    s.err
}
