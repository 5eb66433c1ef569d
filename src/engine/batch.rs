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
