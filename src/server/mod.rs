//! The HTTP server: axum routes in front of the [`crate::engine`].
//!
//! The CLI resolves its model argument to a GGUF path and calls [`serve`];
//! tests call [`bind`] with port 0 and read [`RunningServer::addr`].
//!
//! # Routes
//! * `POST /generate` — the FastAPI contract `{"prompt", "max_new_tokens"=50}`
//!   → `{"generated_text", "finish_reason", "usage", "timings"}`. The prompt is
//!   wrapped as `<s><|user|>\n{prompt}\n<|assistant|>\n` unless `"raw": true`.
//!   Optional: `temperature` (default 0 = greedy), `top_k` (0), `top_p` (0.9),
//!   `min_p` (0), `repetition_penalty` (1), `seed`, `stop` (string or list),
//!   `stream`. Streaming answers `text/event-stream`: `data: {"text": delta}`
//!   events, then `data: {"text": "", "done": true, "generated_text",
//!   "finish_reason", "usage", "timings"}`; a failure mid-stream is an
//!   `event: error` carrying the error envelope.
//! * `POST /v1/completions`, `POST /v1/chat/completions` — OpenAI shapes,
//!   streaming chunks end with `data: [DONE]`; `stream_options.include_usage`
//!   adds a final usage chunk. Chat messages are rendered in Airavata's format.
//! * Structured output on all three: `response_format` (`json_object`,
//!   `json_schema`) or a GBNF `grammar` ([`structured`]); log-probabilities
//!   on the OpenAI routes (`logprobs`, `top_logprobs`), from the raw logits.
//! * `GET /v1/models`, `POST /tokenize` (`{"content"|"prompt",
//!   "add_special"|"add_special_tokens"=true, "chat"=false, "with_pieces"=false}`),
//!   `POST /detokenize` (`{"tokens"}` → `{"content", "prompt"}`), `GET /tokenizer_info`.
//! * `GET /health` (readiness: 503 until every engine is loaded; 200 with
//!   `"status": "degraded"` and the failed engines when some failed but one
//!   serves), `GET /livez` (liveness: 200 while the process serves),
//!   `GET /info`, `GET /metrics` (Prometheus text, per-engine series labelled
//!   `engine="N"` next to the totals).
//! * `GET /` — the chat page ([`webui`]; `--no-webui` turns it off).
//!
//! # Engines
//! `--devices` starts one engine per device (see [`crate::router`]); the
//! router picks the engine for each request and admission (429) is the
//! server's.
//!
//! # Errors
//! Every error is `{"error": {"message", "type", "code", "param"}}`:
//! 400 `invalid_json` / `context_length_exceeded` (names both token counts) /
//! `unsupported_schema` / `invalid_schema` / `invalid_grammar`,
//! 401 `missing_api_key` / `invalid_api_key`, 404, 405, 413 `payload_too_large`,
//! 415 `unsupported_media_type`, 422 `invalid_value` (with `param`),
//! 429 `queue_full` (with `Retry-After`), 503 `model_loading`,
//! 504 `request_timeout`, 500 `sampling_failed`.
//!
//! # Text
//! A SentencePiece artefact is removed: when the prompt ends in whitespace (the
//! chat format ends in `\n`) or is empty, the first generated token's leading
//! space is stripped, as Hugging Face's `decode` does. Streamed text never
//! splits a UTF-8 code point and never shows part of a stop string.

pub mod auth;
pub mod errors;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod status;
pub mod structured;
pub mod tools;
pub mod validate;
pub mod webui;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{middleware, Router};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::engine::{
    defaults, devices, BackendGreedy, Engine, EngineConfig, EngineError, FillGaps, FlashAttn,
    KvType, Placement, SplitMode, ToggleHelp,
};
use crate::router::{placements, DeviceSpec, Engines, Routing};

/// Errors of the server boundary.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The engine failed (e.g. the model did not load).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Serving failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A flag has an unusable value.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The server task panicked or was aborted.
    #[error("server task failed: {0}")]
    Task(String),
}

