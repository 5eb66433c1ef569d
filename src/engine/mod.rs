//! The inference engine: one OS thread owns the llama.cpp model and context
//! and runs continuous batching over a fixed number of slots.
//!
//! Callers (the HTTP layer, tests, benchmarks) talk to it through [`Engine`]:
//! [`Engine::generate`] validates and admits a request and returns a
//! [`GenerationStream`] of [`Event`]s. Dropping the stream cancels the request
//! at the engine's next step and frees its KV cells.
//!
//! Design (after text-generation-inference's router and llama.cpp's server):
//! * validation (tokenization, context budget) happens on the caller's thread,
//!   using the shared, immutable [`LlamaModel`];
//! * admission is bounded: at most `parallel + max_queue` requests exist at a
//!   time, so memory does not grow with offered load;
//! * the engine thread assigns queued requests to free slots between steps;
//!   each step is one `decode` holding one token per generating slot plus
//!   prompt chunks (see [`batch`]);
//! * by default each slot has its own KV stream (`kv_unified = false`, as
//!   llama.cpp's server does for a fixed `-np`): a sequence's cells sit at the
//!   same indices whatever else runs, so batched greedy output matches serial
//!   output (up to llama.cpp's CPU kernels not being fully batch-invariant:
//!   rarely, an answer differs), and attention spans only the slot's own cells. `--kv-unified`
//!   shares one stream instead, so a step mixing decode tokens and prompt
//!   chunks is one graph evaluation rather than several (see
//!   [`batch::micro_batches`]);
//! * prompt cache: a finished request's KV stays in its slot; a new request
//!   goes to the free slot sharing the longest token prefix with it when that
//!   covers half the prompt, else to the lowest free slot, and skips the
//!   shared tokens (`usage.prompt_tokens_details.cached_tokens`). Chat turns and
//!   repeated system prompts reuse their KV, and so does the chat preamble in
//!   any slot that last served a chat-wrapped request;
//! * every step's time is split into phases (plan, decode, sync, sample, emit)
//!   and counted in `/metrics`, with the micro-batches llama.cpp splits it into.

pub mod batch;
pub mod greedy;
mod info;
pub mod prompt;
mod prompt_cache;
pub mod request;
pub mod sampler;
pub mod stats;
pub mod stop;
pub mod utf8;
mod worker;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use prompt::{ChatMessage, Role};
pub use request::{
    Completion, Event, FinishReason, GenerateRequest, Prompt, SamplingParams, Timings, Usage,
};
pub use stats::EngineStats;

/// Errors of the engine boundary.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The model is still loading.
    #[error("the model is still loading")]
    NotReady,
    /// The engine is draining for shutdown.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine thread has exited.
    #[error("the inference engine has stopped")]
    Stopped,
    /// llama.cpp could not be initialised.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// The model or its context could not be loaded.
    #[error("loading the model failed: {0}")]
    Load(String),
    /// Too many requests are already waiting.
    #[error("the server is at capacity ({max_queue} requests waiting); retry later")]
    QueueFull {
        /// The configured queue bound.
        max_queue: usize,
    },
    /// The prompt plus the requested tokens do not fit a slot.
    #[error("the prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: {} tokens exceed the per-slot context of {n_ctx_slot} tokens", prompt_tokens + *max_new_tokens as usize)]
    ContextExceeded {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Requested new tokens.
        max_new_tokens: u32,
        /// Tokens one slot can hold.
        n_ctx_slot: usize,
    },
    /// A request field has an unusable value.
    #[error("{message}")]
    InvalidRequest {
        /// The offending field.
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request's deadline passed.
    #[error("the request exceeded its timeout of {0:?}")]
    Timeout(Duration),
    /// llama.cpp failed to evaluate a batch.
    #[error("decode failed: {0}")]
    Decode(String),
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
    pub step_delay: Option<Duration>,
}

impl EngineConfig {
    /// Defaults for `model_path`.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            n_gpu_layers: None,
            ctx_size: None,
            parallel: 4,
            threads: None,
            batch_size: 512,
            flash_attn: FlashAttn::Auto,
            max_queue: 64,
            backends_dir: None,
            cache_prompts: true,
            kv_unified: false,
            step_delay: None,
        }
    }
}

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
    /// Whether slots keep their KV for the next request with the same prefix.
    pub prompt_cache: bool,
    /// Whether all slots share one KV stream.
    pub kv_unified: bool,
    /// Selected GGUF metadata (`general.name`, `airavata.*`, ...).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Lifecycle of the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadState {
    /// The model is loading.
    Loading,
    /// Serving.
    Ready,
    /// Loading (or the engine) failed.
    Failed(EngineError),
    /// The engine thread has exited after a shutdown.
    Stopped,
}

struct Shared {
    stats: EngineStats,
    model: OnceLock<Arc<LlamaModel>>,
    info: OnceLock<ModelInfo>,
    state: watch::Sender<LoadState>,
    closing: AtomicBool,
    next_id: AtomicU64,
}

/// Handle to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<worker::Command>,
    max_queue: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// The process-wide llama.cpp backend. llama-cpp-2 allows one
