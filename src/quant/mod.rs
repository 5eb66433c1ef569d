//! Block quantization formats and quantizers, matching ggml's layouts.
//!
//! `quantize` turns f32 rows into the bytes of a ggml tensor type; `dequantize`
//! turns them back. Rows are processed in parallel.

mod block;
mod codebook;
mod ggml;
pub mod gptq;
pub mod imatrix;
mod iq4;
mod q4_0;
mod q4_k;
mod q6_k;
mod rounding;
mod scale_fit;
mod search;
mod simple;

use crate::ggml_type::GgmlType;
use crate::gguf::{GgufFile, TensorInfo};
pub use imatrix::Imatrix;
use rayon::prelude::*;

/// How blocks are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMode {
    /// Byte-identical to ggml's reference quantizers (`ggml_quantize_chunk`).
    Reference,
    /// Better error at the same size (falls back to reference where a type has no search).
    #[default]
    Search,
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("calibration statistics: {0}")]
    Hessian(String),
    #[error(
        "{ty} cannot hold rows of {n_per_row} values (row length must be a multiple of {block})"
    )]
    RowLength {
        ty: GgmlType,
        n_per_row: usize,
        block: usize,
    },
    #[error("{0} is not supported for quantization")]
    Unsupported(GgmlType),
    #[error("data length {len} is not a whole number of rows of {n_per_row}")]
    Shape { len: usize, n_per_row: usize },
    #[error("importance matrix has {got} values, expected {expected} (one per column)")]
    Imatrix { got: usize, expected: usize },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad imatrix file {path}: {msg}")]
    ImatrixFile { path: String, msg: String },
    #[error("byte length {got} does not match {expected} for {ty}")]
    Bytes {
        ty: GgmlType,
        got: usize,
        expected: usize,
    },
}

/// Quantize `src` (rows of `n_per_row`) to `ty`.
/// `imatrix` holds one importance weight per column when given.
pub fn quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    mode: QuantMode,
) -> Result<Vec<u8>, QuantError> {
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) {
        return Err(QuantError::Shape {
            len: src.len(),
            n_per_row,
        });
    }
    let row_bytes = ty.row_bytes(n_per_row).ok_or(QuantError::RowLength {
        ty,
        n_per_row,
        block: ty.block_size(),
    })?;
    if let Some(im) = imatrix {
        if im.len() != n_per_row {
            return Err(QuantError::Imatrix {
                got: im.len(),
                expected: n_per_row,
            });
        }
    }
    let rows = src.len() / n_per_row;
    let mut out = vec![0u8; row_bytes * rows];
    let row_fn = match codec(ty).ok_or(QuantError::Unsupported(ty))? {
        Codec::Native {
            reference, search, ..
        } => match mode {
            QuantMode::Reference => reference,
            QuantMode::Search => search,
        },
        // ggml has one quantizer per type: both modes use it.
        Codec::Ggml => {
            ggml::quantize(ty, src, &mut out, n_per_row, imatrix);
            return Ok(out);
        }
    };
    out.par_chunks_mut(row_bytes)
        .zip(src.par_chunks(n_per_row))
        .for_each(|(dst, row)| row_fn(row, dst, imatrix));
    Ok(out)
}

type RowFn = fn(&[f32], &mut [u8], Option<&[f32]>);
type DeqFn = fn(&[u8], &mut [f32]);

/// How one type is quantized and dequantized.
#[derive(Clone, Copy)]
enum Codec {
    /// Rust row quantizers (ggml's reference and the search) and dequantizer.
    Native {
        reference: RowFn,
        search: RowFn,
        dequantize: DeqFn,
    },
    /// ggml's own `ggml_quantize_chunk` and `to_float`.
    Ggml,
}

/// The codec of each type we quantize: the one place that maps types to code.
fn codec(ty: GgmlType) -> Option<Codec> {
    use GgmlType as T;
    Some(match ty {
        T::F32 => plain(simple::row_f32, simple::deq_f32),
        T::F16 => plain(simple::row_f16, simple::deq_f16),
        T::Bf16 => plain(simple::row_bf16, simple::deq_bf16),
        T::Q8_0 => native::<simple::Q8_0>(),
        T::Q4_0 => native::<q4_0::Q4_0>(),
        T::Q4K => native::<q4_k::Q4K>(),
        T::Q6K => native::<q6_k::Q6K>(),
        T::Iq4Nl => native::<iq4::Iq4Nl>(),
        T::Iq4Xs => native::<iq4::Iq4Xs>(),
        T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q2K | T::Q3K | T::Q5K => Codec::Ggml,
        // Q8_K has neither a ggml quantizer nor a `to_float`.
        T::Q8K | T::Other(_) => return None,
    })
}

/// The native row quantizer for `mode` and the dequantizer of `ty`, for
/// quantizers that work one block at a time (error feedback); None for types
/// quantized through ggml.
fn native_block_codec(ty: GgmlType, mode: QuantMode) -> Option<(RowFn, DeqFn)> {
    match codec(ty)? {
        Codec::Native {
            reference,
            search,
            dequantize,
        } => Some((
            match mode {
                QuantMode::Reference => reference,
                QuantMode::Search => search,
            },
            dequantize,
        )),
        Codec::Ggml => None,
    }
}

/// A type without a search: both modes write the same rows.
fn plain(row: RowFn, dequantize: DeqFn) -> Codec {
    Codec::Native {
        reference: row,
        search: row,
        dequantize,
    }
}

fn native<F: block::BlockFormat>() -> Codec {
    Codec::Native {
        reference: block::quantize_row::<F, false>,
        search: block::quantize_row::<F, true>,
        dequantize: block::dequantize_blocks::<F>,
    }
}

/// Dequantize `n` values of type `ty` from `data`.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    let expected = ty.row_bytes(n).ok_or(QuantError::RowLength {
        ty,
        n_per_row: n,
        block: ty.block_size(),
    })?;
    if data.len() != expected {
        return Err(QuantError::Bytes {
            ty,
            got: data.len(),
            expected,
        });
    }
    let mut out = vec![0f32; n];
    let (bs, bb) = ty.block_layout().ok_or(QuantError::Unsupported(ty))?;
    let (native, via_ggml);
    let f: &(dyn Fn(&[u8], &mut [f32]) + Sync) = match codec(ty) {
        Some(Codec::Native { dequantize, .. }) => {
            native = dequantize;
            &native
        }
        Some(Codec::Ggml) => {
            via_ggml = ggml::to_float(ty).ok_or(QuantError::Unsupported(ty))?;
            &via_ggml
        }
        None => return Err(QuantError::Unsupported(ty)),
    };
    // Parallel over chunks of whole blocks.
    let blocks_per_chunk = (4096 / bs).max(1);
    out.par_chunks_mut(bs * blocks_per_chunk)
        .zip(data.par_chunks(bb * blocks_per_chunk))
        .for_each(|(o, d)| f(d, o));
    Ok(out)
}

/// A GGUF tensor converted to f32 (any type `dequantize` reads).
pub fn dequantize_tensor(file: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>, QuantError> {
    dequantize(t.ty, file.tensor_data(t), t.n_elements() as usize)
}
