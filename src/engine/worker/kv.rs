//! The per-slot prompt cache: which free slot a new request goes to.
//!
//! A finished request's KV stays in its slot (its prompt and the tokens it
//! generated). The next request assigned to the slot keeps the prefix it
//! shares with those tokens and evaluates only the rest.

use llama_cpp_2::token::LlamaToken;

/// Length of the common prefix of `a` and `b`.
pub(super) fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Length of the common prefix of `prompt` and a sequence's KV tokens given
/// in two parts: `head` (its prompt tokens) then `tail` (generated tokens).
pub(super) fn common_prefix_of_parts(
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
pub(super) const MIN_SHARED_PREFIX_GAIN: usize = 16;

/// The free slot for a prompt. The slot whose cached tokens share the
/// longest prefix with the prompt, when that saves at least half of the
/// prompt (a returning conversation, a repeated prompt); otherwise the lowest
/// free slot. Packing running requests into the lowest slots matters on a
/// GPU: llama.cpp evaluates a step in one pass only over consecutive
/// sequence ids, so a gap between running slots costs a second pass (see
/// [`super::batch::predicted_micro_batches`]). The lowest slot still reuses whatever prefix it
/// shares with the prompt, e.g. the chat preamble.
///
/// Between slots that are otherwise equal (the same prefix; any slot, for
/// the lowest) one that `suits` the request wins: one whose backend greedy
/// sampler is already as the request needs it, as attaching or detaching one
/// makes llama.cpp re-plan its graph memory.
pub(super) fn pick_slot(
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
