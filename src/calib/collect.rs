//! Runs a GGUF model through llama.cpp on calibration text and records, for
//! every weight of the `blk.*` layers, the statistics of the activations that
//! multiply it: per-column sums of squares (llama-imatrix's statistic) and,
//! optionally, diagonal blocks of `XᵀX` for calibration-aware rounding.
//!
//! The activations are read in llama.cpp's graph evaluation callback
//! (`llama_context_params.cb_eval`): for each `MUL_MAT` whose first operand is
//! a model weight, the second operand (the input rows) is copied from the
//! backend when it is not in host memory. Weights that share one input (Q, K
//! and V; gate and up) share one set of statistics.

use super::CalibError;
use crate::engine::model_load;
use crate::quant::gptq::Hessian;
use llama_cpp_sys_2 as sys;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// How statistics are collected.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Tokens per chunk (each chunk is evaluated from an empty cache, BOS first).
    pub chunk: usize,
    /// Stop after this many tokens (whole chunks).
    pub max_tokens: usize,
    /// Layers offloaded to a GPU when one is present.
    pub n_gpu_layers: u32,
    pub threads: Option<i32>,
    /// How much of each input's `XᵀX` is kept for error feedback.
    pub hessian: HessianBlocks,
    /// ggml backend libraries to load (dynamic-backends builds).
    pub backends_dir: Option<PathBuf>,
    /// Print progress on stderr.
    pub progress: bool,
    /// Stop adding chunks when the next one would end past this time
    /// (measured); fail with [`CalibError::Budget`] when fewer than
    /// `min_tokens` fit.
    pub time_budget: Option<std::time::Duration>,
    pub min_tokens: usize,
}

/// How much of each input's `XᵀX` the collector keeps for error feedback:
/// diagonal blocks of at most `max` columns, except that an input at most
/// `whole_up_to` columns wide keeps its whole matrix. The whole matrix is
/// the objective error feedback minimises; blocks bound the memory (width ×
/// block floats per input) and the rounding time (both grow with the block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HessianBlocks {
    /// Largest diagonal block, in columns; 0 keeps only the diagonal
    /// (importance, no error feedback).
    pub max: usize,
    /// Inputs at most this many columns wide keep their whole `XᵀX`.
    pub whole_up_to: usize,
}

impl HessianBlocks {
    /// The whole `XᵀX` up to 2 048 columns (16 MiB a matrix: every input of
    /// Gemma 3 270M and SmolLM2), 1 024-column blocks beyond (a 7B's 4 096-
    /// and 11 008-wide inputs). Measured on both real models, calibrated and
    /// default, replicated over calibration token counts: the whole matrix
    /// lowered Gemma's KLD 2-4 % in both languages in every replicate and left
    /// SmolLM2's calibrated KLD unchanged on average
    /// (benches/results/2026-12-06-gemma3-fidelity/hessian-blocks).
    pub const DEFAULT: Self = Self {
        max: 1024,
        whole_up_to: 2048,
    };
    /// Importance only: no error feedback.
    pub const OFF: Self = Self {
        max: 0,
        whole_up_to: 0,
    };

    /// Blocks of at most `max` columns for every input (0: importance only).
    pub fn at_most(max: usize) -> Self {
        Self {
            max,
            whole_up_to: 0,
        }
    }

    /// The largest block for an input `width` columns wide; `None` when only
    /// the diagonal is kept.
    pub fn block_for(self, width: usize) -> Option<usize> {
        let block = if width <= self.whole_up_to {
            width
        } else {
            self.max
        };
        (self.max > 0).then_some(block)
    }
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            chunk: 512,
            max_tokens: 16_384,
            n_gpu_layers: 999,
            threads: None,
            hessian: HessianBlocks::DEFAULT,
            backends_dir: None,
            progress: false,
            time_budget: None,
            min_tokens: 0,
        }
    }
}

/// Statistics of one input (shared by the weights it multiplies).
#[derive(Debug, Clone)]
pub struct InputStats {
    /// Sum of squares per column.
    pub sum_sq: Vec<f64>,
    /// Rows (tokens) summed.
    pub count: u64,
    pub hessian: Option<Hessian>,
    /// Decode step that last added to it (a shared input is added once).
    last_step: u64,
}

/// Everything collected.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub inputs: Vec<InputStats>,
    /// Weight name → index into `inputs`.
    pub weight_input: BTreeMap<String, usize>,
    pub tokens: u64,
    pub chunks: u32,
    pub chunk_size: u32,
    /// Whether the model ran with layers on a GPU.
    pub gpu: bool,
}

