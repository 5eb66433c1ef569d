//! Scheduling: what the engine thread is asked to do and when requests get
//! a slot. Owns [`Schedule`]: the command channel from the handles, the
//! requests waiting for a slot, whether the engine is closing, and the
//! linger policy. Deadlines and departed clients are found here; ending
//! those requests is [`super::emit`]'s.
//!
//! The handles send on an unbounded `std::sync::mpsc` channel (a send never
//! blocks, so async callers may send from any task); the engine thread
//! blocks in `recv` while idle and in `recv_timeout` while it lingers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use llama_cpp_2::token::LlamaToken;

use super::kv::Kv;
use super::pick::Picker;
use crate::engine::sampler::{self, Sampler};
use crate::engine::slot::{Active, Job, Outcome, Slots};
use crate::engine::stats::{EngineStats, Phase};
use crate::engine::stop::StopMatcher;
use crate::engine::utf8::Utf8Accumulator;

/// What the handles ask of the engine thread.
pub(in crate::engine) enum Command {
    /// Run an admitted request.
    Generate(Box<Job>),
    /// Finish the admitted requests, then stop.
    Shutdown,
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

/// The command channel, the waiting requests and the linger.
pub(super) struct Schedule {
    rx: Receiver<Command>,
    pending: VecDeque<Box<Job>>,
    closing: bool,
    /// Longest wait for the successors of requests that just ended ([`Schedule::linger`]).
    linger_max: Duration,
    /// Whether `decode` returns before the step is computed (see [`linger_target`]).
    decode_is_async: bool,
}

impl Schedule {
    pub fn new(rx: Receiver<Command>, linger_max: Duration, decode_is_async: bool) -> Self {
        Self {
            rx,
            pending: VecDeque::new(),
            closing: false,
            linger_max,
            decode_is_async,
        }
    }

    /// Pulls commands; blocks when nothing runs or waits (`running`: some
    /// request holds a slot). Returns false when the loop should end.
    pub fn receive(&mut self, running: bool) -> bool {
        if !running && self.pending.is_empty() {
            if self.closing {
                return false;
            }
            match self.rx.recv() {
                Ok(cmd) => self.handle(cmd),
                Err(_) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => self.handle(cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
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

    /// After a step that ended `ended` requests, waits up to the linger for
    /// new requests before the next step ([`linger_target`] says how many and
    /// whether at all), returning as soon as they are there. A client that
    /// sends its next request as soon as it has an answer (a pipeline, an
    /// agent, a benchmark) would otherwise miss the next step, which began
    /// before its request arrived, and its slot would idle for that step;
    /// waiting for all of the step's successors, not just the first, keeps
    /// their prompts in one step (each step that mixes prompts with decoding
    /// can cost a second pass with one KV stream per slot).
    pub fn linger(&mut self, ended: u64, slots: &Slots, stats: &EngineStats) {
        if self.closing || self.linger_max.is_zero() {
            return;
        }
        let Some(want) = linger_target(
            self.decode_is_async,
            usize::try_from(ended).unwrap_or(usize::MAX),
            slots.running(),
            self.pending.len(),
            slots.free(),
        ) else {
            return;
        };
        let start = Instant::now();
        let until = start + self.linger_max;
        loop {
            // A command already sent is taken even once the time is up.
            match self
                .rx
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(cmd) => {
                    self.handle(cmd);
                    if self.closing || self.pending.len() >= want {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        let waited = start.elapsed();
        stats.steps.add(Phase::Linger, waited);
        tracing::debug!(
            ended,
            running = slots.running(),
            want,
            got = self.pending.len(),
            waited_us = waited.as_micros() as u64,
            "linger"
        );
    }

    /// Takes out the waiting requests whose client went away or whose
    /// deadline passed, with why.
    pub fn expire_pending(&mut self) -> Vec<(Box<Job>, Outcome)> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for job in self.pending.drain(..) {
            match job.expired(now) {
                Some(outcome) => expired.push((job, outcome)),
                None => kept.push_back(job),
            }
        }
        self.pending = kept;
        expired
    }

    /// The next waiting request and the free slot it goes to ([`Kv::pick_slot`];
    /// between equals, a slot whose backend sampler already suits it).
    pub fn next(
        &mut self,
        slots: &Slots,
        kv: &Kv<'_>,
        picker: &Picker,
    ) -> Option<(usize, Box<Job>)> {
        let job = self.pending.pop_front()?;
        let on_backend = job.picks_on_backend();
        let suits = |slot| picker.suits(slot, on_backend);
        match kv.pick_slot(slots, &job.tokens, suits) {
            Some(slot) => Some((slot, job)),
            None => {
                self.pending.push_front(job);
                None
            }
        }
    }
}

/// The running requests whose client went away or whose deadline passed,
/// with why.
pub(super) fn expired_running(slots: &Slots) -> Vec<(usize, Outcome)> {
    let now = Instant::now();
    slots
        .order()
        .iter()
        .filter_map(|&slot| Some((slot, slots.get(slot)?.job.expired(now)?)))
        .collect()
}

/// Puts `job` in `slot` (whose KV already holds the first `cached` prompt
/// tokens) with its sampler.
pub(super) fn start(
    slots: &mut Slots,
    stats: &EngineStats,
    slot: usize,
    job: Box<Job>,
    mut sampler: Sampler,
    cached: usize,
) {
    let now = Instant::now();
    let greedy = sampler::is_plain_greedy(&job.sampling);
    if sampler::uses_history(&job.sampling) {
        sampler.accept_history(job.tokens.iter());
    }
    stats.queue_time.observe(now - job.submitted);
    stats
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
    let fed: Vec<LlamaToken> = Vec::new();
    slots.insert(
        slot,
        Active {
            job,
            sampler: Some(sampler),
            n_past: cached,
            cached,
            pending: None,
            fed,
            greedy,
            n_generated: 0,
            utf8: Utf8Accumulator::new(),
            stop,
            logprobs: Vec::new(),
            logits_at: None,
            prompt_rows: None,
            prompt_logprobs: Vec::new(),
            started: now,
            first_token: None,
            last_token: None,
        },
    );
    stats.running.fetch_add(1, Ordering::Relaxed);
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
