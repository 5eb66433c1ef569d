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
    /// What the KV cache costs per token and in all, and what would fit.
    pub kv: KvFootprint,
    /// Selected GGUF metadata (`general.name`, `airavata.*`, ...).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The KV cache's size: bytes per token of context (K and V rows of every
/// layer at the cache types), the bytes the context's tokens take, and how
/// many more tokens the free memory of the engine's GPUs would hold.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KvFootprint {
    /// K and V bytes one token of context takes over all layers.
    pub bytes_per_token: u64,
    /// `bytes_per_token` × the context's tokens (all slots).
    pub bytes: u64,
    /// The sliding window of a model with sliding-window layers (0 = none):
    /// those layers keep at most this many tokens, so the figures above are
    /// upper bounds.
    pub sliding_window: u32,
    /// Tokens of context that would still fit in the free memory of the
    /// engine's GPUs after loading (absent on the CPU).
    pub more_tokens_fit: Option<u64>,
}

impl KvFootprint {
    /// The footprint of `model`'s cache at these types over `n_ctx` tokens.
    /// Head sizes come from `{arch}.attention.key_length`/`value_length`
    /// when the GGUF has them (Gemma's differ from n_embd / n_head).
    pub fn of(model: &LlamaModel, k: KvType, v: KvType, n_ctx: u32) -> Self {
        let arch = model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        let n_head = model.n_head().max(1);
        let fallback = u64::try_from(model.n_embd()).unwrap_or(0) / u64::from(n_head);
        let head = |key: &str| {
            model
                .meta_val_str(&format!("{arch}.attention.{key}"))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(fallback)
        };
        let n_head_kv = u64::from(model.n_head_kv());
        let row = |t: KvType, n: u64| {
            let n = usize::try_from(n * n_head_kv).unwrap_or(usize::MAX);
            t.ggml_type().row_bytes(n).unwrap_or(0) as u64
        };
        let bytes_per_token = u64::from(model.n_layer())
            * (row(k, head("key_length")) + row(v, head("value_length")));
        let sliding_window = model
            .meta_val_str(&format!("{arch}.attention.sliding_window"))
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        Self {
            bytes_per_token,
            bytes: bytes_per_token * u64::from(n_ctx),
            sliding_window,
            more_tokens_fit: None,
        }
    }

    /// "512 KiB/token, 16.0 GiB for 32768 tokens, 120000 more fit in free GPU memory".
    pub fn describe(&self, n_ctx: u32) -> String {
        let mut s = format!(
            "{}/token, {} for {n_ctx} tokens",
            human_bytes(self.bytes_per_token),
            human_bytes(self.bytes)
        );
        if self.sliding_window > 0 {
            s += &format!(
                " (at most: sliding-window layers keep {} tokens)",
                self.sliding_window
            );
        }
        if let Some(n) = self.more_tokens_fit {
            s += &format!(", {n} more fit in free GPU memory");
        }
        s
    }
}

/// Bytes in binary units with one decimal (`512.0 KiB`, `16.0 GiB`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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
        kv: KvFootprint::of(model, config.cache_type_k, config.cache_type_v, n_ctx),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(512 * 1024), "512.0 KiB");
        assert_eq!(human_bytes(16 << 30), "16.0 GiB");
    }

    #[test]
    fn describe_states_window_and_fit() {
        let k = KvFootprint {
            bytes_per_token: 512 * 1024,
            bytes: 16 << 30,
            sliding_window: 0,
            more_tokens_fit: Some(1000),
        };
        assert_eq!(
            k.describe(32768),
            "512.0 KiB/token, 16.0 GiB for 32768 tokens, 1000 more fit in free GPU memory"
        );
        let swa = KvFootprint {
            sliding_window: 512,
            more_tokens_fit: None,
            ..k
        };
        assert!(swa
            .describe(32768)
            .contains("sliding-window layers keep 512 tokens"));
    }
}
