//! Output: picked tokens become text, and requests end. Owns [`Output`]:
//! the tokens picked whose text is not yet sent, and the count of requests
//! ended. Every request leaves through [`Output::end_request`], whether it
//! held a slot (finished, cancelled, timed out, failed) or never got one
//! (expired while waiting, a sampler that could not be built).

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::kv::Kv;
use crate::engine::logprobs::{PromptLogprobs, RowLogprobs};
use crate::engine::request::{Event, FinishReason};
use crate::engine::slot::{Job, Outcome, Slots};
use crate::engine::stats::EngineStats;

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

/// Which picked tokens [`Output::flush`] turns into text.
#[derive(Clone, Copy)]
pub(super) enum Flush {
    All,
    /// Only requests' last tokens (the rest wait for the next step's launch).
    Ending,
}

/// The request [`Output::end_request`] ends.
pub(super) enum Ending {
    /// The one holding this slot.
    Slot(usize),
    /// One that never got a slot.
    Waiting(Box<Job>),
}

/// Tokens picked and not yet sent, and the requests ended so far.
#[derive(Default)]
pub(super) struct Output {
    /// Tokens picked in the last step, their text not yet sent.
    emits: Vec<Emit>,
    /// Requests that held a slot and ended, so far.
    ended: u64,
}

impl Output {
    /// Requests that held a slot and ended, so far.
    pub fn ended(&self) -> u64 {
        self.ended
    }

    /// Whether a picked token is some request's last.
    pub fn any_last(&self) -> bool {
        self.emits.iter().any(|e| e.last)
    }

    /// Records the token picked for `slot`: queues it for the next step and
    /// for its text, or returns how the request ends (end of generation).
    pub fn take_token(
        &mut self,
        slots: &mut Slots,
        model: &LlamaModel,
        stats: &EngineStats,
        slot: usize,
        (token, logprobs): (LlamaToken, Option<RowLogprobs>),
    ) -> Option<Outcome> {
        let a = slots.get_mut(slot)?;
        a.note_token(Instant::now(), stats);
        // A complete grammar allows nothing but end of generation.
        let ends = !a.job.sampling.ignore_eos || a.job.sampling.grammar.is_some();
        if model.vocab().is_eog(token) && ends {
            // Earlier tokens' text went out before this step's sync.
            return Some(Outcome::Finished(FinishReason::Eos));
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
            logprobs,
        });
        None
    }

    /// Sends the prompt's log-probabilities of `slot`'s request (read over
    /// its prefill, [`super::pick::read_prompt_rows`]) with each token's
    /// bytes and its alternatives' ([`Event::PromptLogprobs`]), before any
    /// generated token's event.
    pub fn send_prompt_logprobs(slots: &mut Slots, model: &LlamaModel, slot: usize) {
        let Some(a) = slots.get_mut(slot) else {
            return;
        };
        let vocab = model.vocab();
        let piece = |t: LlamaToken| vocab.token_to_piece(t, false, None);
        let rows = std::mem::take(&mut a.prompt_logprobs);
        let Some(&first) = a.job.tokens.first() else {
            return;
        };
        let rest = a.job.tokens[1..]
            .iter()
            .zip(rows)
            .map(|(&token, row)| row.with_bytes(token.0, piece(token), |t| piece(LlamaToken(t))))
            .collect();
        let _ = a.job.tx.send(Event::PromptLogprobs(PromptLogprobs {
            first_token: first.0,
            first_bytes: piece(first),
            rest,
        }));
    }

    /// Turns the picked tokens into text: detokenize, stop strings, send.
    /// A stop string or a closed stream ends the request here (its next token
    /// may already be in the running step; that result is discarded).
    /// Returns whether there was anything to flush.
    pub fn flush(
        &mut self,
        slots: &mut Slots,
        kv: &mut Kv<'_>,
        ctx: &mut LlamaContext<'_>,
        model: &LlamaModel,
        stats: &EngineStats,
        which: Flush,
    ) -> bool {
        if self.emits.is_empty() {
            return false;
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
        let vocab = model.vocab();
        for e in emits {
            let Some(a) = slots.get_mut(e.slot).filter(|a| a.job.id == e.id) else {
                continue;
            };
            let lstrip = if e.first && a.job.strip_leading_space {
                NonZeroU16::new(1)
            } else {
                None
            };
            let bytes = vocab.token_to_piece(e.token, false, lstrip);
            if let Some(row) = e.logprobs {
                a.logprobs
                    .push(row.with_bytes(e.token.0, bytes.clone(), |t| {
                        vocab.token_to_piece(LlamaToken(t), false, lstrip)
                    }));
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
                self.end_request(slots, kv, ctx, stats, Ending::Slot(e.slot), end);
            }
        }
        true
    }

    /// Ends a request: counts the outcome, sends what the client is still
    /// owed (held-back text and the answer, or the error), and frees the
    /// slot and the admission ticket before the final event goes out, so a
    /// client that has its answer never sees the request still counted. A
    /// slot's KV stays as its prompt cache unless caching is off or the
    /// outcome forbids it.
    pub fn end_request(
        &mut self,
        slots: &mut Slots,
        kv: &mut Kv<'_>,
        ctx: &mut LlamaContext<'_>,
        stats: &EngineStats,
        ending: Ending,
        outcome: Outcome,
    ) {
        let slot = match ending {
            Ending::Slot(slot) => slot,
            Ending::Waiting(job) => {
                outcome.count(stats);
                let tx = job.tx.clone();
                // Its admission ticket goes with it, before the error.
                drop(job);
                if let Some(e) = outcome.error() {
                    let _ = tx.send(Event::Error(e));
                }
                return;
            }
        };
        let Some(mut a) = slots.take(slot) else {
            return;
        };
        self.ended += 1;
        stats.running.fetch_sub(1, Ordering::Relaxed);
        outcome.count(stats);
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
                stats.end_to_end.observe(now - a.job.submitted);
                Some(Event::Done(a.completion(*reason, now)))
            }
            Outcome::Cancelled => {
                tracing::debug!(id = a.job.id, slot, "client gone; cancelling");
                None
            }
            Outcome::TimedOut(_) | Outcome::Failed(_) => outcome.error().map(Event::Error),
        };
        kv.release(ctx, slot, &a, &outcome);
        // The request's admission ticket goes with it, before the last event.
        let tx = a.job.tx.clone();
        drop(a);
        kv.update_usage(slots, stats);
        if let Some(event) = last {
            let _ = tx.send(event);
        }
    }
}
