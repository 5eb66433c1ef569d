//! `airavata bench` against in-process fake servers with known timings.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airavata::bench::{
    self, load_reports, percentile, render_comparison, render_svg, summarise, to_json, Api,
    BenchArgs, BenchError, BenchReport, LevelReport, Outcome, PromptLengths, RequestError,
    Scenario, Summary,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use clap::{CommandFactory, Parser};
use futures::StreamExt;
use serde_json::{json, Value};

// ---------------------------------------------------------------- fake server

#[derive(Clone, Copy)]
struct Cfg {
    /// Delay before the first text event.
    ttft_ms: u64,
    /// Delay between text events.
    itl_ms: u64,
    /// Tokens each text event stands for (reported through `usage`).
    tokens_per_chunk: u64,
    /// Send `usage`.
    usage: bool,
    /// Answer 500 to every `fail_every`-th request (0 = never).
    fail_every: usize,
    /// End /generate streams with an `event: error` instead of the done event.
    error_event: bool,
    /// End /generate streams after the text events, without the done event.
    truncate: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            ttft_ms: 120,
            itl_ms: 30,
            tokens_per_chunk: 1,
            usage: true,
            fail_every: 0,
            error_event: false,
            truncate: false,
        }
    }
}

#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    count: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
}

#[derive(Clone)]
struct Fake {
    cfg: Cfg,
    shared: Arc<Shared>,
}

/// Decrements the in-flight counter when the response (stream) is dropped.
struct Guard(Arc<Shared>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fake {
    /// Counts the request; `None` when this one should fail.
    fn admit(&self, body: &Value) -> Option<Guard> {
        let n = self.shared.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.bodies.lock().expect("lock").push(body.clone());
        if self.cfg.fail_every > 0 && n.is_multiple_of(self.cfg.fail_every) {
            return None;
        }
        let now = self.shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Some(Guard(self.shared.clone()))
    }
}

/// (delay before, event name, data)
type Planned = Vec<(u64, Option<&'static str>, String)>;

fn sse(plan: Planned, guard: Guard) -> Response {
    let stream = futures::stream::iter(plan)
        .then(|(delay, name, data)| async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let ev = Event::default().data(data);
            Ok::<_, Infallible>(match name {
                Some(n) => ev.event(n),
                None => ev,
            })
        })
        .map(move |e| {
            let _keep = &guard;
            e
        });
    Sse::new(stream).into_response()
}

fn chunks(cfg: &Cfg, tokens: u64) -> u64 {
    tokens.div_ceil(cfg.tokens_per_chunk)
}

fn delay(cfg: &Cfg, i: u64) -> u64 {
    if i == 0 {
        cfg.ttft_ms
    } else {
        cfg.itl_ms
    }
}

async fn generate(State(f): State<Fake>, Json(body): Json<Value>) -> Response {
    let Some(guard) = f.admit(&body) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    };
    let cfg = f.cfg;
    let n = body["max_new_tokens"].as_u64().unwrap_or(50);
    if !body["stream"].as_bool().unwrap_or(false) {
        // The old FastAPI contract: only `generated_text`.
        tokio::time::sleep(Duration::from_millis(cfg.ttft_ms + cfg.itl_ms * n)).await;
        drop(guard);
        return Json(json!({"generated_text": "x".repeat(n as usize)})).into_response();
    }
    let mut plan: Planned = (0..chunks(&cfg, n))
        .map(|i| (delay(&cfg, i), None, json!({"text": "ab"}).to_string()))
        .collect();
    if cfg.error_event {
        plan.push((
            0,
            Some("error"),
            json!({"error": {"message": "engine failed"}}).to_string(),
        ));
    } else if !cfg.truncate {
        let mut done =
            json!({"text": "", "done": true, "generated_text": "ab", "finish_reason": "length"});
        if cfg.usage {
            done["usage"] = json!({"prompt_tokens": 11, "completion_tokens": n});
        }
        plan.push((0, None, done.to_string()));
    }
    sse(plan, guard)
}

