//! The engine thread: loads the model ([`super::load`]), then runs the
//! batching loop. Each turn of the loop takes new requests, ends the ones
//! whose client left or whose deadline passed, gives free slots to waiting
//! requests, and runs one step: one `decode` over every occupied slot.
//!
//! [`Loop::step`] is the one place that orchestrates; each part owns its
//! state and is lent the rest where it needs it:
//! * [`schedule`] — commands, the waiting requests, admission into slots,
//!   deadlines, the linger ([`schedule::Schedule`]);
//! * [`kv`] — the prompt cache, prefixes shared across slots, KV usage
//!   ([`kv::Kv`]);
//! * [`batch`] — filling the batch, padding and gap dummies, the `decode`,
//!   the step record ([`batch::Batcher`]);
//! * [`pick`] — greedy picks on the device or the host, host draws, the
//!   grammar hand-off ([`pick::Picker`]);
//! * [`emit`] — token text, flushing, ending requests ([`emit::Output`]):
//!   every request leaves through [`emit::Output::end_request`].
//!
//! The slots themselves ([`Slots`]) and the llama.cpp context are the
//! loop's, lent to the parts.

mod batch;
mod emit;
pub(super) mod kv;
mod pick;
mod schedule;

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;

use self::batch::Batcher;
use self::emit::{Ending, Flush, Output};
use self::kv::Kv;
use self::pick::{Picked, Picker};
pub(super) use self::schedule::Command;
use self::schedule::Schedule;
use super::backend_greedy::GreedySamplers;
use super::load::{self, Loaded};
use super::raw_context;
use super::request::FinishReason;
use super::sampler;
use super::shared::{LoadState, Shared};
use super::slot::{Outcome, Slots};
use super::stats::{EngineStats, Phase, StepClock};
use super::{EngineConfig, EngineError};

pub(super) fn run(config: EngineConfig, shared: Arc<Shared>, rx: Receiver<Command>) {
    #[cfg(feature = "test-support")]
    if let Some(d) = config.load_delay {
        std::thread::sleep(d);
    }
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
    rx: Receiver<Command>,
) -> Result<(), EngineError> {
    let loading = load::LOADING.lock().unwrap_or_else(|p| p.into_inner());
    let model = load::load_model(config)?;
    let Loaded {
        ctx,
        info,
        settings,
    } = load::new_context(config, &model)?;
    drop(loading);
    tracing::info!(engine = %config.thread_name, "{}", load::loaded_line(&info));
    let stats = &shared.stats;
    stats
        .kv_total_cells
        .store(info.n_ctx as usize, Ordering::Relaxed);
    stats.kv_used_cells.store(0, Ordering::Relaxed);
    let slots = config.parallel as usize;
    let raw_ctx = raw_context::raw_context(&ctx);
    let greedy_samplers = if settings.backend_greedy {
        let g = raw_ctx.map(|raw| GreedySamplers::new(raw, slots));
        if g.is_none() {
            tracing::warn!("backend greedy picks unavailable; picking on the host");
        }
        g
    } else {
        None
    };
    let kv = Kv::new(
        slots,
        config.cache_prompts,
        config.kv_unified,
        &shared.prompt_cache,
    );
    let format = super::prompt::PromptFormat::load(&model.model, config.chat_template.as_deref())?;
    tracing::info!(engine = %config.thread_name, "chat template: {}", format.origin());
    let _ = shared.format.set(format);
    let _ = shared.model.set(Arc::clone(&model.model));
    let _ = shared.info.set(info);
    shared.state.send_replace(LoadState::Ready);

    let mut lp = Loop {
        picker: Picker::new(greedy_samplers, config.thread_name.clone()),
        ctx,
        model: &model.model,
        stats,
        slots: Slots::new(slots),
        schedule: Schedule::new(rx, settings.linger, settings.decode_is_async),
        kv,
        batch: Batcher::new(&settings, config.kv_unified, raw_ctx),
        out: Output::default(),
        decode_is_async: settings.decode_is_async,
        #[cfg(feature = "test-support")]
        step_delay: config.step_delay,
    };
    lp.run();
    Ok(())
}

