//! Prometheus text exposition (format 0.0.4), written by hand.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::engine::stats::{HistogramSnapshot, Phase, StepProfile};
use crate::engine::{Engine, EngineStats};
use crate::router::Engines;

use super::AppState;

/// HTTP-level counters.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpMetrics {
    /// Counts one finished request.
    pub fn record(&self, route: &str, status: u16) {
        let mut g = match self.requests.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    fn snapshot(&self) -> BTreeMap<(String, u16), u64> {
        match self.requests.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Middleware: counts requests by matched route and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    state.http.record(&route, resp.status().as_u16());
    resp
}

/// One value per engine and their total: the unlabelled line is the
/// server's total, `{engine="N"}` lines are per engine (select the total with
/// `{engine=""}` in PromQL).
struct Series {
    total: f64,
    per_engine: Vec<f64>,
}

impl Series {
    fn of(engines: &[Engine], f: impl Fn(&Engine) -> f64) -> Series {
        let per_engine: Vec<f64> = engines.iter().map(f).collect();
        Series {
            total: per_engine.iter().sum(),
            per_engine,
        }
    }
}

fn family(out: &mut String, name: &str, labels: &str, s: &Series) {
    let sep = if labels.is_empty() { "" } else { "," };
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {}", s.total);
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {}", s.total);
    }
    for (i, v) in s.per_engine.iter().enumerate() {
        let _ = writeln!(out, "{name}{{engine=\"{i}\"{sep}{labels}}} {v}");
    }
}

fn counter(e: &Engine, f: impl Fn(&EngineStats) -> &AtomicU64) -> f64 {
    f(e.stats()).load(Ordering::Relaxed) as f64
}

impl Series {
    /// A server-wide value with no per-engine lines.
    fn total(total: f64) -> Series {
        Series {
            total,
            per_engine: Vec::new(),
        }
    }

    /// An engine counter, per engine and summed.
    fn counter(engines: &Engines, pick: fn(&EngineStats) -> &AtomicU64) -> Series {
        Series::of(engines.all(), |e| counter(e, pick))
    }
}

/// `(name, type, help, value)`: every counter and gauge family with one
/// value per engine (or only a total). A new metric is one row.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Engines) -> Series,
);