impl Stats {
    /// llama-imatrix's value per column (`sum_sq / count`) for each weight.
    pub fn importance(&self) -> BTreeMap<String, Vec<f32>> {
        self.weight_input
            .iter()
            .map(|(w, &i)| {
                let s = &self.inputs[i];
                let c = s.count.max(1) as f64;
                (w.clone(), s.sum_sq.iter().map(|v| (v / c) as f32).collect())
            })
            .collect()
    }
}

struct Collector {
    stats: Stats,
    /// Input tensor name → index (e.g. `attn_norm-3`).
    by_input: HashMap<String, usize>,
    step: u64,
    hessian: HessianBlocks,
    scratch: Vec<u8>,
    error: Option<String>,
    /// While set (the pace probe), no node is asked for: the graph runs
    /// unsplit and nothing is recorded.
    paused: bool,
}

/// Whether a GPU backend is registered (dynamic-backends builds with
/// `libggml-cuda.so`, or a CUDA build).
pub fn gpu_available() -> bool {
    // SAFETY: plain queries of ggml's backend registry, which is initialised
    // by `llama_backend` before this is called.
    unsafe {
        (0..sys::ggml_backend_dev_count()).any(|i| {
            let d = sys::ggml_backend_dev_get(i);
            !d.is_null() && sys::ggml_backend_dev_type(d) == sys::GGML_BACKEND_DEVICE_TYPE_GPU
        })
    }
}

/// The tensor's name as a string.
fn name_of(t: &sys::ggml_tensor) -> String {
    // SAFETY: ggml keeps `name` NUL-terminated within its 64 bytes.
    unsafe { CStr::from_ptr(t.name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The evaluation callback: with `ask`, tells the scheduler which nodes we
/// want to see; without, reads a node's input rows.
unsafe extern "C" fn eval_callback(t: *mut sys::ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    if t.is_null() || user.is_null() {
        return !ask;
    }
    // SAFETY: `user` is the `Collector` that `collect` owns for the whole
    // lifetime of the context, and llama.cpp calls back on the thread that
    // runs `llama_decode`, so no other reference to it is live.
    let c = unsafe { &mut *(user as *mut Collector) };
    if c.paused {
        return !ask;
    }
    // SAFETY: the scheduler passes a valid node whose sources are valid
    // tensors or null.
    let node = unsafe { &*t };
    if node.op != sys::GGML_OP_MUL_MAT || node.src[0].is_null() || node.src[1].is_null() {
        return !ask;
    }
    // SAFETY: checked non-null above; they are nodes of the same graph.
    let (w, x) = unsafe { (&*node.src[0], &*node.src[1]) };
    let wname = name_of(w);
    // The blocks' weights and the output matrix (`token_embd` when the
    // embeddings are tied): its rounding error lands on the logits directly.
    let wanted =
        (wname.starts_with("blk.") || wname == "output.weight" || wname == "token_embd.weight")
            && x.type_ == sys::GGML_TYPE_F32;
    if ask {
        return wanted;
    }
    if wanted && c.error.is_none() {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.add(&wname, x)));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => c.error = Some(e),
            Err(_) => c.error = Some(format!("panic while reading the input of {wname}")),
        }
    }
    true
}

