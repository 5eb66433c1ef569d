//! `airavata bench`: a closed-loop HTTP load generator for our server and any
//! OpenAI-compatible one (llama.cpp's `llama-server`, vLLM, ...).
//!
//! * [`run`] executes one benchmark ([`BenchArgs`]) and returns a [`BenchReport`].
//! * [`cli_main`] is the whole subcommand: run (or load `--compare` reports),
//!   print the markdown table, write `--json` / `--markdown` / `--svg`.
//! * [`render_comparison`] / [`render_svg`] turn any number of reports into one
//!   table / plot, one line per run.
//!
//! Measurements (sweep scenario, always streamed): TTFT is the time from
//! sending the request to the first event carrying non-empty text; ITL the
//! gaps between consecutive text events (a chunk may carry more than one
//! token, and events that arrive in the same network read share one
//! timestamp, so a gap can be ~0); e2e send to end of stream. Output tokens
//! come from `usage` when the server sends it, otherwise from the number of
//! text events. Connections are direct (system proxies are ignored).

mod args;
mod client;
pub mod engine_profile;
pub mod prompts;
mod report;
mod stats;
mod svg;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use args::{synth_prompt, Api, BenchArgs, Scenario, OLD_APP_MAX_NEW_TOKENS, OLD_APP_PROMPT};
pub use client::{
    interpret, send, Outcome, Parsed, RequestError, RequestSpec, SseEvent, SseParser,
};
pub use prompts::{PromptLengths, PromptSet};
pub use report::{load_reports, render_comparison, render_markdown, to_json, write_outputs};
pub use stats::{percentile, Summary};
pub use svg::render_svg;

/// Errors that stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Nothing listens at the URL (connection refused, DNS failure, ...).
    #[error("cannot reach the server at {url}: {reason} (is it running? check --url)")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The transport's message.
        reason: String,
    },
    /// `--url` is not an http(s) URL.
    #[error("invalid --url {url:?}: {reason}")]
    InvalidUrl {
        /// As given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Inconsistent or out-of-range arguments.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// Reading or writing a report file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A `--compare` file is not a report.
    #[error("{path}: not a bench report: {source}")]
    BadReport {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Serialising the report.
    #[error("serialising the report: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Results of one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelReport {
    /// Requests in flight (closed loop).
    pub concurrency: usize,
    /// Requests sent.
    pub requests: usize,
    /// Requests that completed successfully.
    pub ok: usize,
    /// Failed requests.
    pub errors: usize,
    /// Failures by kind (`http 503`, `timeout`, `connect`, `error event`, `protocol`).
    pub error_kinds: BTreeMap<String, usize>,
    /// The first few failure messages.
    pub error_samples: Vec<String>,
    /// Wall time from the first send to the last completion, seconds.
    pub duration_s: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Output tokens of successful requests (`None` when unknown: a
    /// non-streamed answer without `usage`).
    pub output_tokens: Option<u64>,
    /// Aggregate output tokens per second over the level.
    pub output_tokens_per_s: Option<f64>,
    /// Mean `usage.prompt_tokens`, when reported.
    pub mean_prompt_tokens: Option<f64>,
    /// The distribution of `usage.prompt_tokens` (mean, p50, p90, max, ...),
    /// when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<Summary>,
    /// `chat:TURNS`: one entry per turn (1 = a conversation's first request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<TurnReport>,
    /// Time to first token, ms (streaming only): the first event with text.
    /// A token that ends mid-character (byte-fallback Devanagari) shows no
    /// text yet, so this can exceed the server's own first-token time.
    pub ttft_ms: Option<Summary>,
    /// The server's own time to first token, ms, from its `timings` (ours:
    /// submission to first token; llama.cpp's server: `prompt_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ttft_ms: Option<Summary>,
    /// Inter-token latency (gaps between text events, pooled over requests), ms.
    pub itl_ms: Option<Summary>,
    /// Time per output token after the first, per request: (e2e - TTFT) / (tokens - 1), ms.
    pub tpot_ms: Option<Summary>,
    /// End-to-end latency, ms.
    pub e2e_ms: Option<Summary>,
    /// Per-request output tokens / e2e seconds.
    pub per_stream_tokens_per_s: Option<Summary>,
    /// Our server's engine step profile over the level (from `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<engine_profile::EngineProfile>,
}

/// The requests of one turn of a level's conversations (`chat:TURNS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnReport {
    /// Turn number, from 1.
    pub turn: usize,
    /// Requests sent at this turn (a conversation stops at its first failure).
    pub requests: usize,
    /// Of which succeeded.
    pub ok: usize,
    /// `usage.prompt_tokens` of this turn's requests, when reported.
    pub prompt_tokens: Option<Summary>,
    /// Time to first token, ms.
    pub ttft_ms: Option<Summary>,
}

/// A benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Name in tables and plots.
    pub label: String,
    /// Scenario run.
    pub scenario: Scenario,
    /// API driven (`generate` for old-app).
    pub api: Api,
    /// Base URL.
    pub url: String,
    /// `model` sent, if any.
    pub model: Option<String>,
    /// Whether requests were streamed.
    pub stream: bool,
    /// Prompt length in characters (`mix` and `chat`: the mean over the
    /// requests sent; for `openai-chat`, of all the messages).
    pub prompt_chars: usize,
    /// `--prompt-tokens` (or `fixed:N`) asked for, if any.
    pub prompt_tokens_requested: Option<usize>,
    /// The prompt-length spec (`fixed:N`, `mix:LO-HI`, `chat:TURNS`); absent
    /// for `--prompt` text and the old app's prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_lengths: Option<String>,
    /// `mix` / `chat`: where the prompts came from (a file, or synthetic text
    /// when none was available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_set: Option<String>,
    /// `mix` / `chat`: the seed of the lengths and of the prompts picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Tokens asked for per request.
    pub max_tokens: u32,
    /// Warm-up requests sent before measuring.
    pub warmup: usize,
    /// Start time, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// `airavata` version that produced it.
    pub tool_version: String,
    /// One entry per concurrency level, in the order run.
    pub levels: Vec<LevelReport>,
}

