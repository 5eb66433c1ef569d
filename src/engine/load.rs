//! Loading: the llama.cpp backend, the model, the context (with the
//! flash-attention policy) and the facts `/info` reports. The step loop
//! ([`super::worker`]) starts from what [`load`] returns.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::KvCacheType;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;

use super::config::{defaults, KvType, Placement, SplitMode};
use super::info::{model_info, ModelInfo, Settings};
use super::model_load::{self, DeviceList, ModelPlacement};
use super::{EngineConfig, EngineError, FlashAttn};

/// Engines of one process load one at a time (llama.cpp's loader and the
/// backends' device setup are not documented as safe to run concurrently).
pub(super) static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The process-wide llama.cpp backend. llama-cpp-2 allows one
/// `LlamaBackend` per process, so other code in the same process that needs
/// llama.cpp should borrow this one instead of calling `LlamaBackend::init`.
/// `backends_dir` (ggml backend libraries to load first) only matters on the
/// first call. llama.cpp's own log goes to `tracing` under the target
/// `llama-cpp-2` (the CLI shows only its warnings unless `RUST_LOG` asks).
pub fn llama_backend(backends_dir: Option<&Path>) -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, EngineError>> = OnceLock::new();
    let b = BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        if let Some(dir) = backends_dir {
            load_backends_from(dir)?;
        } else if cfg!(feature = "dynamic-backends") {
            // The build's own backend directory when it still exists (dev
            // builds), else ggml's search (next to the executable, then cwd).
            match llama_cpp_sys_2::BACKENDS_DIR
                .map(Path::new)
                .filter(|d| d.is_dir())
            {
                Some(dir) => load_backends_from(dir)?,
                // SAFETY: no arguments; registers the backend libraries ggml
                // finds. Called once, before any model loads.
                None => unsafe { llama_cpp_sys_2::ggml_backend_load_all() },
            }
        }
        LlamaBackend::init().map_err(|e| EngineError::Backend(e.to_string()))
    });
    b.as_ref().map_err(Clone::clone)
}

fn load_backends_from(dir: &Path) -> Result<(), EngineError> {
    if !dir.is_dir() {
        return Err(EngineError::Backend(format!(
            "--backends-dir {} is not a directory",
            dir.display()
        )));
    }
    let s = dir
        .to_str()
        .ok_or_else(|| EngineError::Backend(format!("non-UTF-8 path {}", dir.display())))?;
    let c = std::ffi::CString::new(s)
        .map_err(|_| EngineError::Backend("backends dir contains a NUL byte".into()))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // ggml only reads it while scanning the directory.
    unsafe { llama_cpp_sys_2::ggml_backend_load_all_from_path(c.as_ptr()) };
    Ok(())
}

/// The loaded model, before a context exists.
pub(super) struct LoadedModel {
    pub backend: &'static LlamaBackend,
    pub model: Arc<LlamaModel>,
    /// Layers asked to be offloaded (`u32::MAX` = all).
    pub n_gpu_layers: u32,
    /// Where it runs, in words (`CUDA0`, `CPU`, `CUDA0+CUDA1 (layer split)`).
    pub device: String,
}

/// Free bytes on the GPUs an engine runs on (`device` as in
/// [`LoadedModel::device`]: named GPUs, or every GPU for `auto`).
fn free_gpu_memory(device: &str) -> Option<u64> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    let gpus: Vec<_> = llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, T::Gpu | T::IntegratedGpu))
        .filter(|d| device == "auto" || device.split(['+', ' ']).any(|n| n == d.name))
        .collect();
    (!gpus.is_empty()).then(|| gpus.iter().map(|d| d.memory_free as u64).sum())
}

/// A ggml backend device's name by its registry index.
fn device_name(index: usize) -> String {
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .find(|d| d.index == index)
        .map(|d| d.name)
        .unwrap_or_else(|| format!("device {index}"))
}

/// Model placement for the engine's `--devices`/`--split-mode`, the offload it
/// implies, and its name.
fn placement_params(
    placement: &Placement,
    n_gpu_layers: Option<u32>,
    gpu: bool,
) -> (ModelPlacement, String) {
    let all_if_gpu = if gpu { u32::MAX } else { 0 };
    match placement {
        Placement::Auto => {
            let n = n_gpu_layers.unwrap_or(all_if_gpu);
            let name = if n > 0 && gpu { "auto" } else { "CPU" };
            (ModelPlacement::offload(n), name.to_string())
        }
        Placement::Cpu => (
            ModelPlacement {
                devices: DeviceList::Only(Vec::new()),
                ..ModelPlacement::offload(0)
            },
            "CPU".to_string(),
        ),
        Placement::Gpu(index) => (
            ModelPlacement {
                devices: DeviceList::Only(vec![*index]),
                n_gpu_layers: n_gpu_layers.unwrap_or(u32::MAX),
                split_mode: Some(llama_cpp_sys_2::LLAMA_SPLIT_MODE_NONE),
                main_gpu: Some(0),
            },
            device_name(*index),
        ),
        Placement::Split { devices, mode } => {
            let split = match mode {
                SplitMode::None => llama_cpp_sys_2::LLAMA_SPLIT_MODE_NONE,
                SplitMode::Layer => llama_cpp_sys_2::LLAMA_SPLIT_MODE_LAYER,
                SplitMode::Row => llama_cpp_sys_2::LLAMA_SPLIT_MODE_ROW,
            };
            let names: Vec<String> = devices.iter().map(|d| device_name(*d)).collect();
            let mode = clap::ValueEnum::to_possible_value(mode)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            (
                ModelPlacement {
                    devices: DeviceList::Only(devices.clone()),
                    n_gpu_layers: n_gpu_layers.unwrap_or(u32::MAX),
                    split_mode: Some(split),
                    main_gpu: None,
                },
                format!("{} ({mode} split)", names.join("+")),
            )
        }
    }
}

