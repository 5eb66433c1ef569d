//! What `/info` says about the loaded model and context.

use std::collections::BTreeMap;

use llama_cpp_2::model::LlamaModel;

use super::{EngineConfig, FlashAttn, ModelInfo};
use crate::ggml_type::llama_ftype_name;

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
