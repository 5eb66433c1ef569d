//! Picking each slot's next token once a step is computed. Owns [`Picker`]:
//! the backend greedy samplers (`--backend-greedy`) and the grammar thread
//! that samples constrained requests off the step's critical path. Greedy
//! picks are read from the backend or scanned on the host; sampled rows and
//! asked-for log-probabilities are drawn on the host side by side; a
//! constrained request is handed to the grammar thread with a copy of its
//! logits. What becomes of a pick (its text, or the end of the request) is
//! the caller's.

use std::sync::atomic::Ordering;
use std::time::Duration;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;
use rayon::prelude::*;

use crate::engine::backend_greedy::GreedySamplers;
use crate::engine::grammar_thread::{self, GrammarThread};
use crate::engine::greedy;
use crate::engine::logprobs::{self, RowLogprobs};
use crate::engine::sampler;
use crate::engine::slot::{Outcome, Slots};
use crate::engine::stats::EngineStats;
use crate::engine::EngineError;

/// A slot's token as chosen for the whole step before sampling.
pub(super) enum Pick {
    /// Not chosen ahead: the slot's sampler decides (or it has no logits).
    Sampler,
    /// The greedy choice, made on the host.
    Token(LlamaToken),
    /// The greedy choice, made by the backend in the step's graph.
    Backend(LlamaToken),
    /// The backend sampler returned no token for the slot's row.
    Lost,
    /// Drawn on the host by the slot's own sampler, with the row's
    /// log-probabilities when the request asked for them ([`draw_on_host`]).
    Drawn(Result<LlamaToken, String>, Option<RowLogprobs>),
}

/// What became of a slot's pick: its token (with the row's
/// log-probabilities when asked), or how the request ends.
pub(super) type Picked = Result<(LlamaToken, Option<RowLogprobs>), Outcome>;

/// One slot's host work in [`draw_on_host`]: its pick (replaced by the
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

/// The backend greedy samplers and the grammar thread.
pub(super) struct Picker {
    /// Backend greedy samplers per slot (`--backend-greedy`). They must be
    /// dropped (detached) while the context still lives: the step loop
    /// declares its `Picker` before its context.
    greedy: Option<GreedySamplers>,
    /// Samples grammar-constrained requests off the step's critical path
    /// (started by the first one).
    grammar: Option<GrammarThread>,
    /// The engine thread's name (the grammar thread is named after it).
    name: String,
}

impl Picker {
    pub fn new(greedy: Option<GreedySamplers>, name: String) -> Self {
        Self {
            greedy,
            grammar: None,
            name,
        }
    }

    /// Whether `slot`'s backend sampler is already as a request that picks
    /// on the backend (`on_backend`) or not needs it.
    pub fn suits(&self, slot: usize, on_backend: bool) -> bool {
        self.greedy
            .as_ref()
            .is_none_or(|g| g.attached(slot) == on_backend)
    }

