//! The handle to one engine ([`Engine`]): admission, tokenization,
//! submission and the engine's facts, over the state it shares with the
//! engine thread ([`super::shared`]); and the events of one request
//! ([`GenerationStream`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};

use futures::Stream;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, watch};

use super::admission::{Admission, Bound};
use super::info::ModelInfo;
use super::prompt::{ChatMessage, PromptFormat, Role, TokenizerInfo};
use super::request::{Completion, Event, GenerateRequest, Prompt, PromptTokens};
use super::shared::{LoadState, Shared};
use super::worker::{self, kv::common_prefix, Command};
use super::{sampler, slot, EngineConfig, EngineError, EngineStats, PromptLogprobs, TokenLogprob};

/// Handle to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<Command>,
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
            bound: Bound::new(config.max_queue),
            model: OnceLock::new(),
            info: OnceLock::new(),
            format: OnceLock::new(),
            state,
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            prompt_cache: RwLock::new(Vec::new()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
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
        self.shared.bound.in_flight()
    }

    /// Requests refused because this engine's own bound was full
    /// ([`Engine::admit`]; the router counts its own).
    pub fn rejected(&self) -> u64 {
        self.shared.bound.rejected()
    }

    /// The longest prefix of `prompt` that one of the engine's free slots
    /// holds in its prompt cache (what a request routed here would not
    /// evaluate again).
    pub fn cached_prefix(&self, prompt: &[i32]) -> usize {
        let prompt: Vec<LlamaToken> = prompt.iter().map(|&t| LlamaToken(t)).collect();
        let cache = self
            .shared
            .prompt_cache
            .read()
            .unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .map(|tokens| common_prefix(tokens, &prompt))
            .max()
            .unwrap_or(0)
    }

    /// Requests admitted but not yet holding a slot.
    pub fn waiting(&self) -> usize {
        self.shared
            .bound
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
        // Chat prompts: the template's text, whose special tokens are parsed.
        let chat = |messages: &[ChatMessage], tools: Option<&[serde_json::Value]>| {
            self.format()?
                .render(messages, tools)
                .map(|(text, add_bos)| (text, add_bos, true))
        };
        let (text, add_bos, parse_special) = match prompt {
            Prompt::Tokens(t) => {
                self.check_tokens(t)?;
                return Ok(PromptTokens::new(prompt, t.clone()));
            }
            Prompt::Raw(text) => (text.clone(), true, false),
            Prompt::User(text) => chat(&[ChatMessage::text(Role::User, text.as_str())], None)?,
            Prompt::Chat(messages) => chat(messages, None)?,
            Prompt::ChatTools { messages, tools } => chat(messages, Some(tools))?,
        };
        let ids = vocab
            .tokenize(text.as_bytes(), add_bos, parse_special)
            .into_iter()
            .map(|t| t.0)
            .collect();
        Ok(PromptTokens::new(prompt, ids))
    }

    /// The loaded model's prompt format (chat template).
    fn format(&self) -> Result<&PromptFormat, EngineError> {
        self.model()?;
        self.shared.format.get().ok_or(EngineError::NotReady)
    }

    /// The tokenizer facts of the loaded model (`GET /tokenizer_info`).
    pub fn tokenizer_info(&self) -> Result<TokenizerInfo, EngineError> {
        Ok(self.format()?.tokenizer_info())
    }

    /// Strings that end an assistant turn in the model's chat template: chat
    /// prompts stop at them.
    pub fn turn_stops(&self) -> Result<Vec<String>, EngineError> {
        Ok(self.format()?.stops().to_vec())
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
        self.shared.bound.admit(info.slots as usize)
    }

    /// Takes over a request that another bound admitted (the router's, over
    /// several engines): counts it among this engine's requests until it
    /// ends. Refused while the engine is closing, failed or not loaded.
    pub fn accept(&self, admission: Admission) -> Result<Admission, EngineError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        if let LoadState::Failed(e) = self.state() {
            return Err(e);
        }
        self.info().ok_or(EngineError::NotReady)?;
        Ok(admission.counted_in(&self.shared.bound))
    }

    /// Queues an admitted, validated request. Events arrive on the returned
    /// stream; dropping it cancels the request. If the engine thread has
    /// exited, the stream's only event is [`EngineError::Stopped`].
    pub fn submit(&self, admission: Admission, req: GenerateRequest) -> GenerationStream {
        let admission = admission.counted_in(&self.shared.bound);
        let submitted = admission.submitted();
        let prompt_tokens = req.prompt.len();
        debug_assert!(prompt_tokens > 0, "validated prompts are not empty");
        debug_assert!(
            self.info().is_none_or(|i| {
                prompt_tokens + req.max_new_tokens as usize <= i.n_ctx_slot as usize
            }),
            "validated requests fit a slot"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let strip_leading_space = req.prompt.strip_leading_space();
        let job = slot::Job {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            tokens: req.prompt.into_ids().into_iter().map(LlamaToken).collect(),
            max_new_tokens: req.max_new_tokens,
            sampling: req.sampling,
            stop: req.stop,
            deadline: req.timeout.map(|t| (submitted + t, t)),
            submitted,
            strip_leading_space,
            logprobs: req.logprobs,
            prompt_logprobs: req.prompt_logprobs,
            tx,
            _admission: admission,
        };
        if let Err(std::sync::mpsc::SendError(Command::Generate(job))) =
            self.tx.send(Command::Generate(Box::new(job)))
        {
            let _ = job.tx.send(Event::Error(EngineError::Stopped));
        }
        GenerationStream { rx, prompt_tokens }
    }

    /// Stops admitting, lets admitted requests finish, then ends the thread.
    /// Resolves once the engine thread has exited.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let _ = self.tx.send(Command::Shutdown);
        let mut rx = self.shared.state.subscribe();
        let _ = rx
            .wait_for(|s| matches!(s, LoadState::Stopped | LoadState::Failed(_)))
            .await;
    }
}

/// A whole generation ([`GenerationStream::collect_all`]).
#[derive(Debug, Clone)]
pub struct Collected {
    /// The generated text.
    pub text: String,
    /// The generated tokens' log-probabilities (when asked for).
    pub logprobs: Vec<TokenLogprob>,
    /// The prompt's log-probabilities (when asked for).
    pub prompt_logprobs: Option<PromptLogprobs>,
    /// How it ended.
    pub completion: Completion,
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
        self,
    ) -> Result<(String, Vec<TokenLogprob>, Completion), EngineError> {
        self.collect_all()
            .await
            .map(|c| (c.text, c.logprobs, c.completion))
    }

    /// Waits for the whole generation, keeping everything it reported.
    pub async fn collect_all(mut self) -> Result<Collected, EngineError> {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let mut prompt_logprobs = None;
        while let Some(ev) = self.rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Logprobs(l) => logprobs.extend(l),
                Event::PromptLogprobs(p) => prompt_logprobs = Some(p),
                Event::Done(completion) => {
                    return Ok(Collected {
                        text,
                        logprobs,
                        prompt_logprobs,
                        completion,
                    })
                }
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
