//! Command-line interface (the only place that uses anyhow).

use crate::convert::{self, Scheme};
use crate::gguf::GgufFile;
use crate::model_cache::{ModelCache, Served, DEFAULT_MODEL};
use crate::{hub, synth};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod chat;
mod quant;
pub use chat::ChatArgs;
pub use quant::{ImatrixArgs, QuantArgs, QuantizeArgs, Quantizer};

#[derive(Parser, Debug)]
#[command(name = "airavata", version = crate::version::CLAP_VERSION, about = "Convert Airavata (Llama) checkpoints to 4-bit GGUF and serve them on llama.cpp")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a Hugging Face Llama checkpoint (local dir or hub id) to GGUF.
    Convert(ConvertArgs),
    /// Re-quantize a GGUF (any file llama.cpp loads) with our quantizers,
    /// type policy and calibration.
    Quantize(QuantizeArgs),
    /// Run a GGUF on calibration text and write llama-imatrix's importance
    /// file (GGUF format, accepted by llama-quantize --imatrix).
    Imatrix(ImatrixArgs),
    /// Print a GGUF file's metadata and tensor table.
    Inspect(InspectArgs),
    /// Write a random-weight HF checkpoint (default: Airavata's exact shape).
    Synth(SynthArgs),
    /// Serve a model over HTTP (POST /generate, OpenAI routes, metrics, the chat page at /).
    Serve(ServeArgs),
    /// Chat with a model in the terminal (in-process, no HTTP), or answer
    /// one message with -p.
    Chat(ChatArgs),
    /// Load generator for our /generate and any OpenAI-compatible server.
    Bench(crate::bench::BenchArgs),
    /// Fidelity of a quantized GGUF against a base GGUF (KL-divergence,
    /// top-1 agreement, perplexity), scored like `llama-perplexity --kl-divergence`.
    Eval(EvalArgs),
}

/// What the binary logs unless `RUST_LOG` says otherwise: our INFO lines,
/// and only warnings and errors of llama.cpp's own log (its model-loading
/// dump is hundreds of lines; `RUST_LOG=info,llama-cpp-2=debug` shows it).
pub const DEFAULT_LOG_FILTER: &str = "info,llama-cpp-2=warn";

/// Which model `serve` and `chat` run, and how a checkpoint is converted.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, an HF checkpoint directory or a hub id.
    /// Checkpoints are converted once into the cache (AIRAVATA_CACHE, else
    /// ~/.cache/airavata), a hub id by the commit its revision names; a newer
    /// commit is converted when the hub is reachable.
    #[arg(value_name = "MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Hub revision (branch, tag or commit) when MODEL is a hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Scheme used when MODEL must be converted.
    #[arg(long, default_value = "nf4")]
    pub scheme: Scheme,
}

impl ModelArgs {
    /// MODEL → the GGUF to load, through the model cache (converting a
    /// checkpoint when needed, progress on stderr); logs where it came from.
    /// `cancel` stops a conversion cleanly.
    pub fn resolve(&self, cancel: &AtomicBool) -> Result<PathBuf> {
        let served = ModelCache::from_env().resolve(
            &self.model,
            &self.revision,
            self.scheme,
            true,
            cancel,
        )?;
        match &served {
            Served::Hub {
                offline: Some(_), ..
            } => tracing::warn!("{served}"),
            _ => tracing::info!("{served}"),
        }
        Ok(served.gguf().to_path_buf())
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub opts: crate::server::ServeOptions,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Reference model (e.g. the F16 or F32 GGUF).
    #[arg(long)]
    pub base: PathBuf,
    /// Model under test (e.g. the 4-bit GGUF).
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text to score (e.g. wiki.test.raw).
    #[arg(long)]
    pub text: PathBuf,
    /// Chunk length in tokens.
    #[arg(long, default_value_t = 512)]
    pub ctx: u32,
    /// Score at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    #[arg(long)]
    pub threads: Option<i32>,
    /// Layers to offload to a GPU backend.
    #[arg(long, default_value_t = 0)]
    pub gpu_layers: u32,
    /// Store base log-probabilities in 16 bits as llama-perplexity does.
    #[arg(long)]
    pub u16_base: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Checkpoint directory, or a Hugging Face hub id such as ai4bharat/Airavata.
    pub input: String,
    /// Output GGUF path (default: <name>-<scheme>.gguf in the current directory).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Hub revision (branch, tag or commit) when INPUT is a hub id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    #[command(flatten)]
    pub q: QuantArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show every element of array metadata (e.g. the whole vocabulary).
    #[arg(long)]
    pub full: bool,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output directory.
    pub out: PathBuf,
    /// `airavata` (7B, default), `tiny`, or a path to a config.json.
    #[arg(long, default_value = "airavata")]
    pub config: String,
    /// Weight dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    #[arg(long, default_value_t = 3)]
    pub shards: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Ctrl-C and SIGTERM (`kill`, `timeout`, a container stop), listened for on
/// a thread of its own for the rest of the process: the first sets the flag
/// (long work polls it and stops cleanly, removing partial output and
/// temporary files) and wakes [`Interrupt::requested`]; a second exits at once
/// (status 130). Listening replaces the signals' default action for good, so
/// a process listens once, from start to end.
struct Interrupt {
    flag: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl Interrupt {
    /// Starts listening; `notice` (if any) is printed on the first signal.
    fn listen(notice: Option<&'static str>) -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (f, n) = (flag.clone(), notify.clone());
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    if interrupt_or_terminate().await {
                        if let Some(msg) = notice {
                            eprintln!("\ninterrupted: {msg} (again to exit now)");
                        }
                        f.store(true, Ordering::SeqCst);
                        // One waiter (or a stored permit for one to come).
                        n.notify_one();
                        if interrupt_or_terminate().await {
                            eprintln!("interrupted again: exiting now");
                            std::process::exit(130);
                        }
                    }
                });
            }
        });
        Self { flag, notify }
    }

    /// Resolves on the first signal (at once if it came already).
    async fn requested(&self) {
        if !self.flag.load(Ordering::SeqCst) {
            self.notify.notified().await;
        }
    }
}