/// `airavata serve` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on: loopback unless asked (as llama-server and
    /// Ollama); `--host 0.0.0.0` serves other machines (the Docker image and
    /// the Kubernetes manifests pass it).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Layers to offload to the GPU [default: all when a GPU backend is present, else 0].
    #[arg(long)]
    pub n_gpu_layers: Option<u32>,
    /// Total KV context shared by all slots [default: the model's training context].
    #[arg(long)]
    pub ctx_size: Option<u32>,
    /// Concurrent sequences (slots); each gets ctx-size / parallel tokens.
    #[arg(long, default_value_t = defaults::PARALLEL)]
    pub parallel: u32,
    /// CPU threads [default: all available].
    #[arg(long)]
    pub threads: Option<u32>,
    /// Most tokens per decode step (and prompt chunk size).
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: u32,
    /// Flash attention: auto, on or off (`--flash-attn` alone = on). `auto` is
    /// llama.cpp's choice: on wherever its kernels support it, CPU included
    /// (faster, as llama-server runs). On CPU its results depend on the
    /// batch's shape, so with `off` batched greedy answers match serial ones.
    #[arg(long, value_parser = FlashAttn::parser(ToggleHelp::FLASH_ATTN), default_value_t = FlashAttn::default(), num_args = 0..=1, default_missing_value = "on")]
    pub flash_attn: FlashAttn,
    /// Require this API key (Authorization: Bearer KEY).
    #[arg(long, env = "AIRAVATA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests allowed to wait for a slot; beyond that: 429 with Retry-After.
    #[arg(long, default_value_t = defaults::MAX_QUEUE)]
    pub max_queue: usize,
    /// Per-request deadline in seconds, queueing included (0 = none).
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Directory to load ggml backend libraries from (dynamic-backends builds).
    #[arg(long)]
    pub backends_dir: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Allowed CORS origin (repeatable; `*` = any). No CORS headers when unset.
    #[arg(long)]
    pub cors_origin: Vec<String>,
    /// Model name reported by the OpenAI routes [default: the GGUF file stem].
    #[arg(long)]
    pub model_name: Option<String>,
    /// Chat template for chat requests: a built-in name (`airavata`,
    /// `chatml`) or a file of Jinja text [default: the model's
    /// `tokenizer.chat_template`, else `airavata`]. Checked at startup
    /// ([`crate::chat_template::resolve`]).
    #[arg(long, value_name = "FILE|NAME")]
    pub chat_template: Option<String>,
    /// Do not keep a finished request's KV in its slot for the next request
    /// that starts with the same tokens (chat preamble, system prompt, earlier turns).
    #[arg(long, alias = "no-preamble-cache")]
    pub no_prompt_cache: bool,
    /// Share one KV cache among all slots (llama.cpp's `--kv-unified`): a step
    /// that mixes decode tokens and prompt chunks runs as one graph evaluation.
    /// Off by default: with per-slot streams batched greedy output matches
    /// serial output (up to llama.cpp's CPU kernels not being fully batch-invariant).
    #[arg(long)]
    pub kv_unified: bool,
    /// Devices to serve on: `all` (every GPU the loaded backends list, one
    /// engine each; the CPU when there is none), or a comma-separated list of
    /// GPU indices (`0,1`) and `cpu`. Each engine holds the whole model, its
    /// own context and `--parallel` slots.
    #[arg(long, default_value = "all")]
    pub devices: DeviceSpec,
    /// How a request picks among several engines: `prefix` (the engine whose
    /// prompt cache holds at least half of the prompt, unless it is much
    /// busier; else the least loaded) or `least-loaded` (never the cache).
    #[arg(long, value_enum, default_value_t = Routing::default())]
    pub routing: Routing,
    /// `none`: one engine per device (data parallel, for a model that fits one
    /// card). `layer` / `row`: one engine whose model llama.cpp splits across
    /// the --devices GPUs (for a model too large for one card).
    #[arg(long, value_enum, default_value_t = SplitMode::None)]
    pub split_mode: SplitMode,
    /// K-cache element type (q8_0 / q4_0 halve / quarter the KV memory).
    #[arg(long, value_enum, default_value_t = KvType::F16)]
    pub cache_type_k: KvType,
    /// V-cache element type; a quantized V cache needs flash attention
    /// (`--flash-attn auto` turns it on).
    #[arg(long, value_enum, default_value_t = KvType::F16)]
    pub cache_type_v: KvType,
    /// Pad decode-only steps to a multiple of N tokens with dummy tokens on
    /// free slots, so ggml-cuda's CUDA graphs keep their shape (0 = off)
    /// [default: off; measured slower on the H200].
    #[arg(long)]
    pub decode_pad: Option<u32>,
    /// A slot below the highest fed one that is not fed in a step (free, or
    /// its request between tokens) carries a dummy token, so the step stays
    /// one micro-batch (llama.cpp evaluates only consecutive per-slot KV
    /// streams together) and keeps its CUDA graph [auto: on when the layers
    /// run on a GPU].
    #[arg(long, value_parser = FillGaps::parser(ToggleHelp::FILL_GAPS), default_value_t = FillGaps::Auto)]
    pub fill_gaps: FillGaps,
    /// Greedy requests take each token from an `argmax` that the backend
    /// computes over all of a step's output rows at the end of the step's
    /// graph, so the logits stay on the device (49 MB per step at 256 slots)
    /// and the host scans nothing; requests that sample, want
    /// log-probabilities or follow a grammar still get the logits
    /// [auto: on when the layers run on a GPU].
    #[arg(long, value_parser = BackendGreedy::parser(ToggleHelp::BACKEND_GREEDY), default_value_t = BackendGreedy::Auto)]
    pub backend_greedy: BackendGreedy,
    /// After a step that ended requests, wait up to this many milliseconds
    /// for as many new ones before the next step, so that clients that send
    /// their next request on receiving an answer join the next step together
    /// instead of one step later; 0 = never wait. On a GPU only when at least
    /// as many requests ended as still run [default: 5 on the CPU; 0 on a
    /// GPU, where it cut time to first token by a step but cost about 1 % of
    /// tokens/s at 64 closed-loop streams].
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Do not serve the chat page at `/` (then `/` answers 404).
    #[arg(long)]
    pub no_webui: bool,
    /// Testing aid: sleep this many milliseconds after every decode step
    /// (`test-support` builds only).
    #[cfg(feature = "test-support")]
    #[arg(long, hide = true)]
    pub step_delay_ms: Option<u64>,
    /// Testing aid: sleep this many milliseconds before loading the model
    /// (`test-support` builds only).
    #[cfg(feature = "test-support")]
    #[arg(long, hide = true)]
    pub load_delay_ms: Option<u64>,
    /// Testing aid: a CPU engine sends text as a GPU engine does
    /// (`test-support` builds only).
    #[cfg(feature = "test-support")]
    #[arg(long, hide = true)]
    pub defer_emits: bool,
}