/// Runs the subcommand: benchmark (or load `--compare` reports), print the
/// markdown table to stdout and write the requested files.
pub async fn cli_main(args: BenchArgs) -> Result<Vec<BenchReport>, BenchError> {
    let reports = if args.compare.is_empty() {
        vec![run(args.clone()).await?]
    } else {
        let mut all = Vec::new();
        for p in &args.compare {
            all.extend(load_reports(p)?);
        }
        all
    };
    let md = render_comparison(&reports);
    println!("{md}");
    write_outputs(&reports, &args)?;
    Ok(reports)
}

/// Runs one benchmark as `args` describe (ignores the output and `--compare`
/// options).
pub async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let base = validate(&args)?;
    let old_app = args.scenario == Scenario::OldApp;
    let api = if old_app { Api::Generate } else { args.api };
    let levels: Vec<usize> = if old_app {
        vec![1]
    } else {
        args.concurrency.clone()
    };
    let max_c = levels.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout_s))
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(max_c)
        .tcp_nodelay(true)
        // Direct connections: a proxy would distort every timing.
        .no_proxy()
        .build()
        .map_err(|e| BenchError::Client(e.to_string()))?;
    let prompt = args.prompt_text();
    let lengths = args.lengths();
    let set = match lengths {
        Some(PromptLengths::Mix { .. } | PromptLengths::Chat { .. }) => Some(
            prompts::resolve_set(args.prompt_file.as_deref())
                .map_err(|e| BenchError::InvalidArgs(format!("prompt set: {e}")))?,
        ),
        _ => None,
    };
    let spec = RequestSpec {
        api,
        url: format!("{base}{}", api.path()),
        prompt: prompt.clone(),
        max_tokens: args.max_tokens(),
        temperature: args.temperature,
        model: args.model.clone(),
        api_key: args.api_key.clone(),
        raw: args.raw,
        stream: !old_app,
        old_app,
        messages: Vec::new(),
        keep_text: false,
    };
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let variation = if let Some(groups) = args.prefix_groups {
        Variation::Groups {
            run: started_unix_s,
            groups,
        }
    } else if args.unique_prompts {
        Variation::Unique(started_unix_s)
    } else {
        Variation::Fixed
    };
    let prompter = Arc::new(Prompter {
        kind: match lengths {
            Some(PromptLengths::Mix { lo, hi }) => Kind::Mix { lo, hi },
            Some(PromptLengths::Chat { turns }) => Kind::Chat { turns },
            _ => Kind::Same,
        },
        variation,
        seed: args.seed,
        run: started_unix_s,
        set: set.as_ref().map(|s| s.texts.clone()).unwrap_or_default(),
        tag: AtomicUsize::new(0),
        conversations: AtomicUsize::new(0),
        chars: AtomicUsize::new(0),
        sent: AtomicUsize::new(0),
    });

    for i in 0..args.warmup {
        let s = prompter.request(&spec);
        match send(&client, &s).await {
            Ok(_) => {}
            Err(RequestError::Connect(reason)) => {
                return Err(BenchError::Unreachable {
                    url: spec.url.clone(),
                    reason,
                })
            }
            Err(e) => tracing::warn!("warm-up request {} failed: {e}", i + 1),
        }
    }

    let mut out = Vec::with_capacity(levels.len());
    for &c in &levels {
        let n = args.requests_for(c);
        tracing::info!("bench: concurrency {c}, {n} requests");
        let before = engine_profile::scrape(&client, &base).await;
        let mut level = run_level(&client, &spec, c, n, &prompter).await?;
        if let (Some(b), Some(a)) = (before, engine_profile::scrape(&client, &base).await) {
            level.engine = engine_profile::EngineProfile::between(&b, &a);
        }
        tracing::info!(
            "bench: c={c} ok={} errors={} {:.2} req/s",
            level.ok,
            level.errors,
            level.requests_per_s
        );
        out.push(level);
    }
    Ok(BenchReport {
        label: args.label(),
        scenario: args.scenario,
        api,
        url: base,
        model: args.model.clone(),
        stream: spec.stream,
        prompt_chars: match prompter.kind {
            Kind::Same => prompt.chars().count(),
            _ => prompter.mean_chars(),
        },
        prompt_tokens_requested: match lengths {
            Some(PromptLengths::Fixed(n))
                if args.prompt_tokens.is_some() || args.prompt_lengths.is_some() =>
            {
                Some(n)
            }
            _ => None,
        },
        prompt_lengths: lengths.map(|l| l.to_string()),
        prompt_set: set.map(|s| s.origin),
        seed: match prompter.kind {
            Kind::Same => None,
            _ => Some(args.seed),
        },
        max_tokens: spec.max_tokens,
        warmup: args.warmup,
        started_unix_s,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        levels: out,
    })
}

