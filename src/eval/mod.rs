//! Fidelity of a quantized model against its base: perplexity of both, KL
//! divergence base‖model per token, top-1 agreement and Δp, computed the way
//! `llama-perplexity --kl-divergence` does (llama.cpp
//! `tools/perplexity/perplexity.cpp`, functions `perplexity()` and
//! `kl_divergence()`):
//!
//! 1. The text is read whole (one trailing `\n` dropped, as `-f` does) and
//!    tokenized once with the BASE model's vocabulary, adding BOS when the
//!    vocabulary asks for it, without parsing special tokens.
//! 2. It is cut into `n_chunks = min(--chunks, n_tokens / n_ctx)` consecutive,
//!    non-overlapping chunks of `n_ctx` tokens (at least `2 * n_ctx` tokens are
//!    required). Each chunk is evaluated from an empty KV cache at positions
//!    `0..n_ctx`, in batches of `n_batch`, with its first token replaced by BOS.
//! 3. Only the second half is scored: logits at positions
//!    `first = n_ctx/2 ..= n_ctx-2` predict tokens `first+1 ..= n_ctx-1`, i.e.
//!    `n_ctx - 1 - n_ctx/2` tokens per chunk (255 for 512).
//! 4. Per scored position: log-softmax of both logit rows, NLL of the actual
//!    next token for each model, `KL = Σ p_base (ln p_base − ln p_model)`,
//!    "same top p" = argmax agreement, `Δp = p_model(tok) − p_base(tok)`.
//! 5. Statistics: PPL = exp(mean NLL) ± PPL·SE; mean KLD ± SE; KLD and Δp
//!    percentiles by linear interpolation on the sorted values; RMS Δp; top-1
//!    agreement ± binomial SE — llama-perplexity's formulas.
//!
//! Differences from llama-perplexity, by design:
//! * llama-perplexity runs the base first and stores its log-probs as 16-bit
//!   codes; by default we run both models chunk by chunk and keep the base
//!   distribution exact ([`BaseLogProbs::Exact`]). [`BaseLogProbs::U16`]
//!   reproduces the 16-bit path (and its −16-nat cut-off) for digit-level
//!   comparisons.
//! * llama.cpp pads the context to a multiple of 256 and llama-perplexity
//!   uses the padded size as chunk length; we use `n_ctx` as given. Use
//!   multiples of 256 (default 512) when comparing.
//! * llama-perplexity prints no summary below 100 scored tokens; we always do.
//!
//! The llama.cpp backend can be initialised once per process, so the caller
//! owns the [`LlamaBackend`] and passes it in.

mod report;
mod runner;
mod scoring;
mod stats;

pub use report::{ChunkStats, EvalReport};
pub use scoring::{base_logprobs_u16, score, score_exact, score_u16, BaseLogProbs, TokenScore};
pub use stats::{mean_and_uncertainty, percentile, Accumulator, Estimate, Percentiles, Summary};

use llama_cpp_2::llama_backend::LlamaBackend;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors of [`evaluate`].
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("model file not found: {0}")]
    ModelNotFound(PathBuf),
    #[error("cannot load model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },
    #[error("cannot read text {path}: {source}")]
    ReadText {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("text {path} is not UTF-8")]
    TextEncoding { path: PathBuf },
    #[error("the text tokenizes to {got} tokens; at least {need} (2 x n_ctx) are needed")]
    TextTooShort { got: usize, need: usize },
    #[error("vocabularies differ: base has {base} tokens, model has {model}")]
    VocabMismatch { base: usize, model: usize },
    #[error("invalid option: {0}")]
    BadOption(String),
    #[error("cannot create llama context: {0}")]
    Context(String),
    #[error("decode failed: {0}")]
    Decode(String),
}

/// What to evaluate and how (the flags of `airavata eval`).
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Reference model (e.g. F16 GGUF).
    pub base: PathBuf,
    /// Model under test (e.g. the 4-bit GGUF).
    pub model: PathBuf,
    /// UTF-8 text file (e.g. wikitext-2 `wiki.test.raw`).
    pub text: PathBuf,
    /// Chunk length in tokens (`--ctx`, default 512).
    pub n_ctx: u32,
    /// Evaluate at most this many chunks (`--chunks`); None = all.
    pub n_chunks: Option<usize>,
    /// Tokens per decode call (llama-perplexity `-b`, default 2048, capped at n_ctx).
    pub n_batch: u32,
    /// CPU threads for llama.cpp (None = llama.cpp default).
    pub threads: Option<i32>,
    /// Layers to offload to a GPU (0 = CPU only).
    pub n_gpu_layers: u32,
    /// How the base distribution is held (see [`BaseLogProbs`]).
    pub base_logprobs: BaseLogProbs,
}

impl EvalOptions {
    /// Options with llama-perplexity's defaults.
    pub fn new(
        base: impl Into<PathBuf>,
        model: impl Into<PathBuf>,
        text: impl Into<PathBuf>,
    ) -> Self {
        Self {
            base: base.into(),
            model: model.into(),
            text: text.into(),
            n_ctx: 512,
            n_chunks: None,
            n_batch: 2048,
            threads: None,
            n_gpu_layers: 0,
            base_logprobs: BaseLogProbs::Exact,
        }
    }
}

