//! The engine thread: owns the llama.cpp context and runs the batching loop.

use std::collections::VecDeque;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use super::batch::{self, SlotView, Work};
use super::greedy;
use super::info::model_info;
use super::prompt_cache::{common_prefix, pick_slot};
use super::request::{Completion, Event, FinishReason, SamplingParams, Timings, Usage};
use super::stats::Phase;
use super::stop::StopMatcher;
use super::utf8::Utf8Accumulator;
use super::{sampler, EngineConfig, EngineError, FlashAttn, LoadState, Shared, Ticket};

/// A request admitted by [`super::Engine::generate`].
pub(super) struct Job {
    pub id: u64,
    pub tokens: Vec<LlamaToken>,
    pub max_new_tokens: u32,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub deadline: Option<(Instant, Duration)>,
    pub submitted: Instant,
    pub strip_leading_space: bool,
    pub tx: mpsc::UnboundedSender<Event>,
    pub _ticket: Ticket,
}

pub(super) enum Command {
    Generate(Box<Job>),
    Shutdown,
}

/// A request that holds a slot.
struct Active {
    job: Box<Job>,
    sampler: LlamaSampler,
    /// Tokens of this sequence in the KV cache.
    n_past: usize,
    /// Prompt tokens served from the slot's prompt cache.
    cached: usize,
    /// Sampled token not yet fed back.
    pending: Option<LlamaToken>,
    /// Sampled tokens already fed back (in the KV cache after the prompt).
    fed: Vec<LlamaToken>,
    /// Plain greedy (argmax over the logits, no sampler state).
    greedy: bool,
    n_generated: u32,
    utf8: Utf8Accumulator,
    stop: StopMatcher,
    /// Index in the current batch whose logits this slot samples.
    logits_at: Option<i32>,
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Active {
    fn prefill_remaining(&self) -> usize {
        self.job.tokens.len().saturating_sub(self.n_past)
    }

    /// The tokens whose KV this sequence holds, in order.
    fn kv_tokens(&self) -> Vec<LlamaToken> {
        let prompt = self.n_past.min(self.job.tokens.len());
        let mut t = Vec::with_capacity(self.n_past);
        t.extend_from_slice(&self.job.tokens[..prompt]);
        t.extend_from_slice(&self.fed);
        t
    }
}

pub(super) fn run(config: EngineConfig, shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Command>) {
    // A panic inside llama-cpp-2 must not leave /health saying "ok".
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_inner(&config, &shared, rx)
    }));
    let end = match outcome {
        Ok(Ok(())) => LoadState::Stopped,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "engine stopped");
            LoadState::Failed(e)
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %msg, "engine thread panicked");
            LoadState::Failed(EngineError::Backend(format!(
                "engine thread panicked: {msg}"
            )))
        }
    };
    shared.stats.running.store(0, Ordering::Relaxed);
    shared.state.send_replace(end);
}

fn run_inner(
    config: &EngineConfig,
    shared: &Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
) -> Result<(), EngineError> {
    let backend = super::llama_backend(config.backends_dir.as_deref())?;
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
    let model_params = LlamaModelParams::default().with_n_gpu_layers(n_gpu_layers);
    let model = Arc::new(
        LlamaModel::load_from_file(backend, &config.model_path, &model_params)
            .map_err(|e| EngineError::Load(format!("{}: {e}", config.model_path.display())))?,
    );

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
    let n_batch = config.batch_size.max(config.parallel).max(1);
    // By default one KV stream per slot (not unified): a sequence's cells sit
    // at the same indices whatever else is running, so batched greedy output
    // matches serial output (rarely not: llama.cpp's CPU kernels are not fully
    // batch-invariant), and attention only spans the slot's own cells. `--kv-unified` shares one stream, which lets llama.cpp evaluate a
    // step that mixes decode tokens and prompt chunks in one pass.
    let n_seq_max = config.parallel;
    // On CPU, llama.cpp's flash-attention path gives results that depend on
    // the shape of the batch (F16 accumulation, kernel choice by batch size),
    // so a greedy answer would change with the server's load (measured: the
    // 16-concurrent test fails with it on). `auto` therefore means off when
    // nothing is offloaded, and llama.cpp's own choice on a GPU.
    let flash_attn = match config.flash_attn {
        FlashAttn::Auto if n_gpu_layers == 0 || !backend.supports_gpu_offload() => FlashAttn::Off,
        other => other,
    };
    let fa = match flash_attn {
        FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
    };
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(n_seq_max)
        .with_kv_unified(config.kv_unified)
        .with_n_threads(threads_i32)
        .with_n_threads_batch(threads_i32)
        .with_flash_attention_policy(fa);
    let ctx = model
        .new_context(backend, ctx_params)
        .map_err(|e| EngineError::Load(format!("creating the context: {e}")))?;
    let n_ctx = ctx.n_ctx();

    let n_ctx_slot = n_ctx as usize / config.parallel as usize;
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
        &model,
        backend.supports_gpu_offload(),
        n_gpu_layers,
        threads,
        n_ctx,
        n_ctx_slot,
        n_batch,
        flash_attn,
    );
    tracing::info!(
        model = %info.description,
        n_ctx,
        n_ctx_slot,
        slots = config.parallel,
        n_batch,
        kv_unified = config.kv_unified,
        prompt_cache = config.cache_prompts,
        "model loaded"
    );
    let stats = &shared.stats;
    stats
        .kv_total_cells
        .store(n_ctx as usize, Ordering::Relaxed);
    stats.kv_used_cells.store(0, Ordering::Relaxed);
    let _ = shared.model.set(Arc::clone(&model));
    let _ = shared.info.set(info);
    shared.state.send_replace(LoadState::Ready);

    let mut lp = Loop {
        model: &model,
        ctx,
        shared,
        slots: (0..config.parallel).map(|_| None).collect(),
        order: Vec::new(),
        pending: VecDeque::new(),
        slot_tokens: vec![Vec::new(); config.parallel as usize],
        cache_prompts: config.cache_prompts,
        kv_unified: config.kv_unified,
        batch: LlamaBatch::new(n_batch as usize, 1),
        n_batch: n_batch as usize,
        emits: Vec::new(),
        rx,
        closing: false,
        step_delay: config.step_delay,
    };
    lp.run();
    Ok(())
}