/// Checks the arguments; returns the base URL without a trailing `/`.
fn validate(args: &BenchArgs) -> Result<String, BenchError> {
    let bad_url = |reason: &str| BenchError::InvalidUrl {
        url: args.url.clone(),
        reason: reason.to_string(),
    };
    let url = reqwest::Url::parse(&args.url).map_err(|e| bad_url(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad_url("the scheme must be http or https"));
    }
    if args.scenario == Scenario::Sweep {
        if args.concurrency.is_empty() {
            return Err(BenchError::InvalidArgs("--concurrency is empty".into()));
        }
        if args.concurrency.contains(&0) {
            return Err(BenchError::InvalidArgs(
                "--concurrency levels must be at least 1".into(),
            ));
        }
    }
    if let Some(l) = args.prompt_lengths {
        l.to_string()
            .parse::<PromptLengths>()
            .map_err(|e| BenchError::InvalidArgs(format!("--prompt-lengths {e}")))?;
        if args.prompt.is_some() || args.prompt_tokens.is_some() {
            return Err(BenchError::InvalidArgs(
                "--prompt-lengths replaces --prompt and --prompt-tokens; give one".into(),
            ));
        }
        if let PromptLengths::Chat { .. } = l {
            if args.scenario == Scenario::OldApp {
                return Err(BenchError::InvalidArgs(
                    "chat:TURNS needs the sweep scenario (old-app sends one fixed prompt)".into(),
                ));
            }
            if args.prefix_groups.is_some() {
                return Err(BenchError::InvalidArgs(
                    "--prefix-groups does not apply to chat:TURNS (each conversation is its own prefix)"
                        .into(),
                ));
            }
        }
    }
    if args.prefix_groups == Some(0) {
        return Err(BenchError::InvalidArgs(
            "--prefix-groups must be at least 1".into(),
        ));
    }
    if args.requests == Some(0) {
        return Err(BenchError::InvalidArgs(
            "--requests must be at least 1".into(),
        ));
    }
    if args.max_tokens == Some(0) {
        return Err(BenchError::InvalidArgs(
            "--max-tokens must be at least 1".into(),
        ));
    }
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        return Err(BenchError::InvalidArgs(
            "--timeout-s must be a positive number".into(),
        ));
    }
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        return Err(BenchError::InvalidArgs("--temperature must be >= 0".into()));
    }
    Ok(args.url.trim_end_matches('/').to_string())
}