const FAMILIES: [Family; 23] = [
    (
        "airavata_prompt_tokens_total",
        "counter",
        "Prompt tokens evaluated (prompt-cache hits excluded).",
        |en| Series::counter(en, |s| &s.prompt_tokens),
    ),
    (
        "airavata_cached_prompt_tokens_total",
        "counter",
        "Prompt tokens served from the slots' prompt cache.",
        |en| Series::counter(en, |s| &s.cached_prompt_tokens),
    ),
    (
        "airavata_shared_prompt_tokens_total",
        "counter",
        "Of the cached prompt tokens, those copied from another slot's KV (a prefix shared across slots).",
        |en| Series::counter(en, |s| &s.shared_prompt_tokens),
    ),
    (
        "airavata_generated_tokens_total",
        "counter",
        "Tokens sampled.",
        |en| Series::counter(en, |s| &s.generated_tokens),
    ),
    (
        "airavata_backend_greedy_tokens_total",
        "counter",
        "Of the tokens sampled, greedy ones the backend picked in the step's graph (--backend-greedy).",
        |en| Series::counter(en, |s| &s.backend_greedy_tokens),
    ),
    (
        "airavata_backend_greedy_switches_total",
        "counter",
        "Slots whose backend greedy sampler was attached or detached for a request (each makes llama.cpp re-plan its graph memory).",
        |en| Series::counter(en, |s| &s.backend_greedy_switches),
    ),
    (
        "airavata_generations_finished_total",
        "counter",
        "Generations that ended normally.",
        |en| Series::counter(en, |s| &s.finished),
    ),
    (
        "airavata_generations_cancelled_total",
        "counter",
        "Generations cancelled because the client went away.",
        |en| Series::counter(en, |s| &s.cancelled),
    ),
    (
        "airavata_generations_timed_out_total",
        "counter",
        "Generations that hit --request-timeout.",
        |en| Series::counter(en, |s| &s.timed_out),
    ),
    (
        "airavata_generations_failed_total",
        "counter",
        "Generations that failed in the engine.",
        |en| Series::counter(en, |s| &s.failed),
    ),
    (
        "airavata_engine_padded_tokens_total",
        "counter",
        "Dummy tokens on unfed slots: gaps between fed slots (--fill-gaps) and decode padding (--decode-pad).",
        |en| Series::counter(en, |s| &s.steps.padded_tokens),
    ),
    (
        "airavata_decode_steps_total",
        "counter",
        "llama_decode calls.",
        |en| Series::of(en.all(), |e| e.stats().steps.steps() as f64),
    ),
    (
        "airavata_requests_rejected_total",
        "counter",
        "Requests refused with 429 because the server was at capacity.",
        |en| {
            let engines: u64 = en.all().iter().map(|e| e.rejected()).sum();
            Series::total((en.rejected() + engines) as f64)
        },
    ),
    (
        "airavata_model_loaded",
        "gauge",
        "1 once every engine has loaded the model (per engine: that engine).",
        |en| Series {
            total: u8::from(en.is_ready()) as f64,
            ..Series::of(en.all(), |e| u8::from(e.is_ready()) as f64)
        },
    ),
    (
        "airavata_engines",
        "gauge",
        "Engines (model + context + slots) in this server, one per device.",
        |en| Series::total(en.all().len() as f64),
    ),
    (
        "airavata_requests_running",
        "gauge",
        "Requests holding a slot (the gateway's running requests).",
        running,
    ),
    (
        "airavata_requests_waiting",
        "gauge",
        "Requests admitted and waiting for a slot (the gateway's and autoscaler's queue depth).",
        waiting,
    ),
    (
        "airavata_kv_cache_usage_ratio",
        "gauge",
        "Fraction (0-1) of KV cells in use by running requests (the gateway's KV-cache utilisation).",
        kv_usage,
    ),
    (
        "airavata_kv_cache_tokens",
        "gauge",
        "KV cells in use by running requests.",
        |en| Series::of(en.all(), |e| e.stats().kv_used_cells.load(Ordering::Relaxed) as f64),
    ),
    (
        "airavata_kv_cache_cached_tokens",
        "gauge",
        "KV cells kept by free slots as prompt cache.",
        |en| Series::of(en.all(), |e| e.stats().kv_cached_cells.load(Ordering::Relaxed) as f64),
    ),
    // vLLM's names for the three gauges an inference gateway (llm-d / the
    // Gateway API Inference Extension) scrapes by default, so its vLLM
    // mapping needs no flags. The same values as the airavata_ rows above.
    (
        "vllm:num_requests_running",
        "gauge",
        "Requests holding a slot (vLLM's name for airavata_requests_running).",
        running,
    ),
    (
        "vllm:num_requests_waiting",
        "gauge",
        "Requests waiting for a slot (vLLM's name for airavata_requests_waiting).",
        waiting,
    ),
    (
        "vllm:kv_cache_usage_perc",
        "gauge",
        "Fraction (0-1) of KV cells in use (vLLM's name for airavata_kv_cache_usage_ratio).",
        kv_usage,
    ),
];

fn running(en: &Engines) -> Series {
    Series::of(en.all(), |e| e.stats().running() as f64)
}

fn waiting(en: &Engines) -> Series {
    Series::of(en.all(), |e| e.waiting() as f64)
}

fn kv_usage(en: &Engines) -> Series {
    Series {
        total: super::status::kv_usage(en),
        ..Series::of(en.all(), |e| e.stats().kv_usage())
    }
}

