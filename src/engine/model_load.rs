//! Loading a model through llama.cpp's C API, so that every model parameter
//! can be set (llama-cpp-2 has no setter for `use_extra_bufts`).
//!
//! Why it matters: on CPUs with Intel AMX (Sapphire Rapids and later) ggml
//! picks its `sapphirerapids` CPU variant and by default repacks the weights
//! that run on the CPU into an "AMX" buffer for its tile kernels. In the
//! pinned llama.cpp (b11434) that path dies with SIGILL on the first
//! `tileloadd` (measured on the H200 hosts in `tinygemm_kernel_amx<block_q8_0>`:
//! `benches/results/2026-11-30-h200/amx/`; upstream's fix loads a tile
//! configuration the compiler may otherwise drop and asks for the tile-data
//! permission per thread). A buffer-type override cannot avoid it (llama.cpp
//! maps a CPU override back onto the extra buffer types), so where an AMX
//! buffer type exists, models load with `use_extra_bufts = false`: CPU weights
//! stay in plain buffers and the variant's AVX-512 kernels run them.
//! GPU-offloaded layers are not affected.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::OnceLock;

use llama_cpp_2::model::LlamaModel;
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

/// Which devices a model may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceList {
    /// Every device the backends list (llama.cpp's default).
    All,
    /// These ggml device indices only; empty = CPU only.
    Only(Vec<usize>),
}

/// How a model is placed: llama.cpp's model parameters that the engine sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPlacement {
    pub devices: DeviceList,
    /// Layers offloaded (`u32::MAX` = all).
    pub n_gpu_layers: u32,
    /// `llama_split_mode` (None = llama.cpp's default).
    pub split_mode: Option<sys::llama_split_mode>,
    pub main_gpu: Option<i32>,
}

impl ModelPlacement {
    /// llama.cpp's defaults with `n_gpu_layers` offloaded.
    pub fn offload(n_gpu_layers: u32) -> Self {
        Self {
            devices: DeviceList::All,
            n_gpu_layers,
            split_mode: None,
            main_gpu: None,
        }
    }
}

/// Loads `path` with `placement` as llama-cpp-2's owning [`LlamaModel`].
pub fn load(path: &Path, placement: &ModelPlacement) -> Result<LlamaModel, String> {
    let model = load_raw(path, placement)?;
    const _: () = assert!(
        std::mem::size_of::<LlamaModel>() == std::mem::size_of::<NonNull<sys::llama_model>>()
    );
    // SAFETY: `LlamaModel` is `#[repr(transparent)]` over llama-cpp-2's
    // `Ptr<llama_model>`, itself `#[repr(transparent)]` over
    // `NonNull<llama_model>` (llama-cpp-2 0.1.160, pinned in Cargo.lock; the
    // size check above catches a layout change). It owns the model and frees
    // it with `llama_free_model` on drop, as one from `load_from_file`
    // (which calls the same loader) does; `model` is a freshly loaded model
    // nothing else owns.
    Ok(unsafe { std::mem::transmute::<NonNull<sys::llama_model>, LlamaModel>(model) })
}

/// Loads `path` with `placement`, keeping CPU weights out of AMX buffers
/// where they exist (see the module notes). The caller owns the model and
/// frees it with `llama_model_free`.
pub fn load_raw(
    path: &Path,
    placement: &ModelPlacement,
) -> Result<NonNull<sys::llama_model>, String> {
    let cpath = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| format!("{}: the path contains a NUL byte", path.display()))?;
    let count = {
        // SAFETY: a plain query of ggml's device registry.
        unsafe { sys::ggml_backend_dev_count() }
    };
    // NULL-terminated device list; lives until the load returns.
    let mut devs: Vec<sys::ggml_backend_dev_t> = Vec::new();
    if let DeviceList::Only(ids) = &placement.devices {
        for &i in ids {
            if i >= count {
                return Err(format!("no backend device {i} ({count} listed)"));
            }
            // SAFETY: `i` is below the registry's device count.
            devs.push(unsafe { sys::ggml_backend_dev_get(i) });
        }
        devs.push(std::ptr::null_mut());
    }
    // SAFETY: llama.cpp's default parameters, then plain fields; `devs`
    // (when used) is a NULL-terminated array that outlives the call, and
    // `cpath` is a valid NUL-terminated path.
    let raw = unsafe {
        let mut mp = sys::llama_model_default_params();
        mp.n_gpu_layers = i32::try_from(placement.n_gpu_layers).unwrap_or(i32::MAX);
        if let Some(m) = placement.split_mode {
            mp.split_mode = m;
        }
        if let Some(g) = placement.main_gpu {
            mp.main_gpu = g;
        }
        if !devs.is_empty() {
            mp.devices = devs.as_mut_ptr();
        }
        mp.use_extra_bufts = mp.use_extra_bufts && !amx_buffer_present();
        sys::llama_model_load_from_file(cpath.as_ptr(), mp)
    };
    NonNull::new(raw).ok_or_else(|| format!("llama.cpp could not load {}", path.display()))
}