impl Collector {
    fn add(&mut self, wname: &str, x: &sys::ggml_tensor) -> Result<(), String> {
        let ne0 = x.ne[0] as usize;
        let rows = (x.ne[1] * x.ne[2] * x.ne[3]) as usize;
        if x.nb[0] != 4 {
            return Err(format!("input of {wname} is not contiguous"));
        }
        let xname = format!("{}#{ne0}", name_of(x));
        let idx = match self.by_input.get(&xname) {
            Some(&i) => i,
            None => {
                let i = self.stats.inputs.len();
                let hessian = self.hessian.block_for(ne0).map(|block| {
                    let align = if ne0.is_multiple_of(256) { 256 } else { 32 };
                    Hessian::new(ne0, block, align)
                });
                self.stats.inputs.push(InputStats {
                    sum_sq: vec![0.0; ne0],
                    count: 0,
                    hessian,
                    last_step: u64::MAX,
                });
                self.by_input.insert(xname, i);
                i
            }
        };
        match self.stats.weight_input.get(wname) {
            Some(&j) if j != idx => {
                return Err(format!("{wname} multiplies two different inputs"));
            }
            Some(_) => {}
            None => {
                self.stats.weight_input.insert(wname.to_string(), idx);
            }
        }
        let s = &mut self.stats.inputs[idx];
        if s.last_step == self.step {
            return Ok(()); // a weight sharing this input already added it
        }
        s.last_step = self.step;
        // Gather the rows as one contiguous T × ne0 matrix.
        let row_bytes = ne0 * 4;
        self.scratch.resize(rows * row_bytes, 0);
        // SAFETY: `x` is a valid tensor of this graph evaluation; `buffer` is
        // its backend buffer (checked non-null).
        let host = !x.buffer.is_null() && unsafe { sys::ggml_backend_buffer_is_host(x.buffer) };
        if x.buffer.is_null() {
            return Err(format!("input of {wname} has no buffer"));
        }
        let contiguous = x.nb[1] == row_bytes
            && x.nb[2] == row_bytes * x.ne[1] as usize
            && x.nb[3] == x.nb[2] * x.ne[2] as usize;
        if !contiguous {
            return Err(format!("input of {wname} has strided rows"));
        }
        if host {
            // SAFETY: a host buffer's `data` holds the tensor's `rows ×
            // row_bytes` contiguous bytes (checked above) during the callback.
            let src = unsafe { std::slice::from_raw_parts(x.data as *const u8, rows * row_bytes) };
            self.scratch.copy_from_slice(src);
        } else {
            // SAFETY: copies exactly the tensor's bytes into `scratch`, which
            // has that size.
            unsafe {
                sys::ggml_backend_tensor_get(
                    x as *const _ as *mut _,
                    self.scratch.as_mut_ptr() as *mut c_void,
                    0,
                    rows * row_bytes,
                )
            };
        }
        let xs: Vec<f32> = self
            .scratch
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if xs.iter().any(|v| !v.is_finite()) {
            return Err(format!("non-finite activation in the input of {wname}"));
        }
        accumulate(s, &xs, rows, ne0);
        Ok(())
    }
}

/// Adds `rows × n` values to `s`.
fn accumulate(s: &mut InputStats, xs: &[f32], rows: usize, n: usize) {
    s.sum_sq
        .par_chunks_mut(256)
        .enumerate()
        .for_each(|(c, acc)| {
            let c0 = c * 256;
            for r in 0..rows {
                let row = &xs[r * n + c0..r * n + c0 + acc.len()];
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += (v as f64) * (v as f64);
                }
            }
        });
    s.count += rows as u64;
    if let Some(h) = &mut s.hessian {
        h.add_rows(xs, rows);
    }
}

/// Owns a llama.cpp model and context (freed on drop).
struct Loaded {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // SAFETY: both were created by llama.cpp in `collect`, are freed only
        // here, context first.
        unsafe {
            if !self.ctx.is_null() {
                sys::llama_free(self.ctx);
            }
            if !self.model.is_null() {
                sys::llama_model_free(self.model);
            }
        }
    }
}

/// Tokenize `text` with the model's vocabulary (BOS added when it wants one).
fn tokenize(vocab: *const sys::llama_vocab, text: &str) -> Result<Vec<i32>, CalibError> {
    let len = i32::try_from(text.len())
        .map_err(|_| CalibError::Text("calibration text over 2 GiB".into()))?;
    let mut toks = vec![0i32; text.len() + 2];
    // SAFETY: `text` is valid for `len` bytes and `toks` has room for
    // `toks.len()` tokens; llama.cpp writes at most that many.
    let n = unsafe {
        sys::llama_tokenize(
            vocab,
            text.as_ptr() as *const _,
            len,
            toks.as_mut_ptr(),
            toks.len() as i32,
            true,
            false,
        )
    };
    if n < 0 {
        return Err(CalibError::Text(format!(
            "tokenization needs {} tokens",
            -n
        )));
    }
    toks.truncate(n as usize);
    Ok(toks)
}

/// Tokens of the pace probe: a full chunk can take minutes on a slow CPU
/// (~13 min for a 7B's 512 tokens on 2 cores without AMX), a time budget must
/// not be spent finding that out.
const PROBE_TOKENS: usize = 64;
/// How far past the budget the probe's estimate must be to stop before the
/// first chunk.
const PROBE_MARGIN: f64 = 1.5;

/// The forward pace on this machine, measured before any statistics are
/// collected: after a short warm-up decode (thread start, first-touch of the
/// weights), `PROBE_TOKENS` tokens of the text from an empty cache. Returns
/// (tokens, seconds); the per-token cost at a full chunk is a little lower, so
/// the estimate leans slow.
fn probe_pace(
    tokens: &[i32],
    chunk: usize,
    decode: impl Fn(&[i32], &str) -> Result<(), CalibError>,
) -> Result<(usize, f64), CalibError> {
    let n = PROBE_TOKENS.min(chunk).min(tokens.len());
    decode(&tokens[..n.min(8)], "the warm-up")?;
    let t = std::time::Instant::now();
    decode(&tokens[..n], "the pace probe")?;
    Ok((n, t.elapsed().as_secs_f64()))
}

