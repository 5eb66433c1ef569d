//! Block quantization formats and quantizers, matching ggml's layouts.
//!
//! `quantize` turns f32 rows into the bytes of a ggml tensor type; `dequantize`
//! turns them back. Rows are processed in parallel.

/// Defines the row quantizer `pub fn $name(x, out, imatrix)` running `$imp`
/// (which, as its hot callees, must be `#[inline(always)]`), compiled for
/// AVX-512 or AVX2 when the CPU has it. Float results are the same either way (no FMA
/// contraction), so reference output stays byte-identical.
macro_rules! row_fn_avx2 {
    ($(#[$m:meta])* $name:ident => $imp:ident) => {
        $(#[$m])*
        pub fn $name(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
                fn avx512(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
                    $imp(x, out, imatrix)
                }
                #[target_feature(enable = "avx2")]
                fn avx2(x: &[f32], out: &mut [u8], imatrix: Option<&[f32]>) {
                    $imp(x, out, imatrix)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU supports these features.
                    return unsafe { avx512(x, out, imatrix) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2.
                    return unsafe { avx2(x, out, imatrix) };
                }
            }
            $imp(x, out, imatrix)
        }
    };
}

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

use crate::gguf::GgmlType;
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
    #[error("calibration statistics: {0}")]
    Hessian(String),
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
    let mut out = vec![0u8; row_bytes * (src.len() / n_per_row)];
    if ggml::quantizes(ty) {
        // ggml's quantizer over row groups, in parallel.
        let rows_per_job = (1 << 16) / n_per_row + 1;
        out.par_chunks_mut(row_bytes * rows_per_job)
            .zip(src.par_chunks(n_per_row * rows_per_job))
            .for_each(|(dst, rows)| ggml::quantize_rows(ty, rows, dst, n_per_row, imatrix));
        return Ok(out);
    }
    let row_fn = row_quantizer(ty, mode)?;
    out.par_chunks_mut(row_bytes)
        .zip(src.par_chunks(n_per_row))
        .for_each(|(dst, row)| row_fn(row, dst, imatrix));
    Ok(out)
}

type RowFn = fn(&[f32], &mut [u8], Option<&[f32]>);

fn row_quantizer(ty: GgmlType, mode: QuantMode) -> Result<RowFn, QuantError> {
    let search = mode == QuantMode::Search;
    Ok(match ty {
        GgmlType::F32 => simple::row_f32,
        GgmlType::F16 => simple::row_f16,
        GgmlType::Bf16 => simple::row_bf16,
        GgmlType::Q8_0 if search => simple::row_q8_0_search,
        GgmlType::Q8_0 => simple::row_q8_0,
        GgmlType::Q4_0 if search => q4_0::quantize_row_search,
        GgmlType::Q4_0 => q4_0::quantize_row_ref,
        GgmlType::Q4K if search => q4_k::quantize_row_search,
        GgmlType::Q4K => q4_k::quantize_row_ref,
        GgmlType::Q6K if search => q6_k::quantize_row_search,
        GgmlType::Q6K => q6_k::quantize_row_ref,
        GgmlType::Iq4Nl if search => iq4::nl_quantize_row_search,
        GgmlType::Iq4Nl => iq4::nl_quantize_row_ref,
        GgmlType::Iq4Xs if search => iq4::xs_quantize_row_search,
        GgmlType::Iq4Xs => iq4::xs_quantize_row_ref,
        other => return Err(QuantError::Unsupported(other)),
    })
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
    if ggml::dequantizes(ty) {
        let blocks_per_chunk = (4096 / bs).max(1);
        out.par_chunks_mut(bs * blocks_per_chunk)
            .zip(data.par_chunks(bb * blocks_per_chunk))
            .for_each(|(o, d)| {
                ggml::dequantize_into(ty, d, o);
            });
        return Ok(out);
    }
    let f = block_dequantizer(ty)?;
    // Parallel over chunks of whole blocks.
    let blocks_per_chunk = (4096 / bs).max(1);
    out.par_chunks_mut(bs * blocks_per_chunk)
        .zip(data.par_chunks(bb * blocks_per_chunk))
        .for_each(|(o, d)| f(d, o));
    Ok(out)
}

/// The dequantizer of whole blocks of `ty` (natively implemented types).
fn block_dequantizer(ty: GgmlType) -> Result<fn(&[u8], &mut [f32]), QuantError> {
    Ok(match ty {
        GgmlType::F32 => simple::deq_f32,
        GgmlType::F16 => simple::deq_f16,
        GgmlType::Bf16 => simple::deq_bf16,
        GgmlType::Q8_0 => simple::deq_q8_0,
        GgmlType::Q4_0 => q4_0::dequantize,
        GgmlType::Q4K => q4_k::dequantize,
        GgmlType::Q6K => q6_k::dequantize,
        GgmlType::Iq4Nl => iq4::nl_dequantize,
        GgmlType::Iq4Xs => iq4::xs_dequantize,
        other => return Err(QuantError::Unsupported(other)),
    })
}