/// The cancel flag of a long command (convert, quantize, imatrix).
fn cancel_flag() -> Arc<AtomicBool> {
    Interrupt::listen(Some("stopping, no output will be left behind")).flag
}

/// The first Ctrl-C or SIGTERM; false when neither can be listened for.
async fn interrupt_or_terminate() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                r = tokio::signal::ctrl_c() => r.is_ok(),
                r = term.recv() => r.is_some(),
            };
        }
    }
    tokio::signal::ctrl_c().await.is_ok()
}

fn init_threads(n: Option<usize>) {
    if let Some(n) = n {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

/// Resolve INPUT to a local checkpoint directory (downloading a hub id).
pub fn resolve_checkpoint(input: &str, revision: &str, progress: bool) -> Result<PathBuf> {
    let p = Path::new(input);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        bail!("{input} is not a directory (expected a checkpoint directory or a hub id)");
    }
    if hub::looks_like_repo_id(input) {
        eprintln!("fetching {input}@{revision} from the Hugging Face Hub");
        return Ok(hub::fetch_checkpoint(input, revision, None, progress)?);
    }
    bail!("{input}: no such directory, and not a hub id of the form owner/name")
}

pub fn run_convert(a: ConvertArgs) -> Result<()> {
    init_threads(a.q.threads);
    let dir = resolve_checkpoint(&a.input, &a.revision, !a.q.quiet)?;
    let name = convert::LlamaConfig::load(&dir)?.name;
    let output = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{name}-{}.gguf", a.q.scheme)));
    let opts = convert::ConvertOptions {
        input: dir,
        output,
        policy: a.q.policy(),
        quantizer: a.q.quantizer(),
        calibrate: a.q.calibrate(),
        overwrite: a.q.force,
        progress: !a.q.quiet,
    };
    let report = run_conversion(&opts)?;
    quant::print_report(&report);
    Ok(())
}

pub fn run_inspect(a: InspectArgs) -> Result<()> {
    let f = GgufFile::open(&a.file)?;
    if a.json {
        let meta: serde_json::Map<String, serde_json::Value> = f
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), crate::gguf::to_json(v, a.full)))
            .collect();
        let tensors: Vec<serde_json::Value> = f
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "type": t.ty.name(), "dims": t.dims, "offset": t.offset, "bytes": t.size}))
            .collect();
        let file_type = f
            .get("general.file_type")
            .and_then(|v| file_type_name("general.file_type", v));
        let j = serde_json::json!({"version": f.version, "alignment": f.alignment, "data_offset": f.data_offset, "file_type": file_type, "metadata": meta, "tensors": tensors});
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "{}: GGUF v{}, {} metadata entries, {} tensors, alignment {}",
        a.file.display(),
        f.version,
        f.metadata.len(),
        f.tensors.len(),
        f.alignment
    );
    println!("\nmetadata:");
    for (k, v) in &f.metadata {
        let mut s = if a.full {
            format!("{v:?}")
        } else {
            v.display_short()
        };
        if let Some(name) = file_type_name(k, v) {
            s = format!("{s} ({name})");
        }
        println!("  {k:<45} {s}");
    }
    println!("\ntensors:");
    println!(
        "  {:<4} {:<32} {:<8} {:<24} {:>12}",
        "#", "name", "type", "dims", "bytes"
    );
    let mut total = 0u64;
    for (i, t) in f.tensors.iter().enumerate() {
        total += t.size;
        let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
        println!(
            "  {:<4} {:<32} {:<8} {:<24} {:>12}",
            i,
            t.name,
            t.ty.name(),
            dims.join(" × "),
            t.size
        );
    }
    let n: u64 = f.tensors.iter().map(|t| t.n_elements()).sum();
    println!(
        "\n  {} parameters, {:.1} MiB of tensor data, {:.3} bits per weight",
        n,
        total as f64 / (1 << 20) as f64,
        total as f64 * 8.0 / n.max(1) as f64
    );
    Ok(())
}

