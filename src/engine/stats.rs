//! Counters, gauges and latency histograms kept by the engine thread and
//! read by `/metrics` and `/info`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fixed-bucket histogram of seconds (Prometheus semantics: cumulative on render).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramData>,
}

#[derive(Debug, Clone, Default)]
struct HistogramData {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A copy of a histogram's state.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets (without +Inf).
    pub bounds: &'static [f64],
    /// Cumulative counts per bound.
    pub cumulative: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Buckets for end-to-end and queue latencies.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Buckets for per-token latencies.
pub const TOKEN_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new(HistogramData {
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        self.observe_secs(d.as_secs_f64());
    }

    /// Records one value in seconds.
    pub fn observe_secs(&self, v: f64) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            g.counts[i] += 1;
        }
        g.sum += v;
        g.count += 1;
    }

    /// Current state, with cumulative bucket counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let g = match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut acc = 0;
        let cumulative = g
            .counts
            .iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: g.sum,
            count: g.count,
        }
    }
}

/// Everything the engine counts.
#[derive(Debug)]
pub struct EngineStats {
    /// Requests holding a slot.
    pub running: AtomicUsize,
    /// KV cells in use by running requests.
    pub kv_used_cells: AtomicUsize,
    /// KV cells kept by free slots as their prompt cache (reclaimed by the
    /// next request assigned to the slot).
    pub kv_cached_cells: AtomicUsize,
    /// KV cells in the context.
    pub kv_total_cells: AtomicUsize,
    /// Prompt tokens evaluated (tokens served from the prompt cache excluded).
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from the prompt cache.
    pub cached_prompt_tokens: AtomicU64,
    /// Of those, tokens copied from another slot's KV (a prefix shared
    /// across slots, e.g. a system prompt).
    pub shared_prompt_tokens: AtomicU64,
    /// Tokens sampled.
    pub generated_tokens: AtomicU64,
    /// Of those, greedy tokens the backend picked in the step's graph
    /// (`--backend-greedy`).
    pub backend_greedy_tokens: AtomicU64,
    /// Slots whose backend greedy sampler was attached or detached for a
    /// request (each makes llama.cpp re-plan its graph memory).
    pub backend_greedy_switches: AtomicU64,
    /// Requests that ended normally.
    pub finished: AtomicU64,
    /// Requests whose client went away.
    pub cancelled: AtomicU64,
    /// Requests that hit their deadline.
    pub timed_out: AtomicU64,
    /// Requests that failed inside the engine.
    pub failed: AtomicU64,
    /// Submission until the first token.
    pub time_to_first_token: Histogram,
    /// Between consecutive tokens of one request.
    pub inter_token_latency: Histogram,
    /// Submission until the end.
    pub end_to_end: Histogram,
    /// Submission until a slot took the request.
    pub queue_time: Histogram,
    /// Where the engine thread's time goes, step by step.
    pub steps: StepProfile,
}

/// Phases of one engine step, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Admission, planning and filling the batch.
    Plan,
    /// `llama_decode`: graph build (or reuse) and launch; on CPU also the compute.
    Decode,
    /// `llama_synchronize`: waiting for the backend to finish and copy the logits out.
    Sync,
    /// Picking each sequence's next token.
    Sample,
    /// Detokenizing, stop strings and handing text to the HTTP tasks.
    Emit,
    /// Between steps: waiting for the successors of requests that just
    /// ended (`--linger-ms`).
    Linger,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 6] = [
        Phase::Plan,
        Phase::Decode,
        Phase::Sync,
        Phase::Sample,
        Phase::Emit,
        Phase::Linger,
    ];

    /// Label used in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Decode => "decode",
            Phase::Sync => "sync",
            Phase::Sample => "sample",
            Phase::Emit => "emit",
            Phase::Linger => "linger",
        }
    }
}

/// Cumulative step accounting (cheap enough to keep on in production).
#[derive(Debug, Default)]
pub struct StepProfile {
    nanos: [AtomicU64; Phase::ALL.len()],
    /// Steps that held only decode tokens.
    pub decode_only: AtomicU64,
    /// Steps that also held prompt tokens.
    pub mixed: AtomicU64,
    /// Tokens fed, over all steps.
    pub tokens: AtomicU64,
    /// Graph evaluations llama.cpp is predicted to split the steps into
    /// ([`crate::engine::batch::predicted_micro_batches`], from the step's
    /// shape; llama.cpp does not report the split). `tests/micro_batches.rs`
    /// checks the prediction against llama.cpp's graph evaluations.
    pub predicted_micro_batches: AtomicU64,
    /// Dummy tokens on unfed slots: gaps between fed slots (`--fill-gaps`) and decode padding (`--decode-pad`).
    pub padded_tokens: AtomicU64,
    /// Graph evaluations that reused the previous one's graph (llama.cpp's
    /// own counter; the rest built and allocated a new graph).
    pub graphs_reused: AtomicU64,
}

