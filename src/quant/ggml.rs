//! The types we do not quantize natively go through ggml itself (the llama.cpp
//! build that llama-cpp-sys-2 links): `ggml_quantize_chunk` to quantize and
//! the type's `to_float` to dequantize. The FFI edge of the quant module.

use crate::ggml_type::GgmlType;
use rayon::prelude::*;
use std::ffi::c_void;

/// Values per parallel `ggml_quantize_chunk` call (whole rows, at least one).
const CHUNK_VALUES: usize = 1 << 16;

/// Quantizes the rows of `src` (`n_per_row` each) into `out` with
/// `ggml_quantize_chunk`. The caller checked that `ty` is a type ggml
/// quantizes, that `n_per_row` is a whole number of its blocks, that `out`
/// has exactly the rows' bytes and that `imatrix` has `n_per_row` values.
pub(super) fn quantize(
    ty: GgmlType,
    src: &[f32],
    out: &mut [u8],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) {
    let row_bytes = out.len() / (src.len() / n_per_row);
    let rows_per_chunk = (CHUNK_VALUES / n_per_row).max(1);
    out.par_chunks_mut(row_bytes * rows_per_chunk)
        .zip(src.par_chunks(n_per_row * rows_per_chunk))
        .for_each(|(dst, rows)| {
            let nrows = rows.len() / n_per_row;
            let im = imatrix.map_or(std::ptr::null(), <[f32]>::as_ptr);
            // SAFETY: `rows` holds `nrows * n_per_row` floats and `dst` exactly
            // `nrows` rows of `ty` (`ggml_row_size(ty, n_per_row)` bytes each,
            // the same block layout as ours), `im` is null or has `n_per_row`
            // floats; ggml reads `rows`/`im` and writes only `dst` (start 0).
            // It runs `ggml_quantize_init` itself (serialised, idempotent).
            let written = unsafe {
                llama_cpp_sys_2::ggml_quantize_chunk(
                    ty.code(),
                    rows.as_ptr(),
                    dst.as_mut_ptr().cast::<c_void>(),
                    0,
                    nrows as i64,
                    n_per_row as i64,
                    im,
                )
            };
            debug_assert_eq!(written, dst.len());
        });
}

/// ggml's `to_float` for `ty` as a dequantizer of whole blocks, or None when
/// ggml has none for it.
pub(super) fn to_float(ty: GgmlType) -> Option<impl Fn(&[u8], &mut [f32]) + Sync> {
    let (bs, bb) = ty.block_layout()?;
    // SAFETY: ggml_get_type_traits indexes ggml's static traits table; `ty` is
    // a named ggml type (the caller passes only those), so the code is in range.
    let to_float = unsafe { (*llama_cpp_sys_2::ggml_get_type_traits(ty.code())).to_float }?;
    Some(move |src: &[u8], dst: &mut [f32]| {
        let n = (src.len() / bb * bs).min(dst.len() / bs * bs);
        // SAFETY: `src` holds at least the `n / bs` whole blocks of `ty` that
        // encode `n` values and `dst` has room for `n` floats; to_float reads
        // and writes only those.
        unsafe { to_float(src.as_ptr().cast::<c_void>(), dst.as_mut_ptr(), n as i64) };
    })
}
