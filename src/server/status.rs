//! The routes that say how the server is: `/health` (readiness), `/livez`
//! (liveness) and `/info`, over every engine.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::engine::{Engine, EngineError, LoadState};
use crate::router::Engines;

use super::errors::ApiError;
use super::AppState;

fn state_name(s: &LoadState) -> String {
    match s {
        LoadState::Loading => "loading".into(),
        LoadState::Ready => "ready".into(),
        LoadState::Stopped => "stopped".into(),
        LoadState::Failed(e) => format!("failed: {e}"),
    }
}

/// Fraction of all engines' KV cells in use by running requests.
pub fn kv_usage(engines: &Engines) -> f64 {
    let (used, total) = engines.all().iter().fold((0, 0), |(u, t), e| {
        let s = e.stats();
        (
            u + s.kv_used_cells.load(Ordering::Relaxed),
            t + s.kv_total_cells.load(Ordering::Relaxed),
        )
    });
    if total == 0 {
        0.0
    } else {
        used as f64 / total as f64
    }
}

fn engine_health(i: usize, e: &Engine) -> Value {
    let state = e.state();
    let mut v = json!({
        "engine": i,
        "device": e.info().map(|i| i.device.clone()),
        "state": match state {
            LoadState::Failed(_) => "failed".to_string(),
            ref s => state_name(s),
        },
    });
    if let LoadState::Failed(err) = state {
        v["error"] = json!(err.to_string());
    }
    v
}

/// `GET /health` (readiness): 503 while any engine loads or when none serves;
/// 200 `{"status": "ok"}` once every engine is ready, or `"degraded"` (with the
/// failed engines) when some failed and the others serve. Every answer lists
/// the engines.
pub async fn health(State(state): State<AppState>) -> Response {
    let engines = &state.engine;
    let list: Vec<Value> = engines
        .all()
        .iter()
        .enumerate()
        .map(|(i, e)| engine_health(i, e))
        .collect();
    if engines.is_ready() {
        return Json(json!({"status": "ok", "engines": list})).into_response();
    }
    match engines.state() {
        LoadState::Ready => Json(json!({"status": "degraded", "engines": list})).into_response(),
        other => {
            let err = match other {
                LoadState::Failed(e) => e,
                LoadState::Stopped => EngineError::ShuttingDown,
                LoadState::Loading | LoadState::Ready => EngineError::NotReady,
            };
            let api = ApiError::from(err);
            let mut body = api.to_json();
            body["engines"] = Value::Array(list);
            let mut resp = api.into_response();
            *resp.body_mut() = axum::body::Body::from(body.to_string());
            resp
        }
    }
}

/// `GET /livez` (liveness): 200 as long as the process answers HTTP, whatever
/// the engines are doing (a Kubernetes liveness probe restarts the pod only
/// when this fails; loading and failed engines are readiness's business).
pub async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// `GET /info`: the model, the totals, and one entry per engine.
pub async fn info(State(state): State<AppState>) -> Json<Value> {
    let engines = &state.engine;
    let list: Vec<Value> = engines
        .all()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let s = e.stats();
            let (routed, by_prefix) = engines.routed(i);
            json!({
                "engine": i,
                "status": state_name(&e.state()),
                "device": e.info().map(|i| i.device.clone()),
                "slots": e.info().map(|i| i.slots),
                "active": s.running(),
                "waiting": e.waiting(),
                "kv_cache_usage": s.kv_usage(),
                "routed": routed,
                "routed_by_prefix": by_prefix,
            })
        })
        .collect();
    let slots: u32 = engines
        .all()
        .iter()
        .filter_map(|e| e.info().map(|i| i.slots))
        .sum();
    let cached: usize = engines
        .all()
        .iter()
        .map(|e| e.stats().kv_cached_cells.load(Ordering::Relaxed))
        .sum();
    Json(json!({
        "status": state_name(&engines.state()),
        "model_path": state.model_path.display().to_string(),
        "model_name": &*state.model_name,
        "model": engines.info(),
        "engines": list,
        "slots": engines.info().map(|_| slots),
        "active": engines.running(),
        "waiting": engines.waiting(),
        "kv_cache_usage": kv_usage(engines),
        "kv_cache_cached_tokens": cached,
        "version": crate::version::long_version(),
        "llama_cpp_build": crate::version::LLAMA_CPP_BUILD,
        "llama_cpp_sys_version": crate::version::LLAMA_CPP_SYS_VERSION,
        "git_rev": crate::version::GIT_REV,
        "chat_format": "<s><|user|>\\n{prompt}\\n<|assistant|>\\n",
        "limits": {
            "max_queue": state.opts.max_queue,
            "request_timeout_s": state.request_timeout.map(|d| d.as_secs()),
            "max_body_bytes": state.opts.max_body_bytes,
            "api_key_required": state.api_key.is_some(),
        },
    }))
}
