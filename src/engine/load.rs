//! Loading: the llama.cpp backend, the model, the context (with the
//! flash-attention policy) and the facts `/info` reports. The step loop
//! ([`super::worker`]) starts from what [`load`] returns.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use super::info::model_info;
use super::{EngineConfig, EngineError, FlashAttn, ModelInfo};

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
}

/// A context over the model, and what `/info` says about both.
pub(super) struct Loaded<'m> {
    pub ctx: LlamaContext<'m>,
    pub info: ModelInfo,
}

/// Loads the GGUF named by `config` on the process's backend.
pub(super) fn load_model(config: &EngineConfig) -> Result<LoadedModel, EngineError> {
    let backend = llama_backend(config.backends_dir.as_deref())?;
    let n_gpu_layers = config
        .n_gpu_layers
        .unwrap_or(if backend.supports_gpu_offload() {
            u32::MAX
        } else {
            0
        });
    if !config.model_path.is_file() {
        return Err(EngineError::Load(format!(
            "{} is not a file",
            config.model_path.display()
        )));
    }
    let params = LlamaModelParams::default().with_n_gpu_layers(n_gpu_layers);
    let model = LlamaModel::load_from_file(backend, &config.model_path, &params)
        .map_err(|e| EngineError::Load(format!("{}: {e}", config.model_path.display())))?;
    Ok(LoadedModel {
        backend,
        model: Arc::new(model),
        n_gpu_layers,
    })
}

/// The flash-attention policy in effect. On CPU, llama.cpp's flash-attention
/// path gives results that depend on the shape of the batch (F16
/// accumulation, kernel choice by batch size), so a greedy answer would
/// change with the server's load (measured: the 16-concurrent test fails with
/// it on). `auto` therefore means off when nothing is offloaded, and
/// llama.cpp's own choice on a GPU.
pub(super) fn flash_attn_policy(asked: FlashAttn, n_gpu_layers: u32, gpu: bool) -> FlashAttn {
    match asked {
        FlashAttn::Auto if n_gpu_layers == 0 || !gpu => FlashAttn::Off,
        other => other,
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
    let flash_attn = flash_attn_policy(
        config.flash_attn,
        loaded.n_gpu_layers,
        backend.supports_gpu_offload(),
    );
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
        .with_flash_attention_policy(fa);
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
    let info = model_info(
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
    Ok(Loaded { ctx, info })
}

/// The one line `serve` prints per loaded engine.
pub(super) fn loaded_line(info: &ModelInfo) -> String {
    let device = if info.n_gpu_layers > 0 {
        format!("{} layers on the GPU", info.n_gpu_layers)
    } else {
        format!("CPU, {} threads", info.threads)
    };
    format!(
        "loaded {} ({}): {} slots × {} tokens, batch {}, {device}, flash attention {}, prompt cache {}, {} KV",
        info.path.display(),
        info.description,
        info.slots,
        info.n_ctx_slot,
        info.n_batch,
        clap::ValueEnum::to_possible_value(&info.flash_attn)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default(),
        if info.prompt_cache { "on" } else { "off" },
        if info.kv_unified { "unified" } else { "per-slot" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_flash_attention_is_off_without_offload() {
        assert_eq!(flash_attn_policy(FlashAttn::Auto, 0, true), FlashAttn::Off);
        assert_eq!(
            flash_attn_policy(FlashAttn::Auto, u32::MAX, false),
            FlashAttn::Off
        );
        assert_eq!(
            flash_attn_policy(FlashAttn::Auto, u32::MAX, true),
            FlashAttn::Auto
        );
        assert_eq!(flash_attn_policy(FlashAttn::On, 0, false), FlashAttn::On);
    }
}