/// A context over the model, and what `/info` says about both.
pub(super) struct Loaded<'m> {
    pub ctx: LlamaContext<'m>,
    pub info: ModelInfo,
    pub settings: Settings,
}

/// Loads the GGUF named by `config` on the process's backend.
pub(super) fn load_model(config: &EngineConfig) -> Result<LoadedModel, EngineError> {
    let backend = llama_backend(config.backends_dir.as_deref())?;
    if !config.model_path.is_file() {
        return Err(EngineError::Load(format!(
            "{} is not a file",
            config.model_path.display()
        )));
    }
    let (placement, device) = placement_params(
        &config.placement,
        config.n_gpu_layers,
        backend.supports_gpu_offload(),
    );
    let n_gpu_layers = placement.n_gpu_layers;
    let model = model_load::load(&config.model_path, &placement)
        .map_err(|e| EngineError::Load(format!("{}: {e}", config.model_path.display())))?;
    Ok(LoadedModel {
        backend,
        model: Arc::new(model),
        n_gpu_layers,
        device,
    })
}

/// Whether an engine's layers run on a GPU: some are offloaded and a GPU
/// backend is loaded. Otherwise `decode` computes on the CPU before it returns.
pub(super) fn runs_on_gpu(n_gpu_layers: u32, gpu: bool) -> bool {
    gpu && n_gpu_layers > 0
}

/// The flash-attention setting given the V-cache type: llama.cpp stores a
/// quantized V cache only with flash attention, so `auto` turns it on and an
/// explicit `off` is refused with a message naming both flags. Otherwise
/// `auto` is llama.cpp's own choice (on wherever its kernels support it, CPU
/// included, as llama-server does).
pub(super) fn flash_attn_for_cache(
    asked: FlashAttn,
    cache_type_v: KvType,
) -> Result<FlashAttn, EngineError> {
    if !cache_type_v.is_quantized() {
        return Ok(asked);
    }
    match asked {
        FlashAttn::Off => Err(EngineError::Load(format!(
            "--cache-type-v {} needs flash attention; drop --flash-attn off (or use --cache-type-v f16)",
            cache_type_v.name()
        ))),
        _ => Ok(FlashAttn::On),
    }
}

fn kv_cache_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F16 => KvCacheType::F16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q4_0 => KvCacheType::Q4_0,
    }
}

/// Tokens a decode-only step is padded to a multiple of (0 = no padding):
/// only when asked for (`--decode-pad N`; on one H200 padding to 16 was slower
/// at 64/128/256 streams, benches/results/2026-11-29-h200x2/), never with a
/// unified KV cache.
pub(super) fn decode_pad(config: &EngineConfig) -> u32 {
    if config.kv_unified {
        return 0;
    }
    config.decode_pad.unwrap_or(0)
}

/// Whether unfed slots between fed ones carry a dummy token: `auto` is on
/// when the layers run on a GPU, where a second micro-batch costs a weight pass
/// and changes the step's CUDA graph; never with a unified KV cache (one
/// micro-batch already).
pub(super) fn fill_gaps(config: &EngineConfig, on_gpu: bool) -> bool {
    !config.kv_unified && config.fill_gaps.resolve(on_gpu)
}

/// Whether greedy picks come from the backend: `auto` is on when the layers
/// run on a GPU, where it saves copying every output row's logits to the host.
pub(super) fn backend_greedy(config: &EngineConfig, on_gpu: bool) -> bool {
    config.backend_greedy.resolve(on_gpu)
}

/// The longest wait for the successors of requests that just ended, in
/// milliseconds: as asked, else [`defaults::LINGER_MS_CPU`] on the CPU and
/// none on a GPU (where the device idles meanwhile; measured to cost more
/// tokens/s than the steps it saves, BENCHMARKS.md).
pub(super) fn linger_ms(config: &EngineConfig, on_gpu: bool) -> u64 {
    match config.linger {
        Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        None if on_gpu => 0,
        None => defaults::LINGER_MS_CPU,
    }
}

/// Tokens per `decode`: at least one per slot.
pub(super) fn n_batch(config: &EngineConfig) -> u32 {
    config.batch_size.max(config.parallel).max(1)
}

