//! Prometheus text exposition (format 0.0.4), written by hand.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::engine::stats::{HistogramSnapshot, Phase, StepProfile};
use crate::engine::{Engine, EngineStats};

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

/// The whole exposition.
pub fn render(http: &HttpMetrics, engine: &Engine) -> String {
    let mut out = String::with_capacity(4096);
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
    let s: &EngineStats = engine.stats();
    let counters: [(&str, &str, u64); 10] = [
        (
            "airavata_prompt_tokens_total",
            "Prompt tokens evaluated (prompt-cache hits excluded).",
            s.prompt_tokens.load(Ordering::Relaxed),
        ),
        (
            "airavata_cached_prompt_tokens_total",
            "Prompt tokens served from the slots' prompt cache.",
            s.cached_prompt_tokens.load(Ordering::Relaxed),
        ),
        (
            "airavata_generated_tokens_total",
            "Tokens sampled.",
            s.generated_tokens.load(Ordering::Relaxed),
        ),
        (
            "airavata_decode_steps_total",
            "llama_decode calls.",
            s.steps.steps(),
        ),
        (
            "airavata_generations_finished_total",
            "Generations that ended normally.",
            s.finished.load(Ordering::Relaxed),
        ),
        (
            "airavata_generations_cancelled_total",
            "Generations cancelled because the client went away.",
            s.cancelled.load(Ordering::Relaxed),
        ),
        (
            "airavata_generations_timed_out_total",
            "Generations that hit --request-timeout.",
            s.timed_out.load(Ordering::Relaxed),
        ),
        (
            "airavata_generations_failed_total",
            "Generations that failed in the engine.",
            s.failed.load(Ordering::Relaxed),
        ),
        (
            "airavata_requests_rejected_total",
            "Requests refused with 429 because the queue was full.",
            s.rejected.load(Ordering::Relaxed),
        ),
        (
            "airavata_model_loaded",
            "1 once the model is loaded.",
            u64::from(engine.is_ready()),
        ),
    ];
    for (name, help, v) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    let gauges: [(&str, &str, f64); 5] = [
        (
            "airavata_requests_running",
            "Requests holding a slot.",
            s.running() as f64,
        ),
        (
            "airavata_requests_waiting",
            "Requests waiting for a slot.",
            engine.waiting() as f64,
        ),
        (
            "airavata_kv_cache_usage_ratio",
            "Fraction of KV cells in use by running requests.",
            s.kv_usage(),
        ),
        (
            "airavata_kv_cache_tokens",
            "KV cells in use by running requests.",
            s.kv_used_cells.load(Ordering::Relaxed) as f64,
        ),
        (
            "airavata_kv_cache_cached_tokens",
            "KV cells kept by free slots as prompt cache.",
            s.kv_cached_cells.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, help, v) in gauges {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
    let hists = [
        (
            "airavata_time_to_first_token_seconds",
            "Submission until the first token.",
            s.time_to_first_token.snapshot(),
        ),
        (
            "airavata_inter_token_latency_seconds",
            "Time between consecutive tokens of one request.",
            s.inter_token_latency.snapshot(),
        ),
        (
            "airavata_request_duration_seconds",
            "Submission until the last token.",
            s.end_to_end.snapshot(),
        ),
        (
            "airavata_queue_time_seconds",
            "Submission until a slot took the request.",
            s.queue_time.snapshot(),
        ),
    ];
    for (name, help, h) in hists {
        header(&mut out, name, "histogram", help);
        histogram(&mut out, name, &h);
    }
    step_profile(&mut out, &s.steps);
    out
}

/// The engine thread's time by step phase, and the steps' shape.
fn step_profile(out: &mut String, p: &StepProfile) {
    let name = "airavata_engine_step_seconds_total";
    header(
        out,
        name,
        "counter",
        "Engine thread time by step phase (plan, decode, sync, sample, emit).",
    );
    for phase in Phase::ALL {
        let _ = writeln!(
            out,
            "{name}{{phase=\"{}\"}} {}",
            phase.name(),
            p.seconds(phase)
        );
    }
    let name = "airavata_engine_steps_total";
    header(
        out,
        name,
        "counter",
        "Engine steps: decode tokens only, or mixed with prompt chunks.",
    );
    for (kind, v) in [("decode", &p.decode_only), ("mixed", &p.mixed)] {
        let _ = writeln!(
            out,
            "{name}{{kind=\"{kind}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    for (name, help, v) in [
        (
            "airavata_engine_step_tokens_total",
            "Tokens fed to llama_decode over all steps.",
            &p.tokens,
        ),
        (
            "airavata_engine_micro_batches_total",
            "Graph evaluations llama.cpp is predicted to split the steps into (from each step's shape).",
            &p.predicted_micro_batches,
        ),
    ] {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, h: &HistogramSnapshot) {
    for (bound, count) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
