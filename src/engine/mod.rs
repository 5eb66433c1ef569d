//! The inference engine: one OS thread owns the llama.cpp model and context
//! and runs continuous batching over a fixed number of slots.
//!
//! Callers (the HTTP layer, tests, benchmarks) talk to it through [`Engine`]:
//! [`Engine::admit`] takes a place in the bounded queue,
//! [`Engine::tokenize_prompt`] tokenizes, and [`Engine::submit`] queues an
//! already validated [`GenerateRequest`] and returns a
//! [`GenerationStream`] of [`Event`]s. Dropping the stream cancels the request
//! at the engine's next step and frees its KV cells.
//!
//! Design (after text-generation-inference's router and llama.cpp's server):
//! * validation (tokenization, context budget) happens before submission, on
//!   the caller's (blocking) thread, using the shared, immutable
//!   [`LlamaModel`]; the engine does not check again;
//! * admission is bounded ([`admission`]): at most `parallel + max_queue`
//!   requests exist at a time, so memory does not grow with offered load;
//! * the engine thread ([`worker`]) first loads the model and context
//!   ([`load`]), then runs the step loop; every request ends through one
//!   `end_request(slot, outcome)` (finished, cancelled, timed out, failed);
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
//!   [`batch::predicted_micro_batches`]);
//! * prompt cache: a finished request's KV stays in its slot; a new request
//!   goes to the free slot sharing the longest token prefix with it when that
//!   covers half the prompt, else to the lowest free slot, and skips the
//!   shared tokens (`usage.prompt_tokens_details.cached_tokens`). Chat turns and
//!   repeated system prompts reuse their KV, and so does the chat preamble in
//!   any slot that last served a chat-wrapped request;
//! * every step's time is split into phases (plan, decode, sync, sample, emit, and the linger between steps)
//!   and counted in `/metrics`, with the micro-batches llama.cpp is predicted
//!   to split it into.

mod admission;
mod backend_greedy;
pub mod batch;
mod config;
pub mod devices;
mod grammar_thread;
pub mod greedy;
mod info;
mod load;
pub mod logprobs;
pub mod model_load;
pub mod prompt;
mod prompt_cache;
mod raw_context;
pub mod request;
pub mod sampler;
mod slot;
pub mod stats;
pub mod stop;
pub mod utf8;
mod worker;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use config::{
    defaults, BackendGreedy, EngineConfig, FillGaps, FlashAttn, KvType, Placement, SplitMode,
};
pub use load::llama_backend;
pub use logprobs::{TokenLogprob, TopLogprob};
pub use prompt::{ChatMessage, Role};
pub use request::{
    Completion, Event, FinishReason, GenerateRequest, Prompt, PromptTokens, SamplingParams,
    Timings, Usage,
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
    /// No token could be sampled (e.g. a grammar that no token can continue).
    #[error("sampling failed: {0}")]
    Sampling(String),
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
    admission: Arc<admission::Admission>,
    model: OnceLock<Arc<LlamaModel>>,
    info: OnceLock<ModelInfo>,
    state: watch::Sender<LoadState>,
    closing: AtomicBool,
    next_id: AtomicU64,
    /// Each free slot's cached tokens (empty for a busy slot), published by
    /// the engine thread for [`Engine::cached_prefix`].
    prompt_cache: RwLock<Vec<Arc<[LlamaToken]>>>,
}

