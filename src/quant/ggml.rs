//! Types we do not quantize natively (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K):
//! ggml's own quantizer (`ggml_quantize_chunk`) and dequantizer (`to_float`)
//! through llama-cpp-sys-2. Both quantizer modes map to ggml's.

use super::GgmlType;
use std::ffi::c_void;

/// Whether ggml can quantize `ty` through `ggml_quantize_chunk` here.
pub fn quantizes(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q5K
    )
}

/// Whether ggml has a `to_float` for `ty` that we route to.
pub fn dequantizes(ty: GgmlType) -> bool {
    quantizes(ty) || ty == GgmlType::Q8K
}

/// `ggml_quantize_chunk(ty, ..)` over whole rows. `out` must hold exactly
/// `rows * row_bytes(n_per_row)`; `imatrix` is one weight per column.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    out: &mut [u8],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) {
    let nrows = src.len() / n_per_row;
    debug_assert_eq!(Some(out.len()), ty.row_bytes(n_per_row).map(|b| b * nrows));
    debug_assert!(imatrix.is_none_or(|m| m.len() == n_per_row));
    let im = imatrix.map_or(std::ptr::null(), |m| m.as_ptr());
    // SAFETY: `src` holds `nrows * n_per_row` floats and `out` exactly the
    // bytes of `nrows` rows of `ty` (checked by the caller, `quant::quantize`);
    // `im` is null or has `n_per_row` floats. ggml reads `src`/`im` and writes
    // only within `out`; the quantizer tables it needs are initialised by
    // `ggml_quantize_chunk` itself (it calls `ggml_quantize_init`).
    unsafe {
        llama_cpp_sys_2::ggml_quantize_chunk(
            ty.code(),
            src.as_ptr(),
            out.as_mut_ptr() as *mut c_void,
            0,
            nrows as i64,
            n_per_row as i64,
            im,
        );
    }
}

/// ggml's `to_float` for `ty`: `data` holds exactly the bytes of `out.len()`
/// values. Returns false when ggml has no converter for the type.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> bool {
    if !dequantizes(ty) || ty.row_bytes(out.len()) != Some(data.len()) {
        return false;
    }
    // SAFETY: `ty` is one of ggml's own types (listed above), for which
    // `ggml_get_type_traits` returns a pointer into its static table.
    let Some(to_float) = (unsafe { (*llama_cpp_sys_2::ggml_get_type_traits(ty.code())).to_float })
    else {
        return false;
    };
    // SAFETY: `data` holds exactly the bytes of `out.len()` values of `ty`
    // (checked above) and `out` has room for them; the function reads and
    // writes only those.
    unsafe { to_float(data.as_ptr() as *const c_void, out.as_mut_ptr(), out.len() as i64) };
    true
}
