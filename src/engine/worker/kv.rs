//! The KV cache beyond one request: the per-slot prompt cache, prefixes
//! shared across slots, and the KV usage counters. Owns [`Kv`]: the tokens
//! whose KV each free slot still holds, when requests last looked for a
//! prefix in another slot, and what is published for the router.
//!
//! A finished request's KV stays in its slot (its prompt and the tokens it
//! generated). The next request assigned to the slot keeps the prefix it
//! shares with those tokens and evaluates only the rest; a request that has
//! not started its prompt may copy a longer prefix from another slot.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;

use super::batch::pos;
use crate::engine::slot::{Active, Outcome, Slots};
use crate::engine::stats::EngineStats;

/// The prompt cache and cross-slot sharing state.
pub(super) struct Kv<'m> {
    /// Tokens whose KV each free slot still holds (its last request's prompt
    /// and output), for the next request that starts the same way.
    tokens: Vec<Vec<LlamaToken>>,
    /// Keep a finished request's KV for the next one (`--no-prompt-cache`: no).
    cache_prompts: bool,
    /// One KV stream shared by all slots.
    kv_unified: bool,
    /// Bumped in every step that feeds prompt tokens (other slots may then
    /// hold a longer prefix of a waiting prompt).
    share_epoch: u64,
    /// Per slot, the `share_epoch` at which its request last looked for a
    /// prefix in another slot (`None`: not yet).
    share_checked: Vec<Option<u64>>,
    /// Each free slot's cached tokens, for the router ([`crate::engine::Engine::cached_prefix`]).
    published: &'m RwLock<Vec<Arc<[LlamaToken]>>>,
}

impl<'m> Kv<'m> {
    pub fn new(
        slots: usize,
        cache_prompts: bool,
        kv_unified: bool,
        published: &'m RwLock<Vec<Arc<[LlamaToken]>>>,
    ) -> Self {
        *published.write().unwrap_or_else(|p| p.into_inner()) = vec![Arc::from(Vec::new()); slots];
        Self {
            tokens: vec![Vec::new(); slots],
            cache_prompts,
            kv_unified,
            share_epoch: 0,
            share_checked: vec![None; slots],
            published,
        }
    }

    /// The free slot for `prompt` ([`pick_slot`]); `suits` breaks ties.
    pub fn pick_slot(
        &self,
        slots: &Slots,
        prompt: &[LlamaToken],
        suits: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let free = slots.iter().map(Option::is_none);
        pick_slot(free, &self.tokens, prompt, suits)
    }

    /// Readies `slot`'s KV for `prompt`: keeps the cached prefix the prompt
    /// shares with the slot's previous sequence, minus at least one token
    /// (the last prompt token must be evaluated to have logits to sample
    /// from), and drops the rest. Returns the prompt tokens kept. A request
    /// that wants every prompt position's logits (`evaluate_all`) keeps none.
    pub fn reuse(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        slot: usize,
        prompt: &[LlamaToken],
        evaluate_all: bool,
    ) -> usize {
        let common = if evaluate_all {
            0
        } else {
            common_prefix(&self.tokens[slot], prompt).min(prompt.len().saturating_sub(1))
        };
        let seq = Some(slot as u32);
        let trimmed = common > 0
            && matches!(
                ctx.clear_kv_cache_seq(seq, u32::try_from(common).ok(), None),
                Ok(true)
            );
        let cached = if trimmed {
            common
        } else {
            let _ = ctx.clear_kv_cache_seq(seq, None, None);
            0
        };
        self.tokens[slot].clear();
        self.share_checked[slot] = None;
        self.publish(slot, Arc::from(Vec::new()));
        cached
    }

    /// Keeps the KV of a request that ended with `outcome` as `slot`'s
    /// prompt cache (unless caching is off or the outcome forbids it, when
    /// the slot's cells are cleared).
    pub fn release(
        &mut self,
        ctx: &mut LlamaContext<'_>,
        slot: usize,
        ended: &Active,
        outcome: &Outcome,
    ) {
        let kept = if outcome.keeps_kv() && self.cache_prompts {
            ended.kv_tokens()
        } else {
            Vec::new()
        };
        if kept.is_empty() {
            let _ = ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
        }
        self.publish(slot, Arc::from(kept.as_slice()));
        self.tokens[slot] = kept;
    }

    /// Notes that a step fed `n` prompts' tokens.
    pub fn prompts_fed(&mut self, n: u64) {
        self.share_epoch += n;
    }