/// Handle to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<worker::Command>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ready", &self.is_ready())
            .finish()
    }
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
            admission: Arc::new(admission::Admission::new(config.max_queue)),
            model: OnceLock::new(),
            info: OnceLock::new(),
            state,
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            prompt_cache: RwLock::new(Vec::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(config.thread_name.clone())
            .spawn(move || worker::run(config, worker_shared, rx))
            .map_err(|e| EngineError::Backend(format!("cannot spawn engine thread: {e}")))?;
        Ok(Engine { shared, tx })
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

    /// Requests admitted and not yet ended (running + waiting): the load the
    /// multi-engine router balances.
    pub fn in_flight(&self) -> usize {
        self.shared.admission.in_flight()
    }

    /// The longest prefix of `prompt` that one of the engine's free slots
    /// holds in its prompt cache (what a request routed here would not
    /// evaluate again).
    pub fn cached_prefix(&self, prompt: &[i32]) -> usize {
        let cache = self
            .shared
            .prompt_cache
            .read()
            .unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .map(|tokens| {
                tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a.0 == **b)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Requests admitted but not yet holding a slot.
    pub fn waiting(&self) -> usize {
        self.shared
            .admission
            .in_flight()
            .saturating_sub(self.shared.stats.running())
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

    /// Tokenizes a prompt the way the engine runs it. This is CPU work that
    /// grows with the prompt: async callers should run it on a blocking
    /// thread (`tokio::task::spawn_blocking`), as the server does.
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<PromptTokens, EngineError> {
        let model = self.model()?;
        let vocab = model.vocab();
        let segments = match prompt {
            Prompt::Tokens(t) => {
                self.check_tokens(t)?;
                return Ok(PromptTokens::new(prompt, t.clone()));
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
        Ok(PromptTokens::new(prompt, out))
    }

    /// Checks that `gbnf` is a grammar the engine can run for this model
    /// (llama.cpp's GBNF parser against the model's vocabulary): the inner
    /// error says why not. CPU work: async callers run it on a blocking thread.
    pub fn check_grammar(&self, gbnf: &str) -> Result<Result<(), String>, EngineError> {
        let model = self.model()?;
        Ok(sampler::compile_grammar(model, gbnf).map(drop))
    }

    /// Admits and submits a validated request ([`Engine::admit`] then
    /// [`Engine::submit`]).
    pub fn generate(&self, req: GenerateRequest) -> Result<GenerationStream, EngineError> {
        let admission = self.admit()?;
        Ok(self.submit(admission, req))
    }

    /// Takes a place among the `parallel + max_queue` requests the engine
    /// holds at a time, before any per-request work (tokenization), so a
    /// flood is refused cheaply. Dropping the [`Admission`] gives it back.
    pub fn admit(&self) -> Result<Admission, EngineError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let info = self.info().ok_or(EngineError::NotReady)?;
        let ticket = self
            .shared
            .admission
            .admit(info.slots as usize)
            .inspect_err(|_| {
                self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            })?;
        Ok(Admission(ticket, Instant::now()))
    }

    /// Takes a place without this engine's own queue bound, for a caller that
    /// bounds admission across several engines itself (the server's router).
    /// `submitted` is when the caller admitted the request (queue time and
    /// the deadline count from it); `hold` is dropped when the request ends.
    pub fn admit_unbounded(
        &self,
        submitted: Instant,
        hold: Box<dyn Send>,
    ) -> Result<Admission, EngineError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        if let LoadState::Failed(e) = self.state() {
            return Err(e);
        }
        self.info().ok_or(EngineError::NotReady)?;
        Ok(Admission(
            self.shared.admission.admit_unbounded(hold),
            submitted,
        ))
    }

    /// Queues an admitted, validated request. Events arrive on the returned
    /// stream; dropping it cancels the request. If the engine thread has
    /// exited, the stream's only event is [`EngineError::Stopped`].
    pub fn submit(&self, admission: Admission, req: GenerateRequest) -> GenerationStream {
        let Admission(ticket, submitted) = admission;
        let prompt_tokens = req.prompt.len();
        debug_assert!(prompt_tokens > 0, "validated prompts are not empty");
        debug_assert!(
            self.info().is_none_or(|i| {
                prompt_tokens + req.max_new_tokens.get() as usize <= i.n_ctx_slot as usize
            }),
            "validated requests fit a slot"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let strip_leading_space = req.prompt.strip_leading_space();
        let job = slot::Job {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            tokens: req.prompt.into_ids().into_iter().map(LlamaToken).collect(),
            max_new_tokens: req.max_new_tokens.get(),
            sampling: req.sampling,
            stop: req.stop,
            deadline: req.timeout.map(|t| (submitted + t, t)),
            submitted,
            strip_leading_space,
            logprobs: req.logprobs,
            tx,
            _ticket: ticket,
        };
        if let Err(mpsc::error::SendError(worker::Command::Generate(job))) =
            self.tx.send(worker::Command::Generate(Box::new(job)))
        {
            let _ = job.tx.send(Event::Error(EngineError::Stopped));
        }
        GenerationStream { rx, prompt_tokens }
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

/// A place among the requests the engine holds, from [`Engine::admit`];
/// counts against the admission bound until dropped (it travels with the
/// request to the engine thread). Its time is the request's submission time:
/// queue time, TTFT and the deadline include validation.
pub struct Admission(admission::Ticket, Instant);

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct GenerationStream {
    rx: mpsc::UnboundedReceiver<Event>,
    prompt_tokens: usize,
}

impl GenerationStream {
    /// A stream whose only event is `err` (a request that could not be
    /// handed to any engine).
    pub fn failed(err: EngineError, prompt_tokens: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Event::Error(err));
        GenerationStream { rx, prompt_tokens }
    }

    /// Tokens in the (tokenized) prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Waits for the whole generation.
    pub async fn collect(self) -> Result<(String, Completion), EngineError> {
        self.collect_with_logprobs()
            .await
            .map(|(text, _, completion)| (text, completion))
    }

    /// Waits for the whole generation, keeping the tokens' log-probabilities
    /// (empty unless the request asked for them).
    pub async fn collect_with_logprobs(
        mut self,
    ) -> Result<(String, Vec<TokenLogprob>, Completion), EngineError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        while let Some(ev) = self.rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Logprobs(l) => logprobs.extend(l),
                Event::Done(c) => return Ok((text, logprobs, c)),
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