/// The whole exposition.
pub fn render(http: &HttpMetrics, engines: &Engines) -> String {
    let mut out = String::with_capacity(8192);
    header(
        &mut out,
        "airavata_requests_total",
        "counter",
        "HTTP requests by route and status code.",
    );
    for ((route, status), n) in http.snapshot() {
        let _ = writeln!(
            out,
            "airavata_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            escape(&route)
        );
    }
    let all = engines.all();
    for (name, kind, help, series) in FAMILIES {
        header(&mut out, name, kind, help);
        family(&mut out, name, "", &series(engines));
    }
    type Hist = fn(&EngineStats) -> HistogramSnapshot;
    let hists: [(&str, &str, Hist); 4] = [
        (
            "airavata_time_to_first_token_seconds",
            "Submission until the first token.",
            |s| s.time_to_first_token.snapshot(),
        ),
        (
            "airavata_inter_token_latency_seconds",
            "Time between consecutive tokens of one request.",
            |s| s.inter_token_latency.snapshot(),
        ),
        (
            "airavata_request_duration_seconds",
            "Submission until the last token.",
            |s| s.end_to_end.snapshot(),
        ),
        (
            "airavata_queue_time_seconds",
            "Submission until a slot took the request.",
            |s| s.queue_time.snapshot(),
        ),
    ];
    for (name, help, snap) in hists {
        header(&mut out, name, "histogram", help);
        let per: Vec<HistogramSnapshot> = all.iter().map(|e| snap(e.stats())).collect();
        if let Some(total) = merge(&per) {
            histogram(&mut out, name, "", &total);
        }
        for (i, h) in per.iter().enumerate() {
            histogram(&mut out, name, &format!("engine=\"{i}\""), h);
        }
    }
    step_profile(&mut out, all);
    let name = "airavata_router_requests_total";
    header(
        &mut out,
        name,
        "counter",
        "Requests the router gave each engine, by reason (prefix cache or least loaded).",
    );
    for i in 0..all.len() {
        let (routed, by_prefix) = engines.routed(i);
        let _ = writeln!(out, "{name}{{engine=\"{i}\",route=\"prefix\"}} {by_prefix}");
        let _ = writeln!(
            out,
            "{name}{{engine=\"{i}\",route=\"least_loaded\"}} {}",
            routed - by_prefix
        );
    }
    out
}

/// The sum of histograms over the same buckets.
fn merge(hs: &[HistogramSnapshot]) -> Option<HistogramSnapshot> {
    let mut it = hs.iter();
    let mut total = it.next()?.clone();
    for h in it {
        for (a, b) in total.cumulative.iter_mut().zip(&h.cumulative) {
            *a += b;
        }
        total.sum += h.sum;
        total.count += h.count;
    }
    Some(total)
}

/// The engine thread's time by step phase, and the steps' shape.
fn step_profile(out: &mut String, all: &[Engine]) {
    let name = "airavata_engine_step_seconds_total";
    header(
        out,
        name,
        "counter",
        "Engine thread time by step phase (plan, decode, sync, sample, emit, linger).",
    );
    for phase in Phase::ALL {
        let labels = format!("phase=\"{}\"", phase.name());
        family(
            out,
            name,
            &labels,
            &Series::of(all, |e| e.stats().steps.seconds(phase)),
        );
    }
    let name = "airavata_engine_steps_total";
    header(
        out,
        name,
        "counter",
        "Engine steps: decode tokens only, or mixed with prompt chunks.",
    );
    type Pick = fn(&StepProfile) -> &std::sync::atomic::AtomicU64;
    let kinds: [(&str, Pick); 2] = [("decode", |p| &p.decode_only), ("mixed", |p| &p.mixed)];
    for (kind, pick) in kinds {
        let labels = format!("kind=\"{kind}\"");
        let series = Series::of(all, |e| {
            pick(&e.stats().steps).load(Ordering::Relaxed) as f64
        });
        family(out, name, &labels, &series);
    }
    let rest: [(&str, &str, Pick); 3] = [
        (
            "airavata_engine_step_tokens_total",
            "Tokens fed to llama_decode over all steps (padding excluded).",
            |p| &p.tokens,
        ),
        (
            "airavata_engine_micro_batches_total",
            "Graph evaluations llama.cpp is predicted to split the steps into (from each step's shape).",
            |p| &p.predicted_micro_batches,
        ),
        (
            "airavata_engine_graphs_reused_total",
            "Graph evaluations that reused the previous one's graph instead of building a new one (llama.cpp's counter).",
            |p| &p.graphs_reused,
        ),
    ];
    for (name, help, pick) in rest {
        header(out, name, "counter", help);
        let series = Series::of(all, |e| {
            pick(&e.stats().steps).load(Ordering::Relaxed) as f64
        });
        family(out, name, "", &series);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    let (pre, braced) = if labels.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{labels},"), format!("{{{labels}}}"))
    };
    for (bound, count) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{pre}le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{pre}le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{braced} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braced} {}", h.count);
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