/// The llama.cpp name of a `general.file_type` value (`30` → `IQ4_XS`).
fn file_type_name(key: &str, v: &crate::gguf::GgufValue) -> Option<String> {
    let code = v.as_u64()?;
    (key == "general.file_type")
        .then(|| u32::try_from(code).ok())
        .flatten()
        .map(crate::ggml_type::llama_ftype_name)
}

pub fn run_synth(a: SynthArgs) -> Result<()> {
    let config = match a.config.as_str() {
        "airavata" => synth::airavata_config(),
        "tiny" => synth::tiny_config(),
        path => serde_json::from_str(
            &std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        )
        .with_context(|| format!("{path} is not valid JSON"))?,
    };
    let dtype = match a.dtype.to_ascii_lowercase().as_str() {
        "bf16" => crate::safetensors::Dtype::BF16,
        "f16" => crate::safetensors::Dtype::F16,
        "f32" => crate::safetensors::Dtype::F32,
        other => bail!("--dtype {other}: expected bf16, f16 or f32"),
    };
    let t0 = std::time::Instant::now();
    synth::write_checkpoint(
        &a.out,
        &synth::SynthOptions {
            config,
            dtype,
            shards: a.shards,
            seed: a.seed,
            ..Default::default()
        },
    )?;
    eprintln!(
        "wrote random checkpoint to {} in {:.1} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run_serve(a: ServeArgs) -> Result<()> {
    // A bad --chat-template fails before any model is fetched or converted.
    if let Some(spec) = &a.opts.chat_template {
        crate::chat_template::resolve(spec)?;
    }
    // One listener for the whole run: a signal while the model is fetched
    // stops that; once serving, it drains in-flight requests and exits.
    let interrupt = Interrupt::listen(None);
    let gguf = a.model.resolve(&interrupt.flag)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = async move {
            interrupt.requested().await;
            tracing::info!("shutting down: draining in-flight requests");
        };
        crate::server::serve(a.opts, gguf, shutdown).await
    })?;
    Ok(())
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    let mut backend = llama_cpp_2::llama_backend::LlamaBackend::init()?;
    backend.void_logs();
    let mut o = crate::eval::EvalOptions::new(a.base, a.model, a.text);
    o.n_ctx = a.ctx;
    o.n_chunks = a.chunks;
    o.threads = a.threads;
    o.n_gpu_layers = a.gpu_layers;
    if a.u16_base {
        o.base_logprobs = crate::eval::BaseLogProbs::U16;
    }
    let text = crate::eval::read_text(&o.text)?;
    let mut progress = EvalProgress::new(std::io::stderr().is_terminal());
    let report = crate::eval::evaluate_text(&backend, &o, &text, |p| progress.update(p));
    progress.finish();
    let report = report?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(())
}

/// `airavata eval`'s progress on stderr: a bar on a terminal; elsewhere (a
/// log file, CI) a plain line after the first and the last chunk and at
/// most every [`EvalProgress::LINE_EVERY`] in between.
struct EvalProgress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<std::time::Instant>,
}

impl EvalProgress {
    const LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "eval [{bar:30}] {pos}/{len} chunks, {msg} (ETA {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            last_line: None,
        }
    }

    fn update(&mut self, p: &crate::eval::Progress<'_>) {
        let msg = format!(
            "{}/{} tokens, KLD {:.4} this chunk",
            p.tokens_done, p.tokens_total, p.stats.kld
        );
        if let Some(bar) = &self.bar {
            bar.set_length(p.chunks_total as u64);
            bar.set_position(p.chunks_done as u64);
            bar.set_message(msg);
            return;
        }
        let due = self
            .last_line
            .is_none_or(|t| t.elapsed() >= Self::LINE_EVERY);
        if due || p.chunks_done == p.chunks_total {
            eprintln!(
                "eval: {}/{} chunks, {msg}, {:.1} s elapsed, ETA {:.1} s",
                p.chunks_done,
                p.chunks_total,
                p.elapsed.as_secs_f64(),
                p.eta().as_secs_f64()
            );
            self.last_line = Some(std::time::Instant::now());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Convert(a) => run_convert(a),
        Command::Quantize(a) => quant::run_quantize(a),
        Command::Imatrix(a) => quant::run_imatrix(a),
        Command::Inspect(a) => run_inspect(a),
        Command::Synth(a) => run_synth(a),
        Command::Eval(a) => run_eval(a),
        Command::Serve(a) => run_serve(a),
        Command::Chat(a) => chat::run_chat(a),
        Command::Bench(a) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::bench::cli_main(a))?;
            Ok(())
        }
    }
}

/// Convert with a progress bar when `opts.progress`, stopping cleanly on Ctrl-C.
fn run_conversion(opts: &convert::ConvertOptions) -> Result<convert::ConvertReport> {
    let cancel = cancel_flag();
    Ok(if opts.progress {
        convert::convert(opts, &convert::Bar::default(), &cancel)?
    } else {
        convert::convert(opts, &convert::Silent, &cancel)?
    })
}