/// How each request's prompt differs from the others.
#[derive(Debug, Clone, Copy)]
enum Variation {
    /// The same prompt every time.
    Fixed,
    /// A unique tag first: no prefix is shared (run id).
    Unique(u64),
    /// A group tag first and a unique tag last (`--prefix-groups`).
    Groups { run: u64, groups: usize },
}

/// `prompt` as request `i` sends it under `variation`.
fn tag_prompt(prompt: &str, variation: Variation, i: usize) -> String {
    match variation {
        Variation::Fixed => prompt.to_string(),
        Variation::Unique(run) => format!("[{run}-{i}] {prompt}"),
        Variation::Groups { run, groups } => {
            // Consecutive requests land in different groups (7919 is prime).
            let g = (i.wrapping_mul(7919)) % groups.max(1);
            format!("[{run} group {g}] {prompt} [{i}]")
        }
    }
}

fn with_tag(spec: &RequestSpec, variation: Variation, tag: &AtomicUsize) -> RequestSpec {
    let mut s = spec.clone();
    if !matches!(variation, Variation::Fixed) {
        let i = tag.fetch_add(1, Ordering::Relaxed);
        s.prompt = tag_prompt(&spec.prompt, variation, i);
    }
    s
}

/// How prompts are built.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// One prompt (`--prompt`, `fixed:N`), varied by [`Variation`].
    Same,
    /// `mix:LO-HI`: a prompt of the set padded to a drawn length.
    Mix { lo: usize, hi: usize },
    /// `chat:TURNS`: growing conversations.
    Chat { turns: usize },
}

/// Builds each request's prompt (see [`prompts`]).
struct Prompter {
    kind: Kind,
    variation: Variation,
    seed: u64,
    /// Run id (start time) in tags.
    run: u64,
    /// The prompt set (`mix`, `chat`).
    set: Vec<String>,
    /// Requests numbered so far.
    tag: AtomicUsize,
    /// Conversations started so far.
    conversations: AtomicUsize,
    /// Prompt characters sent, and requests built, for the mean.
    chars: AtomicUsize,
    sent: AtomicUsize,
}

impl Prompter {
    /// The next single request: `fixed`/`--prompt` (tagged as `variation`
    /// says), a `mix` request, or the first turn of a new conversation.
    fn request(&self, spec: &RequestSpec) -> RequestSpec {
        let s = match self.kind {
            Kind::Same => with_tag(spec, self.variation, &self.tag),
            Kind::Mix { lo, hi } => {
                let i = self.tag.fetch_add(1, Ordering::Relaxed);
                let n = i as u64;
                let target = prompts::mix_length(self.seed, n, lo, hi);
                let base = self
                    .set
                    .get(prompts::pick(self.seed, n, self.set.len()))
                    .map_or("", String::as_str);
                let mut s = spec.clone();
                s.prompt = tag_prompt(
                    &prompts::pad_prompt(base, target, self.seed, n),
                    self.variation,
                    i,
                );
                s
            }
            Kind::Chat { .. } => {
                let c = self.conversations.fetch_add(1, Ordering::Relaxed);
                return self.turn(spec, c, &[], 0).0;
            }
        };
        self.count(&s);
        s
    }

