//! What `/info` says about the loaded model and context ([`ModelInfo`]),
//! and the resolved settings the step loop reads ([`Settings`]): the report
//! is built from the settings, never read back by the engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use llama_cpp_2::model::LlamaModel;
use serde::Serialize;

use super::config::{FlashAttn, KvType};
use super::EngineConfig;
use crate::ggml_type::llama_ftype_name;

/// Facts about the loaded model and context.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The GGUF path.
    pub path: PathBuf,
    /// llama.cpp's one-line description (architecture, size, type).
    pub description: String,
    /// GGUF `general.file_type` as a name (e.g. `Q4_K_M`).
    pub file_type: String,
    /// Parameter count.
    pub n_params: u64,
    /// Tensor bytes.
    pub size_bytes: u64,
    /// Vocabulary size.
    pub n_vocab: i32,
    /// Context the model was trained with.
    pub n_ctx_train: u32,
    /// KV cells in the context (all slots).
    pub n_ctx: u32,
    /// Tokens one request may use (prompt + new tokens).
    pub n_ctx_slot: u32,
    /// Concurrent sequences.
    pub slots: u32,
    /// Tokens per decode.
    pub n_batch: u32,
    /// Requests allowed to wait.
    pub max_queue: usize,
    /// Layers offloaded to a GPU.
    pub n_gpu_layers: u32,
    /// Whether llama.cpp has a GPU backend.
    pub gpu_offload: bool,
    /// CPU threads.
    pub threads: u32,
    /// Flash attention policy in effect (`auto` = llama.cpp decides).
    pub flash_attn: FlashAttn,
    /// ggml devices (name: description).
    pub devices: Vec<String>,
    /// The device(s) this engine runs on (`CUDA0`, `CPU`, `auto`, or
    /// `CUDA0+CUDA1 (layer split)`).
    pub device: String,
    /// K-cache element type.
    pub cache_type_k: KvType,
    /// V-cache element type.
    pub cache_type_v: KvType,
    /// Decode-only steps are padded to a multiple of this many tokens (0 = off).
    pub decode_pad: u32,
    /// Unfed slots between fed ones carry a dummy token in each step.
    pub fill_gaps: bool,
    /// Greedy requests take their tokens from an `argmax` in the step's graph.
    pub backend_greedy: bool,
    /// Longest wait for the successors of requests that just ended, in
    /// milliseconds (0 = none).
    pub linger_ms: u64,
    /// Whether slots keep their KV for the next request with the same prefix.
    pub prompt_cache: bool,
    /// Whether all slots share one KV stream.
    pub kv_unified: bool,
    /// Selected GGUF metadata (`general.name`, `airavata.*`, ...).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The engine's settings once the model and context are loaded (`auto` and
/// unset values resolved): what the step loop runs with.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// Tokens per `decode` (also the prefill chunk size).
    pub n_batch: usize,
    /// KV cells of one slot's stream.
    pub n_ctx_slot: usize,
    /// Decode-only steps are padded to a multiple of this (0 = off).
    pub decode_pad: usize,
    /// Unfed slots between fed ones carry a dummy token.
    pub fill_gaps: bool,
    /// Greedy picks come from the backend.
    pub backend_greedy: bool,
    /// Longest wait for the successors of requests that just ended.
    pub linger: Duration,
    /// Whether `decode` returns before the step is computed (layers on a GPU).
    pub decode_is_async: bool,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn model_info(
    config: &EngineConfig,
    model: &LlamaModel,
    gpu_offload: bool,
    n_gpu_layers: u32,
    threads: u32,
    n_ctx: u32,
    n_ctx_slot: usize,
    n_batch: u32,
    flash_attn: FlashAttn,
) -> ModelInfo {
    let mut metadata = BTreeMap::new();
    for i in 0..model.meta_count() {
        let Ok(key) = model.meta_key_by_index(i) else {
            continue;
        };
        let wanted = key.starts_with("airavata.")
            || matches!(
                key.as_str(),
                "general.name"
                    | "general.architecture"
                    | "general.file_type"
                    | "general.quantization_version"
            );
        if wanted {
            if let Ok(v) = model.meta_val_str_by_index(i) {
                metadata.insert(key, v);
            }
        }
    }
    let file_type = metadata
        .get("general.file_type")
        .and_then(|v| v.parse::<u32>().ok())
        .map(llama_ftype_name)
        .unwrap_or_else(|| "unknown".into());
    let description = model_description(model, &file_type);
    ModelInfo {
        path: config.model_path.clone(),
        description,
        file_type,
        n_params: model.n_params(),
        size_bytes: model.size(),
        n_vocab: model.n_vocab(),
        n_ctx_train: model.n_ctx_train(),
        n_ctx,
        n_ctx_slot: u32::try_from(n_ctx_slot).unwrap_or(u32::MAX),
        slots: config.parallel,
        n_batch,
        max_queue: config.max_queue,
        n_gpu_layers: n_gpu_layers.min(model.n_layer() + 1),
        gpu_offload,
        threads,
        flash_attn,
        devices: llama_cpp_2::list_llama_ggml_backend_devices()
            .into_iter()
            .map(|d| format!("{}: {}", d.name, d.description))
            .collect(),
        device: String::new(),
        cache_type_k: config.cache_type_k,
        cache_type_v: config.cache_type_v,
        decode_pad: 0,
        fill_gaps: false,
        backend_greedy: false,
        linger_ms: 0,
        prompt_cache: config.cache_prompts,
        kv_unified: config.kv_unified,
        metadata,
    }
}

fn model_description(model: &LlamaModel, file_type: &str) -> String {
    let arch = model
        .meta_val_str("general.architecture")
        .unwrap_or_else(|_| "unknown".into());
    let params = model.n_params() as f64;
    let size = if params >= 1e9 {
        format!("{:.1}B", params / 1e9)
    } else if params >= 1e6 {
        format!("{:.1}M", params / 1e6)
    } else {
        format!("{:.0}K", params / 1e3)
    };
    format!("{arch} {size} {file_type}")
}