    fn publish(&self, slot: usize, tokens: Arc<[LlamaToken]>) {
        let mut p = self.published.write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = p.get_mut(slot) {
            *entry = tokens;
        }
    }

    /// Counts the cells running requests use and those free slots keep.
    pub fn update_usage(&self, slots: &Slots, stats: &EngineStats) {
        let (mut used, mut cached) = (0, 0);
        for (a, tokens) in slots.iter().zip(&self.tokens) {
            match a {
                Some(a) => used += a.n_past,
                None => cached += tokens.len(),
            }
        }
        stats.kv_used_cells.store(used, Ordering::Relaxed);
        stats.kv_cached_cells.store(cached, Ordering::Relaxed);
    }

    /// Requests that have not started their prompt take a longer common
    /// prefix from another slot's KV (a running request or a free slot's
    /// cache) when that saves at least [`MIN_SHARED_PREFIX_GAIN`] tokens:
    /// concurrent requests that share a system prompt or a document evaluate
    /// it once. A request looks again whenever a step has fed prompt tokens.
    pub fn share_prefixes(
        &mut self,
        slots: &mut Slots,
        ctx: &mut LlamaContext<'_>,
        stats: &EngineStats,
    ) {
        if !self.cache_prompts {
            return;
        }
        let mut copied_to = vec![false; slots.len()];
        for i in 0..slots.order().len() {
            let dst = slots.order()[i];
            let Some(a) = slots.get(dst) else {
                continue;
            };
            // A request that reads the prompt's log-probabilities evaluates
            // all of it.
            if a.n_past != a.cached
                || a.job.prompt_logprobs.is_some()
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
            for (src, held) in slots.iter().enumerate() {
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
                    None => common_prefix(&self.tokens[src], prompt),
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
            let kept = self.copy_prefix(ctx, src, dst, common);
            copied_to[dst] = true;
            if let Some(a) = slots.get_mut(dst) {
                let before = a.cached;
                a.n_past = kept;
                a.cached = kept;
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
    fn copy_prefix(
        &self,
        ctx: &mut LlamaContext<'_>,
        src: usize,
        dst: usize,
        common: usize,
    ) -> usize {
        let (s, d) = (pos(src), pos(dst));
        let end = u32::try_from(common).ok();
        if self.kv_unified {
            let _ = ctx.clear_kv_cache_seq(Some(d as u32), None, None);
            if ctx.copy_kv_cache_seq(s, d, None, end).is_ok() {
                return common;
            }
        } else if ctx.copy_kv_cache_seq(s, d, None, None).is_ok()
            && matches!(ctx.clear_kv_cache_seq(Some(d as u32), end, None), Ok(true))
        {
            return common;
        }
        tracing::warn!(
            slot = dst,
            from = src,
            "copying a prompt prefix failed; evaluating the prompt"
        );
        let _ = ctx.clear_kv_cache_seq(Some(d as u32), None, None);
        0
    }
}

/// Length of the common prefix of `a` and `b`.
pub(in crate::engine) fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Length of the common prefix of `prompt` and a sequence's KV tokens given
/// in two parts: `head` (its prompt tokens) then `tail` (generated tokens).
fn common_prefix_of_parts(
    head: &[LlamaToken],
    tail: &[LlamaToken],
    prompt: &[LlamaToken],
) -> usize {
    let c = common_prefix(head, prompt);
    if c < head.len() {
        return c;
    }
    c + common_prefix(tail, &prompt[c..])
}

/// A request that has not started its prompt copies the KV of another
/// slot's longer common prefix when that saves at least this many prompt
/// tokens. A copy moves a whole per-slot KV stream (on one H200 with the
/// 7B shape and 512 cells per slot, 256 MiB device to device: well under
/// the time to evaluate this many tokens), or shares cells in a unified cache.
const MIN_SHARED_PREFIX_GAIN: usize = 16;

/// The free slot for a prompt. The slot whose cached tokens share the
/// longest prefix with the prompt, when that saves at least half of the
/// prompt (a returning conversation, a repeated prompt); otherwise the lowest
/// free slot. Packing running requests into the lowest slots matters on a
/// GPU: llama.cpp evaluates a step in one pass only over consecutive
/// sequence ids, so a gap between running slots costs a second pass (see
/// [`crate::engine::batch::predicted_micro_batches`]). The lowest slot still reuses whatever prefix it
/// shares with the prompt, e.g. the chat preamble.
///
/// Between slots that are otherwise equal (the same prefix; any slot, for
/// the lowest) one that `suits` the request wins: one whose backend greedy
/// sampler is already as the request needs it, as attaching or detaching one
/// makes llama.cpp re-plan its graph memory.
fn pick_slot(
    free: impl Iterator<Item = bool>,
    cached: &[Vec<LlamaToken>],
    prompt: &[LlamaToken],
    suits: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut lowest: Option<(usize, bool)> = None;
    let mut best: Option<(usize, usize, bool)> = None;
    for (i, (is_free, tokens)) in free.zip(cached).enumerate() {
        if !is_free {
            continue;
        }
        let fits = suits(i);
        if lowest.is_none_or(|(_, f)| fits && !f) {
            lowest = Some((i, fits));
        }
        let common = common_prefix(tokens, prompt);
        if best.is_none_or(|(_, c, f)| common > c || (common == c && fits && !f)) {
            best = Some((i, common, fits));
        }
    }
    match best {
        Some((i, common, _)) if common > 0 && 2 * common >= prompt.len() => Some(i),
        _ => lowest.map(|(i, _)| i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: usize) -> bool {
        true
    }

    fn toks(v: &[i32]) -> Vec<LlamaToken> {
        v.iter().copied().map(LlamaToken).collect()
    }

    #[test]
    fn common_prefix_spans_prompt_and_generated_tokens() {
        let prompt = toks(&[1, 2, 3, 4, 5]);
        assert_eq!(
            common_prefix_of_parts(&toks(&[1, 2]), &toks(&[3, 9]), &prompt),
            3
        );
        assert_eq!(
            common_prefix_of_parts(&toks(&[1, 7]), &toks(&[3]), &prompt),
            1
        );
        assert_eq!(
            common_prefix_of_parts(&toks(&[1, 2, 3, 4, 5]), &toks(&[6]), &prompt),
            5
        );
        assert_eq!(common_prefix_of_parts(&[], &toks(&[1, 2]), &prompt), 2);
        assert_eq!(common_prefix_of_parts(&[], &[], &prompt), 0);
    }

    #[test]
    fn slot_choice_reuses_long_prefixes_else_packs_low() {
        let cached = vec![
            toks(&[1, 5]),
            toks(&[1, 2, 3, 4]),
            toks(&[1, 2, 9, 9]),
            Vec::new(),
        ];
        let all_free = || [true; 4].into_iter();
        // The longest prefix, when it covers at least half the prompt.
        assert_eq!(
            pick_slot(all_free(), &cached, &toks(&[1, 2, 3, 7]), any),
            Some(1)
        );
        assert_eq!(
            pick_slot(all_free(), &cached, &toks(&[1, 2, 9, 9, 8]), any),
            Some(2)
        );
        // A short shared prefix: the lowest free slot, whatever it holds.
        assert_eq!(
            pick_slot(all_free(), &cached, &toks(&[1, 2, 7, 7, 7, 7]), any),
            Some(0)
        );
        let free = [false, false, true, true].into_iter();
        assert_eq!(pick_slot(free, &cached, &toks(&[8, 8]), any), Some(2));
        // Busy slots are skipped; nothing free gives None.
        let free = [true, false, true, true].into_iter();
        assert_eq!(pick_slot(free, &cached, &toks(&[1, 2, 3, 4]), any), Some(2));
        assert_eq!(
            pick_slot([false; 4].into_iter(), &cached, &toks(&[1]), any),
            None
        );
        // Equal caches: the lowest free index.
        let same = vec![toks(&[1, 2]); 3];
        let free = [false, true, true].into_iter();
        assert_eq!(pick_slot(free, &same, &toks(&[1, 2, 3]), any), Some(1));
        // Between equals, a slot that suits the request; a longer prefix
        // still wins over suiting.
        let odd = |i: usize| i % 2 == 1;
        let free = [true, true, true].into_iter();
        assert_eq!(pick_slot(free, &same, &toks(&[1, 2, 3]), odd), Some(1));
        assert_eq!(
            pick_slot(all_free(), &cached, &toks(&[1, 2, 9, 9, 8]), odd),
            Some(2)
        );
        // The lowest free slot that suits, else the lowest.
        let unrelated = toks(&[8, 8, 8]);
        assert_eq!(pick_slot(all_free(), &cached, &unrelated, odd), Some(1));
        assert_eq!(
            pick_slot(all_free(), &cached, &unrelated, |i| i == 3),
            Some(3)
        );
        assert_eq!(
            pick_slot(all_free(), &cached, &unrelated, |_| false),
            Some(0)
        );
    }
}