async fn openai(State(f): State<Fake>, chat: bool, body: Value) -> Response {
    let Some(guard) = f.admit(&body) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    };
    let cfg = f.cfg;
    let n = body["max_tokens"].as_u64().unwrap_or(16);
    let choice = |text: Option<&str>, finish: Option<&str>| {
        if chat {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None => json!({}),
            };
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish})
        }
    };
    let chunk = |c: Value| json!({"id": "x", "choices": [c], "usage": null}).to_string();
    let mut plan: Planned = Vec::new();
    if chat {
        plan.push((
            0,
            None,
            chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}})),
        ));
    }
    for i in 0..chunks(&cfg, n) {
        plan.push((delay(&cfg, i), None, chunk(choice(Some("tok"), None))));
    }
    plan.push((0, None, chunk(choice(None, Some("length")))));
    if cfg.usage {
        plan.push((
            0,
            None,
            json!({"id": "x", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": n}})
                .to_string(),
        ));
    }
    plan.push((0, None, "[DONE]".to_string()));
    sse(plan, guard)
}

async fn completions(state: State<Fake>, Json(body): Json<Value>) -> Response {
    openai(state, false, body).await
}

async fn chat(state: State<Fake>, Json(body): Json<Value>) -> Response {
    openai(state, true, body).await
}

async fn spawn(cfg: Cfg) -> (String, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let app = Router::new()
        .route("/generate", post(generate))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .with_state(Fake {
            cfg,
            shared: shared.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), shared)
}

fn args(url: &str, api: Api, conc: &[usize], requests: usize, max_tokens: u32) -> BenchArgs {
    BenchArgs {
        url: url.to_string(),
        api,
        concurrency: conc.to_vec(),
        requests: Some(requests),
        warmup: 1,
        max_tokens: Some(max_tokens),
        prompt_tokens: Some(32),
        model: Some("airavata-q4".into()),
        ..BenchArgs::default()
    }
}

/// Percentiles of a summary are ordered and its count is as expected.
fn ordered(what: &str, s: &Summary, count: usize) {
    assert_eq!(s.count, count, "{what} count");
    let chain = [s.min, s.p50, s.p90, s.p99, s.max];
    assert!(
        chain.windows(2).all(|w| w[0] <= w[1]) && s.min <= s.mean && s.mean <= s.max,
        "{what} percentiles out of order: {s:?}"
    );
}

/// `a` and `b` agree up to float rounding.
fn same(what: &str, a: f64, b: f64) {
    assert!(
        (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0),
        "{what}: {a} != {b}"
    );
}

/// Checks a level against the fake's timings: `events` text events per
/// request, `tokens` output tokens per request.
///
/// Only what holds on a loaded machine is asserted: exact counts, ordered
/// percentiles, lower bounds from the fake's sleeps (a response is never
/// earlier than the sleeps before it, though it may be arbitrarily later),
/// the upper bounds on rates those imply, and the algebra that ties the
/// metrics together. No absolute upper bound on any latency.
fn check_level(l: &LevelReport, cfg: &Cfg, requests: usize, events: u64, tokens: u64) {
    assert_eq!(l.requests, requests);
    assert_eq!(l.ok, requests, "errors: {:?}", l.error_samples);
    assert_eq!(l.errors, 0);
    assert_eq!(l.output_tokens, Some(tokens * requests as u64));
    let ttft = l.ttft_ms.expect("ttft");
    ordered("TTFT", &ttft, requests);
    let t = cfg.ttft_ms as f64;
    assert!(ttft.min >= t, "TTFT {} below the fake's {t} ms", ttft.min);
    let itl = l.itl_ms.expect("itl");
    ordered("ITL", &itl, (events as usize - 1) * requests);
    let e2e = l.e2e_ms.expect("e2e");
    ordered("e2e", &e2e, requests);
    let want = t + cfg.itl_ms as f64 * (events - 1) as f64;
    assert!(
        e2e.min >= want,
        "e2e {} below the fake's {want} ms",
        e2e.min
    );
    // Each request's first token and gaps fit inside its end-to-end time.
    assert!(
        ttft.mean + itl.mean * (events - 1) as f64 <= e2e.mean + 1e-6,
        "TTFT {ttft:?} + ITL {itl:?} exceed e2e {e2e:?}"
    );
    let per_stream = l.per_stream_tokens_per_s.expect("per stream");
    ordered("per-stream tok/s", &per_stream, requests);
    assert!(per_stream.max <= tokens as f64 / want * 1e3 + 1e-6);
    let tpot = l.tpot_ms.expect("tpot");
    ordered("TPOT", &tpot, requests);
    same(
        "mean TPOT",
        tpot.mean,
        (e2e.mean - ttft.mean) / (tokens - 1) as f64,
    );
    // Closed loop: c streams of at least `want` ms each bound the rate.
    let c = l.concurrency as f64;
    assert!(l.requests_per_s > 0.0);
    assert!(
        l.requests_per_s <= c / (want / 1e3) + 1e-6,
        "req/s {} above {c} streams of {want} ms",
        l.requests_per_s
    );
    same("req/s", l.requests_per_s, requests as f64 / l.duration_s);
    same(
        "agg tok/s",
        l.output_tokens_per_s.expect("tok/s"),
        l.requests_per_s * tokens as f64,
    );
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_sse_timings_and_counts() {
    let cfg = Cfg::default();
    let (url, shared) = spawn(cfg).await;
    let report = bench::run(args(&url, Api::Generate, &[1, 4], 8, 6))
        .await
        .expect("run");
    assert_eq!(report.levels.len(), 2);
    assert_eq!(report.api, Api::Generate);
    assert!(report.stream);
    for l in &report.levels {
        check_level(l, &cfg, 8, 6, 6);
        assert_eq!(l.mean_prompt_tokens, Some(11.0));
    }
    assert_eq!(report.levels[0].concurrency, 1);
    assert_eq!(report.levels[1].concurrency, 4);
    // Four streams get through the same 8 requests sooner than one.
    assert!(
        report.levels[1].duration_s < report.levels[0].duration_s,
        "c=4 took {} s, c=1 {} s",
        report.levels[1].duration_s,
        report.levels[0].duration_s
    );
    // Warm-up + 2 levels of 8, and never more than 4 at once.
    assert_eq!(shared.count.load(Ordering::SeqCst), 1 + 16);
    assert_eq!(shared.max_in_flight.load(Ordering::SeqCst), 4);
    let bodies = shared.bodies.lock().expect("lock");
    let b = &bodies[0];
    assert_eq!(b["max_new_tokens"], 6);
    assert_eq!(b["stream"], true);
    assert_eq!(b["ignore_eos"], true);
    assert_eq!(b["raw"], false);
    assert!(b["prompt"].as_str().expect("prompt").len() > 50);
    assert!(b.get("model").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_keeps_exactly_c_in_flight() {
    let cfg = Cfg {
        ttft_ms: 150,
        itl_ms: 10,
        ..Cfg::default()
    };
    let (url, shared) = spawn(cfg).await;
    let mut a = args(&url, Api::Generate, &[8], 24, 3);
    a.warmup = 0;
    let report = bench::run(a).await.expect("run");
    let l = &report.levels[0];
    assert_eq!((l.requests, l.ok), (24, 24));
    assert_eq!(shared.max_in_flight.load(Ordering::SeqCst), 8);
    // 24 requests, 8 at a time, at least 170 ms each: at least three waves,
    // and far less than the 24 × 170 ms a serial run would take.
    let each = (cfg.ttft_ms + 2 * cfg.itl_ms) as f64 / 1e3;
    assert!(l.duration_s >= 3.0 * each, "duration {}", l.duration_s);
    assert!(l.duration_s < 24.0 * each, "duration {}", l.duration_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_without_usage_counts_events() {
    let cfg = Cfg {
        usage: false,
        ..Cfg::default()
    };
    let (url, _) = spawn(cfg).await;
    let report = bench::run(args(&url, Api::Generate, &[2], 4, 5))
        .await
        .expect("run");
    let l = &report.levels[0];
    check_level(l, &cfg, 4, 5, 5);
    assert_eq!(l.mean_prompt_tokens, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_completions_usage_beats_event_count() {
    // Two tokens per streamed chunk: usage says 8, the stream has 4 events.
    let cfg = Cfg {
        tokens_per_chunk: 2,
        ..Cfg::default()
    };
    let (url, shared) = spawn(cfg).await;
    let report = bench::run(args(&url, Api::OpenaiCompletions, &[1, 3], 6, 8))
        .await
        .expect("run");
    for l in &report.levels {
        check_level(l, &cfg, 6, 4, 8);
    }
    let bodies = shared.bodies.lock().expect("lock");
    let b = &bodies[0];
    assert_eq!(b["max_tokens"], 8);
    assert_eq!(b["stream"], true);
    assert_eq!(b["ignore_eos"], true);
    assert_eq!(b["stream_options"]["include_usage"], true);
    assert_eq!(b["model"], "airavata-q4");
    assert!(b["prompt"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_role_chunk_is_not_a_token() {
    let cfg = Cfg {
        usage: false,
        ..Cfg::default()
    };
    let (url, shared) = spawn(cfg).await;
    let report = bench::run(args(&url, Api::OpenaiChat, &[2], 4, 5))
        .await
        .expect("run");
    check_level(&report.levels[0], &cfg, 4, 5, 5);
    let bodies = shared.bodies.lock().expect("lock");
    assert_eq!(bodies[0]["messages"][0]["role"], "user");
    assert_eq!(bodies[0]["max_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_app_scenario_sequential_non_streamed() {
    let cfg = Cfg {
        ttft_ms: 20,
        itl_ms: 1,
        ..Cfg::default()
    };
    let (url, shared) = spawn(cfg).await;
    let a = BenchArgs {
        url: url.clone(),
        scenario: Scenario::OldApp,
        // Ignored by old-app.
        api: Api::OpenaiChat,
        concurrency: vec![16],
        requests: Some(5),
        warmup: 1,
        ..BenchArgs::default()
    };
    let report = bench::run(a).await.expect("run");
    assert_eq!(report.scenario, Scenario::OldApp);
    assert_eq!(report.api, Api::Generate);
    assert!(!report.stream);
    assert_eq!(report.max_tokens, 50);
    assert_eq!(report.levels.len(), 1);
    let l = &report.levels[0];
    assert_eq!((l.concurrency, l.requests, l.ok, l.errors), (1, 5, 5, 0));
    assert!(l.ttft_ms.is_none() && l.itl_ms.is_none());
    assert_eq!(l.output_tokens, None);
    assert_eq!(l.output_tokens_per_s, None);
    // At least 20 + 50 * 1 ms per request, one at a time.
    let e2e = l.e2e_ms.expect("e2e");
    ordered("old-app e2e", &e2e, 5);
    assert!(e2e.min >= 70.0, "{e2e:?}");
    assert!(l.duration_s >= 5.0 * 0.070, "duration {}", l.duration_s);
    assert!(l.requests_per_s <= 1e3 / 70.0, "req/s {}", l.requests_per_s);
    assert_eq!(shared.max_in_flight.load(Ordering::SeqCst), 1);
    let bodies = shared.bodies.lock().expect("lock");
    assert_eq!(bodies.len(), 6);
    for b in bodies.iter() {
        assert_eq!(
            *b,
            json!({"prompt": "how to manage time effectively?", "max_new_tokens": 50})
        );
    }
    let md = render_comparison(&[report]);
    assert!(md.contains("old-app"), "{md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_counted_not_fatal() {
    let cfg = Cfg {
        ttft_ms: 5,
        itl_ms: 2,
        fail_every: 3,
        ..Cfg::default()
    };
    let (url, _) = spawn(cfg).await;
    let mut a = args(&url, Api::OpenaiCompletions, &[1], 9, 3);
    a.warmup = 0;
    let report = bench::run(a).await.expect("run");
    let l = &report.levels[0];
    assert_eq!((l.requests, l.ok, l.errors), (9, 6, 3));
    assert_eq!(l.error_kinds.get("http 500"), Some(&3));
    assert!(l.error_samples[0].contains("500"), "{:?}", l.error_samples);
    assert_eq!(l.output_tokens, Some(18));
    let md = render_comparison(&[report]);
    assert!(md.contains("http 500: 3"), "{md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_events_in_stream_are_counted() {
    let cfg = Cfg {
        ttft_ms: 5,
        itl_ms: 2,
        error_event: true,
        ..Cfg::default()
    };
    let (url, _) = spawn(cfg).await;
    let mut a = args(&url, Api::Generate, &[2], 4, 3);
    a.warmup = 0;
    let report = bench::run(a).await.expect("run");
    let l = &report.levels[0];
    assert_eq!((l.ok, l.errors), (0, 4));
    assert_eq!(l.error_kinds.get("error event"), Some(&4));
    assert!(l.error_samples[0].contains("engine failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_streams_are_errors() {
    let cfg = Cfg {
        ttft_ms: 5,
        itl_ms: 2,
        truncate: true,
        ..Cfg::default()
    };
    let (url, _) = spawn(cfg).await;
    let mut a = args(&url, Api::Generate, &[1], 2, 3);
    a.warmup = 0;
    let report = bench::run(a).await.expect("run");
    let l = &report.levels[0];
    assert_eq!((l.ok, l.errors), (0, 2));
    assert_eq!(l.error_kinds.get("protocol"), Some(&2));
    assert!(
        l.error_samples[0].contains("without a final event"),
        "{:?}",
        l.error_samples
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    for warmup in [0, 1] {
        let mut a = args(&format!("http://{addr}"), Api::Generate, &[2], 2, 3);
        a.warmup = warmup;
        match bench::run(a).await {
            Err(e @ BenchError::Unreachable { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&addr.to_string()), "{msg}");
                assert!(msg.contains("cannot reach"), "{msg}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}

/// `--prefix-groups 3`: every prompt is a group tag, the common prompt, and
/// a tag unique to the request; consecutive requests change group, and each
/// group gets requests. `--unique-prompts`: no two prompts are equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_variations_share_what_they_promise() {
    let (url, shared) = spawn(Cfg::default()).await;
    let a = BenchArgs {
        prefix_groups: Some(3),
        ..args(&url, Api::Generate, &[2], 12, 2)
    };
    bench::run(a).await.expect("run");
    let prompts: Vec<String> = shared
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .map(|b| b["prompt"].as_str().expect("prompt").to_string())
        .collect();
    assert_eq!(prompts.len(), 13);
    let common = bench::synth_prompt(32);
    // Request i (in the order the tool numbered them, which two streams may
    // deliver out of order) -> its group tag.
    let mut group_of = std::collections::BTreeMap::<usize, String>::new();
    for p in &prompts {
        let (head, rest) = p.split_once("] ").expect("group tag");
        assert!(head.contains(" group "), "{p}");
        let body = rest
            .strip_prefix(common.as_str())
            .expect("the common prompt");
        let i: usize = body
            .strip_prefix(" [")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no request tag in {p}"));
        assert!(
            group_of.insert(i, head.to_string()).is_none(),
            "tag {i} twice"
        );
    }
    assert_eq!(
        group_of.keys().copied().collect::<Vec<_>>(),
        (0..13).collect::<Vec<_>>()
    );
    for (&i, gi) in &group_of {
        if let Some(next) = group_of.get(&(i + 1)) {
            assert_ne!(gi, next, "requests {i} and {} share a group", i + 1);
        }
        // Every third request is back in the same group.
        if let Some(third) = group_of.get(&(i + 3)) {
            assert_eq!(gi, third, "requests {i} and {}", i + 3);
        }
    }
    let groups: std::collections::BTreeSet<&String> = group_of.values().collect();
    assert_eq!(groups.len(), 3, "{groups:?}");

    let (url, shared) = spawn(Cfg::default()).await;
    let a = BenchArgs {
        unique_prompts: true,
        ..args(&url, Api::Generate, &[2], 6, 2)
    };
    bench::run(a).await.expect("run");
    let bodies = shared.bodies.lock().expect("lock");
    let unique: std::collections::HashSet<&str> = bodies
        .iter()
        .map(|b| b["prompt"].as_str().expect("prompt"))
        .collect();
    assert_eq!(unique.len(), 7);
}

/// `chat:3`: every later turn's request holds an earlier turn's request and
/// the answer it streamed, then a new user message; conversations start
/// with different (tagged) messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_requests_carry_the_history() {
    let cfg = Cfg {
        ttft_ms: 1,
        itl_ms: 1,
        ..Cfg::default()
    };
    let chat = |api| BenchArgs {
        prompt_tokens: None,
        prompt_lengths: Some(PromptLengths::Chat { turns: 3 }),
        warmup: 0,
        ..args("", api, &[2], 6, 3)
    };

    // openai-chat: a `messages` list, user and assistant in turn.
    let (url, shared) = spawn(cfg).await;
    let report = bench::run(BenchArgs {
        url: url.clone(),
        ..chat(Api::OpenaiChat)
    })
    .await
    .expect("run");
    let level = &report.levels[0];
    assert_eq!((level.requests, level.ok), (6, 6));
    let turns: Vec<(usize, usize, usize)> = level
        .turns
        .iter()
        .map(|t| (t.turn, t.requests, t.ok))
        .collect();
    assert_eq!(turns, vec![(1, 2, 2), (2, 2, 2), (3, 2, 2)]);
    match std::env::var_os("AIRAVATA_ASSETS") {
        None => assert!(
            report
                .prompt_set
                .as_deref()
                .is_some_and(|o| o.starts_with("synthetic text")),
            "{:?}",
            report.prompt_set
        ),
        Some(_) => assert!(report.prompt_set.is_some()),
    }
    let bodies = shared.bodies.lock().expect("lock").clone();
    let convs: Vec<Vec<(String, String)>> = bodies
        .iter()
        .map(|b| {
            b["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| {
                    let s = |k: &str| m[k].as_str().expect("string").to_string();
                    (s("role"), s("content"))
                })
                .collect()
        })
        .collect();
    let mut sizes: Vec<usize> = convs.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![1, 1, 3, 3, 5, 5]);
    for c in &convs {
        for (i, (role, content)) in c.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(role, "user");
            } else {
                assert_eq!(
                    (role.as_str(), content.as_str()),
                    ("assistant", "toktoktok")
                );
            }
        }
        assert!(c[0].1.contains("-chat-"), "{c:?}");
        if c.len() > 1 {
            let earlier = &c[..c.len() - 2];
            assert!(
                convs.iter().any(|o| o == earlier),
                "no earlier turn of {c:?}"
            );
        }
    }
    let firsts: std::collections::HashSet<&str> = convs
        .iter()
        .filter(|c| c.len() == 1)
        .map(|c| c[0].1.as_str())
        .collect();
    assert_eq!(firsts.len(), 2);

    // generate: the history as Airavata-format text, sent raw.
    let (url, shared) = spawn(cfg).await;
    bench::run(BenchArgs {
        url,
        ..chat(Api::Generate)
    })
    .await
    .expect("run");
    let bodies = shared.bodies.lock().expect("lock").clone();
    let prompts: Vec<&str> = bodies
        .iter()
        .map(|b| {
            assert_eq!(b["raw"], true);
            b["prompt"].as_str().expect("prompt")
        })
        .collect();
    let mut users: Vec<usize> = prompts
        .iter()
        .map(|p| p.matches("<|user|>\n").count())
        .collect();
    users.sort_unstable();
    assert_eq!(users, vec![1, 1, 2, 2, 3, 3]);
    for p in &prompts {
        assert!(
            p.starts_with("<|user|>\n[") && p.ends_with("\n<|assistant|>\n"),
            "{p}"
        );
        let turns = p.matches("<|user|>\n").count();
        assert_eq!(
            p.matches("\n<|assistant|>\nababab</s>\n").count(),
            turns - 1,
            "{p}"
        );
        if turns > 1 {
            assert!(
                prompts
                    .iter()
                    .any(|o| o.matches("<|user|>\n").count() == turns - 1 && p.starts_with(o)),
                "no earlier turn of {p}"
            );
        }
    }
}

#[tokio::test]
async fn invalid_arguments_are_rejected() {
    let cases = [
        BenchArgs {
            url: "not a url".into(),
            ..BenchArgs::default()
        },
        BenchArgs {
            url: "ftp://host".into(),
            ..BenchArgs::default()
        },
        BenchArgs {
            concurrency: vec![0, 4],
            ..BenchArgs::default()
        },
        BenchArgs {
            requests: Some(0),
            ..BenchArgs::default()
        },
        BenchArgs {
            timeout_s: -1.0,
            ..BenchArgs::default()
        },
        BenchArgs {
            prefix_groups: Some(0),
            ..BenchArgs::default()
        },
        BenchArgs {
            prompt_lengths: Some(PromptLengths::Mix { lo: 0, hi: 8 }),
            ..BenchArgs::default()
        },
        BenchArgs {
            prompt_lengths: Some(PromptLengths::Mix { lo: 9, hi: 8 }),
            ..BenchArgs::default()
        },
        BenchArgs {
            prompt_lengths: Some(PromptLengths::Fixed(8)),
            prompt_tokens: Some(8),
            ..BenchArgs::default()
        },
        BenchArgs {
            prompt_lengths: Some(PromptLengths::Chat { turns: 2 }),
            scenario: Scenario::OldApp,
            ..BenchArgs::default()
        },
        BenchArgs {
            prompt_lengths: Some(PromptLengths::Chat { turns: 2 }),
            prefix_groups: Some(2),
            ..BenchArgs::default()
        },
        BenchArgs {
            prompt_lengths: Some(PromptLengths::Mix { lo: 8, hi: 64 }),
            prompt_file: Some("/nonexistent/prompts.jsonl".into()),
            ..BenchArgs::default()
        },
    ];
    for a in cases {
        let err = bench::run(a.clone()).await.expect_err("must fail");
        assert!(
            matches!(
                err,
                BenchError::InvalidUrl { .. } | BenchError::InvalidArgs(_)
            ),
            "{a:?}: {err}"
        );
    }
}

#[test]
fn percentile_on_known_data() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    let close = |a: Option<f64>, b: f64| (a.expect("some") - b).abs() < 1e-9;
    assert!(close(percentile(&v, 50.0), 50.5));
    assert!(close(percentile(&v, 99.0), 99.01));
    assert!(close(percentile(&v, 90.0), 90.1));
    assert!(close(percentile(&v, 0.0), 1.0));
    assert!(close(percentile(&v, 100.0), 100.0));
    assert!(close(percentile(&[7.0], 99.0), 7.0));
    assert_eq!(percentile(&[], 50.0), None);
    let mut shuffled: Vec<f64> = (1..=100).rev().map(f64::from).collect();
    shuffled.swap(3, 70);
    let s = Summary::of(&shuffled).expect("summary");
    assert_eq!((s.count, s.min, s.max), (100, 1.0, 100.0));
    assert!((s.mean - 50.5).abs() < 1e-9 && (s.p50 - 50.5).abs() < 1e-9);
    assert!((s.p99 - 99.01).abs() < 1e-9);
}

#[test]
fn summarise_known_outcomes() {
    let ms = Duration::from_millis;
    let ok = |ttft: u64, gaps: &[u64], tokens: u64| {
        let e2e = ttft + gaps.iter().sum::<u64>();
        Ok(Outcome {
            ttft: Some(ms(ttft)),
            itl: gaps.iter().map(|g| ms(*g)).collect(),
            e2e: ms(e2e),
            token_events: gaps.len() as u64 + 1,
            usage_completion_tokens: Some(tokens),
            usage_prompt_tokens: None,
            text_bytes: 10,
            server_ttft_ms: Some(ttft as f64 / 2.0),
            text: None,
        })
    };
    let results = vec![
        ok(100, &[10, 20, 30], 4),
        ok(200, &[40, 50, 60], 4),
        Err(RequestError::Timeout),
    ];
    let l = summarise(2, &results, Duration::from_secs(2));
    assert_eq!((l.requests, l.ok, l.errors), (3, 2, 1));
    assert_eq!(l.error_kinds.get("timeout"), Some(&1));
    assert_eq!(l.output_tokens, Some(8));
    assert!((l.output_tokens_per_s.expect("rate") - 4.0).abs() < 1e-9);
    assert!((l.requests_per_s - 1.0).abs() < 1e-9);
    let ttft = l.ttft_ms.expect("ttft");
    assert!((ttft.p50 - 150.0).abs() < 1e-6);
    let server = l.server_ttft_ms.expect("server ttft");
    assert_eq!((server.count, server.min, server.max), (2, 50.0, 100.0));
    let itl = l.itl_ms.expect("itl");
    assert_eq!(itl.count, 6);
    assert!((itl.p50 - 35.0).abs() < 1e-6);
    // TPOT: (160-100)/3 = 20 and (350-200)/3 = 50.
    let tpot = l.tpot_ms.expect("tpot");
    assert!((tpot.min - 20.0).abs() < 1e-6 && (tpot.max - 50.0).abs() < 1e-6);
}

// ---------------------------------------------------------------- outputs

fn sample(label: &str, scale: f64) -> BenchReport {
    let levels = [1usize, 4, 16]
        .iter()
        .map(|&c| {
            let s = |v: f64| Summary {
                count: 10,
                mean: v,
                min: v,
                p50: v,
                p90: v,
                p99: v * 2.0,
                max: v * 2.0,
            };
            LevelReport {
                concurrency: c,
                requests: 10,
                ok: 10,
                errors: 0,
                error_kinds: Default::default(),
                error_samples: vec![],
                duration_s: 1.0,
                requests_per_s: c as f64,
                output_tokens: Some(100 * c as u64),
                output_tokens_per_s: Some(scale * 25.0 * c as f64),
                mean_prompt_tokens: Some(128.0),
                prompt_tokens: None,
                turns: vec![],
                ttft_ms: Some(s(50.0 * c as f64)),
                server_ttft_ms: None,
                itl_ms: Some(s(20.0)),
                tpot_ms: Some(s(21.0)),
                e2e_ms: Some(s(500.0)),
                per_stream_tokens_per_s: Some(s(40.0)),
                engine: None,
            }
        })
        .collect();
    BenchReport {
        label: label.into(),
        scenario: Scenario::Sweep,
        api: Api::OpenaiCompletions,
        url: "http://127.0.0.1:8080".into(),
        model: None,
        stream: true,
        prompt_chars: 600,
        prompt_tokens_requested: Some(128),
        prompt_lengths: Some("fixed:128".into()),
        prompt_set: None,
        seed: None,
        max_tokens: 128,
        warmup: 2,
        started_unix_s: 0,
        tool_version: "0.1.0".into(),
        levels,
    }
}

/// Minimal XML well-formedness: balanced tags, quoted attributes, no stray `<`/`&`.
fn assert_xmlish(s: &str) {
    assert!(s.starts_with("<svg"), "must start with <svg");
    assert!(s.trim_end().ends_with("</svg>"));
    let mut stack: Vec<String> = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(!text.contains('>'), "stray '>' in {text:?}");
        for (i, _) in text.match_indices('&') {
            let ent = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| ent.starts_with(e)),
                "bad entity in {text:?}"
            );
        }
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().expect("tag name");
            stack.push(name.to_string());
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn svg_is_wellformed_with_a_line_per_series() {
    let reports = [sample("ours <q4>", 1.0), sample("llama-server & co", 1.5)];
    let svg = render_svg(&reports);
    assert_xmlish(&svg);
    // Two panels, one polyline per run in each.
    assert_eq!(svg.matches("<polyline").count(), 4);
    assert!(svg.contains("ours &lt;q4&gt;"));
    assert!(svg.contains("llama-server &amp; co"));
    assert!(svg.contains("Aggregate output tokens/s") && svg.contains("TTFT p50"));
    // Three points per polyline.
    for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
        let pts = line.split("points=\"").nth(1).expect("points");
        let pts = &pts[..pts.find('"').expect("end")];
        assert_eq!(pts.split_whitespace().count(), 3, "{line}");
    }
    // A single report with one level (old-app) still renders.
    let mut one = sample("one", 1.0);
    one.levels.truncate(1);
    one.levels[0].ttft_ms = None;
    let svg = render_svg(&[one]);
    assert_xmlish(&svg);
    assert_eq!(svg.matches("<polyline").count(), 2);
}

#[test]
fn markdown_table_is_well_formed() {
    let reports = [sample("ours", 1.0), sample("llama|server", 1.5)];
    let md = render_comparison(&reports);
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    // Header, separator, 3 levels x 2 runs.
    assert_eq!(table.len(), 2 + 6, "{md}");
    let cols = |l: &str| l.replace("\\|", "").matches('|').count();
    let want = cols(table[0]);
    assert_eq!(want, 16);
    for l in &table {
        assert_eq!(cols(l), want, "{l}");
    }
    assert!(table[0].contains("TTFT p50") && table[0].contains("out tok/s"));
    assert!(
        table[2].starts_with("| ours | 1 | 10 | 0 | 1.00 | 25.0 |"),
        "{}",
        table[2]
    );
    assert!(md.contains("llama\\|server"));
    assert!(!md.contains("Errors:"));
    assert_eq!(
        bench::render_markdown(&reports[0])
            .lines()
            .filter(|l| l.starts_with('|'))
            .count(),
        5
    );
}

#[test]
fn json_round_trips_and_compare_combines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = sample("ours", 1.0);
    let b = sample("llama-server", 1.5);
    let pa = dir.path().join("a.json");
    let pb = dir.path().join("b.json");
    std::fs::write(&pa, to_json(std::slice::from_ref(&a)).expect("json")).expect("write");
    std::fs::write(&pb, to_json(std::slice::from_ref(&b)).expect("json")).expect("write");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&pa).expect("read")).expect("parse");
    assert_eq!(v["label"], "ours");
    assert_eq!(v["levels"][1]["concurrency"], 4);
    assert_eq!(v["api"], "openai-completions");
    assert_eq!(load_reports(&pa).expect("load"), vec![a.clone()]);

    let out = dir.path().join("combined");
    let args = BenchArgs {
        compare: vec![pa.clone(), pb.clone()],
        json: Some(out.with_extension("json")),
        markdown: Some(out.with_extension("md")),
        svg: Some(out.with_extension("svg")),
        ..BenchArgs::default()
    };
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let reports = rt.block_on(bench::cli_main(args)).expect("compare");
    assert_eq!(reports, vec![a.clone(), b.clone()]);
    // The combined JSON is an array and loads back.
    let combined = load_reports(&out.with_extension("json")).expect("load combined");
    assert_eq!(combined, vec![a, b]);
    let md = std::fs::read_to_string(out.with_extension("md")).expect("md");
    assert!(md.contains("| ours |") && md.contains("| llama-server |"));
    let svg = std::fs::read_to_string(out.with_extension("svg")).expect("svg");
    assert_xmlish(&svg);
    assert_eq!(svg.matches("<polyline").count(), 4);

    std::fs::write(dir.path().join("bad.json"), "{\"x\": 1}").expect("write");
    assert!(matches!(
        load_reports(&dir.path().join("bad.json")),
        Err(BenchError::BadReport { .. })
    ));
    assert!(matches!(
        load_reports(&dir.path().join("missing.json")),
        Err(BenchError::Io { .. })
    ));
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

#[test]
fn cli_args_parse() {
    Cli::command().debug_assert();
    let c = Cli::try_parse_from([
        "bench",
        "--url",
        "http://h:1",
        "--api",
        "openai-chat",
        "--concurrency",
        "1,2,8",
        "--prompt-tokens",
        "256",
        "--max-tokens",
        "64",
        "--compare",
        "a.json",
        "b.json",
    ])
    .expect("parse");
    let a = c.bench;
    assert_eq!(a.api, Api::OpenaiChat);
    assert_eq!(a.concurrency, vec![1, 2, 8]);
    assert_eq!(a.max_tokens(), 64);
    assert_eq!(a.compare.len(), 2);
    assert_eq!(a.requests_for(8), 16);
    assert_eq!(a.requests_for(1), 8);
    let d = Cli::try_parse_from(["bench"]).expect("defaults").bench;
    assert_eq!(d.concurrency, vec![1, 4, 16, 32, 64]);
    assert_eq!(d.scenario, Scenario::Sweep);
    assert_eq!(d.max_tokens(), 128);
    let old = Cli::try_parse_from(["bench", "--scenario", "old-app"])
        .expect("old-app")
        .bench;
    assert_eq!(old.max_tokens(), 50);
    assert_eq!(old.prompt_text(), "how to manage time effectively?");
    assert!(Cli::try_parse_from(["bench", "--prompt", "x", "--prompt-tokens", "3"]).is_err());
    // Prompt lengths.
    let m = Cli::try_parse_from([
        "bench",
        "--prompt-lengths",
        "mix:128-2048",
        "--prompt-file",
        ".carry/prompts.jsonl",
        "--seed",
        "9",
    ])
    .expect("mix")
    .bench;
    assert_eq!(m.lengths(), Some(PromptLengths::Mix { lo: 128, hi: 2048 }));
    assert_eq!(m.seed, 9);
    assert_eq!(d.lengths(), Some(PromptLengths::Fixed(128)));
    assert_eq!(old.lengths(), None);
    let f = Cli::try_parse_from(["bench", "--prompt-lengths", "fixed:512"])
        .expect("fixed")
        .bench;
    let t = Cli::try_parse_from(["bench", "--prompt-tokens", "512"])
        .expect("tokens")
        .bench;
    assert_eq!(
        (f.lengths(), f.prompt_text()),
        (t.lengths(), t.prompt_text())
    );
    for bad in [
        &[
            "bench",
            "--prompt-lengths",
            "fixed:8",
            "--prompt-tokens",
            "8",
        ][..],
        &["bench", "--prompt-lengths", "chat:2", "--prompt", "x"],
        &["bench", "--prompt-file", "p.jsonl"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
    }
    let err = Cli::try_parse_from(["bench", "--prompt-lengths", "mix:2048-128"])
        .expect_err("bad spec")
        .to_string();
    assert!(err.contains("LO (2048) must not exceed HI (128)"), "{err}");
    // The synthetic prompt grows with the token target (~1 word per token).
    let p = bench::synth_prompt(200);
    let words = p.split_whitespace().count();
    assert!((190..=210).contains(&words), "{words}");
}
