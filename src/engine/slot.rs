//! One request's life in the engine: the admitted [`Job`], the [`Active`]
//! state while it holds a slot, the [`Outcome`] that ends it, and the table
//! of slots ([`Slots`]) the engine thread's parts share.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use super::admission::Admission;
use super::logprobs::{RowLogprobs, TokenLogprob};
use super::request::{Completion, Event, FinishReason, SamplingParams, Timings, Usage};
use super::sampler::Sampler;
use super::stats::EngineStats;
use super::stop::StopMatcher;
use super::utf8::Utf8Accumulator;
use super::EngineError;

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
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<usize>,
    /// Alternatives per prompt token when the prompt's log-probabilities
    /// are asked for (the whole prompt is then evaluated, with logits for
    /// every position).
    pub prompt_logprobs: Option<usize>,
    pub tx: mpsc::UnboundedSender<Event>,
    /// Its place among the admitted requests, given back when it drops.
    pub _admission: Admission,
}

impl Job {
    /// Whether the backend may pick this request's tokens (`--backend-greedy`):
    /// plain greedy, and no log-probabilities (those need the logits here).
    pub fn picks_on_backend(&self) -> bool {
        super::sampler::is_plain_greedy(&self.sampling)
            && self.logprobs.is_none()
            && self.prompt_logprobs.is_none()
    }

    /// Why the request must end before its next step, if it must: its client
    /// went away or its deadline passed.
    pub fn expired(&self, now: Instant) -> Option<Outcome> {
        if self.tx.is_closed() {
            return Some(Outcome::Cancelled);
        }
        match self.deadline {
            Some((deadline, limit)) if now >= deadline => Some(Outcome::TimedOut(limit)),
            _ => None,
        }
    }
}

/// How a request ends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// Generation ended normally (end of generation, stop string, length).
    Finished(FinishReason),
    /// The client went away.
    Cancelled,
    /// The deadline passed (the configured limit).
    TimedOut(Duration),
    /// llama.cpp failed.
    Failed(EngineError),
}

