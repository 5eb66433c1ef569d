//! What the handles ([`super::Engine`]) and the engine thread share: the
//! lifecycle, the loaded model and its facts, the live counters, the
//! engine's admission count and its published prompt cache.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock, RwLock};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::watch;

use super::admission::Bound;
use super::info::ModelInfo;
use super::prompt::PromptFormat;
use super::{EngineError, EngineStats};

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

/// What the handles and the engine thread share.
pub(super) struct Shared {
    pub(super) stats: EngineStats,
    /// This engine's requests (its own bound when used without the router;
    /// with it, the load the router balances).
    pub(super) bound: Arc<Bound>,
    pub(super) model: OnceLock<Arc<LlamaModel>>,
    pub(super) info: OnceLock<ModelInfo>,
    /// The loaded model's chat template and end-of-turn strings.
    pub(super) format: OnceLock<PromptFormat>,
    pub(super) state: watch::Sender<LoadState>,
    pub(super) closing: AtomicBool,
    pub(super) next_id: AtomicU64,
    /// Each free slot's cached tokens (empty for a busy slot), published by
    /// the engine thread for [`Engine::cached_prefix`].
    pub(super) prompt_cache: RwLock<Vec<Arc<[LlamaToken]>>>,
}