    /// Turn `k` of conversation `conv` after `history` (user message,
    /// answer): the request, and the new user message it carries.
    fn turn(
        &self,
        spec: &RequestSpec,
        conv: usize,
        history: &[(String, String)],
        k: usize,
    ) -> (RequestSpec, String) {
        let turns = match self.kind {
            Kind::Chat { turns } => turns,
            _ => 1,
        };
        let m = (conv as u64).wrapping_mul(turns as u64) + k as u64;
        let text = self
            .set
            .get(prompts::pick(self.seed, m, self.set.len()))
            .map_or("", String::as_str);
        // The first message is unique to the conversation: conversations
        // share no prefix, while each turn extends the previous one's.
        let msg = if k == 0 {
            format!("[{}-chat-{conv}] {text}", self.run)
        } else {
            text.to_string()
        };
        let mut s = spec.clone();
        s.keep_text = true;
        match s.api {
            Api::OpenaiChat => {
                s.messages = history
                    .iter()
                    .flat_map(|(u, a)| {
                        [
                            ("user".to_string(), u.clone()),
                            ("assistant".to_string(), a.clone()),
                        ]
                    })
                    .chain(std::iter::once(("user".to_string(), msg.clone())))
                    .collect();
                s.prompt = msg.clone();
            }
            Api::Generate => {
                s.prompt = prompts::render_transcript(history, &msg);
                s.raw = true;
            }
            Api::OpenaiCompletions => s.prompt = prompts::render_transcript(history, &msg),
        }
        self.count(&s);
        (s, msg)
    }

