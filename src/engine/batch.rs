//! Which tokens go into the next `decode`.
//!
//! Every sequence that is generating contributes its one pending token, so
//! running streams advance every step. Whatever room is left in the batch
//! goes to prompt prefill, oldest request first, in chunks: a long prompt
//! takes several steps and never stalls the streams that are already running.

/// What the planner needs to know about one occupied slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    /// Slot index.
    pub slot: usize,
    /// Has a sampled token waiting to be fed back.
    pub decoding: bool,
    /// Prompt tokens not yet in the KV cache.
    pub prefill_remaining: usize,
}

/// One slot's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Feed the slot's pending token and sample the next one.
    Decode {
        /// Slot index.
        slot: usize,
    },
    /// Feed `n_tokens` prompt tokens; `finishes` = this chunk ends the prompt
    /// (so its last token's logits are sampled).
    Prefill {
        /// Slot index.
        slot: usize,
        /// Tokens in this chunk.
        n_tokens: usize,
        /// Whether the chunk completes the prompt.
        finishes: bool,
    },
}

impl Work {
    /// The slot this work belongs to.
    pub fn slot(&self) -> usize {
        match *self {
            Work::Decode { slot } | Work::Prefill { slot, .. } => slot,
        }
    }

    /// Tokens this work feeds.
    pub fn n_tokens(&self) -> usize {
        match *self {
            Work::Decode { .. } => 1,
            Work::Prefill { n_tokens, .. } => n_tokens,
        }
    }
}

/// Plans one step over `slots` (in admission order) with room for `n_batch` tokens.
pub fn plan(slots: &[SlotView], n_batch: usize) -> Vec<Work> {
    let mut work = Vec::new();
    let mut budget = n_batch;
    for s in slots.iter().filter(|s| s.decoding) {
        if budget == 0 {
            break;
        }
        work.push(Work::Decode { slot: s.slot });
        budget -= 1;
    }
    for s in slots
        .iter()
        .filter(|s| !s.decoding && s.prefill_remaining > 0)
    {
        if budget == 0 {
            break;
        }
        let n = s.prefill_remaining.min(budget);
        work.push(Work::Prefill {
            slot: s.slot,
            n_tokens: n,
            finishes: n == s.prefill_remaining,
        });
        budget -= n;
    }
    work
}

/// How many micro-batches (graph evaluations) llama.cpp is predicted to
/// split a step into, given each slot's token count in slot order (`work`
/// sorted by slot). llama.cpp does not report its split, so this models its
/// `split_equal` / `split_simple`; `tests/micro_batches.rs` counts llama.cpp's
/// graph evaluations (through its eval callback) for the same batches and
/// checks that they agree.
///
/// With one KV stream per slot llama.cpp uses an "equal" split: a
/// micro-batch takes the same number of tokens from every sequence in it, and
/// its sequences must have consecutive ids. So a step holding one decode
/// token per slot plus a prompt chunk costs two evaluations, and a free slot
/// in the middle of the running ones splits the decode tokens in two. With a
/// unified KV cache the split is "simple": `n_ubatch` tokens at a time.
pub fn predicted_micro_batches(work: &[Work], unified: bool, n_ubatch: usize) -> usize {
    let n_ubatch = n_ubatch.max(1);
    if unified {
        return work
            .iter()
            .map(Work::n_tokens)
            .sum::<usize>()
            .div_ceil(n_ubatch);
    }
    let mut left: Vec<(usize, usize)> = work.iter().map(|w| (w.slot(), w.n_tokens())).collect();
    let mut count = 0;
    loop {
        // The run of consecutive slot ids starting at the first unfinished one.
        let Some(first) = left.iter().position(|&(_, n)| n > 0) else {
            return count;
        };
        let mut end = first + 1;
        while end < left.len() && left[end].1 > 0 && left[end].0 == left[end - 1].0 + 1 {
            end += 1;
        }
        let run = &mut left[first..end];
        let n_seqs = run.len();
        let fewest = run.iter().map(|&(_, n)| n).min().unwrap_or(1);
        let per_seq = fewest.min((n_ubatch / n_seqs).max(1));
        for entry in run.iter_mut() {
            entry.1 -= per_seq;
        }
        count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(slot: usize, decoding: bool, prefill_remaining: usize) -> SlotView {
        SlotView {
            slot,
            decoding,
            prefill_remaining,
        }
    }

    fn d(slot: usize) -> Work {
        Work::Decode { slot }
    }

    fn p(slot: usize, n_tokens: usize) -> Work {
        Work::Prefill {
            slot,
            n_tokens,
            finishes: true,
        }
    }

    #[test]
    fn consecutive_decodes_are_one_micro_batch() {
        let w: Vec<Work> = (0..64).map(d).collect();
        assert_eq!(predicted_micro_batches(&w, false, 512), 1);
        assert_eq!(predicted_micro_batches(&w, true, 512), 1);
    }

    #[test]
    fn a_free_slot_in_the_middle_splits_the_decodes() {
        let w = [d(0), d(1), d(3), d(4)];
        assert_eq!(predicted_micro_batches(&w, false, 512), 2);
        assert_eq!(predicted_micro_batches(&w, true, 512), 1);
    }

    #[test]
    fn a_prompt_chunk_costs_extra_micro_batches_without_unified_kv() {
        // One token of slot 1's chunk rides with the decodes; the rest follow.
        let w = [d(0), p(1, 40), d(2)];
        assert_eq!(predicted_micro_batches(&w, false, 512), 2);
        // Two non-adjacent chunks: decodes + first tokens, then each chunk's rest
        // (slots 1 and 3 are not consecutive).
        let w = [d(0), p(1, 40), d(2), p(3, 10)];
        assert_eq!(predicted_micro_batches(&w, false, 512), 3);
        assert_eq!(predicted_micro_batches(&w, true, 512), 1);
        assert_eq!(predicted_micro_batches(&w, true, 16), 4);
    }

    #[test]
    fn equal_split_respects_the_micro_batch_size() {
        assert_eq!(predicted_micro_batches(&[p(0, 100)], false, 32), 4);
        // Two adjacent chunks share micro-batches: 16 + 16 tokens per evaluation.
        assert_eq!(predicted_micro_batches(&[p(0, 40), p(1, 40)], false, 32), 3);
    }

    #[test]
    fn decodes_first_then_chunks_prefill() {
        let p = plan(&[v(0, true, 0), v(1, false, 100), v(2, true, 0)], 32);
        assert_eq!(
            p,
            vec![
                Work::Decode { slot: 0 },
                Work::Decode { slot: 2 },
                Work::Prefill {
                    slot: 1,
                    n_tokens: 30,
                    finishes: false
                },
            ]
        );
    }

    #[test]
    fn several_prompts_share_the_budget_in_order() {
        let p = plan(&[v(3, false, 5), v(1, false, 10)], 12);
        assert_eq!(
            p,
            vec![
                Work::Prefill {
                    slot: 3,
                    n_tokens: 5,
                    finishes: true
                },
                Work::Prefill {
                    slot: 1,
                    n_tokens: 7,
                    finishes: false
                },
            ]
        );
    }

    #[test]
    fn long_prompt_never_starves_decoders() {
        let mut remaining = 1000;
        let mut steps = 0;
        while remaining > 0 {
            let p = plan(&[v(0, true, 0), v(1, false, remaining)], 64);
            assert_eq!(p[0], Work::Decode { slot: 0 });
            if let Work::Prefill { n_tokens, .. } = p[1] {
                remaining -= n_tokens;
            }
            steps += 1;
        }
        assert_eq!(steps, 1000usize.div_ceil(63));
    }
}