/// `LlamaBackend` per process, so other code in the same process that needs
/// llama.cpp should borrow this one instead of calling `LlamaBackend::init`.
/// `backends_dir` (ggml backend libraries to load first) only matters on the
/// first call; llama.cpp logs are routed to `tracing`.
pub fn llama_backend(
    backends_dir: Option<&std::path::Path>,
) -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, EngineError>> = OnceLock::new();
    let b = BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        if let Some(dir) = backends_dir {
            load_backends_from(dir)?;
        } else if cfg!(feature = "dynamic-backends") {
            // The build's own backend directory when it still exists (dev
            // builds), else ggml's search (next to the executable, then cwd).
            match llama_cpp_sys_2::BACKENDS_DIR
                .map(std::path::Path::new)
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

fn load_backends_from(dir: &std::path::Path) -> Result<(), EngineError> {
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

impl Engine {
    /// Starts the engine thread. The model loads in the background; see
    /// [`Engine::ready`] and [`Engine::is_ready`].
    pub fn spawn(config: EngineConfig) -> Result<Engine, EngineError> {
        if config.parallel == 0 {
            return Err(EngineError::InvalidRequest {
                param: "parallel".into(),
                message: "--parallel must be at least 1".into(),
            });
        }
        let (state, _) = watch::channel(LoadState::Loading);
        let shared = Arc::new(Shared {
            stats: EngineStats::default(),
            model: OnceLock::new(),
            info: OnceLock::new(),
            state,
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let max_queue = config.max_queue;
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("airavata-engine".into())
            .spawn(move || worker::run(config, worker_shared, rx))
            .map_err(|e| EngineError::Backend(format!("cannot spawn engine thread: {e}")))?;
        Ok(Engine {
            shared,
            tx,
            max_queue,
        })
    }

    /// Starts the engine and waits until the model is loaded.
    pub async fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let engine = Self::spawn(config)?;
        engine.ready().await?;
        Ok(engine)
    }

    /// Waits until the model is loaded (or failed to load).
    pub async fn ready(&self) -> Result<(), EngineError> {
        let mut rx = self.shared.state.subscribe();
        let state = rx
            .wait_for(|s| *s != LoadState::Loading)
            .await
            .map_err(|_| EngineError::Stopped)?
            .clone();
        match state {
            LoadState::Ready => Ok(()),
            LoadState::Failed(e) => Err(e),
            LoadState::Loading | LoadState::Stopped => Err(EngineError::Stopped),
        }
    }

    /// Whether the model is loaded and the engine accepts work.
    pub fn is_ready(&self) -> bool {
        *self.shared.state.borrow() == LoadState::Ready
    }

    /// Where the engine is in its lifecycle.
    pub fn state(&self) -> LoadState {
        self.shared.state.borrow().clone()
    }

    /// Model and context facts, once loaded.
    pub fn info(&self) -> Option<&ModelInfo> {
        self.shared.info.get()
    }

    /// Live counters.
    pub fn stats(&self) -> &EngineStats {
        &self.shared.stats
    }

    fn model(&self) -> Result<&Arc<LlamaModel>, EngineError> {
        if let LoadState::Failed(e) = &*self.shared.state.borrow() {
            return Err(e.clone());
        }
        self.shared.model.get().ok_or(EngineError::NotReady)
    }

    /// Tokenizes `text` (`add_special` = prepend BOS as the model asks);
    /// special-token text is not parsed.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>, EngineError> {
        let model = self.model()?;
        Ok(model
            .vocab()
            .tokenize(text.as_bytes(), add_special, false)
            .into_iter()
            .map(|t| t.0)
            .collect())
    }

    /// The text of each token (lossy for partial UTF-8 pieces).
    pub fn token_pieces(&self, tokens: &[i32]) -> Result<Vec<String>, EngineError> {
        let model = self.model()?;
        let vocab = model.vocab();
        self.check_tokens(tokens)?;
        Ok(tokens
            .iter()
            .map(|t| {
                String::from_utf8_lossy(&vocab.token_to_piece(LlamaToken(*t), true, None))
                    .into_owned()
            })
            .collect())
    }

    /// The raw bytes of each token's piece, as generation emits them (a
    /// byte-fallback token such as `<0xE0>` yields one byte of a code point).
    pub fn token_bytes(&self, tokens: &[i32]) -> Result<Vec<Vec<u8>>, EngineError> {
        let model = self.model()?;
        self.check_tokens(tokens)?;
        let vocab = model.vocab();
        Ok(tokens
            .iter()
            .map(|t| vocab.token_to_piece(LlamaToken(*t), false, None))
            .collect())
    }

    /// Turns tokens back into text (special tokens dropped).
    pub fn detokenize(&self, tokens: &[i32]) -> Result<String, EngineError> {
        let model = self.model()?;
        self.check_tokens(tokens)?;
        let toks: Vec<LlamaToken> = tokens.iter().map(|t| LlamaToken(*t)).collect();
        let bytes = model.vocab().detokenize(&toks, true, false);
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn check_tokens(&self, tokens: &[i32]) -> Result<(), EngineError> {
        let n_vocab = self.model()?.n_vocab();
        if let Some(bad) = tokens.iter().find(|t| **t < 0 || **t >= n_vocab) {
            return Err(EngineError::InvalidRequest {
                param: "tokens".into(),
                message: format!("token id {bad} is outside the vocabulary (0..{n_vocab})"),
            });
        }
        Ok(())
    }

    /// Tokenizes a prompt the way [`Engine::generate`] will.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<i32>, EngineError> {
        let model = self.model()?;
        let vocab = model.vocab();
        let segments = match prompt {
            Prompt::Tokens(t) => {
                self.check_tokens(t)?;
                return Ok(t.clone());
            }
            Prompt::User(text) => prompt::user_turn(text),
            Prompt::Raw(text) => vec![prompt::Segment::Bos, prompt::Segment::Text(text.clone())],
            Prompt::Chat(messages) => prompt::chat(messages),
        };
        let mut out = Vec::new();
        let mut want_bos = false;
        for seg in segments {
            match seg {
                prompt::Segment::Bos => want_bos = true,
                prompt::Segment::Eos => out.push(vocab.eos().0),
                prompt::Segment::Text(t) => {
                    out.extend(
                        vocab
                            .tokenize(t.as_bytes(), want_bos, false)
                            .into_iter()
                            .map(|t| t.0),
                    );
                    want_bos = false;
                }
            }
        }
        if want_bos {
            out.extend(vocab.tokenize(b"", true, false).into_iter().map(|t| t.0));
        }
        Ok(out)
    }

    /// Validates and admits a request. Events arrive on the returned stream;
    /// dropping it cancels the request.
    pub fn generate(&self, req: GenerateRequest) -> Result<GenerationStream, EngineError> {
        let submitted = Instant::now();
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let info = self.info().ok_or(EngineError::NotReady)?;
        if req.max_new_tokens == 0 {
            return Err(EngineError::InvalidRequest {
                param: "max_new_tokens".into(),
                message: "max_new_tokens must be at least 1".into(),
            });
        }
        // Admission first, so a flood is refused before any tokenization work;
        // the ticket is released if validation fails below.
        let ticket = self.admit()?;
        let tokens = self.prompt_tokens(&req.prompt)?;
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest {
                param: "prompt".into(),
                message: "the prompt is empty and the model adds no BOS token".into(),
            });
        }
        let n_ctx_slot = info.n_ctx_slot as usize;
        if tokens.len() + req.max_new_tokens as usize > n_ctx_slot {
            return Err(EngineError::ContextExceeded {
                prompt_tokens: tokens.len(),
                max_new_tokens: req.max_new_tokens,
                n_ctx_slot,
            });
        }
        let strip_leading_space = match &req.prompt {
            Prompt::User(_) | Prompt::Chat(_) => true,
            Prompt::Raw(t) => t.is_empty() || t.ends_with(char::is_whitespace),
            Prompt::Tokens(_) => false,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let prompt_tokens = tokens.len();
        let job = worker::Job {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            tokens: tokens.into_iter().map(LlamaToken).collect(),
            max_new_tokens: req.max_new_tokens,
            sampling: req.sampling,
            stop: req.stop,
            deadline: req.timeout.map(|t| (submitted + t, t)),
            submitted,
            strip_leading_space,
            tx,
            _ticket: ticket,
        };
        self.tx
            .send(worker::Command::Generate(Box::new(job)))
            .map_err(|_| EngineError::Stopped)?;
        Ok(GenerationStream { rx, prompt_tokens })
    }

    fn admit(&self) -> Result<Ticket, EngineError> {
        let capacity = self
            .info()
            .map(|i| i.slots as usize + self.max_queue)
            .unwrap_or(self.max_queue);
        let admitted = &self.shared.stats.admitted;
        let mut cur = admitted.load(Ordering::Acquire);
        loop {
            if cur >= capacity {
                self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(EngineError::QueueFull {
                    max_queue: self.max_queue,
                });
            }
            match admitted.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(Ticket(Arc::clone(&self.shared))),
                Err(now) => cur = now,
            }
        }
    }

    /// Stops admitting, lets admitted requests finish, then ends the thread.
    /// Resolves once the engine thread has exited.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let _ = self.tx.send(worker::Command::Shutdown);
        let mut rx = self.shared.state.subscribe();
        let _ = rx
            .wait_for(|s| matches!(s, LoadState::Stopped | LoadState::Failed(_)))
            .await;
    }
}

/// Counts a request against the admission bound until dropped.
struct Ticket(Arc<Shared>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.stats.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct GenerationStream {
    rx: mpsc::UnboundedReceiver<Event>,
    prompt_tokens: usize,
}

impl GenerationStream {
    /// Tokens in the (tokenized) prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Waits for the whole generation.
    pub async fn collect(mut self) -> Result<(String, Completion), EngineError> {
        let mut text = String::new();
        while let Some(ev) = self.rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done(c) => return Ok((text, c)),
                Event::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped)
    }

    /// The next event; `None` after the final one.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for GenerationStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
