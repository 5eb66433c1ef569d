//! The GPUs llama.cpp's loaded backends list, for choosing where engines run.

use std::path::Path;

use llama_cpp_2::LlamaBackendDeviceType;
use serde::Serialize;

use super::load::llama_backend;
use super::EngineError;

/// One GPU as ggml's backend registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// Its index in ggml's device registry (what [`super::Placement::Gpu`] takes).
    pub index: usize,
    /// ggml's name (`CUDA0`).
    pub name: String,
    /// The driver's description (`NVIDIA H200`).
    pub description: String,
    /// Device memory in bytes.
    pub memory_total: usize,
}

/// The GPUs of the process's backends (loading them from `backends_dir`
/// first on the first call), in registry order; empty on a CPU-only build or
/// host.
pub fn gpus(backends_dir: Option<&Path>) -> Result<Vec<Gpu>, EngineError> {
    llama_backend(backends_dir)?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| {
            matches!(
                d.device_type,
                LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
            )
        })
        .map(|d| Gpu {
            index: d.index,
            name: d.name,
            description: d.description,
            memory_total: d.memory_total,
        })
        .collect())
}