impl Default for ServeOptions {
    /// The flags' defaults, as `airavata serve` with no flags has them (the
    /// values are defined once, in the `#[arg]` attributes and
    /// [`crate::engine::defaults`]). The API key is not read from the
    /// environment here: that is the command line's business.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            opts: ServeOptions,
        }
        let mut opts = <Flags as clap::Parser>::try_parse_from(["serve"])
            .map(|f| f.opts)
            .unwrap_or_else(|e| unreachable!("the serve flags have defaults: {e}"));
        opts.api_key = None;
        opts
    }
}

impl ServeOptions {
    /// The engine settings these flags describe.
    pub fn engine_config(&self, model: &Path) -> EngineConfig {
        self.engine_config_on(model, Placement::Auto)
    }

    /// The engine settings for one engine at `placement`.
    pub fn engine_config_on(&self, model: &Path, placement: Placement) -> EngineConfig {
        EngineConfig {
            model_path: model.to_path_buf(),
            n_gpu_layers: self.n_gpu_layers,
            ctx_size: self.ctx_size,
            parallel: self.parallel,
            threads: self.threads,
            batch_size: self.batch_size,
            flash_attn: self.flash_attn,
            max_queue: self.max_queue,
            backends_dir: self.backends_dir.clone(),
            cache_prompts: !self.no_prompt_cache,
            kv_unified: self.kv_unified,
            placement,
            cache_type_k: self.cache_type_k,
            cache_type_v: self.cache_type_v,
            decode_pad: self.decode_pad,
            fill_gaps: self.fill_gaps,
            backend_greedy: self.backend_greedy,
            thread_name: "airavata-engine".into(),
            linger: self.linger_ms.map(Duration::from_millis),
            chat_template: self.chat_template.clone(),
            #[cfg(feature = "test-support")]
            step_delay: self.step_delay_ms.map(Duration::from_millis),
            #[cfg(feature = "test-support")]
            defer_emits: self.defer_emits,
            #[cfg(feature = "test-support")]
            load_delay: self.load_delay_ms.map(Duration::from_millis),
        }
    }
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    engine: Engines,
    http: Arc<metrics::HttpMetrics>,
    api_key: Option<Arc<str>>,
    model_path: Arc<PathBuf>,
    model_name: Arc<str>,
    request_timeout: Option<Duration>,
    opts: Arc<ServeOptions>,
}