/// Run `model` over `text` and collect statistics.
pub fn collect(model: &Path, text: &str, opts: &CollectOptions) -> Result<Stats, CalibError> {
    collect_cancellable(model, text, opts, &AtomicBool::new(false))
}

/// llama.cpp's abort callback: the backends poll it between graph nodes, so a
/// set flag stops a chunk's forward pass (up to minutes on CPU) within one op.
unsafe extern "C" fn abort_requested(data: *mut c_void) -> bool {
    // SAFETY: `data` is the `&AtomicBool` that `collect_cancellable` borrows
    // for its whole run, and the context that calls this is freed before it
    // returns.
    !data.is_null() && unsafe { &*(data as *const AtomicBool) }.load(Ordering::Relaxed)
}

/// [`collect`], stopping with [`CalibError::Cancelled`] as soon as `cancel` is
/// set (Ctrl-C), in the middle of a forward pass too.
pub fn collect_cancellable(
    model: &Path,
    text: &str,
    opts: &CollectOptions,
    cancel: &AtomicBool,
) -> Result<Stats, CalibError> {
    crate::engine::llama_backend(opts.backends_dir.as_deref())
        .map_err(|e| CalibError::Llama(e.to_string()))?;
    let gpu = gpu_available() && opts.n_gpu_layers > 0;
    if !model.is_file() {
        return Err(CalibError::Llama(format!(
            "{}: no such file",
            model.display()
        )));
    }
    let mut loaded = Loaded {
        model: std::ptr::null_mut(),
        ctx: std::ptr::null_mut(),
    };
    let placement = model_load::ModelPlacement::offload(if gpu { opts.n_gpu_layers } else { 0 });
    loaded.model = model_load::load_raw(model, &placement)
        .map_err(CalibError::Llama)?
        .as_ptr();
    let chunk = opts.chunk.max(16);
    let mut collector = Box::new(Collector {
        stats: Stats {
            chunk_size: chunk as u32,
            gpu,
            ..Default::default()
        },
        by_input: HashMap::new(),
        step: 0,
        hessian: opts.hessian,
        scratch: Vec::new(),
        error: None,
        paused: false,
    });
    // SAFETY: `loaded.model` is a loaded model; the callback's user data is
    // the boxed collector, which outlives the context (dropped after it).
    loaded.ctx = unsafe {
        let mut cp = sys::llama_context_default_params();
        cp.n_ctx = chunk as u32;
        cp.n_batch = chunk as u32;
        cp.n_ubatch = chunk as u32;
        cp.n_seq_max = 1;
        if let Some(t) = opts.threads {
            cp.n_threads = t;
            cp.n_threads_batch = t;
        }
        cp.cb_eval = Some(eval_callback);
        cp.cb_eval_user_data = &mut *collector as *mut Collector as *mut c_void;
        cp.abort_callback = Some(abort_requested);
        cp.abort_callback_data = cancel as *const AtomicBool as *mut c_void;
        sys::llama_init_from_model(loaded.model, cp)
    };
    if loaded.ctx.is_null() {
        return Err(CalibError::Llama(
            "llama.cpp could not create a context".into(),
        ));
    }
    // SAFETY: the model is loaded; the vocabulary lives as long as it.
    let (vocab, add_bos) = unsafe {
        let v = sys::llama_model_get_vocab(loaded.model);
        (v, sys::llama_vocab_get_add_bos(v))
    };
    // SAFETY: as above.
    let bos = unsafe { sys::llama_vocab_bos(vocab) };
    let tokens = tokenize(vocab, text)?;
    let n_chunks = (tokens.len() / chunk)
        .min(opts.max_tokens.div_ceil(chunk))
        .max(1);
    if tokens.len() < chunk {
        return Err(CalibError::Text(format!(
            "calibration text has {} tokens, fewer than one chunk of {chunk}",
            tokens.len()
        )));
    }
    // From an empty cache, BOS first when the model wants one.
    let decode = |part: &[i32], what: &str| -> Result<(), CalibError> {
        if cancel.load(Ordering::Relaxed) {
            return Err(CalibError::Cancelled);
        }
        let mut toks = part.to_vec();
        if add_bos {
            toks[0] = bos;
        }
        // SAFETY: the context is valid; `toks` outlives the decode call, and
        // the batch only borrows it.
        let rc = unsafe {
            sys::llama_memory_clear(sys::llama_get_memory(loaded.ctx), true);
            let batch = sys::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32);
            sys::llama_decode(loaded.ctx, batch)
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(CalibError::Cancelled);
        }
        if rc != 0 {
            return Err(CalibError::Llama(format!(
                "llama_decode failed ({rc}) on {what}"
            )));
        }
        Ok(())
    };
    if let Some(budget) = opts.time_budget.filter(|_| opts.min_tokens > 0) {
        collector.paused = true;
        let probe = probe_pace(&tokens, chunk, decode);
        collector.paused = false;
        let (n, secs) = probe?;
        let need = opts.min_tokens.div_ceil(chunk) * chunk;
        let needed = secs * need as f64 / n as f64;
        if opts.progress {
            eprintln!(
                "calibration pace: {n} tokens in {secs:.1} s, so {need} tokens take about {needed:.0} s \
                 (budget {:.0} s)",
                budget.as_secs_f64()
            );
        }
        // The probe leans slow (64 tokens cost more per token than a chunk,
        // 1.3-1.5x on a 7B): only a clear miss stops here; nearer the line
        // the first chunk's pace decides (below).
        if needed > PROBE_MARGIN * budget.as_secs_f64() {
            return Err(CalibError::Budget {
                tokens: n,
                secs,
                min_tokens: opts.min_tokens,
                budget: budget.as_secs_f64(),
                needed,
            });
        }
    }
    let t0 = std::time::Instant::now();
    for (i, part) in tokens.chunks_exact(chunk).take(n_chunks).enumerate() {
        collector.step = i as u64;
        let rc = decode(part, &format!("chunk {i}"));
        if let Some(e) = collector.error.take() {
            return Err(CalibError::Llama(e));
        }
        rc?;
        collector.stats.tokens += chunk as u64;
        collector.stats.chunks += 1;
        if let Some(budget) = opts.time_budget {
            let done = i + 1;
            let per_chunk = t0.elapsed() / done as u32;
            // Chunks the minimum needs, at the pace measured so far: give up
            // as soon as it cannot fit rather than when the budget is spent.
            let short = (collector.stats.tokens as usize) < opts.min_tokens;
            let need = opts.min_tokens.div_ceil(chunk);
            let hopeless = short && per_chunk * need as u32 > budget;
            if hopeless || (done < n_chunks && t0.elapsed() + per_chunk > budget) {
                if short {
                    return Err(CalibError::Budget {
                        tokens: collector.stats.tokens as usize,
                        secs: t0.elapsed().as_secs_f64(),
                        min_tokens: opts.min_tokens,
                        budget: budget.as_secs_f64(),
                        needed: (per_chunk * need as u32).as_secs_f64(),
                    });
                }
                break;
            }
        }
        if opts.progress {
            let done = i + 1;
            let elapsed = t0.elapsed().as_secs_f64();
            let per_chunk = elapsed / done as f64;
            // Under a budget, the chunks that fit at this pace.
            let planned = opts.time_budget.map_or(n_chunks, |b| {
                n_chunks.min(((b.as_secs_f64() / per_chunk) as usize).max(done))
            });
            let eta = per_chunk * (planned - done) as f64;
            eprint!(
                "\rcalibrating: chunk {done}/{planned} ({elapsed:.1} s, about {eta:.0} s left)"
            );
        }
    }
    if opts.progress {
        eprintln!();
    }
    drop(loaded);
    let stats = std::mem::take(&mut collector.stats);
    if stats.weight_input.is_empty() {
        return Err(CalibError::Llama(
            "no weight inputs were seen (is this a llama.cpp model with blk.* weights?)".into(),
        ));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::HessianBlocks;

    #[test]
    fn narrow_inputs_keep_their_whole_xtx_by_default() {
        let d = HessianBlocks::DEFAULT;
        assert_eq!(d.block_for(576), Some(576));
        assert_eq!(d.block_for(2048), Some(2048));
        assert_eq!(d.block_for(2049), Some(1024));
        assert_eq!(d.block_for(11008), Some(1024));
        // An explicit size applies to every input; 0 keeps only the diagonal.
        assert_eq!(HessianBlocks::at_most(512).block_for(576), Some(512));
        assert_eq!(HessianBlocks::at_most(0).block_for(576), None);
        assert_eq!(HessianBlocks::OFF.block_for(11008), None);
    }
}
