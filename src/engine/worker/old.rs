//! The engine thread: loads the model ([`super::load`]), then runs the
//! batching loop. Each turn of the loop takes new requests, ends the ones
//! whose client left or whose deadline passed, gives free slots to waiting
//! requests, and runs one step: one `decode` over every occupied slot.
//! Every request leaves through [`Loop::end_request`].

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use rayon::prelude::*;
use tokio::sync::mpsc;

use super::backend_greedy::GreedySamplers;
use super::batch::{self, SlotView, Work};
use super::grammar_thread::{self, GrammarThread};
use super::greedy;
use super::load::{self, Loaded};
use super::logprobs::{self, RowLogprobs, TokenLogprob, TopLogprob};
use super::prompt_cache::{
    common_prefix, common_prefix_of_parts, pick_slot, MIN_SHARED_PREFIX_GAIN,
};
use super::raw_context;
use super::request::{Event, FinishReason};
use super::sampler;
use super::slot::{Active, Job, Outcome};
use super::stats::{EngineStats, Phase, StepClock};
use super::stop::StopMatcher;
use super::utf8::Utf8Accumulator;
use super::{EngineConfig, EngineError, LoadState, Shared};

pub(super) enum Command {
    Generate(Box<Job>),
    Shutdown,
}

pub(super) fn run(config: EngineConfig, shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Command>) {
    // A panic inside llama-cpp-2 must not leave /health saying "ok".
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_and_serve(&config, &shared, rx)
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

fn load_and_serve(
    config: &EngineConfig,
    shared: &Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
) -> Result<(), EngineError> {
    let loading = load::LOADING.lock().unwrap_or_else(|p| p.into_inner());
    let model = load::load_model(config)?;
    let Loaded { ctx, info } = load::new_context(config, &model)?;
    drop(loading);
    tracing::info!(engine = %config.thread_name, "{}", load::loaded_line(&info));
    let stats = &shared.stats;
    stats
        .kv_total_cells
        .store(info.n_ctx as usize, Ordering::Relaxed);
    stats.kv_used_cells.store(0, Ordering::Relaxed);
    let n_batch = info.n_batch as usize;
    let decode_pad = info.decode_pad as usize;
    let fill_gaps = info.fill_gaps;
    let decode_is_async = load::runs_on_gpu(info.n_gpu_layers, info.gpu_offload);
    let linger = std::time::Duration::from_millis(info.linger_ms);
    #[cfg(feature = "test-support")]
    let decode_is_async = decode_is_async || config.defer_emits;
    let n_ctx_slot = info.n_ctx_slot as usize;
    let slots = config.parallel as usize;
    let raw_ctx = raw_context::raw_context(&ctx);
    let greedy_samplers = if info.backend_greedy {
        let g = raw_ctx.map(|raw| GreedySamplers::new(raw, slots));
        if g.is_none() {
            tracing::warn!("backend greedy picks unavailable; picking on the host");
        }
        g
    } else {
        None
    };
    *shared
        .prompt_cache
        .write()
        .unwrap_or_else(|p| p.into_inner()) = vec![Arc::from(Vec::new()); slots];
    let _ = shared.model.set(Arc::clone(&model.model));
    let _ = shared.info.set(info);
    shared.state.send_replace(LoadState::Ready);

    let mut lp = Loop {
        model: &model.model,
        greedy_samplers,
        raw_ctx,
        ctx,
        stats,
        published: &shared.prompt_cache,
        slots: (0..slots).map(|_| None).collect(),
        order: Vec::new(),
        pending: VecDeque::new(),
        slot_tokens: vec![Vec::new(); slots],
        cache_prompts: config.cache_prompts,
        kv_unified: config.kv_unified,
        batch: LlamaBatch::new(n_batch, 1),
        n_batch,
        decode_pad,
        fill_gaps,
        share_epoch: 0,
        share_checked: vec![None; slots],
        ended: 0,
        n_ctx_slot,
        emits: Vec::new(),
        decode_is_async,
        linger_max: linger,
        grammar: None,
        name: config.thread_name.clone(),
        rx,
        closing: false,
        #[cfg(feature = "test-support")]
        step_delay: config.step_delay,
    };
    lp.run();
    Ok(())
}

/// How often a lingering engine looks for new requests.
const LINGER_POLL: std::time::Duration = std::time::Duration::from_micros(50);

/// llama.cpp rounds a micro-batch's attention span (KV cells) up to a
/// multiple of this (`llama_kv_cache::get_n_kv`), so that graphs keep their shape.
const KV_SPAN_PAD: usize = 256;

fn pos(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// A slot's token as chosen for the whole step before sampling.
enum Pick {
    /// Not chosen ahead: the slot's sampler decides (or it has no logits).
    Sampler,
    /// The greedy choice, made on the host.
    Token(LlamaToken),
    /// The greedy choice, made by the backend in the step's graph.
    Backend(LlamaToken),
    /// The backend sampler returned no token for the slot's row.
    Lost,
    /// Drawn on the host by the slot's own sampler, with the row's
    /// log-probabilities when the request asked for them
    /// ([`Loop::draw_on_host`]).
    Drawn(Result<LlamaToken, String>, Option<RowLogprobs>),
}

/// One slot's host work in [`Loop::draw_on_host`]: its pick (replaced by the
/// result), its sampler when the sampler decides, its logits row, and how
/// many top log-probabilities it wants.
struct HostDraw<'a> {
    pick: &'a mut Pick,
    sampler: Option<&'a mut sampler::Sampler>,
    row: &'a [f32],
    logprobs: Option<usize>,
}

/// [`Pick::Drawn`] for `token` drawn from `row`, with the row's top
/// `logprobs` log-probabilities when asked (from the raw logits, whatever
/// the sampler did).
fn drawn(token: Result<LlamaToken, String>, row: &[f32], logprobs: Option<usize>) -> Pick {
    let row_logprobs = match (&token, logprobs) {
        (Ok(t), Some(n)) => Some(logprobs::row_logprobs(
            row,
            usize::try_from(t.0).unwrap_or(usize::MAX),
            n,
        )),
        _ => None,
    };
    Pick::Drawn(token, row_logprobs)
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
    /// Its log-probabilities, when the request asked for them.
    logprobs: Option<RowLogprobs>,
}

/// Which picked tokens [`Loop::flush_emits`] turns into text.
#[derive(Clone, Copy)]
enum Flush {
    All,
    /// Only requests' last tokens (the rest wait for the next step's launch).
    Ending,
}

/// How many requests should be waiting before the next step, after a step
/// that ended `ended` requests with `running` still running, `pending`
/// waiting and `free` slots; `None`: start it at once.
///
/// * On the CPU (`decode` computes the step before it returns, and a step is
///   long next to the wait) the engine waits for as many requests as ended,
///   unless requests are already waiting to take the freed slots.
/// * On a GPU the device idles while the engine waits, and so do the running
///   requests: it waits only when at least as many requests ended as still
///   run, and only for as many as the free slots can take.
fn linger_target(
    decode_is_async: bool,
    ended: usize,
    running: usize,
    pending: usize,
    free: usize,
) -> Option<usize> {
    if ended == 0 {
        return None;
    }
    if !decode_is_async {
        return (pending == 0).then_some(ended);
    }
    let want = pending.saturating_add(ended).min(free);
    (ended >= running && pending < want).then_some(want)
}

struct Loop<'m> {
    model: &'m LlamaModel,
    /// Backend greedy samplers per slot (`--backend-greedy`). Declared before
    /// `ctx` so that they are detached while the context still lives.
    greedy_samplers: Option<GreedySamplers>,
    /// `ctx`'s raw handle, for llama.cpp's graph-reuse counter (`None`: not
    /// to be had; the counter stays 0).
    raw_ctx: Option<NonNull<llama_cpp_sys_2::llama_context>>,
    ctx: LlamaContext<'m>,
    stats: &'m EngineStats,
    /// Each free slot's cached tokens, for the router ([`super::Engine::cached_prefix`]).
    published: &'m RwLock<Vec<Arc<[LlamaToken]>>>,
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
    /// Decode-only steps are padded to a multiple of this (0 = off).
    decode_pad: usize,
    /// Unfed slots between fed ones carry a dummy token.
    fill_gaps: bool,
    /// Bumped in every step that feeds prompt tokens (other slots may then
    /// hold a longer prefix of a waiting prompt).
    share_epoch: u64,
    /// Per slot, the `share_epoch` at which its request last looked for a
    /// prefix in another slot (`None`: not yet).
    share_checked: Vec<Option<u64>>,
    /// Requests ended so far.
    ended: u64,
    /// KV cells of one slot's stream.
    n_ctx_slot: usize,
    /// Tokens picked in the last step, their text not yet sent.
    emits: Vec<Emit>,
    /// Whether `decode` returns before the step is computed (layers on a
    /// GPU): the previous step's text is then produced while the device
    /// works. On the CPU `decode` computes the step itself, so the text goes
    /// out at the end of the step that picked it, a step sooner.
    decode_is_async: bool,
    /// Longest wait for the successors of requests that just ended ([`Loop::linger`]).
    linger_max: std::time::Duration,
    /// Samples grammar-constrained requests off the step's critical path
    /// (started by the first one).
    grammar: Option<GrammarThread>,
    /// The engine thread's name (the grammar thread is named after it).
    name: String,
    rx: mpsc::UnboundedReceiver<Command>,
    closing: bool,
    /// Test hook: a pause per step, after the step on the CPU, between the
    /// launch and the sync (where a GPU computes) when `decode_is_async`.
    #[cfg(feature = "test-support")]
    step_delay: Option<std::time::Duration>,
}

