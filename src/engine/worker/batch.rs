//! Building one step's batch. Owns [`Batcher`]: the `LlamaBatch` and the
//! settings that shape it (batch size, decode padding, gap dummies). Which
//! work a step takes, and how llama.cpp splits it, is planned by the pure
//! functions of [`crate::engine::batch`]; this part turns a plan into
//! tokens, adds the dummy tokens, runs the `decode`, takes the fed tokens
//! into the slots' state, and records the step's shape.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::engine::batch::{self as planner, SlotView, Work};
use crate::engine::info::Settings;
use crate::engine::raw_context;
use crate::engine::slot::Slots;
use crate::engine::stats::EngineStats;

/// llama.cpp rounds a micro-batch's attention span (KV cells) up to a
/// multiple of this (`llama_kv_cache::get_n_kv`), so that graphs keep their shape.
const KV_SPAN_PAD: usize = 256;

/// A slot index as llama.cpp's sequence id (or a position as its `llama_pos`).
pub(super) fn pos(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// A dummy token: the slot it goes on and the position it takes.
pub(super) type Pad = (usize, i32);

/// The step's batch and what shapes it.
pub(super) struct Batcher {
    batch: LlamaBatch<'static>,
    n_batch: usize,
    /// Decode-only steps are padded to a multiple of this (0 = off).
    decode_pad: usize,
    /// Unfed slots between fed ones carry a dummy token.
    fill_gaps: bool,
    /// One KV stream shared by all slots (for the micro-batch prediction).
    kv_unified: bool,
    /// KV cells of one slot's stream.
    n_ctx_slot: usize,
    /// The context's raw handle, for llama.cpp's graph-reuse counter
    /// (`None`: not to be had; the counter stays 0).
    raw_ctx: Option<NonNull<llama_cpp_sys_2::llama_context>>,
}

impl Batcher {
    pub fn new(
        settings: &Settings,
        kv_unified: bool,
        raw_ctx: Option<NonNull<llama_cpp_sys_2::llama_context>>,
    ) -> Self {
        Self {
            batch: LlamaBatch::new(settings.n_batch, 1),
            n_batch: settings.n_batch,
            decode_pad: settings.decode_pad,
            fill_gaps: settings.fill_gaps,
            kv_unified,
            n_ctx_slot: settings.n_ctx_slot,
            raw_ctx,
        }
    }

    /// Tokens in the batch as filled.
    pub fn n_tokens(&self) -> i32 {
        self.batch.n_tokens()
    }

    /// The step's work over the occupied slots, in slot order.
    pub fn plan(&self, slots: &Slots) -> Vec<Work> {
        let views: Vec<SlotView> = slots
            .order()
            .iter()
            .filter_map(|&slot| {
                slots.get(slot).map(|a| SlotView {
                    slot,
                    decoding: a.pending.is_some(),
                    prefill_remaining: a.prefill_remaining(),
                })
            })
            .collect();
        let mut plan = planner::plan(&views, self.n_batch);
        // llama.cpp splits a multi-stream batch into micro-batches of
        // consecutive sequence ids; ascending order keeps their number low.
        plan.sort_by_key(Work::slot);
        plan
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
    pub fn pad_slots(&self, slots: &Slots, ctx: &LlamaContext<'_>, plan: &[Work]) -> Vec<Pad> {
        let Some(top) = plan.iter().map(Work::slot).max() else {
            return Vec::new();
        };
        let uniform = plan.iter().all(|w| w.n_tokens() == 1);
        let n = plan.len();
        let room = self
            .n_batch
            .saturating_sub(plan.iter().map(Work::n_tokens).sum());
        let target = if self.decode_pad > 0 && uniform {
            (n.div_ceil(self.decode_pad) * self.decode_pad).min(slots.len())
        } else {
            n
        };
        if !self.fill_gaps && target == n {
            return Vec::new();
        }
        let span = plan
            .iter()
            .filter_map(|w| {
                let a = slots.get(w.slot())?;
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
        for (slot, held) in slots.iter().enumerate() {
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
            let at = ctx.kv_cache_seq_pos_max(pos(slot)).saturating_add(1);
            let Ok(at_cell) = usize::try_from(at) else {
                continue;
            };
            if at_cell < self.n_ctx_slot && at_cell < span {
                pads.push((slot, at));
            }
        }
        pads
    }

    /// Fills the batch with the plan's work and the dummy tokens, in slot
    /// (sequence id) order; returns each fed slot with its token count.
    pub fn fill(
        &mut self,
        slots: &mut Slots,
        plan: &[Work],
        pads: &[Pad],
    ) -> Result<Vec<(usize, usize)>, String> {
        self.batch.clear();
        let mut fed = Vec::with_capacity(plan.len());
        let mut next_pad = pads.iter().peekable();
        for work in plan {
            while let Some(&(slot, at)) = next_pad.next_if(|p| p.0 < work.slot()) {
                self.add_dummy(slot, at)?;
            }
            let n = match *work {
                Work::Decode { slot } => self.add_decode(slots, slot)?,
                Work::Prefill {
                    slot,
                    n_tokens,
                    finishes,
                } => self.add_prefill(slots, slot, n_tokens, finishes)?,
            };
            fed.push((work.slot(), n));
        }
        for &(slot, at) in next_pad {
            self.add_dummy(slot, at)?;
        }
        Ok(fed)
    }

    fn add_dummy(&mut self, slot: usize, at: i32) -> Result<(), String> {
        self.batch
            .add(LlamaToken(0), at, &[pos(slot)], true)
            .map_err(|e| e.to_string())
    }

    /// Feeds the slot's pending token; returns the tokens added.
    fn add_decode(&mut self, slots: &mut Slots, slot: usize) -> Result<usize, String> {
        let idx = self.batch.n_tokens();
        let a = slots.get_mut(slot).ok_or("empty slot")?;
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
        slots: &mut Slots,
        slot: usize,
        n_tokens: usize,
        finishes: bool,
    ) -> Result<usize, String> {
        let a = slots.get_mut(slot).ok_or("empty slot")?;
        let start = a.n_past;
        // A request that wants the prompt's log-probabilities reads a row
        // for every token (the batch bounds the rows of a step).
        let every_row = a.job.prompt_logprobs.is_some();
        if every_row {
            a.prompt_rows = Some((self.batch.n_tokens(), start, n_tokens));
        }
        for i in 0..n_tokens {
            let last = finishes && i + 1 == n_tokens;
            let token = *a.job.tokens.get(start + i).ok_or("prompt index")?;
            if last {
                a.logits_at = Some(self.batch.n_tokens());
            }
            self.batch
                .add(token, pos(start + i), &[pos(slot)], last || every_row)
                .map_err(|e| e.to_string())?;
        }
        if !finishes {
            a.logits_at = None;
        }
        Ok(n_tokens)
    }

    /// Launches the step's `decode`, then drops the dummy tokens' cells at
    /// once: the next step (or a request assigned to the slot) sees the
    /// slot's cache as it was.
    pub fn decode(&mut self, ctx: &mut LlamaContext<'_>, pads: &[Pad]) -> Result<(), String> {
        let decoded = ctx.decode(&mut self.batch);
        for &(slot, at) in pads {
            let from = u32::try_from(at).ok();
            let _ = ctx.clear_kv_cache_seq(Some(slot as u32), from, None);
        }
        decoded.map_err(|e| e.to_string())
    }

    /// Copies llama.cpp's graph-reuse counter into the profile.
    pub fn note_graphs(&self, stats: &EngineStats) {
        if let Some(raw) = self.raw_ctx {
            let reused = raw_context::graphs_reused(raw);
            stats.steps.graphs_reused.store(reused, Ordering::Relaxed);
        }
    }

    /// Takes a computed step into the slots: each fed token moves into the
    /// sequence's KV. Returns how many slots were fed prompt tokens.
    pub fn commit(slots: &mut Slots, fed: &[(usize, usize)], stats: &EngineStats) -> u64 {
        let mut prompts = 0;
        for &(slot, n) in fed {
            if let Some(a) = slots.get_mut(slot) {
                match a.pending.take() {
                    Some(token) => a.fed.push(token),
                    None => {
                        stats.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
                        prompts += 1;
                    }
                }
                a.n_past += n;
            }
        }
        prompts
    }

    /// Counts one step's shape in the profile (its phases are timed by the
    /// step's `StepClock`).
    pub fn record(&self, stats: &EngineStats, plan: &[Work], pads: &[Pad]) {
        let p = &stats.steps;
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
        let micro = planner::predicted_micro_batches(&shape, self.kv_unified, self.n_batch) as u64;
        p.predicted_micro_batches
            .fetch_add(micro, Ordering::Relaxed);
    }
}