impl Outcome {
    /// Counts the outcome in the request counters.
    pub fn count(&self, stats: &EngineStats) {
        let counter = match self {
            Outcome::Finished(_) => &stats.finished,
            Outcome::Cancelled => &stats.cancelled,
            Outcome::TimedOut(_) => &stats.timed_out,
            Outcome::Failed(_) => &stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the slot's KV may serve as prompt cache afterwards (not after
    /// a failed decode, whose cells are in an unknown state).
    pub fn keeps_kv(&self) -> bool {
        !matches!(self, Outcome::Failed(_))
    }

    /// The error event a request ended this way gets (`None`: no error).
    pub fn error(&self) -> Option<EngineError> {
        match self {
            Outcome::Finished(_) | Outcome::Cancelled => None,
            Outcome::TimedOut(limit) => Some(EngineError::Timeout(*limit)),
            Outcome::Failed(e) => Some(e.clone()),
        }
    }
}

/// A request that holds a slot.
pub(super) struct Active {
    pub job: Box<Job>,
    /// None while the grammar thread samples for it ([`super::grammar_thread`]).
    pub sampler: Option<Sampler>,
    /// Tokens of this sequence in the KV cache.
    pub n_past: usize,
    /// Prompt tokens served from the slot's prompt cache.
    pub cached: usize,
    /// Sampled token not yet fed back.
    pub pending: Option<LlamaToken>,
    /// Sampled tokens already fed back (in the KV cache after the prompt).
    pub fed: Vec<LlamaToken>,
    /// Plain greedy (argmax over the logits, no sampler state).
    pub greedy: bool,
    pub n_generated: u32,
    pub utf8: Utf8Accumulator,
    pub stop: StopMatcher,
    /// Log-probabilities of tokens whose text is still held back.
    pub logprobs: Vec<TokenLogprob>,
    /// Index in the current batch whose logits this slot samples.
    pub logits_at: Option<i32>,
    /// This step's prompt chunk when the prompt's log-probabilities are
    /// wanted: its first token's index in the batch, its first position,
    /// its length (every token of it has logits).
    pub prompt_rows: Option<(i32, usize, usize)>,
    /// Log-probabilities of prompt tokens `1..` read so far.
    pub prompt_logprobs: Vec<RowLogprobs>,
    pub started: Instant,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
}

impl Active {
    pub fn prefill_remaining(&self) -> usize {
        self.job.tokens.len().saturating_sub(self.n_past)
    }

    /// The tokens whose KV this sequence holds, in order.
    pub fn kv_tokens(&self) -> Vec<LlamaToken> {
        let prompt = self.n_past.min(self.job.tokens.len());
        let mut t = Vec::with_capacity(self.n_past);
        t.extend_from_slice(&self.job.tokens[..prompt]);
        t.extend_from_slice(&self.fed);
        t
    }

    /// Records a sampled token's time (TTFT or inter-token latency).
    pub fn note_token(&mut self, now: Instant, stats: &EngineStats) {
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        match self.last_token {
            None => stats.time_to_first_token.observe(now - self.job.submitted),
            Some(prev) => stats.inter_token_latency.observe(now - prev),
        }
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.n_generated += 1;
    }

    /// Text still held back (an incomplete code point, a possible stop
    /// string's start) that a request ending for `reason` releases.
    pub fn release_text(&mut self, reason: FinishReason) -> String {
        if reason == FinishReason::Stop {
            return String::new();
        }
        let tail = self.utf8.finish();
        let mut rest = self.stop.push(&tail).emit;
        rest.push_str(&self.stop.finish());
        rest
    }

    /// The final answer of a request that finished at `now`.
    pub fn completion(&self, reason: FinishReason, now: Instant) -> Completion {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let submitted = self.job.submitted;
        let first = self.first_token.unwrap_or(now);
        let gen = now - first;
        let timings = Timings {
            queue_ms: ms(self.started - submitted),
            prompt_ms: ms(first - self.started),
            time_to_first_token_ms: ms(first - submitted),
            generation_ms: ms(gen),
            total_ms: ms(now - submitted),
            tokens_per_second: if self.n_generated > 1 && gen.as_secs_f64() > 0.0 {
                f64::from(self.n_generated - 1) / gen.as_secs_f64()
            } else {
                0.0
            },
        };
        let usage = Usage {
            prompt_tokens: u32::try_from(self.job.tokens.len()).unwrap_or(u32::MAX),
            completion_tokens: self.n_generated,
            cached_prompt_tokens: u32::try_from(self.cached).unwrap_or(u32::MAX),
        };
        Completion {
            finish_reason: reason,
            usage,
            timings,
        }
    }
}

/// The slots: the request each holds, and the occupied ones in admission
/// order. Owned by the step loop and lent to its parts.
pub(super) struct Slots {
    held: Vec<Option<Active>>,
    /// Occupied slots in admission order.
    order: Vec<usize>,
}

impl Slots {
    pub fn new(n: usize) -> Self {
        Self {
            held: (0..n).map(|_| None).collect(),
            order: Vec::new(),
        }
    }

    /// Slots in all.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Occupied slots in admission order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Requests holding a slot.
    pub fn running(&self) -> usize {
        self.order.len()
    }

    /// Free slots.
    pub fn free(&self) -> usize {
        self.held.len() - self.order.len()
    }

    pub fn get(&self, slot: usize) -> Option<&Active> {
        self.held.get(slot)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Active> {
        self.held.get_mut(slot)?.as_mut()
    }

    /// Every slot's request (`None`: free), by slot index.
    pub fn iter(&self) -> std::slice::Iter<'_, Option<Active>> {
        self.held.iter()
    }

    /// Every slot's request, mutably, by slot index.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Option<Active>> {
        self.held.iter_mut()
    }

    /// Puts a request in a free slot (last in admission order).
    pub fn insert(&mut self, slot: usize, active: Active) {
        if let Some(entry) = self.held.get_mut(slot) {
            *entry = Some(active);
            self.order.push(slot);
        }
    }

    /// Frees a slot, returning its request.
    pub fn take(&mut self, slot: usize) -> Option<Active> {
        let a = self.held.get_mut(slot)?.take()?;
        self.order.retain(|s| *s != slot);
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_once_each_and_only_failures_drop_the_kv() {
        let stats = EngineStats::default();
        let all = [
            Outcome::Finished(FinishReason::Length),
            Outcome::Cancelled,
            Outcome::TimedOut(Duration::from_secs(3)),
            Outcome::Failed(EngineError::Decode("x".into())),
        ];
        for o in &all {
            o.count(&stats);
        }
        for c in [
            &stats.finished,
            &stats.cancelled,
            &stats.timed_out,
            &stats.failed,
        ] {
            assert_eq!(c.load(Ordering::Relaxed), 1);
        }
        let keeps: Vec<bool> = all.iter().map(Outcome::keeps_kv).collect();
        assert_eq!(keeps, [true, true, true, false]);
        assert_eq!(
            all[2].error(),
            Some(EngineError::Timeout(Duration::from_secs(3)))
        );
        assert_eq!(all[0].error(), None);
        assert_eq!(all[1].error(), None);
    }
}