/// Builds the router over a (possibly still loading) engine.
pub fn router(engine: Engines, opts: &ServeOptions, model: &Path) -> Result<Router, ServerError> {
    let model_name = opts.model_name.clone().unwrap_or_else(|| {
        model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "airavata".into())
    });
    let state = AppState {
        engine,
        http: Arc::new(metrics::HttpMetrics::default()),
        api_key: opts
            .api_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .map(Arc::from),
        model_path: Arc::new(model.to_path_buf()),
        model_name: Arc::from(model_name),
        request_timeout: (opts.request_timeout > 0)
            .then(|| Duration::from_secs(opts.request_timeout)),
        opts: Arc::new(opts.clone()),
    };
    let mut app = Router::new()
        .route("/generate", post(routes::generate))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/tokenizer_info", get(routes::tokenizer_info))
        .route("/health", get(status::health))
        .route("/livez", get(status::live))
        .route("/info", get(status::info))
        .route("/metrics", get(routes::metrics))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .merge(webui::routes(!opts.no_webui))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state);
    if let Some(cors) = cors_layer(&opts.cors_origin)? {
        app = app.layer(cors);
    }
    Ok(app)
}

/// A handler panic becomes a 500 with the usual envelope.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    errors::ApiError::internal().into_response()
}

fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return Ok(Some(layer.allow_origin(Any)));
    }
    let list = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o)
                .map_err(|_| ServerError::InvalidOption(format!("--cors-origin {o:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(layer.allow_origin(AllowOrigin::list(list))))
}

/// A server started by [`bind`].
pub struct RunningServer {
    addr: SocketAddr,
    engines: Engines,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), std::io::Error>>,
}

impl RunningServer {
    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The first engine behind the server (tests compare against it directly).
    pub fn engine(&self) -> &Engine {
        &self.engines.all()[0]
    }

    /// Every engine behind the server, and the router over them.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// Waits until every engine has loaded or failed; fails when none loaded.
    pub async fn wait_ready(&self) -> Result<(), ServerError> {
        Ok(self.engines.ready().await?)
    }

    /// Stops accepting connections, lets in-flight requests finish (streams
    /// included), then stops the engine.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = (&mut self.task)
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?;
        self.engines.shutdown().await;
        served?;
        Ok(())
    }
}

/// Starts loading `model` and listening on `opts.host:opts.port`; returns
/// once the socket is bound (the model may still be loading: `/health`
/// answers 503 until it is).
pub async fn bind(opts: ServeOptions, model: PathBuf) -> Result<RunningServer, ServerError> {
    if opts.parallel == 0 {
        return Err(ServerError::InvalidOption(
            "--parallel must be at least 1".into(),
        ));
    }
    if opts.batch_size == 0 {
        return Err(ServerError::InvalidOption(
            "--batch-size must be at least 1".into(),
        ));
    }
    let engines = spawn_engines(&opts, &model).await?;
    bind_engines(opts, model, engines).await
}