fn pos(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// A picked token whose text is still to be produced.
struct Emit {
    slot: usize,
    /// The request it belongs to (the slot may have been freed meanwhile).
    id: u64,
    token: LlamaToken,
    /// The request's first token (a leading space may be stripped).
    first: bool,
    /// The request's last token (max_new_tokens reached).
    last: bool,
}

struct Loop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    shared: &'m Arc<Shared>,
    slots: Vec<Option<Active>>,
    /// Occupied slots in admission order.
    order: Vec<usize>,
    pending: VecDeque<Box<Job>>,
    /// Tokens whose KV each free slot still holds (its last request's prompt
    /// and output), for the next request that starts the same way.
    slot_tokens: Vec<Vec<LlamaToken>>,
    cache_prompts: bool,
    kv_unified: bool,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    /// Tokens picked in the last step, their text not yet sent.
    emits: Vec<Emit>,
    rx: mpsc::UnboundedReceiver<Command>,
    closing: bool,
    step_delay: Option<Duration>,
}

impl Loop<'_> {
    fn run(&mut self) {
        loop {
            if !self.receive() {
                break;
            }
            self.expire_pending();
            self.assign_slots();
            self.drop_cancelled();
            if self.order.is_empty() {
                continue;
            }
            self.step();
            if let Some(d) = self.step_delay {
                std::thread::sleep(d);
            }
        }
    }

    /// Pulls commands; blocks when idle. Returns false when the loop should end.
    fn receive(&mut self) -> bool {
        let idle = self.order.is_empty() && self.pending.is_empty();
        if idle {
            if self.closing {
                return false;
            }
            match self.rx.blocking_recv() {
                Some(cmd) => self.handle(cmd),
                None => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => self.handle(cmd),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        true
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Generate(job) => self.pending.push_back(job),
            Command::Shutdown => self.closing = true,
        }
    }

    fn expire_pending(&mut self) {
        let now = Instant::now();
        let stats = &self.shared.stats;
        self.pending.retain(|job| {
            if job.tx.is_closed() {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            if let Some((deadline, limit)) = job.deadline {
                if now >= deadline {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    let _ = job.tx.send(Event::Error(EngineError::Timeout(limit)));
                    return false;
                }
            }
            true
        });
    }

    fn assign_slots(&mut self) {
        while let Some(job) = self.pending.pop_front() {
            let free = self.slots.iter().map(Option::is_none);
            let Some(slot) = pick_slot(free, &self.slot_tokens, &job.tokens) else {
                self.pending.push_front(job);
                return;
            };
            let active = self.start(slot, job);
            self.slots[slot] = Some(active);
            self.order.push(slot);
            self.shared.stats.running.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start(&mut self, slot: usize, job: Box<Job>) -> Active {
        let now = Instant::now();
        // Keep the cached prefix the prompt shares with the slot's previous
        // sequence, minus at least one token: the last prompt token must be
        // evaluated to have logits to sample from.
        let common = common_prefix(&self.slot_tokens[slot], &job.tokens)
            .min(job.tokens.len().saturating_sub(1));
        let seq = Some(slot as u32);
        let trimmed = common > 0
            && matches!(
                self.ctx
                    .clear_kv_cache_seq(seq, u32::try_from(common).ok(), None),
                Ok(true)
            );
        let cached = if trimmed {
            common
        } else {
            let _ = self.ctx.clear_kv_cache_seq(seq, None, None);
            0
        };
        self.slot_tokens[slot].clear();
        let greedy = sampler::is_plain_greedy(&job.sampling);
        let mut sampler = sampler::build(&job.sampling, self.model.n_vocab());
        if sampler::uses_history(&job.sampling) {
            sampler.accept_many(job.tokens.iter());
        }
        let stats = &self.shared.stats;
        stats.queue_time.observe(now - job.submitted);
        stats
            .cached_prompt_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
        tracing::debug!(
            id = job.id,
            slot,
            prompt = job.tokens.len(),
            cached,
            "slot assigned"
        );
        let stop = StopMatcher::new(job.stop.clone());
        Active {
            job,
            sampler,
            n_past: cached,
            cached,
            pending: None,
            fed: Vec::new(),
            greedy,
            n_generated: 0,
            utf8: Utf8Accumulator::new(),
            stop,
            logits_at: None,
            started: now,
            first_token: None,
            last_token: None,
        }
    }

    /// Frees slots whose client went away or whose deadline passed.
    fn drop_cancelled(&mut self) {
        let now = Instant::now();
        for slot in self.order.clone() {
            let Some(a) = self.slots[slot].as_ref() else {
                continue;
            };
            if a.job.tx.is_closed() {
                self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id = a.job.id, slot, "client gone; cancelling");
                self.free(slot);
            } else if let Some((deadline, limit)) = a.job.deadline {
                if now >= deadline {
                    self.shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    self.free_then_send(slot, Event::Error(EngineError::Timeout(limit)));
                }
            }
        }
    }

    /// Frees the slot, then sends the request's final event, so a client that
    /// has its answer never sees the slot still counted as busy.
    fn free_then_send(&mut self, slot: usize, event: Event) {
        let failed = matches!(event, Event::Error(EngineError::Decode(_)));
        let tx = self.slots[slot].as_ref().map(|a| a.job.tx.clone());
        self.release(slot, !failed);
        if let Some(tx) = tx {
            let _ = tx.send(event);
        }
    }

    /// Ends the slot's request. Its KV cells stay as the slot's prompt cache
    /// (unless caching is off or `keep` is false, e.g. after a failed decode).
    fn free(&mut self, slot: usize) {
        self.release(slot, true);
    }

    fn release(&mut self, slot: usize, keep: bool) {
        let kept = match self.slots[slot].take() {
            Some(a) => {
                self.shared.stats.running.fetch_sub(1, Ordering::Relaxed);
                if keep && self.cache_prompts {
                    a.kv_tokens()
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        self.order.retain(|s| *s != slot);
        if kept.is_empty() {
            let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
        }
        self.slot_tokens[slot] = kept;
        self.update_kv_usage();
    }

    fn update_kv_usage(&self) {
        let (mut used, mut cached) = (0, 0);
        for (a, tokens) in self.slots.iter().zip(&self.slot_tokens) {
            match a {
                Some(a) => used += a.n_past,
                None => cached += tokens.len(),
            }
        }
        let stats = &self.shared.stats;
        stats.kv_used_cells.store(used, Ordering::Relaxed);
        stats.kv_cached_cells.store(cached, Ordering::Relaxed);
    }

    /// One `decode` over all occupied slots.
    fn step(&mut self) {
        let t_plan = Instant::now();
        let views: Vec<SlotView> = self
            .order
            .iter()
            .filter_map(|&slot| {
                self.slots[slot].as_ref().map(|a| SlotView {
                    slot,
                    decoding: a.pending.is_some(),
                    prefill_remaining: a.prefill_remaining(),
                })
            })
            .collect();
        let mut plan = batch::plan(&views, self.n_batch);
        // llama.cpp splits a multi-stream batch into micro-batches of
        // consecutive sequence ids; ascending order keeps their number low.
        plan.sort_by_key(Work::slot);
        self.batch.clear();
        let mut fed: Vec<(usize, usize)> = Vec::with_capacity(plan.len());
        for work in &plan {
            let added = match *work {
                Work::Decode { slot } => self.add_decode(slot),
                Work::Prefill {
                    slot,
                    n_tokens,
                    finishes,
                } => self.add_prefill(slot, n_tokens, finishes),
            };
            match added {
                Ok((slot, n)) => fed.push((slot, n)),
                Err(e) => {
                    tracing::error!(error = %e, "building the batch failed");
                    self.fail_all(EngineError::Decode(e));
                    return;
                }
            }
        }
        if self.batch.n_tokens() == 0 {
            self.flush_emits();
            return;
        }
        let t_decode = Instant::now();
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, "decode failed");
            for (slot, _) in fed {
                self.fail(slot, EngineError::Decode(e.to_string()));
            }
            return;
        }
        let t_launched = Instant::now();
        // The backend computes the step; meanwhile the previous step's tokens
        // become text. Requests ended by a stop string leave here.
        self.flush_emits();
        let t_sync = Instant::now();
        self.ctx.synchronize();
        let t_sample = Instant::now();
        let stats = &self.shared.stats;
        for &(slot, n) in &fed {
            if let Some(a) = self.slots[slot].as_mut() {
                match a.pending.take() {
                    Some(token) => a.fed.push(token),
                    None => {
                        stats.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                a.n_past += n;
            }
        }
        // Counted before any answer goes out, so a client that has its last
        // token sees this step in /metrics.
        self.record_step(&plan, [t_plan, t_decode, t_launched, t_sync, t_sample]);
        let picks = self.pick_greedy(&fed);
        for (&(slot, _), pick) in fed.iter().zip(picks) {
            self.sample(slot, pick);
        }
        self.update_kv_usage();
        self.shared
            .stats
            .steps
            .add(Phase::Sample, t_sample.elapsed());
    }

    /// The argmax of every greedy slot's logits in this step, side by side;
    /// one entry per `fed` slot (`None`: not greedy, or no logits this step).
    fn pick_greedy(&self, fed: &[(usize, usize)]) -> Vec<Option<LlamaToken>> {
        let mut at = Vec::with_capacity(fed.len());
        let mut rows: Vec<&[f32]> = Vec::with_capacity(fed.len());
        for &(slot, _) in fed {
            let idx = self.slots[slot]
                .as_ref()
                .filter(|a| a.greedy)
                .and_then(|a| a.logits_at);
            at.push(idx.map(|_| rows.len()));
            if let Some(idx) = idx {
                rows.push(self.ctx.get_logits_ith(idx));
            }
        }
        let best = greedy::argmax_rows(&rows);
        at.into_iter()
            .map(|r| {
                let i = best[r?]?;
                Some(LlamaToken(i32::try_from(i).unwrap_or(i32::MAX)))
            })
            .collect()
    }

    /// Adds one step's shape and its first phases to the profile.
    fn record_step(&self, plan: &[Work], t: [Instant; 5]) {
        let p = &self.shared.stats.steps;
        p.add(Phase::Plan, t[1] - t[0]);
        p.add(Phase::Decode, t[2] - t[1]);
        // t[2]..t[3] is the emit phase, counted by `flush_emits`.
        p.add(Phase::Sync, t[4] - t[3]);
        let mixed = plan.iter().any(|w| matches!(w, Work::Prefill { .. }));
        let kind = if mixed { &p.mixed } else { &p.decode_only };
        kind.fetch_add(1, Ordering::Relaxed);
        let tokens = self.batch.n_tokens().max(0) as u64;
        p.tokens.fetch_add(tokens, Ordering::Relaxed);
        let micro = batch::micro_batches(plan, self.kv_unified, self.n_batch) as u64;
        p.micro_batches.fetch_add(micro, Ordering::Relaxed);
    }

    fn add_decode(&mut self, slot: usize) -> Result<(usize, usize), String> {
        let idx = self.batch.n_tokens();
        let a = self.slots[slot].as_mut().ok_or("empty slot")?;
        let token = a.pending.ok_or("no pending token")?;
        self.batch
            .add(token, pos(a.n_past), &[pos(slot)], true)
            .map_err(|e| e.to_string())?;
        a.logits_at = Some(idx);
        Ok((slot, 1))
    }

    fn add_prefill(
        &mut self,
        slot: usize,
        n_tokens: usize,
        finishes: bool,
    ) -> Result<(usize, usize), String> {
        let a = self.slots[slot].as_mut().ok_or("empty slot")?;
        let start = a.n_past;
        for i in 0..n_tokens {
            let last = finishes && i + 1 == n_tokens;
            let token = *a.job.tokens.get(start + i).ok_or("prompt index")?;
            if last {
                a.logits_at = Some(self.batch.n_tokens());
            }
            self.batch
                .add(token, pos(start + i), &[pos(slot)], last)
                .map_err(|e| e.to_string())?;
        }
        if !finishes {
            a.logits_at = None;
        }
        Ok((slot, n_tokens))
    }

    /// Picks the next token for `slot` if its logits are in this batch (`pick`:
    /// the greedy choice already made for the whole step). The token is fed to
    /// the next step at once; its text is produced by [`Self::flush_emits`]
    /// while that step runs on the backend.
    fn sample(&mut self, slot: usize, pick: Option<LlamaToken>) {
        let stats = &self.shared.stats;
        let Some(a) = self.slots[slot].as_mut() else {
            return;
        };
        let Some(idx) = a.logits_at.take() else {
            return;
        };
        let token = match pick {
            Some(t) => t,
            None => a.sampler.sample(&self.ctx, idx),
        };
        let now = Instant::now();
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        match a.last_token {
            None => stats.time_to_first_token.observe(now - a.job.submitted),
            Some(prev) => stats.inter_token_latency.observe(now - prev),
        }
        if a.first_token.is_none() {
            a.first_token = Some(now);
        }
        a.last_token = Some(now);
        a.n_generated += 1;
        if self.model.vocab().is_eog(token) && !a.job.sampling.ignore_eos {
            // Earlier tokens' text went out before this step's sync.
            self.finish(slot, FinishReason::Eos);
            return;
        }
        let last = a.n_generated >= a.job.max_new_tokens;
        if !last {
            a.pending = Some(token);
        }
        self.emits.push(Emit {
            slot,
            id: a.job.id,
            token,
            first: a.n_generated == 1,
            last,
        });
    }

    /// Turns the picked tokens into text: detokenize, stop strings, send.
    /// A stop string or a closed stream ends the request here (its next token
    /// may already be in the running step; that result is discarded).
    fn flush_emits(&mut self) {
        if self.emits.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let vocab = self.model.vocab();
        for e in std::mem::take(&mut self.emits) {
            let Some(a) = self.slots[e.slot].as_mut().filter(|a| a.job.id == e.id) else {
                continue;
            };
            let lstrip = if e.first && a.job.strip_leading_space {
                NonZeroU16::new(1)
            } else {
                None
            };
            let bytes = vocab.token_to_piece(e.token, false, lstrip);
            let text = a.utf8.push(&bytes);
            let outcome = a.stop.push(&text);
            if !outcome.emit.is_empty() && a.job.tx.send(Event::Text(outcome.emit)).is_err() {
                self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                self.free(e.slot);
            } else if outcome.stopped {
                self.finish(e.slot, FinishReason::Stop);
            } else if e.last {
                self.finish(e.slot, FinishReason::Length);
            }
        }
        self.shared.stats.steps.add(Phase::Emit, t0.elapsed());
    }

    fn finish(&mut self, slot: usize, reason: FinishReason) {
        let Some(a) = self.slots[slot].as_mut() else {
            return;
        };
        if reason != FinishReason::Stop {
            let tail = a.utf8.finish();
            let mut rest = a.stop.push(&tail).emit;
            rest.push_str(&a.stop.finish());
            if !rest.is_empty() {
                let _ = a.job.tx.send(Event::Text(rest));
            }
        }
        let now = Instant::now();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let first = a.first_token.unwrap_or(now);
        let gen = now - first;
        let timings = Timings {
            queue_ms: ms(a.started - a.job.submitted),
            prompt_ms: ms(first - a.started),
            time_to_first_token_ms: ms(first - a.job.submitted),
            generation_ms: ms(gen),
            total_ms: ms(now - a.job.submitted),
            tokens_per_second: if a.n_generated > 1 && gen.as_secs_f64() > 0.0 {
                f64::from(a.n_generated - 1) / gen.as_secs_f64()
            } else {
                0.0
            },
        };
        let usage = Usage {
            prompt_tokens: u32::try_from(a.job.tokens.len()).unwrap_or(u32::MAX),
            completion_tokens: a.n_generated,
            cached_prompt_tokens: u32::try_from(a.cached).unwrap_or(u32::MAX),
        };
        let stats = &self.shared.stats;
        stats.end_to_end.observe(now - a.job.submitted);
        stats.finished.fetch_add(1, Ordering::Relaxed);
        let done = Event::Done(Completion {
            finish_reason: reason,
            usage,
            timings,
        });
        self.free_then_send(slot, done);
    }

    fn fail(&mut self, slot: usize, err: EngineError) {
        if self.slots[slot].is_some() {
            self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.free_then_send(slot, Event::Error(err));
    }

    fn fail_all(&mut self, err: EngineError) {
        for slot in self.order.clone() {
            self.fail(slot, err.clone());
        }
    }
}