impl StepProfile {
    /// Adds `d` to `phase`.
    pub fn add(&self, phase: Phase, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[phase as usize].fetch_add(ns, Ordering::Relaxed);
    }

    /// `llama_decode` calls so far (decode-only and mixed steps).
    pub fn steps(&self) -> u64 {
        self.decode_only.load(Ordering::Relaxed) + self.mixed.load(Ordering::Relaxed)
    }

    /// Seconds spent in `phase` so far.
    pub fn seconds(&self, phase: Phase) -> f64 {
        self.nanos[phase as usize].load(Ordering::Relaxed) as f64 * 1e-9
    }
}

/// Times one step's phases in the order they run: each [`StepClock::lap`]
/// adds the time since the previous lap (or the start) to a phase.
#[derive(Debug)]
pub struct StepClock<'p> {
    profile: &'p StepProfile,
    mark: Instant,
}

impl<'p> StepClock<'p> {
    /// Starts timing a step.
    pub fn start(profile: &'p StepProfile) -> Self {
        Self {
            profile,
            mark: Instant::now(),
        }
    }

    /// Ends `phase`: the time since the last lap is added to it.
    pub fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.profile.add(phase, now - self.mark);
        self.mark = now;
    }
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            running: AtomicUsize::new(0),
            kv_used_cells: AtomicUsize::new(0),
            kv_cached_cells: AtomicUsize::new(0),
            kv_total_cells: AtomicUsize::new(0),
            prompt_tokens: AtomicU64::new(0),
            cached_prompt_tokens: AtomicU64::new(0),
            shared_prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            backend_greedy_tokens: AtomicU64::new(0),
            backend_greedy_switches: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            time_to_first_token: Histogram::new(TOKEN_BUCKETS_TTFT),
            inter_token_latency: Histogram::new(TOKEN_BUCKETS),
            end_to_end: Histogram::new(LATENCY_BUCKETS),
            queue_time: Histogram::new(LATENCY_BUCKETS),
            steps: StepProfile::default(),
        }
    }
}

/// Buckets for time to first token.
pub const TOKEN_BUCKETS_TTFT: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl EngineStats {
    /// Requests holding a slot.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Fraction of KV cells in use by running requests.
    pub fn kv_usage(&self) -> f64 {
        let total = self.kv_total_cells.load(Ordering::Relaxed);
        if total == 0 {
            0.0
        } else {
            self.kv_used_cells.load(Ordering::Relaxed) as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe_secs(0.05);
        h.observe_secs(0.5);
        h.observe_secs(5.0);
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![1, 2]);
        assert_eq!(s.count, 3);
        assert!((s.sum - 5.55).abs() < 1e-9);
    }

    #[test]
    fn step_phases_accumulate_separately() {
        let p = StepProfile::default();
        p.add(Phase::Decode, Duration::from_millis(3));
        p.add(Phase::Decode, Duration::from_millis(2));
        p.add(Phase::Emit, Duration::from_micros(250));
        assert!((p.seconds(Phase::Decode) - 0.005).abs() < 1e-12);
        assert!((p.seconds(Phase::Emit) - 0.00025).abs() < 1e-12);
        assert_eq!(p.seconds(Phase::Sync), 0.0);
    }

    #[test]
    fn step_clock_laps_cover_the_step_once() {
        let p = StepProfile::default();
        let t0 = Instant::now();
        let mut c = StepClock::start(&p);
        std::thread::sleep(Duration::from_millis(2));
        c.lap(Phase::Plan);
        c.lap(Phase::Decode);
        std::thread::sleep(Duration::from_millis(1));
        c.lap(Phase::Sample);
        let total: f64 = Phase::ALL.iter().map(|ph| p.seconds(*ph)).sum();
        assert!(p.seconds(Phase::Plan) >= 0.002);
        assert!(p.seconds(Phase::Decode) < p.seconds(Phase::Plan));
        assert!(p.seconds(Phase::Sample) >= 0.001);
        assert!(total <= t0.elapsed().as_secs_f64());
    }
}
