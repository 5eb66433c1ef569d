//! Keeping CPU weights out of llama.cpp's AMX buffers.
//!
//! On CPUs with Intel AMX (Sapphire Rapids and later) ggml picks its
//! `sapphirerapids` CPU variant and, by default, repacks the weights that run
//! on the CPU into an "AMX" buffer so that its tile kernels multiply them. In
//! the pinned llama.cpp (b11434) that path dies with SIGILL on the first
//! `tileloadd` (measured on the H200 hosts: `tinygemm_kernel_amx<block_q8_0>`,
//! `benches/results/2026-11-29-h200x2/sigill.txt`; upstream's fix loads a tile
//! configuration the compiler may otherwise drop and requests the tile-data
//! permission per thread). Until the pin moves, every model load here keeps
//! CPU weights in plain CPU buffers when an AMX buffer type exists: the
//! variant's AVX-512 kernels still run them. GPU-offloaded layers are not
//! touched.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use llama_cpp_sys_2 as sys;

/// Whether the loaded CPU backend offers llama.cpp's AMX weight buffer (call
/// after the backends are loaded).
pub fn amx_buffer_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: plain queries of ggml's backend registry; every pointer is
        // checked for null before use, the extra-buffer list is
        // NULL-terminated (ggml's contract for this entry point) and owned by
        // the backend for the life of the process, and buffer-type names are
        // NUL-terminated static strings.
        unsafe {
            let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
            if dev.is_null() {
                return false;
            }
            let reg = sys::ggml_backend_dev_backend_reg(dev);
            if reg.is_null() {
                return false;
            }
            let f = sys::ggml_backend_reg_get_proc_address(
                reg,
                c"ggml_backend_dev_get_extra_bufts".as_ptr(),
            );
            if f.is_null() {
                return false;
            }
            let get: unsafe extern "C" fn(
                sys::ggml_backend_dev_t,
            ) -> *mut sys::ggml_backend_buffer_type_t = std::mem::transmute(f);
            let mut p = get(dev);
            if p.is_null() {
                return false;
            }
            while !(*p).is_null() {
                let name = sys::ggml_backend_buft_name(*p);
                if !name.is_null() && CStr::from_ptr(name).to_bytes() == b"AMX" {
                    return true;
                }
                p = p.add(1);
            }
            false
        }
    })
}

/// The tensor-name pattern (llama.cpp's buffer-type override, a regex searched
/// in each name) of the weights llama.cpp keeps on the CPU for a model of
/// `n_layer` blocks with `n_gpu_layers` offloaded (`gpu`: a GPU backend takes
/// them): llama.cpp offloads the last layers, then the output layer.
/// `None` when no weight the AMX kernels could take stays on the CPU.
pub fn cpu_weights_pattern(n_layer: u32, n_gpu_layers: u32, gpu: bool) -> Option<CString> {
    let offloaded = if gpu { n_gpu_layers } else { 0 };
    if offloaded == 0 {
        return CString::new(".").ok();
    }
    // Layers before this index run on the CPU; index n_layer is the output.
    let first_gpu = (n_layer + 1).saturating_sub(offloaded);
    if first_gpu == 0 {
        return None;
    }
    let blocks: Vec<String> = (0..first_gpu.min(n_layer)).map(|i| i.to_string()).collect();
    let mut alts = Vec::new();
    if !blocks.is_empty() {
        alts.push(format!("^blk\\.({})\\.", blocks.join("|")));
    }
    if first_gpu > n_layer {
        alts.push("^output\\.".to_string());
    }
    CString::new(alts.join("|")).ok()
}

/// The block count of a GGUF model (`{arch}.block_count`), read with
/// llama.cpp's own GGUF reader; None when the file does not say.
pub fn gguf_block_count(path: &std::path::Path) -> Option<u32> {
    let g = llama_cpp_2::gguf::GgufContext::from_file(path)?;
    let arch_idx = g.find_key("general.architecture");
    if arch_idx < 0 {
        return None;
    }
    let arch = g.val_str(arch_idx)?.to_string();
    let idx = g.find_key(&format!("{arch}.block_count"));
    (idx >= 0).then(|| g.val_u32(idx))
}

/// Adds the override that keeps CPU weights out of AMX buffers to `params`
/// when this CPU offers them; returns the pattern, which must outlive the
/// model load (llama.cpp keeps the pointer until then).
pub fn keep_cpu_weights_plain(
    params: std::pin::Pin<&mut llama_cpp_2::model::params::LlamaModelParams>,
    path: &std::path::Path,
    n_gpu_layers: u32,
    gpu: bool,
) -> Option<CString> {
    if !amx_buffer_present() {
        return None;
    }
    let n_layer = if gpu && n_gpu_layers > 0 {
        gguf_block_count(path)?
    } else {
        0
    };
    let pattern = cpu_weights_pattern(n_layer, n_gpu_layers, gpu)?;
    tracing::info!(
        pattern = %pattern.to_string_lossy(),
        "AMX weight repacking off: the pinned llama.cpp's AMX kernels fault (SIGILL); \
         CPU weights use the AVX-512 kernels"
    );
    params.add_cpu_buft_override(&pattern);
    Some(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(n_layer: u32, ngl: u32, gpu: bool) -> Option<String> {
        cpu_weights_pattern(n_layer, ngl, gpu).map(|c| c.to_string_lossy().into_owned())
    }

    #[test]
    fn everything_on_the_cpu_without_offload() {
        assert_eq!(pat(32, 0, true).as_deref(), Some("."));
        assert_eq!(pat(32, u32::MAX, false).as_deref(), Some("."));
    }

    #[test]
    fn nothing_on_the_cpu_with_full_offload() {
        assert_eq!(pat(32, 33, true), None);
        assert_eq!(pat(32, u32::MAX, true), None);
    }

    #[test]
    fn partial_offload_names_the_cpu_blocks_and_the_output() {
        // llama.cpp counts the output as layer n_layer and offloads from the
        // end: with 4 blocks and 2 offloaded, block 3 and the output go.
        assert_eq!(pat(4, 2, true).as_deref(), Some("^blk\\.(0|1|2)\\."));
        // One offloaded: only the output.
        assert_eq!(pat(4, 1, true).as_deref(), Some("^blk\\.(0|1|2|3)\\."));
        // n_layer + 1 offloaded: nothing left on the CPU.
        assert_eq!(pat(4, 5, true), None);
    }
}