/// Creates the context: `parallel` sequences over `ctx_size` cells, by default
/// one KV stream per slot (not unified): a sequence's cells sit at the same
/// indices whatever else is running, so batched greedy output matches serial
/// output (rarely not: llama.cpp's CPU kernels are not fully batch-invariant),
/// and attention only spans the slot's own cells. `--kv-unified` shares one
/// stream, which lets llama.cpp evaluate a step that mixes decode tokens and
/// prompt chunks in one pass.
pub(super) fn new_context<'m>(
    config: &EngineConfig,
    loaded: &'m LoadedModel,
) -> Result<Loaded<'m>, EngineError> {
    let (backend, model) = (loaded.backend, &*loaded.model);
    let threads = config.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(4)
    });
    let threads_i32 = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
    let n_ctx = config
        .ctx_size
        .unwrap_or_else(|| model.n_ctx_train())
        .max(16);
    let n_batch = n_batch(config);
    let flash_attn = flash_attn_for_cache(config.flash_attn, config.cache_type_v)?;
    let fa = match flash_attn {
        FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(config.parallel)
        .with_kv_unified(config.kv_unified)
        .with_n_threads(threads_i32)
        .with_n_threads_batch(threads_i32)
        .with_flash_attention_policy(fa)
        .with_type_k(kv_cache_type(config.cache_type_k))
        .with_type_v(kv_cache_type(config.cache_type_v));
    let ctx = model
        .new_context(backend, params)
        .map_err(|e| EngineError::Load(format!("creating the context: {e}")))?;
    let n_ctx = ctx.n_ctx();
    let n_ctx_slot = n_ctx as usize / config.parallel.max(1) as usize;
    if n_ctx_slot < 2 {
        return Err(EngineError::Load(format!(
            "--ctx-size {n_ctx} is too small for {} slots",
            config.parallel
        )));
    }
    if n_ctx_slot > model.n_ctx_train() as usize {
        tracing::warn!(
            n_ctx_slot,
            n_ctx_train = model.n_ctx_train(),
            "per-slot context exceeds the training context"
        );
    }
    let mut info = model_info(
        config,
        model,
        backend.supports_gpu_offload(),
        loaded.n_gpu_layers,
        threads,
        n_ctx,
        n_ctx_slot,
        n_batch,
        flash_attn,
    );
    let on_gpu = runs_on_gpu(info.n_gpu_layers, info.gpu_offload);
    let settings = Settings {
        n_batch: n_batch as usize,
        n_ctx_slot,
        decode_pad: decode_pad(config) as usize,
        fill_gaps: fill_gaps(config, on_gpu),
        backend_greedy: backend_greedy(config, on_gpu),
        linger: std::time::Duration::from_millis(linger_ms(config, on_gpu)),
        #[cfg(not(feature = "test-support"))]
        decode_is_async: on_gpu,
        #[cfg(feature = "test-support")]
        decode_is_async: on_gpu || config.defer_emits,
    };
    info.device = loaded.device.clone();
    if on_gpu && info.kv.bytes_per_token > 0 {
        info.kv.more_tokens_fit =
            free_gpu_memory(&info.device).map(|free| free / info.kv.bytes_per_token);
    }
    info.decode_pad = decode_pad(config);
    info.fill_gaps = settings.fill_gaps;
    info.backend_greedy = settings.backend_greedy;
    info.linger_ms = linger_ms(config, on_gpu);
    Ok(Loaded {
        ctx,
        info,
        settings,
    })
}

/// The one line `serve` prints per loaded engine.
pub(super) fn loaded_line(info: &ModelInfo) -> String {
    let device = if info.n_gpu_layers > 0 {
        format!("{} layers on {}", info.n_gpu_layers, info.device)
    } else {
        format!("CPU, {} threads", info.threads)
    };
    format!(
        "loaded {} ({}): {} slots × {} tokens, batch {}, {device}, flash attention {}, prompt cache {}, {} KV {}/{} ({}), decode pad {}, gap fill {}, backend greedy {}, linger {} ms",
        info.path.display(),
        info.description,
        info.slots,
        info.n_ctx_slot,
        info.n_batch,
        info.flash_attn.name(),
        if info.prompt_cache { "on" } else { "off" },
        if info.kv_unified { "unified" } else { "per-slot" },
        info.cache_type_k.name(),
        info.cache_type_v.name(),
        info.kv.describe(info.n_ctx),
        info.decode_pad,
        if info.fill_gaps { "on" } else { "off" },
        if info.backend_greedy { "on" } else { "off" },
        info.linger_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantized_v_cache_needs_flash_attention() {
        let f = flash_attn_for_cache;
        // An f16 V cache leaves the choice as asked (`auto`: llama.cpp's own).
        for asked in [FlashAttn::Auto, FlashAttn::On, FlashAttn::Off] {
            assert_eq!(f(asked, KvType::F16), Ok(asked));
        }
        assert_eq!(f(FlashAttn::Auto, KvType::Q8_0), Ok(FlashAttn::On));
        assert_eq!(f(FlashAttn::On, KvType::Q4_0), Ok(FlashAttn::On));
        let err = f(FlashAttn::Off, KvType::Q8_0).unwrap_err();
        assert!(
            err.to_string()
                .contains("--cache-type-v q8_0 needs flash attention"),
            "{err}"
        );
    }
}
