//! Shared helpers for the server tests: which model to serve, starting a
//! server on 127.0.0.1:0, and reading server-sent events.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use airavata::server::{bind, RunningServer, ServeOptions};

/// The assets folder, from `AIRAVATA_ASSETS`.
pub fn assets_dir() -> Option<PathBuf> {
    std::env::var_os("AIRAVATA_ASSETS")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
}

/// stories260K (needs `AIRAVATA_ASSETS`).
pub fn stories260k() -> Option<PathBuf> {
    let p = assets_dir()?.join("stories260k-gguf/stories260K.gguf");
    p.is_file().then_some(p)
}

/// The one place that decides which model the core tests serve.
///
/// TODO(synth): switch to `airavata::synth::tiny_test_gguf` once it lands on
/// `main`, so the core suite runs without assets.
pub fn test_model() -> Option<PathBuf> {
    stories260k()
}

/// Prints the skip notice and returns `None` when no model is available.
pub fn model_or_skip() -> Option<PathBuf> {
    let m = test_model();
    if m.is_none() {
        eprintln!("skipped: AIRAVATA_ASSETS not set");
    }
    m
}

/// Options for a test server: loopback, any port, small but parallel.
pub fn test_options() -> ServeOptions {
    ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        ctx_size: Some(2048),
        parallel: 4,
        threads: Some(2),
        batch_size: 256,
        max_queue: 32,
        request_timeout: 60,
        ..ServeOptions::default()
    }
}

/// Starts a server and waits for the model.
pub async fn start(opts: ServeOptions, model: PathBuf) -> RunningServer {
    let server = bind(opts, model).await.expect("bind");
    tokio::time::timeout(Duration::from_secs(60), server.wait_ready())
        .await
        .expect("model load timed out")
        .expect("model load failed");
    server
}

/// A client without proxies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// Splits an SSE body into the `data:` payloads of its events (with the event name).
pub fn sse_events(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = std::str::from_utf8(body).expect("SSE body is UTF-8");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            out.push((event, data.join("\n")));
        }
    }
    out
}
