//! What the engine is asked to run: [`EngineConfig`] and its defaults, which
//! the `serve` flags use too (one definition each, in [`defaults`]).

use std::path::PathBuf;
#[cfg(feature = "test-support")]
use std::time::Duration;

use serde::Serialize;

/// Default values of the engine settings (also the `serve` flags' defaults).
pub mod defaults {
    /// Concurrent sequences (slots).
    pub const PARALLEL: u32 = 4;
    /// Most tokens per `decode` (also the prefill chunk size).
    pub const BATCH_SIZE: u32 = 512;
    /// Requests allowed to wait for a slot.
    pub const MAX_QUEUE: usize = 64;
}

/// How to use flash attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttn {
    /// Let llama.cpp decide.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// GGUF file to load.
    pub model_path: PathBuf,
    /// Layers to offload; `None` = all when a GPU backend is present, else 0.
    pub n_gpu_layers: Option<u32>,
    /// Total KV context (all slots); `None` = the model's training context.
    pub ctx_size: Option<u32>,
    /// Concurrent sequences.
    pub parallel: u32,
    /// CPU threads; `None` = available parallelism.
    pub threads: Option<u32>,
    /// Most tokens per `decode` (also the prefill chunk size).
    pub batch_size: u32,
    /// Flash attention policy.
    pub flash_attn: FlashAttn,
    /// Requests allowed to wait for a slot.
    pub max_queue: usize,
    /// Directory to load ggml backends (`libggml-*.so`) from.
    pub backends_dir: Option<PathBuf>,
    /// Keep each slot's KV after a request and reuse its longest common
    /// prefix with the next prompt assigned to the slot.
    pub cache_prompts: bool,
    /// One KV stream shared by all slots instead of one per slot.
    pub kv_unified: bool,
    /// Sleep after every step (test hook that simulates a slow model).
    #[cfg(feature = "test-support")]
    pub step_delay: Option<Duration>,
}

impl EngineConfig {
    /// Defaults for `model_path`.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            n_gpu_layers: None,
            ctx_size: None,
            parallel: defaults::PARALLEL,
            threads: None,
            batch_size: defaults::BATCH_SIZE,
            flash_attn: FlashAttn::default(),
            max_queue: defaults::MAX_QUEUE,
            backends_dir: None,
            cache_prompts: true,
            kv_unified: false,
            #[cfg(feature = "test-support")]
            step_delay: None,
        }
    }
}
