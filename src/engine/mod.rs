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
//!   requests exist at a time, so memory does not grow with offered load
//!   (with several engines, one [`Bound`] over all of them, the router's);
//! * the engine thread ([`worker`]) first loads the model and context
//!   ([`load`]), then runs the step loop; every request ends through one
//!   `end_request` (finished, cancelled, timed out, failed, expired while
//!   waiting);
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
//!
//! This module is the facade: the handle is in [`handle`], the state it
//! shares with the engine thread in [`shared`], errors in [`error`], the `/info` report ([`ModelInfo`]) and the resolved settings
//! the worker reads in [`info`].

mod admission;
mod backend_greedy;
pub mod batch;
mod config;
pub mod devices;
mod error;
mod grammar_thread;
pub mod greedy;
mod handle;
mod info;
mod load;
pub mod logprobs;
pub mod model_load;
pub mod prompt;
mod raw_context;
pub mod request;
pub mod sampler;
mod shared;
mod slot;
pub mod stats;
pub mod stop;
pub mod utf8;
mod worker;

pub use admission::{Admission, Bound};
pub use config::{
    defaults, BackendGreedy, EngineConfig, FillGaps, FlashAttn, KvType, Placement, SplitMode,
    Toggle, ToggleHelp,
};
pub use error::EngineError;
pub use handle::{Collected, Engine, GenerationStream};
pub use info::ModelInfo;
pub use load::llama_backend;
pub use logprobs::{PromptLogprobs, TokenLogprob, TopLogprob};
pub use prompt::{ChatMessage, Role, TokenizerInfo};
pub use request::{
    Completion, Event, FinishReason, GenerateRequest, Prompt, PromptTokens, SamplingParams,
    Timings, Usage,
};
pub use shared::LoadState;
pub use stats::EngineStats;
