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
    /// Longest wait, in milliseconds, after a step that ended requests for
    /// their successors on the CPU (`--linger-ms`; on a GPU the default is
    /// not to wait): a request sent on receipt of an answer reaches the
    /// engine in about a millisecond on one host.
    pub const LINGER_MS_CPU: u64 = 5;
}

/// Where one engine runs its model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// llama.cpp's own choice (all GPUs it lists, or the CPU without one);
    /// `n_gpu_layers` decides the offload.
    #[default]
    Auto,
    /// The CPU only (no layer offloaded).
    Cpu,
    /// One GPU: the ggml backend device with this index (its registry index,
    /// not its position among the GPUs), the whole model on it.
    Gpu(usize),
    /// One model over several GPUs (ggml device indices), split by llama.cpp.
    Split {
        /// ggml backend device indices.
        devices: Vec<usize>,
        /// How llama.cpp splits the model.
        mode: SplitMode,
    },
}

/// How a model too large for one GPU is split across several (llama.cpp's
/// `--split-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// No split: one engine (model + context + slots) per device.
    #[default]
    None,
    /// Layers (and their KV) are spread over the devices; one engine.
    Layer,
    /// Rows of each weight are spread over the devices; one engine.
    Row,
}

/// KV-cache element type (llama.cpp's `--cache-type-k/v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    /// 16-bit floats (the default).
    #[default]
    F16,
    /// 8-bit blocks: half the memory of f16.
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit blocks: a quarter of the memory of f16.
    #[value(name = "q4_0")]
    Q4_0,
}

impl KvType {
    /// Whether this is a block-quantized type.
    pub fn is_quantized(self) -> bool {
        self != KvType::F16
    }

    /// The name llama.cpp's tools use.
    /// The ggml type of the cache's rows.
    pub fn ggml_type(self) -> crate::ggml_type::GgmlType {
        use crate::ggml_type::GgmlType;
        match self {
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }
}

/// An `auto` / `on` / `off` setting (`--flash-attn`, `--fill-gaps`,
/// `--backend-greedy`): `auto` leaves the choice to the engine (or to
/// llama.cpp), resolved when the model loads. Each flag parses it with
/// [`Toggle::parser`] and its own [`ToggleHelp`], so `--help` says what `auto`
/// means for that flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    /// The engine (or llama.cpp) decides.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// How to use flash attention.
pub type FlashAttn = Toggle;

/// Whether a slot between fed ones that is not fed carries a dummy token in a step
/// (see [`super::batch::predicted_micro_batches`]: with one KV stream per
/// slot llama.cpp evaluates only consecutive sequence ids in one pass).
pub type FillGaps = Toggle;

/// Whether greedy requests take their tokens from an `argmax` in the step's
/// own graph (see `backend_greedy`) instead of the host scanning logits
/// copied back from the device.
pub type BackendGreedy = Toggle;

/// What each value of one [`Toggle`] flag means (its `--help` lines).
#[derive(Debug, Clone, Copy)]
pub struct ToggleHelp {
    /// `auto`.
    pub auto: &'static str,
    /// `on`.
    pub on: &'static str,
    /// `off`.
    pub off: &'static str,
}

impl ToggleHelp {
    /// `--flash-attn`.
    pub const FLASH_ATTN: ToggleHelp = ToggleHelp {
        auto: "Let llama.cpp decide",
        on: "Always",
        off: "Never",
    };
    /// `--fill-gaps`.
    pub const FILL_GAPS: ToggleHelp = ToggleHelp {
        auto: "On when the model's layers run on a GPU (and the KV is per slot)",
        on: "Always (with per-slot KV)",
        off: "Never",
    };
    /// `--backend-greedy`.
    pub const BACKEND_GREEDY: ToggleHelp = ToggleHelp {
        auto: "On when the model's layers run on a GPU",
        on: "Always",
        off: "Never",
    };
}

impl Toggle {
    /// The spelling on the command line and in `/info`.
    pub fn name(self) -> &'static str {
        match self {
            Toggle::Auto => "auto",
            Toggle::On => "on",
            Toggle::Off => "off",
        }
    }

    /// The value, `auto` resolved to `auto_means`.
    pub fn resolve(self, auto_means: bool) -> bool {
        match self {
            Toggle::Auto => auto_means,
            Toggle::On => true,
            Toggle::Off => false,
        }
    }

    /// A clap parser for a flag of this type whose values `help` explains
    /// (`#[arg(value_parser = Toggle::parser(ToggleHelp::FILL_GAPS))]`).
    pub fn parser(help: ToggleHelp) -> impl clap::builder::TypedValueParser<Value = Toggle> {
        use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
        PossibleValuesParser::new([
            PossibleValue::new("auto").help(help.auto),
            PossibleValue::new("on").help(help.on),
            PossibleValue::new("off").help(help.off),
        ])
        .try_map(|s: String| s.parse::<Toggle>())
    }
}

impl std::fmt::Display for Toggle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Toggle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Toggle::Auto),
            "on" => Ok(Toggle::On),
            "off" => Ok(Toggle::Off),
            _ => Err(format!("expected auto, on or off, got {s:?}")),
        }
    }
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
    /// Where the model runs.
    pub placement: Placement,
    /// K-cache element type.
    pub cache_type_k: KvType,
    /// V-cache element type (a quantized V cache needs flash attention).
    pub cache_type_v: KvType,
    /// Pad decode-only steps to a multiple of this many tokens with dummy
    /// tokens on free slots (0 or `None` = off).
    pub decode_pad: Option<u32>,
    /// Dummy tokens on unfed slots between fed ones.
    pub fill_gaps: FillGaps,
    /// Greedy picks computed by the backend.
    pub backend_greedy: BackendGreedy,
    /// The engine thread's name (`airavata-engine`, or `airavata-engine-N`
    /// when a server runs several).
    pub thread_name: String,
    /// Longest wait after a step that ended requests for as many new ones
    /// before the next step (zero: none; `None`: [`defaults::LINGER_MS_CPU`]
    /// on the CPU, none on a GPU). See `--linger-ms`.
    pub linger: Option<std::time::Duration>,
    /// `--chat-template FILE|NAME`; `None`: the GGUF's own template, else
    /// the built-in `airavata`.
    pub chat_template: Option<String>,
    /// Sleep after every step (test hook that simulates a slow model).
    #[cfg(feature = "test-support")]
    pub step_delay: Option<Duration>,
    /// Sleep before loading the model (test hook that makes the loading
    /// window observable).
    #[cfg(feature = "test-support")]
    pub load_delay: Option<Duration>,
    /// Handle text as a GPU engine does although `decode` computes on the
    /// CPU: a step's tokens go out after the next step's `decode`, a
    /// request's last token at the end of its step (test hook for the GPU
    /// path).
    #[cfg(feature = "test-support")]
    pub defer_emits: bool,
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
            placement: Placement::Auto,
            cache_type_k: KvType::F16,
            cache_type_v: KvType::F16,
            decode_pad: None,
            fill_gaps: FillGaps::Auto,
            backend_greedy: BackendGreedy::Auto,
            thread_name: "airavata-engine".into(),
            linger: None,
            chat_template: None,
            #[cfg(feature = "test-support")]
            step_delay: None,
            #[cfg(feature = "test-support")]
            load_delay: None,
            #[cfg(feature = "test-support")]
            defer_emits: false,
        }
    }
}