impl Loop<'_> {
    fn run(&mut self) {
        while self.receive() {
            self.expire_pending();
            self.assign_slots();
            self.expire_running();
            if self.order.is_empty() {
                continue;
            }
            let ended = self.ended;
            self.step();
            if self.ended != ended {
                self.linger(self.ended - ended);
            }
            #[cfg(feature = "test-support")]
            if let Some(d) = self.step_delay.filter(|_| !self.decode_is_async) {
                std::thread::sleep(d);
            }
        }
    }

    /// After a step that ended `ended` requests, waits up to the linger for
    /// new requests before the next step ([`linger_target`] says how many and
    /// whether at all), returning as soon as they are there. A client that
    /// sends its next request as soon as it has an answer (a pipeline, an
    /// agent, a benchmark) would otherwise miss the next step, which began
    /// before its request arrived, and its slot would idle for that step;
    /// waiting for all of the step's successors, not just the first, keeps
    /// their prompts in one step (each step that mixes prompts with decoding
    /// can cost a second pass with one KV stream per slot).
    fn linger(&mut self, ended: u64) {
        if self.closing || self.linger_max.is_zero() {
            return;
        }
        let free = self.slots.iter().filter(|s| s.is_none()).count();
        let Some(want) = linger_target(
            self.decode_is_async,
            usize::try_from(ended).unwrap_or(usize::MAX),
            self.order.len(),
            self.pending.len(),
            free,
        ) else {
            return;
        };
        let start = Instant::now();
        let until = start + self.linger_max;
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    self.handle(cmd);
                    if self.closing || self.pending.len() >= want {
                        break;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < until => {
                    std::thread::sleep(LINGER_POLL);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        let waited = start.elapsed();
        self.stats.steps.add(Phase::Linger, waited);
        tracing::debug!(
            ended,
            running = self.order.len(),
            want,
            got = self.pending.len(),
            waited_us = waited.as_micros() as u64,
            "linger"
        );
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

    /// Ends waiting requests whose client went away or whose deadline passed.
    fn expire_pending(&mut self) {
        let now = Instant::now();
        let stats = self.stats;
        self.pending.retain(|job| {
            let Some(outcome) = job.expired(now) else {
                return true;
            };
            outcome.count(stats);
            if let Some(e) = outcome.error() {
                let _ = job.tx.send(Event::Error(e));
            }
            false
        });
    }

    /// Ends running requests whose client went away or whose deadline passed.
    fn expire_running(&mut self) {
        let now = Instant::now();
        for slot in self.order.clone() {
            let expired = self.slots[slot].as_ref().and_then(|a| a.job.expired(now));
            if let Some(outcome) = expired {
                self.end_request(slot, outcome);
            }
        }
    }

    fn assign_slots(&mut self) {
        while let Some(job) = self.pending.pop_front() {
            let free = self.slots.iter().map(Option::is_none);
            let on_backend = job.picks_on_backend();
            let g = self.greedy_samplers.as_ref();
            let suits = |slot| g.is_none_or(|g| g.attached(slot) == on_backend);
            let Some(slot) = pick_slot(free, &self.slot_tokens, &job.tokens, suits) else {
                self.pending.push_front(job);
                return;
            };
            // Validation compiled the grammar already; should it fail here
            // anyway, the request fails and the engine goes on.
            let sampler = match sampler::build(&job.sampling, self.model) {
                Ok(s) => s,
                Err(e) => {
                    let outcome = Outcome::Failed(EngineError::Sampling(e));
                    outcome.count(self.stats);
                    if let Some(err) = outcome.error() {
                        let _ = job.tx.send(Event::Error(err));
                    }
                    continue;
                }
            };
            let active = self.start(slot, job, sampler);
            self.slots[slot] = Some(active);
            self.order.push(slot);
            self.stats.running.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start(&mut self, slot: usize, job: Box<Job>, mut sampler: sampler::Sampler) -> Active {
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
        self.share_checked[slot] = None;
        self.publish(slot, Arc::from(Vec::new()));
        let greedy = sampler::is_plain_greedy(&job.sampling);
        if let Some(g) = self.greedy_samplers.as_mut() {
            let before = g.attached(slot);
            if g.set(slot, job.picks_on_backend()) != before {
                self.stats
                    .backend_greedy_switches
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if sampler::uses_history(&job.sampling) {
            sampler.accept_history(job.tokens.iter());
        }
        self.stats.queue_time.observe(now - job.submitted);
        self.stats
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
            sampler: Some(sampler),
            n_past: cached,
            cached,
            pending: None,
            fed: Vec::new(),
            greedy,
            n_generated: 0,
            utf8: Utf8Accumulator::new(),
            stop,
            logprobs: Vec::new(),
            logits_at: None,
            started: now,
            first_token: None,
            last_token: None,
        }
    }

    /// Ends the request in `slot`: counts the outcome, sends what the client
    /// is still owed (held-back text and the answer, or the error), and frees
    /// the slot and the admission ticket before the final event goes out, so
    /// a client that has its answer never sees the request still counted. The slot's KV stays
    /// as its prompt cache unless caching is off or the outcome forbids it.
    fn end_request(&mut self, slot: usize, outcome: Outcome) {
        let Some(mut a) = self.slots[slot].take() else {
            return;
        };
        self.ended += 1;
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        outcome.count(self.stats);
        let last = match &outcome {
            Outcome::Finished(reason) => {
                let rest = a.release_text(*reason);
                // A stop string's tokens are not part of the answer.
                let logprobs = std::mem::take(&mut a.logprobs);
                if *reason != FinishReason::Stop && !logprobs.is_empty() {
                    let _ = a.job.tx.send(Event::Logprobs(logprobs));
                }
                if !rest.is_empty() {
                    let _ = a.job.tx.send(Event::Text(rest));
                }
                let now = Instant::now();
                self.stats.end_to_end.observe(now - a.job.submitted);
                Some(Event::Done(a.completion(*reason, now)))
            }
            Outcome::Cancelled => {
                tracing::debug!(id = a.job.id, slot, "client gone; cancelling");
                None
            }
            Outcome::TimedOut(_) | Outcome::Failed(_) => outcome.error().map(Event::Error),
        };
        let kept = if outcome.keeps_kv() && self.cache_prompts {
            a.kv_tokens()
        } else {
            Vec::new()
        };
        // The request's admission ticket goes with it, before the last event.
        let tx = a.job.tx.clone();
        drop(a);
        self.order.retain(|s| *s != slot);
        if kept.is_empty() {
            let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
        }
        self.publish(slot, Arc::from(kept.as_slice()));
        self.slot_tokens[slot] = kept;
        self.update_kv_usage();
        if let Some(event) = last {
            let _ = tx.send(event);
        }
    }

    fn publish(&self, slot: usize, tokens: Arc<[LlamaToken]>) {
        let mut p = self.published.write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = p.get_mut(slot) {
            *entry = tokens;
        }
    }

    fn update_kv_usage(&self) {
        let (mut used, mut cached) = (0, 0);
        for (a, tokens) in self.slots.iter().zip(&self.slot_tokens) {
            match a {
                Some(a) => used += a.n_past,
                None => cached += tokens.len(),
            }
        }
        self.stats.kv_used_cells.store(used, Ordering::Relaxed);
        self.stats.kv_cached_cells.store(cached, Ordering::Relaxed);
    }

    fn fail_all(&mut self, slots: &[usize], err: &EngineError) {
        for &slot in slots {
            self.end_request(slot, Outcome::Failed(err.clone()));
        }
    }

    /// One `decode` over all occupied slots.
    fn step(&mut self) {
        let stats = self.stats;
        let mut clock = StepClock::start(&stats.steps);
        self.collect_constrained(None);
        self.share_prefixes();
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
        let pads = self.pad_slots(&plan);
        let fed = match self.fill_batch(&plan, &pads) {
            Ok(fed) => fed,
            Err(e) => {
                tracing::error!(error = %e, "building the batch failed");
                let order = self.order.clone();
                self.fail_all(&order, &EngineError::Decode(e));
                return;
            }
        };
        clock.lap(Phase::Plan);
        if self.batch.n_tokens() == 0 {
            self.flush_emits(&mut clock, Flush::All);
            // Only constrained requests waiting for their tokens: wait for
            // one (briefly, so that new requests are still taken).
            self.collect_constrained(Some(std::time::Duration::from_millis(5)));
            return;
        }
        let decoded = self.ctx.decode(&mut self.batch);
        // The dummy tokens' cells are dropped at once: the next step (or a
        // request assigned to the slot) sees the slot's cache as it was.
        self.remove_dummies(&pads);
        if let Err(e) = decoded {
            tracing::error!(error = %e, "decode failed");
            let slots: Vec<usize> = fed.iter().map(|&(slot, _)| slot).collect();
            self.fail_all(&slots, &EngineError::Decode(e.to_string()));
            return;
        }
        clock.lap(Phase::Decode);
        if let Some(raw) = self.raw_ctx {
            let reused = raw_context::graphs_reused(raw);
            self.stats
                .steps
                .graphs_reused
                .store(reused, Ordering::Relaxed);
        }
        // A GPU computes the step; meanwhile the previous step's tokens
        // become text (on the CPU they went out at the end of that step).
        // Requests ended by a stop string leave here.
        self.flush_emits(&mut clock, Flush::All);
        #[cfg(feature = "test-support")]
        if let Some(d) = self.step_delay.filter(|_| self.decode_is_async) {
            std::thread::sleep(d);
        }
        self.ctx.synchronize();
        clock.lap(Phase::Sync);
        for &(slot, n) in &fed {
            if let Some(a) = self.slots[slot].as_mut() {
                match a.pending.take() {
                    Some(token) => a.fed.push(token),
                    None => {
                        self.stats
                            .prompt_tokens
                            .fetch_add(n as u64, Ordering::Relaxed);
                        self.share_epoch += 1;
                    }
                }
                a.n_past += n;
            }
        }
        // Counted before any answer goes out, so a client that has its last
        // token sees this step in /metrics.
        self.record_step(&plan, &pads);
        let mut picks = self.pick_greedy(&fed);
        // Constrained requests first, so that the grammar thread works while
        // the others are sampled here.
        let constrained = |s: &Option<Active>| {
            s.as_ref()
                .is_some_and(|a| a.job.sampling.grammar.is_some() && a.logits_at.is_some())
        };
        for &(slot, _) in &fed {
            if constrained(&self.slots[slot]) {
                self.hand_off(slot);
            }
        }
        self.draw_on_host(&fed, &mut picks);
        for (&(slot, _), pick) in fed.iter().zip(picks) {
            self.sample(slot, pick);
        }
        self.collect_constrained(None);
        self.update_kv_usage();
        clock.lap(Phase::Sample);
        if !self.decode_is_async {
            self.flush_emits(&mut clock, Flush::All);
        } else if self.emits.iter().any(|e| e.last) {
            // A request that took its last token answers now, not after the
            // next step's launch: its slot is free for that step, and a
            // successor sent on the answer can still join it (`linger`).
            self.flush_emits(&mut clock, Flush::Ending);
        }
    }

    /// Requests that have not started their prompt take a longer common
    /// prefix from another slot's KV (a running request or a free slot's
    /// cache) when that saves at least [`MIN_SHARED_PREFIX_GAIN`] tokens:
    /// concurrent requests that share a system prompt or a document evaluate
    /// it once. A request looks again whenever a step has fed prompt tokens.
    fn share_prefixes(&mut self) {
        if !self.cache_prompts {
            return;
        }
        let mut copied_to = vec![false; self.slots.len()];
        for i in 0..self.order.len() {
            let dst = self.order[i];
            let Some(a) = self.slots[dst].as_ref() else {
                continue;
            };
            if a.n_past != a.cached
                || a.prefill_remaining() == 0
                || self.share_checked[dst] == Some(self.share_epoch)
            {
                continue;
            }
            self.share_checked[dst] = Some(self.share_epoch);
            let prompt = &a.job.tokens;
            // The last prompt token is always evaluated (its logits are sampled).
            let cap = prompt.len().saturating_sub(1);
            let have = a.n_past;
            if have >= cap {
                continue;
            }
            let mut best: Option<(usize, usize)> = None;
            for (src, held) in self.slots.iter().enumerate() {
                // A slot copied to in this round holds its prefix only once
                // llama.cpp has applied the copy.
                if src == dst || copied_to[src] {
                    continue;
                }
                let common = match held {
                    Some(s) => {
                        let head = &s.job.tokens[..s.n_past.min(s.job.tokens.len())];
                        common_prefix_of_parts(head, &s.fed, prompt)
                    }
                    None => common_prefix(&self.slot_tokens[src], prompt),
                }
                .min(cap);
                if common > best.map_or(have, |b| b.1) {
                    best = Some((src, common));
                    if common == cap {
                        break;
                    }
                }
            }
            let Some((src, common)) = best.filter(|b| b.1 >= have + MIN_SHARED_PREFIX_GAIN) else {
                continue;
            };
            let kept = self.copy_prefix(src, dst, common);
            copied_to[dst] = true;
            if let Some(a) = self.slots[dst].as_mut() {
                let before = a.cached;
                a.n_past = kept;
                a.cached = kept;
                let stats = self.stats;
                if kept >= before {
                    let gain = (kept - before) as u64;
                    stats
                        .cached_prompt_tokens
                        .fetch_add(gain, Ordering::Relaxed);
                    stats
                        .shared_prompt_tokens
                        .fetch_add(gain, Ordering::Relaxed);
                } else {
                    stats
                        .cached_prompt_tokens
                        .fetch_sub((before - kept) as u64, Ordering::Relaxed);
                }
                tracing::debug!(
                    id = a.job.id,
                    slot = dst,
                    from = src,
                    cached = kept,
                    "prefix copied"
                );
            }
        }
    }

    /// Makes `dst`'s KV the first `common` positions of `src`'s; returns the
    /// positions `dst` holds afterwards (0 if llama.cpp refused the trim).
    /// With one KV stream per slot llama.cpp copies whole streams (the
    /// buffers move at the next `decode`), so the copy is trimmed after; in
    /// a unified cache the prefix's cells are shared.
    fn copy_prefix(&mut self, src: usize, dst: usize, common: usize) -> usize {
        let (s, d) = (pos(src), pos(dst));
        let end = u32::try_from(common).ok();
        if self.kv_unified {
            let _ = self.ctx.clear_kv_cache_seq(Some(d as u32), None, None);
            if self.ctx.copy_kv_cache_seq(s, d, None, end).is_ok() {
                return common;
            }
        } else if self.ctx.copy_kv_cache_seq(s, d, None, None).is_ok()
            && matches!(
                self.ctx.clear_kv_cache_seq(Some(d as u32), end, None),
                Ok(true)
            )
        {
            return common;
        }
        tracing::warn!(
            slot = dst,
            from = src,
            "copying a prompt prefix failed; evaluating the prompt"
        );
        let _ = self.ctx.clear_kv_cache_seq(Some(d as u32), None, None);
        0
    }

    /// Fills the batch with the plan's work and the dummy tokens, in slot
    /// (sequence id) order; returns each fed slot with its token count.
    fn fill_batch(
        &mut self,
        plan: &[Work],
        pads: &[(usize, i32)],
    ) -> Result<Vec<(usize, usize)>, String> {
        self.batch.clear();
        let mut fed = Vec::with_capacity(plan.len());
        let mut next_pad = pads.iter().peekable();
        for work in plan {
            while let Some(&(slot, at)) = next_pad.next_if(|p| p.0 < work.slot()) {
                self.add_dummy(slot, at)?;
            }
            let n = match *work {
                Work::Decode { slot } => self.add_decode(slot)?,
                Work::Prefill {
                    slot,
                    n_tokens,
                    finishes,
                } => self.add_prefill(slot, n_tokens, finishes)?,
            };
            fed.push((work.slot(), n));
        }
        for &(slot, at) in next_pad {
            self.add_dummy(slot, at)?;
        }
        Ok(fed)
    }

    /// The greedy choice of every greedy slot with logits in this step, one
    /// entry per `fed` slot ([`Pick::Sampler`]: not greedy, or no logits).
    /// Slots with a backend sampler read the token the step's graph picked;
    /// the others' rows are scanned here, side by side.
    fn pick_greedy(&self, fed: &[(usize, usize)]) -> Vec<Pick> {
        let mut picks = Vec::with_capacity(fed.len());
        // Rows scanned on the host, and the entry of `picks` each decides.
        let mut rows: Vec<&[f32]> = Vec::with_capacity(fed.len());
        let mut row_pick = Vec::with_capacity(fed.len());
        for &(slot, _) in fed {
            let idx = self.slots[slot]
                .as_ref()
                .filter(|a| a.greedy)
                .and_then(|a| a.logits_at);
            let on_backend = self
                .greedy_samplers
                .as_ref()
                .is_some_and(|g| g.attached(slot));
            picks.push(match idx {
                None => Pick::Sampler,
                Some(idx) if on_backend => match self.ctx.sampled_token_ith(idx) {
                    Some(t) => Pick::Backend(t),
                    // No logits came back for this row either: nothing to sample.
                    None => Pick::Lost,
                },
                Some(idx) => {
                    rows.push(self.ctx.get_logits_ith(idx));
                    row_pick.push(picks.len());
                    Pick::Sampler
                }
            });
        }
        for (at, best) in row_pick.into_iter().zip(greedy::argmax_rows(&rows)) {
            if let Some(i) = best {
                picks[at] = Pick::Token(LlamaToken(i32::try_from(i).unwrap_or(i32::MAX)));
            }
        }
        picks
    }

    /// Counts one step's shape in the profile (its phases are timed by the
    /// step's [`StepClock`]).
    fn record_step(&self, plan: &[Work], pads: &[(usize, i32)]) {
        let p = &self.stats.steps;
        let mixed = plan.iter().any(|w| matches!(w, Work::Prefill { .. }));
        let kind = if mixed { &p.mixed } else { &p.decode_only };
        kind.fetch_add(1, Ordering::Relaxed);
        let tokens = (self.batch.n_tokens().max(0) as usize).saturating_sub(pads.len()) as u64;
        p.tokens.fetch_add(tokens, Ordering::Relaxed);
        p.padded_tokens
            .fetch_add(pads.len() as u64, Ordering::Relaxed);
        let mut shape = plan.to_vec();
        shape.extend(pads.iter().map(|&(slot, _)| Work::Decode { slot }));
        shape.sort_by_key(Work::slot);
        let micro = batch::predicted_micro_batches(&shape, self.kv_unified, self.n_batch) as u64;
        p.predicted_micro_batches
            .fetch_add(micro, Ordering::Relaxed);
    }

    /// Slots not fed this step that carry one dummy token each, with the
    /// position it takes (the slot's next one).
    ///
    /// With one KV stream per slot llama.cpp evaluates a step in one pass
    /// only over consecutive sequence ids, so an unfed slot between fed ones
    /// (free, or holding a request whose last token was just picked or whose
    /// prompt waits for room) splits
    /// the step in two: a second weight pass, and on a GPU a batch shape
    /// whose CUDA graph is not captured. With `fill_gaps` every such slot
    /// carries a dummy. With `decode_pad` a step whose work is one token per
    /// slot is also padded to a multiple of it with the lowest free slots
    /// above, so its shape stays put while requests come and go.
    ///
    /// Each dummy is on its own sequence (llama.cpp's equal split takes the
    /// same number of tokens from every sequence of a micro-batch, so one
    /// token each keeps a single pass), requests logits (the number of
    /// outputs is part of the graph's shape; its row is never read), and its
    /// cell is removed right after the decode, so the slot's prompt cache is
    /// what it was. A slot is skipped when its dummy would widen the step's
    /// attention span: llama.cpp attends over the longest stream of a
    /// micro-batch, rounded up to [`KV_SPAN_PAD`] cells, for every stream in
    /// it, so a free slot holding a long cached conversation stays out.
    /// Dummies only take room the plan left in the batch: a step whose
    /// prompt chunk fills it gets none (and may cost a second pass).
    fn pad_slots(&self, plan: &[Work]) -> Vec<(usize, i32)> {
        let Some(top) = plan.iter().map(Work::slot).max() else {
            return Vec::new();
        };
        let uniform = plan.iter().all(|w| w.n_tokens() == 1);
        let n = plan.len();
        let room = self
            .n_batch
            .saturating_sub(plan.iter().map(Work::n_tokens).sum());
        let target = if self.decode_pad > 0 && uniform {
            (n.div_ceil(self.decode_pad) * self.decode_pad).min(self.slots.len())
        } else {
            n
        };
        if !self.fill_gaps && target == n {
            return Vec::new();
        }
        let span = plan
            .iter()
            .filter_map(|w| {
                let a = self.slots[w.slot()].as_ref()?;
                Some(a.n_past + w.n_tokens())
            })
            .max()
            .unwrap_or(0)
            .div_ceil(KV_SPAN_PAD)
            .max(1)
            * KV_SPAN_PAD;
        let mut fed = vec![false; top + 1];
        for w in plan {
            fed[w.slot()] = true;
        }
        let mut pads = Vec::new();
        for (slot, held) in self.slots.iter().enumerate() {
            if pads.len() == room {
                break;
            }
            let gap = self.fill_gaps && slot < top;
            if !gap && n + pads.len() >= target {
                if slot > top {
                    break;
                }
                continue;
            }
            // Below the top, a gap is any slot not fed this step: free, or
            // holding a request that is not fed (its last token picked, its
            // answer going out with the next emits; a prompt waiting for room
            // in the batch). Above it, padding takes free slots only. The
            // dummy goes after the slot's KV and is removed after the decode.
            let taken = if slot <= top {
                fed[slot]
            } else {
                held.is_some()
            };
            if taken {
                continue;
            }
            let at = self.ctx.kv_cache_seq_pos_max(pos(slot)).saturating_add(1);
            let Ok(at_cell) = usize::try_from(at) else {
                continue;
            };
            if at_cell < self.n_ctx_slot && at_cell < span {
                pads.push((slot, at));
            }
        }
        pads
    }

    fn add_dummy(&mut self, slot: usize, at: i32) -> Result<(), String> {
        self.batch
            .add(LlamaToken(0), at, &[pos(slot)], true)
            .map_err(|e| e.to_string())
    }

    fn remove_dummies(&mut self, pads: &[(usize, i32)]) {
        for &(slot, at) in pads {
            let from = u32::try_from(at).ok();
            let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), from, None);
        }
    }

    /// Feeds the slot's pending token; returns the tokens added.
    fn add_decode(&mut self, slot: usize) -> Result<usize, String> {
        let idx = self.batch.n_tokens();
        let a = self.slots[slot].as_mut().ok_or("empty slot")?;
        let token = a.pending.ok_or("no pending token")?;
        self.batch
            .add(token, pos(a.n_past), &[pos(slot)], true)
            .map_err(|e| e.to_string())?;
        a.logits_at = Some(idx);
        Ok(1)
    }

    /// Feeds a chunk of the slot's prompt; returns the tokens added.
    fn add_prefill(
        &mut self,
        slot: usize,
        n_tokens: usize,
        finishes: bool,
    ) -> Result<usize, String> {
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
        Ok(n_tokens)
    }

    /// Draws on the host, side by side on the rayon pool, every token of this
    /// step that needs a slot's own sampler (temperature, top-p, penalties:
    /// a softmax over the vocabulary and a sort each) and every row whose
    /// log-probabilities were asked for. Done one slot after another, these
    /// cost milliseconds per sampled slot while the device waits for the next
    /// step. Each slot's `pick` becomes [`Pick::Drawn`]; constrained slots
    /// (handed to the grammar thread) and backend picks without
    /// log-probabilities are left as they are.
    fn draw_on_host(&mut self, fed: &[(usize, usize)], picks: &mut [Pick]) {
        let ctx = &self.ctx;
        let mut draws: Vec<HostDraw<'_>> = Vec::new();
        let mut pick_of: Vec<Option<&mut Pick>> = self.slots.iter().map(|_| None).collect();
        for (&(slot, _), pick) in fed.iter().zip(picks.iter_mut()) {
            if let Some(entry) = pick_of.get_mut(slot) {
                *entry = Some(pick);
            }
        }
        for (held, pick) in self.slots.iter_mut().zip(pick_of) {
            let (Some(a), Some(pick)) = (held.as_mut(), pick) else {
                continue;
            };
            let Some(idx) = a.logits_at else {
                continue;
            };
            let by_sampler = matches!(pick, Pick::Sampler) && a.sampler.is_some();
            let logprobs = a.job.logprobs;
            if !by_sampler && (logprobs.is_none() || matches!(pick, Pick::Lost)) {
                continue;
            }
            draws.push(HostDraw {
                pick,
                sampler: if by_sampler { a.sampler.as_mut() } else { None },
                row: ctx.get_logits_ith(idx),
                logprobs,
            });
        }
        let draw = |d: &mut HostDraw<'_>| {
            let token = match (d.sampler.as_deref_mut(), &*d.pick) {
                (Some(sampler), _) => sampler.sample_row(d.row),
                (None, Pick::Token(t) | Pick::Backend(t)) => Ok(*t),
                (None, _) => return,
            };
            *d.pick = drawn(token, d.row, d.logprobs);
        };
        if draws.len() > 1 {
            draws.par_iter_mut().for_each(draw);
        } else {
            draws.iter_mut().for_each(draw);
        }
    }

    /// Takes the token picked for `slot` if its logits are in this batch
    /// (`pick`: made for the whole step by [`Self::pick_greedy`] and
    /// [`Self::draw_on_host`]). The token is fed to the next step at once; its
    /// text is produced by [`Self::flush_emits`] while that step runs on the
    /// backend.
    fn sample(&mut self, slot: usize, pick: Pick) {
        let Some(a) = self.slots[slot].as_mut() else {
            return;
        };
        let Some(idx) = a.logits_at.take() else {
            return;
        };
        let pick = match (pick, a.sampler.as_mut()) {
            // Drawn by `draw_on_host`; drawn here should a step ever leave
            // one undrawn.
            (Pick::Sampler, Some(sampler)) => {
                let row = self.ctx.get_logits_ith(idx);
                drawn(sampler.sample_row(row), row, a.job.logprobs)
            }
            (pick, _) => pick,
        };
        let (token, row_logprobs) = match pick {
            Pick::Token(t) => (t, None),
            Pick::Backend(t) => {
                self.stats
                    .backend_greedy_tokens
                    .fetch_add(1, Ordering::Relaxed);
                (t, None)
            }
            Pick::Drawn(Ok(t), row_logprobs) => (t, row_logprobs),
            Pick::Drawn(Err(e), _) => {
                self.end_request(slot, Outcome::Failed(EngineError::Sampling(e)));
                return;
            }
            Pick::Lost => {
                let e = "the backend sampler returned no token".to_string();
                self.end_request(slot, Outcome::Failed(EngineError::Sampling(e)));
                return;
            }
            // Constrained: the grammar thread picks it.
            Pick::Sampler => return,
        };
        self.take_token(slot, token, row_logprobs);
    }

    /// Hands a constrained request's sampling to the grammar thread with a
    /// copy of its logits; it sits out the steps until the token is back.
    fn hand_off(&mut self, slot: usize) {
        if self.grammar.is_none() {
            match GrammarThread::spawn(&self.name) {
                Ok(g) => self.grammar = Some(g),
                // No thread: sample inline, as before.
                Err(e) => {
                    tracing::warn!(error = %e, "no grammar thread; sampling inline");
                    return;
                }
            }
        }
        let Some(a) = self.slots[slot].as_mut() else {
            return;
        };
        let Some(idx) = a.logits_at else {
            return;
        };
        let Some(sampler) = a.sampler.take() else {
            return;
        };
        a.logits_at = None;
        let task = grammar_thread::Task {
            slot,
            id: a.job.id,
            sampler,
            logits: self.ctx.get_logits_ith(idx).to_vec(),
            logprobs: a.job.logprobs,
        };
        if let Some(Err(t)) = self.grammar.as_mut().map(|g| g.submit(task)) {
            // The thread is gone: keep the sampler, fail the request.
            a.sampler = Some(t.sampler);
            self.grammar = None;
            let e = EngineError::Sampling("the grammar thread stopped".into());
            self.end_request(slot, Outcome::Failed(e));
        }
    }

    /// Takes the tokens the grammar thread has picked (waiting up to `wait`
    /// for one when given and some are out).
    fn collect_constrained(&mut self, wait: Option<std::time::Duration>) {
        let Some(g) = self.grammar.as_mut() else {
            return;
        };
        if g.in_flight() == 0 {
            return;
        }
        for done in g.collect(wait) {
            // The request may have ended meanwhile (client gone, deadline).
            let Some(a) = self.slots[done.slot]
                .as_mut()
                .filter(|a| a.job.id == done.id)
            else {
                continue;
            };
            a.sampler = Some(done.sampler);
            match done.token {
                Ok(t) => self.take_token(done.slot, t, done.logprobs),
                Err(e) => self.end_request(done.slot, Outcome::Failed(EngineError::Sampling(e))),
            }
        }
    }

    /// Records the token picked for `slot`: ends the request on end of
    /// generation, else queues it for the next step and for its text.
    fn take_token(&mut self, slot: usize, token: LlamaToken, row_logprobs: Option<RowLogprobs>) {
        let Some(a) = self.slots[slot].as_mut() else {
            return;
        };
        a.note_token(Instant::now(), self.stats);
        // A complete grammar allows nothing but end of generation.
        let ends = !a.job.sampling.ignore_eos || a.job.sampling.grammar.is_some();
        if self.model.vocab().is_eog(token) && ends {
            // Earlier tokens' text went out before this step's sync.
            self.end_request(slot, Outcome::Finished(FinishReason::Eos));
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
            logprobs: row_logprobs,
        });
    }

    /// Turns the picked tokens into text: detokenize, stop strings, send.
    /// A stop string or a closed stream ends the request here (its next token
    /// may already be in the running step; that result is discarded).
    fn flush_emits(&mut self, clock: &mut StepClock, which: Flush) {
        if self.emits.is_empty() {
            return;
        }
        let emits = match which {
            Flush::All => std::mem::take(&mut self.emits),
            Flush::Ending => {
                let (ending, later) = std::mem::take(&mut self.emits)
                    .into_iter()
                    .partition(|e| e.last);
                self.emits = later;
                ending
            }
        };
        let vocab = self.model.vocab();
        for e in emits {
            let Some(a) = self.slots[e.slot].as_mut().filter(|a| a.job.id == e.id) else {
                continue;
            };
            let lstrip = if e.first && a.job.strip_leading_space {
                NonZeroU16::new(1)
            } else {
                None
            };
            let bytes = vocab.token_to_piece(e.token, false, lstrip);
            if let Some(row) = e.logprobs {
                a.logprobs.push(TokenLogprob {
                    token: e.token.0,
                    bytes: bytes.clone(),
                    logprob: row.logprob,
                    top: row
                        .top
                        .into_iter()
                        .map(|(token, logprob)| TopLogprob {
                            token,
                            bytes: vocab.token_to_piece(LlamaToken(token), false, lstrip),
                            logprob,
                        })
                        .collect(),
                });
            }
            let text = a.utf8.push(&bytes);
            let outcome = a.stop.push(&text);
            if !outcome.emit.is_empty() && !a.logprobs.is_empty() {
                let _ = a
                    .job
                    .tx
                    .send(Event::Logprobs(std::mem::take(&mut a.logprobs)));
            }
            let end =
                if !outcome.emit.is_empty() && a.job.tx.send(Event::Text(outcome.emit)).is_err() {
                    Some(Outcome::Cancelled)
                } else if outcome.stopped {
                    Some(Outcome::Finished(FinishReason::Stop))
                } else if e.last {
                    Some(Outcome::Finished(FinishReason::Length))
                } else {
                    None
                };
            if let Some(end) = end {
                self.end_request(e.slot, end);
            }
        }
        clock.lap(Phase::Emit);
    }
}

#[cfg(test)]
mod tests {
    use super::linger_target;

    #[test]
    fn cpu_waits_for_each_ended_request_unless_some_are_waiting() {
        assert_eq!(linger_target(false, 0, 3, 0, 1), None);
        assert_eq!(linger_target(false, 1, 3, 0, 1), Some(1));
        assert_eq!(linger_target(false, 4, 0, 0, 4), Some(4));
        // Waiting requests take the freed slots at once.
        assert_eq!(linger_target(false, 2, 0, 1, 2), None);
    }

    #[test]
    fn gpu_waits_only_when_as_many_ended_as_still_run() {
        // One of 64 ended: the 63 running would wait for one slot's gain.
        assert_eq!(linger_target(true, 1, 63, 0, 1), None);
        assert_eq!(linger_target(true, 0, 0, 0, 64), None);
        // All ended (the device would idle anyway), or most of them.
        assert_eq!(linger_target(true, 64, 0, 0, 64), Some(64));
        assert_eq!(linger_target(true, 63, 1, 0, 63), Some(63));
        assert_eq!(linger_target(true, 2, 2, 0, 2), Some(2));
        // A successor already waiting counts, and is joined by the others.
        assert_eq!(linger_target(true, 63, 0, 1, 64), Some(64));
        // No more than the free slots can take; none when they are taken.
        assert_eq!(linger_target(true, 4, 0, 3, 5), Some(5));
        assert_eq!(linger_target(true, 4, 0, 6, 5), None);
        assert_eq!(linger_target(true, 4, 0, 5, 5), None);
    }
}
