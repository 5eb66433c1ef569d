//! llama.cpp side of the evaluation: loading a model, tokenizing, and getting
//! the logits of the scored half of each chunk.

use super::EvalError;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::Path;

/// Load a GGUF model, with `n_gpu_layers` offloaded.
pub fn load_model(
    backend: &LlamaBackend,
    path: &Path,
    n_gpu_layers: u32,
) -> Result<LlamaModel, EvalError> {
    if !path.is_file() {
        return Err(EvalError::ModelNotFound(path.to_path_buf()));
    }
    let _ = backend; // the backends are loaded; the model loads through them
    crate::engine::model_load::load(
        path,
        &crate::engine::model_load::ModelPlacement::offload(n_gpu_layers),
    )
    .map_err(|message| EvalError::ModelLoad {
        path: path.to_path_buf(),
        message,
    })
}

/// Context settings shared by both models.
#[derive(Debug, Clone, Copy)]
pub struct ContextConfig {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: Option<i32>,
}

/// One model with a context sized for a chunk.
pub struct ChunkRunner<'m> {
    ctx: LlamaContext<'m>,
    n_vocab: usize,
    n_batch: usize,
    add_bos: bool,
    bos: LlamaToken,
}

impl<'m> ChunkRunner<'m> {
    pub fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        cfg: ContextConfig,
    ) -> Result<Self, EvalError> {
        let n_ctx =
            NonZeroU32::new(cfg.n_ctx).ok_or(EvalError::BadOption("n_ctx must be > 0".into()))?;
        let n_batch = cfg.n_batch.clamp(1, cfg.n_ctx);
        let mut params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch.min(512))
            .with_n_seq_max(1);
        if let Some(t) = cfg.threads {
            params = params.with_n_threads(t).with_n_threads_batch(t);
        }
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| EvalError::Context(e.to_string()))?;
        let vocab = model.vocab();
        let n_vocab = usize::try_from(vocab.n_tokens())
            .map_err(|_| EvalError::Context("negative vocabulary size".into()))?;
        Ok(Self {
            ctx,
            n_vocab,
            n_batch: n_batch as usize,
            add_bos: vocab.should_add_bos(),
            bos: vocab.bos(),
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Evaluate one chunk from an empty KV cache and return the logits of
    /// positions `first .. chunk.len()-1` (row-major, `n_vocab` per row): the
    /// rows that predict tokens `first+1 ..= chunk.len()-1`.
    ///
    /// As llama-perplexity: the chunk's first token is replaced by BOS when the
    /// vocabulary adds BOS, positions start at 0, batches of `n_batch` tokens.
    pub fn chunk_logits(
        &mut self,
        chunk: &[LlamaToken],
        first: usize,
    ) -> Result<Vec<f32>, EvalError> {
        let n = chunk.len();
        let last = n - 1;
        let mut out = Vec::with_capacity((last - first) * self.n_vocab);
        self.ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(self.n_batch, 1);
        for (j, part) in chunk.chunks(self.n_batch).enumerate() {
            batch.clear();
            let start = j * self.n_batch;
            for (k, &tok) in part.iter().enumerate() {
                let pos = start + k;
                let tok = if pos == 0 && self.add_bos {
                    self.bos
                } else {
                    tok
                };
                let want = pos >= first && pos < last;
                batch
                    .add(tok, pos as i32, &[0], want)
                    .map_err(|e| EvalError::Decode(e.to_string()))?;
            }
            self.ctx
                .decode(&mut batch)
                .map_err(|e| EvalError::Decode(e.to_string()))?;
            for k in 0..part.len() {
                let pos = start + k;
                if pos >= first && pos < last {
                    out.extend_from_slice(self.ctx.get_logits_ith(k as i32));
                }
            }
        }
        Ok(out)
    }
}

/// Tokenize like llama-perplexity (`common_tokenize(ctx, text, true)`): add
/// BOS if the vocabulary wants it, special tokens are NOT parsed. Like
/// llama-perplexity, refuse vocabularies that append EOS.
pub fn tokenize(model: &LlamaModel, text: &str) -> Result<Vec<LlamaToken>, EvalError> {
    let vocab = model.vocab();
    if vocab.should_add_eos() {
        return Err(EvalError::BadOption(
            "the base vocabulary appends EOS; llama-perplexity scoring assumes it does not".into(),
        ));
    }
    Ok(vocab.tokenize(text.as_bytes(), true, false))
}
