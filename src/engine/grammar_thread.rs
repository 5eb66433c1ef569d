//! Constrained sampling beside the step loop.
//!
//! A grammar-constrained request usually keeps the sampler's unconstrained
//! choice (one token checked against the grammar), but when the grammar
//! rejects it the whole vocabulary is masked, which over Airavata's 48 065
//! tokens costs several milliseconds. Done inline, every other stream of the
//! step would wait for it. Instead the engine copies the request's row of
//! logits and hands it, with the request's sampler, to this thread; the
//! request sits out the steps until its token comes back (usually before the
//! next step starts, since the hand-off happens first in the sample phase),
//! and the other streams never wait for a grammar.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use llama_cpp_2::token::LlamaToken;

use super::logprobs::{self, RowLogprobs};
use super::sampler::Sampler;

/// One request's sampling, handed to the thread.
pub(super) struct Task {
    pub slot: usize,
    /// The request (its slot may be reused before the answer comes).
    pub id: u64,
    pub sampler: Sampler,
    pub logits: Vec<f32>,
    /// `top_logprobs` asked for, when log-probabilities are wanted.
    pub logprobs: Option<usize>,
}

/// Its answer: the sampler back, and the token or why there is none.
pub(super) struct Done {
    pub slot: usize,
    pub id: u64,
    pub sampler: Sampler,
    pub token: Result<LlamaToken, String>,
    pub logprobs: Option<RowLogprobs>,
}

/// The thread, its two channels, and how many tasks are out.
pub(super) struct GrammarThread {
    tx: Sender<Task>,
    rx: Receiver<Done>,
    handle: Option<JoinHandle<()>>,
    in_flight: usize,
}

impl GrammarThread {
    /// Starts the thread (named after the engine's).
    pub fn spawn(engine: &str) -> std::io::Result<Self> {
        let (tx, tasks) = mpsc::channel::<Task>();
        let (done, rx) = mpsc::channel::<Done>();
        let handle = std::thread::Builder::new()
            .name(format!("{engine}-grammar"))
            .spawn(move || {
                for mut t in tasks {
                    let token = t.sampler.sample_row(&t.logits);
                    let logprobs = match (&token, t.logprobs) {
                        (Ok(tok), Some(n)) => Some(logprobs::row_logprobs(
                            &t.logits,
                            usize::try_from(tok.0).unwrap_or(usize::MAX),
                            n,
                        )),
                        _ => None,
                    };
                    let d = Done {
                        slot: t.slot,
                        id: t.id,
                        sampler: t.sampler,
                        token,
                        logprobs,
                    };
                    if done.send(d).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            tx,
            rx,
            handle: Some(handle),
            in_flight: 0,
        })
    }

    /// Hands a task over; gives it back if the thread is gone.
    pub fn submit(&mut self, task: Task) -> Result<(), Box<Task>> {
        self.tx
            .send(task)
            .map_err(|mpsc::SendError(t)| Box::new(t))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Tasks handed over and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The answers ready now; with `wait`, blocks (up to `wait`) for the
    /// first one when none is ready and some are out.
    pub fn collect(&mut self, wait: Option<Duration>) -> Vec<Done> {
        let mut out = Vec::new();
        if let (Some(d), true) = (wait, self.in_flight > 0) {
            match self.rx.recv_timeout(d) {
                Ok(done) => out.push(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.in_flight = 0,
            }
        }
        while let Ok(done) = self.rx.try_recv() {
            out.push(done);
        }
        self.in_flight = self.in_flight.saturating_sub(out.len());
        out
    }
}

impl Drop for GrammarThread {
    /// Closes the channel and joins the thread, so that no sampler (which
    /// points into the model's vocabulary) outlives the engine's model.
    fn drop(&mut self) {
        // Dropping the real sender ends the thread's task loop.
        drop(std::mem::replace(&mut self.tx, mpsc::channel().0));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