/// Read a text file as llama-perplexity's `-f` does: whole file, one trailing
/// newline removed.
pub fn read_text(path: &Path) -> Result<String, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::ReadText {
        path: path.to_path_buf(),
        source,
    })?;
    let mut s = String::from_utf8(bytes).map_err(|_| EvalError::TextEncoding {
        path: path.to_path_buf(),
    })?;
    if s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

/// Evaluate `opts.model` against `opts.base` on the text file `opts.text`.
pub fn evaluate(backend: &LlamaBackend, opts: &EvalOptions) -> Result<EvalReport, EvalError> {
    let text = read_text(&opts.text)?;
    evaluate_text(backend, opts, &text, |_| {})
}

/// Where an evaluation stands after a chunk.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The chunk just scored.
    pub stats: &'a ChunkStats,
    /// Chunks scored so far, and in all.
    pub chunks_done: usize,
    pub chunks_total: usize,
    /// Text tokens evaluated so far (both models), and in all.
    pub tokens_done: usize,
    pub tokens_total: usize,
    /// Since the models started loading.
    pub elapsed: std::time::Duration,
    /// Since the first chunk started (the pace the ETA is taken from).
    pub scoring: std::time::Duration,
}

impl Progress<'_> {
    /// Remaining time at the pace of the chunks so far.
    pub fn eta(&self) -> std::time::Duration {
        let left = self.chunks_total.saturating_sub(self.chunks_done) as u32;
        match self.chunks_done {
            0 => std::time::Duration::ZERO,
            d => self.scoring / d as u32 * left,
        }
    }
}

/// Like [`evaluate`] but on `text` given in memory (`opts.text` is only used
/// as a label), calling `on_chunk` after each chunk (progress reporting).
pub fn evaluate_text(
    backend: &LlamaBackend,
    opts: &EvalOptions,
    text: &str,
    mut on_chunk: impl FnMut(&Progress<'_>),
) -> Result<EvalReport, EvalError> {
    let t0 = Instant::now();
    if opts.n_ctx < 4 {
        return Err(EvalError::BadOption(format!(
            "n_ctx {} is too small",
            opts.n_ctx
        )));
    }
    if opts.n_chunks == Some(0) {
        return Err(EvalError::BadOption("chunks must be > 0".into()));
    }
    let base_model = runner::load_model(backend, &opts.base, opts.n_gpu_layers)?;
    let test_model = runner::load_model(backend, &opts.model, opts.n_gpu_layers)?;
    let cfg = runner::ContextConfig {
        n_ctx: opts.n_ctx,
        n_batch: opts.n_batch,
        threads: opts.threads,
    };
    let mut base = runner::ChunkRunner::new(backend, &base_model, cfg)?;
    let mut test = runner::ChunkRunner::new(backend, &test_model, cfg)?;
    if base.n_vocab() != test.n_vocab() {
        return Err(EvalError::VocabMismatch {
            base: base.n_vocab(),
            model: test.n_vocab(),
        });
    }
    let n_vocab = base.n_vocab();

    let tokens = runner::tokenize(&base_model, text)?;
    let n_ctx = opts.n_ctx as usize;
    if tokens.len() < 2 * n_ctx {
        return Err(EvalError::TextTooShort {
            got: tokens.len(),
            need: 2 * n_ctx,
        });
    }
    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunks = opts.n_chunks.map_or(n_chunk_max, |c| c.min(n_chunk_max));
    let first = n_ctx / 2;

    let mut acc = Accumulator::default();
    let mut chunks = Vec::with_capacity(n_chunks);
    let scoring = Instant::now();
    for i in 0..n_chunks {
        let chunk = &tokens[i * n_ctx..(i + 1) * n_ctx];
        let lb = base.chunk_logits(chunk, first)?;
        let lm = test.chunk_logits(chunk, first)?;
        let scores: Vec<TokenScore> = (first..n_ctx - 1)
            .into_par_iter()
            .map(|pos| {
                let r = (pos - first) * n_vocab..(pos - first + 1) * n_vocab;
                let target = chunk[pos + 1].0 as usize;
                score(&lb[r.clone()], &lm[r], target, opts.base_logprobs)
            })
            .collect();
        let mut chunk_acc = Accumulator::default();
        for s in &scores {
            acc.push(s);
            chunk_acc.push(s);
        }
        let cs = chunk_acc.summary();
        let stats = ChunkStats {
            chunk: i,
            ppl_model: cs.ppl_model.value,
            ppl_base: cs.ppl_base.value,
            kld: cs.kld.value,
            same_top: cs.same_top.value,
        };
        on_chunk(&Progress {
            stats: &stats,
            chunks_done: i + 1,
            chunks_total: n_chunks,
            tokens_done: (i + 1) * n_ctx,
            tokens_total: n_chunks * n_ctx,
            elapsed: t0.elapsed(),
            scoring: scoring.elapsed(),
        });
        chunks.push(stats);
    }

    Ok(EvalReport {
        base: opts.base.display().to_string(),
        model: opts.model.display().to_string(),
        text: opts.text.display().to_string(),
        n_ctx,
        n_vocab,
        n_text_tokens: tokens.len(),
        n_chunks,
        base_logprobs: opts.base_logprobs,
        summary: acc.summary(),
        chunks,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
