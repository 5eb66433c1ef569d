//! Helpers for the server tests: which model to serve, starting a server on
//! 127.0.0.1:0, and reading server-sent events.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use airavata::server::{bind, RunningServer, ServeOptions};

/// The one place that decides which model the core tests serve: the
/// synthetic random-weight Llama from `airavata::synth` (F16 GGUF with a
/// SentencePiece vocab that has byte-fallback and Devanagari pieces), built
/// once per test process. Needs no assets.
pub fn test_model() -> PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            // One directory per test binary, rebuilt per process (cheap), so
            // parallel test binaries never read each other's half-written files.
            let exe = std::env::current_exe().ok();
            let stem = exe
                .as_deref()
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "tests".into());
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("airavata-{stem}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create test model dir");
            airavata::synth::tiny_test_gguf(&dir).expect("synthesize the tiny test model")
        })
        .clone()
}

/// Options for a test server: loopback, any port, small but parallel, and
/// flash attention off: the tests compare greedy tokens across batch shapes
/// (batched against serial, cached prefix against full prompt), which CPU
/// flash attention does not keep equal (its default, `auto`, turns it on).
pub fn test_options() -> ServeOptions {
    ServeOptions {
        flash_attn: airavata::engine::FlashAttn::Off,
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

/// `GET /info` as JSON.
pub async fn info(c: &reqwest::Client, base: &str) -> serde_json::Value {
    c.get(format!("{base}/info"))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("info json")
}

/// Polls `GET /info` every 5 ms until the value at JSON `pointer` (e.g.
/// `/active`, `/engines/0/active`) equals `want`; panics after `within`.
pub async fn wait_info(
    c: &reqwest::Client,
    base: &str,
    pointer: &str,
    want: serde_json::Value,
    within: Duration,
) {
    let t0 = std::time::Instant::now();
    loop {
        let v = info(c, base).await;
        if v.pointer(pointer) == Some(&want) {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "/info {pointer} never became {want} within {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

/// The server's `/metrics` text.
pub async fn metrics(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the series written exactly as `series` (name and labels) in
/// a `/metrics` text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}

/// One series' current value from the server's `/metrics`.
pub async fn metric(c: &reqwest::Client, base: &str, series: &str) -> f64 {
    metric_value(&metrics(c, base).await, series)
}
