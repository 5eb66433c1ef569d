//! The errors of the engine boundary.

use std::time::Duration;

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
    /// The chat template could not render the conversation (it raised an
    /// exception, or a message does not fit it).
    #[error("{0}")]
    Template(String),
    /// No token could be sampled (e.g. a grammar that no token can continue).
    #[error("sampling failed: {0}")]
    Sampling(String),
}