/// The step loop: the parts' states, the slots and the context.
struct Loop<'m> {
    /// Declared before `ctx`: its backend greedy samplers are detached while
    /// the context still lives.
    picker: Picker,
    ctx: LlamaContext<'m>,
    model: &'m LlamaModel,
    stats: &'m EngineStats,
    slots: Slots,
    schedule: Schedule,
    kv: Kv<'m>,
    batch: Batcher,
    out: Output,
    /// Whether `decode` returns before the step is computed (layers on a
    /// GPU): the previous step's text is then produced while the device
    /// works. On the CPU `decode` computes the step itself, so the text goes
    /// out at the end of the step that picked it, a step sooner.
    decode_is_async: bool,
    /// Test hook: a pause per step, after the step on the CPU, between the
    /// launch and the sync (where a GPU computes) when `decode_is_async`.
    #[cfg(feature = "test-support")]
    step_delay: Option<Duration>,
}

impl Loop<'_> {
    fn run(&mut self) {
        while self.schedule.receive(self.slots.running() > 0) {
            for (job, outcome) in self.schedule.expire_pending() {
                self.end(Ending::Waiting(job), outcome);
            }
            self.assign_slots();
            for (slot, outcome) in schedule::expired_running(&self.slots) {
                self.end(Ending::Slot(slot), outcome);
            }
            if self.slots.running() == 0 {
                continue;
            }
            let ended = self.out.ended();
            self.step();
            if self.out.ended() != ended {
                let n = self.out.ended() - ended;
                self.schedule.linger(n, &self.slots, self.stats);
            }
            #[cfg(feature = "test-support")]
            if let Some(d) = self.step_delay.filter(|_| !self.decode_is_async) {
                std::thread::sleep(d);
            }
        }
    }

    /// Gives free slots to waiting requests, oldest first.
    fn assign_slots(&mut self) {
        while let Some((slot, job)) = self.schedule.next(&self.slots, &self.kv, &self.picker) {
            // Validation compiled the grammar already; should it fail here
            // anyway, the request fails and the engine goes on.
            let sampler = match sampler::build(&job.sampling, self.model) {
                Ok(s) => s,
                Err(e) => {
                    let outcome = Outcome::Failed(EngineError::Sampling(e));
                    self.end(Ending::Waiting(job), outcome);
                    continue;
                }
            };
            let evaluate_all = job.prompt_logprobs.is_some();
            let cached = self
                .kv
                .reuse(&mut self.ctx, slot, &job.tokens, evaluate_all);
            self.picker.attach(slot, job.picks_on_backend(), self.stats);
            schedule::start(&mut self.slots, self.stats, slot, job, sampler, cached);
        }
    }

    /// Ends a request ([`Output::end_request`]).
    fn end(&mut self, ending: Ending, outcome: Outcome) {
        let (slots, kv, ctx) = (&mut self.slots, &mut self.kv, &mut self.ctx);
        self.out
            .end_request(slots, kv, ctx, self.stats, ending, outcome);
    }

    /// Ends the requests of `slots` with `err`.
    fn fail_all(&mut self, slots: &[usize], err: &EngineError) {
        for &slot in slots {
            self.end(Ending::Slot(slot), Outcome::Failed(err.clone()));
        }
    }

    /// Applies a pick: the token goes to the request, or the request ends.
    fn take(&mut self, slot: usize, picked: Picked) {
        let end = match picked {
            Ok(token) => self
                .out
                .take_token(&mut self.slots, self.model, self.stats, slot, token),
            Err(outcome) => Some(outcome),
        };
        if let Some(outcome) = end {
            self.end(Ending::Slot(slot), outcome);
        }
    }

    /// Takes the tokens the grammar thread has picked ([`Picker::collect_constrained`]).
    fn collect_constrained(&mut self, wait: Option<Duration>) {
        for (slot, picked) in self.picker.collect_constrained(&mut self.slots, wait) {
            self.take(slot, picked);
        }
    }

    /// Turns picked tokens into text ([`Output::flush`]); times it as the
    /// step's emit phase.
    fn flush(&mut self, clock: &mut StepClock, which: Flush) {
        let (slots, kv, ctx) = (&mut self.slots, &mut self.kv, &mut self.ctx);
        if self
            .out
            .flush(slots, kv, ctx, self.model, self.stats, which)
        {
            clock.lap(Phase::Emit);
        }
    }

    /// Reads this step's prompt rows for the requests that want the
    /// prompt's log-probabilities; a request whose prompt this step finished
    /// gets them sent, and one with no token to generate (`max_new_tokens`
    /// 0) ends here, before any pick.
    fn finish_prompts(&mut self, fed: &[(usize, usize)]) {
        pick::read_prompt_rows(&mut self.slots, &self.ctx, fed);
        for &(slot, _) in fed {
            let Some(a) = self.slots.get_mut(slot) else {
                continue;
            };
            // The step that finished the prompt: its last row is to be sampled.
            if a.n_generated > 0 || a.logits_at.is_none() || a.prefill_remaining() > 0 {
                continue;
            }
            if a.job.prompt_logprobs.is_some() {
                Output::send_prompt_logprobs(&mut self.slots, self.model, slot);
            }
            let Some(a) = self.slots.get_mut(slot) else {
                continue;
            };
            if a.job.max_new_tokens == 0 {
                a.logits_at = None;
                self.end(Ending::Slot(slot), Outcome::Finished(FinishReason::Length));
            }
        }
    }

    /// One `decode` over all occupied slots.
    fn step(&mut self) {
        let stats = self.stats;
        let mut clock = StepClock::start(&stats.steps);
        self.collect_constrained(None);
        self.kv
            .share_prefixes(&mut self.slots, &mut self.ctx, stats);
        let plan = self.batch.plan(&self.slots);
        let pads = self.batch.pad_slots(&self.slots, &self.ctx, &plan);
        let fed = match self.batch.fill(&mut self.slots, &plan, &pads) {
            Ok(fed) => fed,
            Err(e) => {
                tracing::error!(error = %e, "building the batch failed");
                let order = self.slots.order().to_vec();
                self.fail_all(&order, &EngineError::Decode(e));
                return;
            }
        };
        clock.lap(Phase::Plan);
        if self.batch.n_tokens() == 0 {
            self.flush(&mut clock, Flush::All);
            // Only constrained requests waiting for their tokens: wait for
            // one (briefly, so that new requests are still taken).
            self.collect_constrained(Some(Duration::from_millis(5)));
            return;
        }
        if let Err(e) = self.batch.decode(&mut self.ctx, &pads) {
            tracing::error!(error = %e, "decode failed");
            let slots: Vec<usize> = fed.iter().map(|&(slot, _)| slot).collect();
            self.fail_all(&slots, &EngineError::Decode(e));
            return;
        }
        clock.lap(Phase::Decode);
        self.batch.note_graphs(stats);
        // A GPU computes the step; meanwhile the previous step's tokens
        // become text (on the CPU they went out at the end of that step).
        // Requests ended by a stop string leave here.
        self.flush(&mut clock, Flush::All);
        #[cfg(feature = "test-support")]
        if let Some(d) = self.step_delay.filter(|_| self.decode_is_async) {
            std::thread::sleep(d);
        }
        self.ctx.synchronize();
        clock.lap(Phase::Sync);
        let prompts = Batcher::commit(&mut self.slots, &fed, stats);
        self.kv.prompts_fed(prompts);
        // Counted before any answer goes out, so a client that has its last
        // token sees this step in /metrics.
        self.batch.record(stats, &plan, &pads);
        self.finish_prompts(&fed);
        let mut picks = self.picker.pick_greedy(&self.slots, &self.ctx, &fed);
        // Constrained requests first, so that the grammar thread works while
        // the others are sampled here.
        for &(slot, _) in &fed {
            let constrained = self
                .slots
                .get(slot)
                .is_some_and(|a| a.job.sampling.grammar.is_some() && a.logits_at.is_some());
            if constrained {
                if let Some(outcome) = self.picker.hand_off(&mut self.slots, &self.ctx, slot) {
                    self.end(Ending::Slot(slot), outcome);
                }
            }
        }
        pick::draw_on_host(&mut self.slots, &self.ctx, &fed, &mut picks);
        for (&(slot, _), pick) in fed.iter().zip(picks) {
            if let Some(picked) = pick::resolve(&mut self.slots, &self.ctx, stats, slot, pick) {
                self.take(slot, picked);
            }
        }
        self.collect_constrained(None);
        self.kv.update_usage(&self.slots, stats);
        clock.lap(Phase::Sample);
        if !self.decode_is_async {
            self.flush(&mut clock, Flush::All);
        } else if self.out.any_last() {
            // A request that took its last token answers now, not after the
            // next step's launch: its slot is free for that step, and a
            // successor sent on the answer can still join it (`linger`).
            self.flush(&mut clock, Flush::Ending);
        }
    }
}