    fn count(&self, s: &RequestSpec) {
        let chars = if s.messages.is_empty() {
            s.prompt.chars().count()
        } else {
            s.messages.iter().map(|(_, c)| c.chars().count()).sum()
        };
        self.chars.fetch_add(chars, Ordering::Relaxed);
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn mean_chars(&self) -> usize {
        let n = self.sent.load(Ordering::Relaxed);
        self.chars
            .load(Ordering::Relaxed)
            .checked_div(n)
            .unwrap_or(0)
    }
}

/// Conversations a `chat:TURNS` level runs for `n` requests at concurrency
/// `c`: `n / TURNS` rounded up, and at least one per stream.
pub fn chat_conversations(n: usize, c: usize, turns: usize) -> usize {
    n.div_ceil(turns.max(1)).max(c)
}

/// Runs `n` requests with `c` in flight and summarises them.
async fn run_level(
    client: &reqwest::Client,
    spec: &RequestSpec,
    c: usize,
    n: usize,
    prompter: &Arc<Prompter>,
) -> Result<LevelReport, BenchError> {
    // Work items: requests, or whole conversations for `chat`.
    let (items, turns) = match prompter.kind {
        Kind::Chat { turns } => (chat_conversations(n, c, turns), turns),
        _ => (n, 1),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(c.min(items));
    for _ in 0..c.min(items) {
        let (client, spec, next, prompter) =
            (client.clone(), spec.clone(), next.clone(), prompter.clone());
        workers.push(tokio::spawn(async move {
            // (turn, result)
            let mut results = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < items {
                if let Kind::Chat { .. } = prompter.kind {
                    let conv = prompter.conversations.fetch_add(1, Ordering::Relaxed);
                    let mut history: Vec<(String, String)> = Vec::with_capacity(turns);
                    for k in 0..turns {
                        let (s, msg) = prompter.turn(&spec, conv, &history, k);
                        let r = send(&client, &s).await;
                        let answer = match &r {
                            Ok(o) => o.text.clone().unwrap_or_default(),
                            Err(_) => String::new(),
                        };
                        let failed = r.is_err();
                        results.push((k, r));
                        if failed {
                            // The rest would build on a broken history.
                            break;
                        }
                        history.push((msg, answer));
                    }
                } else {
                    let s = prompter.request(&spec);
                    results.push((0, send(&client, &s).await));
                }
            }
            (results, Instant::now())
        }));
    }
    let mut results = Vec::with_capacity(items * turns);
    let mut end = start;
    for w in workers {
        match w.await {
            Ok((r, t)) => {
                results.extend(r);
                end = end.max(t);
            }
            Err(e) => results.push((
                0,
                Err(RequestError::Protocol(format!("worker failed: {e}"))),
            )),
        }
    }
    let duration = end.duration_since(start);
    let (turn_of, results): (Vec<usize>, Vec<_>) = results.into_iter().unzip();
    let mut level = summarise(c, &results, duration);
    if let Kind::Chat { .. } = prompter.kind {
        level.turns = turn_reports(&turn_of, &results, turns);
    }
    if level.ok == 0 {
        if let Some(Err(RequestError::Connect(reason))) = results
            .iter()
            .find(|r| matches!(r, Err(RequestError::Connect(_))))
        {
            return Err(BenchError::Unreachable {
                url: spec.url.clone(),
                reason: reason.clone(),
            });
        }
    }
    Ok(level)
}

/// Per-turn summaries of a `chat` level's results (`turn_of[i]` is result
/// `i`'s turn, from 0).
fn turn_reports(
    turn_of: &[usize],
    results: &[Result<Outcome, RequestError>],
    turns: usize,
) -> Vec<TurnReport> {
    (0..turns)
        .map(|k| {
            let mine: Vec<&Result<Outcome, RequestError>> = turn_of
                .iter()
                .zip(results)
                .filter(|(t, _)| **t == k)
                .map(|(_, r)| r)
                .collect();
            let ok: Vec<&Outcome> = mine.iter().filter_map(|r| r.as_ref().ok()).collect();
            let prompt: Vec<f64> = ok
                .iter()
                .filter_map(|o| o.usage_prompt_tokens.map(|p| p as f64))
                .collect();
            let ttft: Vec<f64> = ok.iter().filter_map(|o| o.ttft.map(ms)).collect();
            TurnReport {
                turn: k + 1,
                requests: mine.len(),
                ok: ok.len(),
                prompt_tokens: Summary::of(&prompt),
                ttft_ms: Summary::of(&ttft),
            }
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Builds a level's report from its request results and wall time.
pub fn summarise(
    concurrency: usize,
    results: &[Result<Outcome, RequestError>],
    duration: Duration,
) -> LevelReport {
    let mut error_kinds = BTreeMap::new();
    let mut error_samples = Vec::new();
    let (mut ttft, mut itl, mut tpot, mut e2e, mut per_stream) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut server_ttft = Vec::new();
    let mut tokens: Option<u64> = None;
    let mut prompt_tokens = Vec::new();
    let mut ok = 0;
    for r in results {
        let o = match r {
            Ok(o) => o,
            Err(e) => {
                let kind = match e {
                    RequestError::Connect(_) => "connect".to_string(),
                    RequestError::Status { status, .. } => format!("http {status}"),
                    RequestError::Timeout => "timeout".to_string(),
                    RequestError::ErrorEvent(_) => "error event".to_string(),
                    RequestError::Protocol(_) => "protocol".to_string(),
                };
                *error_kinds.entry(kind).or_insert(0) += 1;
                if error_samples.len() < 3 {
                    error_samples.push(e.to_string());
                }
                continue;
            }
        };
        ok += 1;
        e2e.push(ms(o.e2e));
        if let Some(t) = o.ttft {
            ttft.push(ms(t));
        }
        server_ttft.extend(o.server_ttft_ms);
        itl.extend(o.itl.iter().map(|d| ms(*d)));
        if let Some(p) = o.usage_prompt_tokens {
            prompt_tokens.push(p as f64);
        }
        if let Some(n) = o.output_tokens() {
            tokens = Some(tokens.unwrap_or(0) + n);
            let secs = o.e2e.as_secs_f64();
            if secs > 0.0 {
                per_stream.push(n as f64 / secs);
            }
            if let (Some(t), true) = (o.ttft, n > 1) {
                tpot.push(ms(o.e2e.saturating_sub(t)) / (n - 1) as f64);
            }
        }
    }
    let secs = duration.as_secs_f64();
    let rate = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
    LevelReport {
        concurrency,
        requests: results.len(),
        ok,
        errors: results.len() - ok,
        error_kinds,
        error_samples,
        duration_s: secs,
        requests_per_s: rate(ok as f64),
        output_tokens: tokens,
        output_tokens_per_s: tokens.map(|t| rate(t as f64)),
        mean_prompt_tokens: Summary::of(&prompt_tokens).map(|s| s.mean),
        prompt_tokens: Summary::of(&prompt_tokens),
        turns: Vec::new(),
        ttft_ms: Summary::of(&ttft),
        server_ttft_ms: Summary::of(&server_ttft),
        itl_ms: Summary::of(&itl),
        tpot_ms: Summary::of(&tpot),
        e2e_ms: Summary::of(&e2e),
        per_stream_tokens_per_s: Summary::of(&per_stream),
        engine: None,
    }
}