/// [`bind`] over engines already spawned (e.g. with placements of the
/// caller's choosing); `opts` supplies everything but the engines.
pub async fn bind_engines(
    opts: ServeOptions,
    model: PathBuf,
    engines: Engines,
) -> Result<RunningServer, ServerError> {
    let app = router(engines.clone(), &opts, &model)?;
    let addr_text = format!("{}:{}", opts.host, opts.port);
    let listener = listen(&addr_text)
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr_text.clone(),
            source,
        })?;
    let addr = listener.local_addr()?;
    // Streamed tokens are small writes: send each at once (no Nagle delay
    // waiting for the client's ACK of the previous one).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!("listening on http://{addr}");
    Ok(RunningServer {
        addr,
        engines,
        stop: Some(stop),
        task,
    })
}

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`). `TcpListener::bind` asks for 128, like the
/// standard library: a burst of more new connections (hundreds of clients
/// starting at once) then loses SYNs, and each lost one waits out the
/// client's 1 s retransmission timeout before its request even arrives.
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds the first address `addr_text` resolves to that accepts the bind,
/// listening with [`ACCEPT_BACKLOG`].
async fn listen(addr_text: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr_text).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted server rebinds at once.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(ACCEPT_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// One engine per placement that `--devices` and `--split-mode` resolve to
/// (listing the GPUs loads the ggml backends, on a blocking thread).
async fn spawn_engines(opts: &ServeOptions, model: &Path) -> Result<Engines, ServerError> {
    let needs_gpus = !matches!(&opts.devices, DeviceSpec::List(items)
        if items.iter().all(|i| *i == crate::router::DeviceItem::Cpu));
    let gpus = if needs_gpus {
        let dir = opts.backends_dir.clone();
        tokio::task::spawn_blocking(move || devices::gpus(dir.as_deref()))
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??
    } else {
        Vec::new()
    };
    let placed = placements(&opts.devices, opts.split_mode, &gpus, opts.n_gpu_layers)
        .map_err(|e| ServerError::InvalidOption(e.to_string()))?;
    let several = placed.len() > 1;
    let configs = placed
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = opts.engine_config_on(model, p);
            if several {
                c.thread_name = format!("airavata-engine-{i}");
            }
            c
        })
        .collect();
    Ok(Engines::spawn(configs, opts.max_queue, opts.routing)?)
}

/// Serves `model` until `shutdown` resolves, then drains in-flight requests.
/// Fails if the model cannot be loaded.
pub async fn serve(
    opts: ServeOptions,
    model: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let server = bind(opts, model).await?;
    let engines = server.engines().clone();
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => return server.shutdown().await,
        ready = engines.ready() => {
            if let Err(e) = ready {
                let _ = server.shutdown().await;
                return Err(ServerError::Engine(e));
            }
        }
    }
    let failed = engines.all().iter().filter(|e| !e.is_ready()).count();
    if failed > 0 {
        tracing::error!(
            failed,
            engines = engines.all().len(),
            "some engines failed to load; serving on the others (see /health)"
        );
    }
    tracing::info!("model ready");
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    server.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections larger than the standard library's backlog
    /// (128) all complete their handshake while nothing accepts them.
    #[tokio::test]
    async fn the_accept_queue_holds_a_burst_of_connections() {
        const BURST: usize = 300;
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(usize::MAX);
        if cap < BURST {
            eprintln!("skipped: net.core.somaxconn is {cap}, below the {BURST} this test needs");
            return;
        }
        let listener = listen("127.0.0.1:0").await.expect("listen");
        let addr = listener.local_addr().expect("address");
        let mut held = Vec::with_capacity(BURST);
        for i in 0..BURST {
            let c = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await;
            match c {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(e)) => panic!("connection {i} failed: {e}"),
                Err(_) => panic!("connection {i} got no handshake: the accept queue is full"),
            }
        }
        assert_eq!(held.len(), BURST);
        // The bound address is reported as asked, and a name resolves.
        assert_eq!(addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        let named = listen("localhost:0").await.expect("listen on a name");
        assert!(named.local_addr().expect("address").ip().is_loopback());
        let err = listen("127.0.0.1:99999").await.expect_err("bad port");
        assert!(!err.to_string().is_empty());
    }
}