    /// Attaches or detaches `slot`'s backend sampler for a new request.
    pub fn attach(&mut self, slot: usize, on_backend: bool, stats: &EngineStats) {
        if let Some(g) = self.greedy.as_mut() {
            let before = g.attached(slot);
            if g.set(slot, on_backend) != before {
                stats
                    .backend_greedy_switches
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The greedy choice of every greedy slot with logits in this step, one
    /// entry per `fed` slot ([`Pick::Sampler`]: not greedy, or no logits).
    /// Slots with a backend sampler read the token the step's graph picked;
    /// the others' rows are scanned here, side by side.
    pub fn pick_greedy(
        &self,
        slots: &Slots,
        ctx: &LlamaContext<'_>,
        fed: &[(usize, usize)],
    ) -> Vec<Pick> {
        let mut picks = Vec::with_capacity(fed.len());
        // Rows scanned on the host, and the entry of `picks` each decides.
        let mut rows: Vec<&[f32]> = Vec::with_capacity(fed.len());
        let mut row_pick = Vec::with_capacity(fed.len());
        for &(slot, _) in fed {
            let idx = slots
                .get(slot)
                .filter(|a| a.greedy)
                .and_then(|a| a.logits_at);
            let on_backend = self.greedy.as_ref().is_some_and(|g| g.attached(slot));
            picks.push(match idx {
                None => Pick::Sampler,
                Some(idx) if on_backend => match ctx.sampled_token_ith(idx) {
                    Some(t) => Pick::Backend(t),
                    // No logits came back for this row either: nothing to sample.
                    None => Pick::Lost,
                },
                Some(idx) => {
                    rows.push(ctx.get_logits_ith(idx));
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

    /// Hands a constrained request's sampling to the grammar thread with a
    /// copy of its logits; it sits out the steps until the token is back.
    /// Returns how the request ends if the thread is gone.
    pub fn hand_off(
        &mut self,
        slots: &mut Slots,
        ctx: &LlamaContext<'_>,
        slot: usize,
    ) -> Option<Outcome> {
        if self.grammar.is_none() {
            match GrammarThread::spawn(&self.name) {
                Ok(g) => self.grammar = Some(g),
                // No thread: sample inline, as before.
                Err(e) => {
                    tracing::warn!(error = %e, "no grammar thread; sampling inline");
                    return None;
                }
            }
        }
        let a = slots.get_mut(slot)?;
        let idx = a.logits_at?;
        let sampler = a.sampler.take()?;
        a.logits_at = None;
        let task = grammar_thread::Task {
            slot,
            id: a.job.id,
            sampler,
            logits: ctx.get_logits_ith(idx).to_vec(),
            logprobs: a.job.logprobs,
        };
        if let Some(Err(t)) = self.grammar.as_mut().map(|g| g.submit(task)) {
            // The thread is gone: keep the sampler, fail the request.
            a.sampler = Some(t.sampler);
            self.grammar = None;
            let e = EngineError::Sampling("the grammar thread stopped".into());
            return Some(Outcome::Failed(e));
        }
        None
    }

    /// The tokens the grammar thread has picked (waiting up to `wait` for
    /// one when given and some are out), by slot, for requests still running.
    pub fn collect_constrained(
        &mut self,
        slots: &mut Slots,
        wait: Option<Duration>,
    ) -> Vec<(usize, Picked)> {
        let Some(g) = self.grammar.as_mut() else {
            return Vec::new();
        };
        if g.in_flight() == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for done in g.collect(wait) {
            // The request may have ended meanwhile (client gone, deadline).
            let Some(a) = slots.get_mut(done.slot).filter(|a| a.job.id == done.id) else {
                continue;
            };
            a.sampler = Some(done.sampler);
            let picked = match done.token {
                Ok(t) => Ok((t, done.logprobs)),
                Err(e) => Err(Outcome::Failed(EngineError::Sampling(e))),
            };
            out.push((done.slot, picked));
        }
        out
    }
}

/// Draws on the host, side by side on the rayon pool, every token of this
/// step that needs a slot's own sampler (temperature, top-p, penalties:
/// a softmax over the vocabulary and a sort each) and every row whose
/// log-probabilities were asked for. Done one slot after another, these
/// cost milliseconds per sampled slot while the device waits for the next
/// step. Each slot's `pick` becomes [`Pick::Drawn`]; constrained slots
/// (handed to the grammar thread) and backend picks without
/// log-probabilities are left as they are.
pub(super) fn draw_on_host(
    slots: &mut Slots,
    ctx: &LlamaContext<'_>,
    fed: &[(usize, usize)],
    picks: &mut [Pick],
) {
    let mut draws: Vec<HostDraw<'_>> = Vec::new();
    let mut pick_of: Vec<Option<&mut Pick>> = slots.iter().map(|_| None).collect();
    for (&(slot, _), pick) in fed.iter().zip(picks.iter_mut()) {
        if let Some(entry) = pick_of.get_mut(slot) {
            *entry = Some(pick);
        }
    }
    for (held, pick) in slots.iter_mut().zip(pick_of) {
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

/// The token picked for `slot` if its logits are in this batch (`pick`:
/// made for the whole step by [`Picker::pick_greedy`] and [`draw_on_host`]);
/// `None` when there is none to take (no logits, or a constrained request
/// whose token the grammar thread picks).
pub(super) fn resolve(
    slots: &mut Slots,
    ctx: &LlamaContext<'_>,
    stats: &EngineStats,
    slot: usize,
    pick: Pick,
) -> Option<Picked> {
    let a = slots.get_mut(slot)?;
    let idx = a.logits_at.take()?;
    let pick = match (pick, a.sampler.as_mut()) {
        // Drawn by `draw_on_host`; drawn here should a step ever leave
        // one undrawn.
        (Pick::Sampler, Some(sampler)) => {
            let row = ctx.get_logits_ith(idx);
            drawn(sampler.sample_row(row), row, a.job.logprobs)
        }
        (pick, _) => pick,
    };
    Some(match pick {
        Pick::Token(t) => Ok((t, None)),
        Pick::Backend(t) => {
            stats.backend_greedy_tokens.fetch_add(1, Ordering::Relaxed);
            Ok((t, None))
        }
        Pick::Drawn(Ok(t), row_logprobs) => Ok((t, row_logprobs)),
        Pick::Drawn(Err(e), _) => Err(Outcome::Failed(EngineError::Sampling(e))),
        Pick::Lost => {
            let e = "the backend sampler returned no token".to_string();
            Err(Outcome::Failed(EngineError::Sampling(e)))
        }
        // Constrained: the grammar thread picks it.
        Pick::Sampler => return None,
    })
}

/// Reads the log-probabilities of the prompt tokens this step's chunks
/// predict, for the requests that asked for them (`prompt_logprobs`): the
/// row of position `p` gives token `p + 1`'s log-probability, so a chunk of
/// positions `from..from + n` covers tokens `from + 1 ..= from + n` (the
/// last prompt position's row predicts the first generated token, not a
/// prompt token). Rows are read side by side on the rayon pool, a slot at a
/// time, every chunk as it is computed, so a long prompt's rows never have
/// to be held at once.
pub(super) fn read_prompt_rows(slots: &mut Slots, ctx: &LlamaContext<'_>, fed: &[(usize, usize)]) {
    for &(slot, _) in fed {
        let Some(a) = slots.get_mut(slot) else {
            continue;
        };
        let (Some((at, from, n)), Some(n_top)) = (a.prompt_rows.take(), a.job.prompt_logprobs)
        else {
            continue;
        };
        let tokens = &a.job.tokens;
        let rows: Vec<(&[f32], usize)> = (0..n)
            .filter_map(|i| {
                let target = tokens.get(from + i + 1)?;
                let idx = at.checked_add(i32::try_from(i).ok()?)?;
                Some((
                    ctx.get_logits_ith(idx),
                    usize::try_from(target.0).unwrap_or(usize::MAX),
                ))
            })
            .collect();
        let read: Vec<RowLogprobs> = rows
            .par_iter()
            .map(|&(row, target)| logprobs::row_logprobs(row, target, n_top))
            .collect();
        a.prompt_logprobs.extend(read);
    }
}
