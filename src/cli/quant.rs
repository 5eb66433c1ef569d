//! The quantization options shared by `convert` and `quantize`, and the
//! `quantize` and `imatrix` commands.

use super::{cancel_flag, init_threads};
use crate::calib::{self, CollectOptions, HessianBlocks};
use crate::convert::{self, Calibrate, Scheme, TypeOverride, TypePolicy};
use crate::gguf::GgmlType;
use crate::quant::QuantMode;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum Quantizer {
    /// `search` when calibrated, else `reference` (what llama-quantize writes).
    #[default]
    Auto,
    /// Byte-identical to ggml's reference quantizers (llama-quantize).
    Reference,
    /// Lower importance-weighted error at the same size.
    Search,
}

/// Options of `convert` and `quantize`.
#[derive(Args, Debug, Clone)]
pub struct QuantArgs {
    /// Scheme: nf4 (default; IQ4_XS-based 4-bit with llama-quantize's mix),
    /// f32, f16, bf16, q8_0, q4_0, q4_k (Q4_K_M mix), bnb-nf4 (the old app's
    /// bitsandbytes NF4 round trip, stored 16-bit, as a baseline).
    #[arg(long, visible_alias = "outtype", default_value = "nf4")]
    pub scheme: Scheme,
    /// Block rounding.
    #[arg(long, value_enum, default_value = "auto")]
    pub quantizer: Quantizer,
    /// Type for output.weight (and tied token embeddings).
    #[arg(long)]
    pub output_type: Option<GgmlType>,
    /// Type for token_embd.weight.
    #[arg(long)]
    pub embedding_type: Option<GgmlType>,
    /// Per-tensor override PATTERN=TYPE (glob over GGUF names), repeatable.
    #[arg(long = "tensor-type")]
    pub tensor_type: Vec<TypeOverride>,
    /// One type for every weight (no per-tensor mix; output too unless
    /// --output-type), as `llama-quantize --pure`.
    #[arg(long)]
    pub pure: bool,
    /// Write each layer's attn_q/attn_k/attn_v as one attn_qkv tensor (one
    /// matmul per layer instead of three; llama.cpp loads it for Llama models
    /// since its fused-QKV loader; older builds do not).
    #[arg(long)]
    pub fuse_qkv: bool,
    /// Calibrate on this UTF-8 text instead of the built-in Hindi/English set.
    #[arg(long, conflicts_with_all = ["imatrix", "no_calibration"])]
    pub calibration: Option<PathBuf>,
    /// Calibrate on the built-in text even when it exceeds the CPU time
    /// budget (15 min; without a GPU a 7B takes hours on a few cores).
    #[arg(long, conflicts_with_all = ["imatrix", "no_calibration", "calibration"])]
    pub calibrate: bool,
    /// Use a llama-imatrix file (GGUF or legacy .dat) for importance only.
    #[arg(long, conflicts_with = "no_calibration")]
    pub imatrix: Option<PathBuf>,
    /// No calibration: llama-quantize's default mix and rounding.
    #[arg(long)]
    pub no_calibration: bool,
    /// Calibration tokens (at most; the text may hold fewer).
    #[arg(long, default_value_t = CollectOptions::default().max_tokens)]
    pub calibration_tokens: usize,
    /// Error feedback over diagonal blocks of XᵀX of at most this many columns,
    /// for every input (0: importance only). Default: the whole XᵀX for inputs
    /// up to 2048 columns wide, 1024-column blocks beyond.
    #[arg(long)]
    pub hessian_block: Option<usize>,
    /// ggml backend libraries to load for calibration (dynamic-backends builds).
    #[arg(long)]
    pub backends_dir: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

impl QuantArgs {
    pub fn policy(&self) -> TypePolicy {
        TypePolicy {
            scheme: self.scheme,
            output_type: self.output_type,
            embedding_type: self.embedding_type,
            overrides: self.tensor_type.clone(),
            pure: self.pure,
            fuse_qkv: self.fuse_qkv,
        }
    }

    pub fn quantizer(&self) -> Option<QuantMode> {
        match self.quantizer {
            Quantizer::Auto => None,
            Quantizer::Reference => Some(QuantMode::Reference),
            Quantizer::Search => Some(QuantMode::Search),
        }
    }

    pub fn calibrate(&self) -> Calibrate {
        if self.no_calibration {
            return Calibrate::Off;
        }
        if let Some(p) = &self.imatrix {
            return Calibrate::Imatrix(p.clone());
        }
        Calibrate::Collect {
            auto: self.calibration.is_none() && !self.calibrate,
            text: self.calibration.clone(),
            opts: CollectOptions {
                max_tokens: self.calibration_tokens,
                hessian: self
                    .hessian_block
                    .map_or(HessianBlocks::DEFAULT, HessianBlocks::at_most),
                backends_dir: self.backends_dir.clone(),
                threads: self.threads.map(|t| t as i32),
                ..Default::default()
            },
        }
    }
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input GGUF (any file llama.cpp loads; F32/F16/BF16 weights, or
    /// quantized ones with --allow-requantize).
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Dequantize already-quantized tensors and quantize them again.
    #[arg(long)]
    pub allow_requantize: bool,
    #[command(flatten)]
    pub q: QuantArgs,
}

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    /// Model GGUF to run.
    pub model: PathBuf,
    /// Calibration text (UTF-8) [default: the built-in Hindi/English set].
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Output file (llama-imatrix's GGUF format).
    #[arg(short, long, default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// Stop after this many tokens.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_tokens: usize,
    /// Layers offloaded to a GPU when a GPU backend is loaded.
    #[arg(long, default_value_t = 999)]
    pub gpu_layers: u32,
    #[arg(long)]
    pub threads: Option<i32>,
    /// ggml backend libraries to load (dynamic-backends builds).
    #[arg(long)]
    pub backends_dir: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
}

pub fn print_report(report: &convert::ConvertReport) {
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect();
    eprintln!(
        "wrote {} ({:.1} MiB, {} tensors: {}, {:.2} B params) in {:.1} s; calibration: {}",
        report.output.display(),
        report.bytes as f64 / (1 << 20) as f64,
        report.n_tensors,
        types.join(", "),
        report.n_params as f64 / 1e9,
        report.seconds,
        report.calibration.as_deref().unwrap_or("none"),
    );
}

pub fn run_quantize(a: QuantizeArgs) -> Result<()> {
    init_threads(a.q.threads);
    let opts = convert::QuantizeOptions {
        input: a.input,
        output: a.output,
        policy: a.q.policy(),
        quantizer: a.q.quantizer(),
        calibrate: a.q.calibrate(),
        allow_requantize: a.allow_requantize,
        overwrite: a.q.force,
        progress: !a.q.quiet,
    };
    let cancel = cancel_flag();
    let report = if opts.progress {
        convert::quantize_gguf(&opts, &convert::Bar::default(), &cancel)?
    } else {
        convert::quantize_gguf(&opts, &convert::Silent, &cancel)?
    };
    print_report(&report);
    Ok(())
}

pub fn run_imatrix(a: ImatrixArgs) -> Result<()> {
    if a.output.exists() && !a.force {
        bail!(
            "output {} already exists (use --force to overwrite)",
            a.output.display()
        );
    }
    let (text, name) = match &a.text {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            calib::BUILTIN_TEXT.to_string(),
            calib::BUILTIN_NAME.to_string(),
        ),
    };
    let opts = CollectOptions {
        chunk: a.chunk,
        max_tokens: a.max_tokens,
        n_gpu_layers: a.gpu_layers,
        threads: a.threads,
        hessian: HessianBlocks::OFF,
        backends_dir: a.backends_dir,
        progress: true,
        ..Default::default()
    };
    let stats = calib::collect_cancellable(&a.model, &text, &opts, &cancel_flag())?;
    calib::write_imatrix(&a.output, &stats, &name)?;
    eprintln!(
        "wrote {} ({} weights, {} chunks of {} tokens{})",
        a.output.display(),
        stats.weight_input.len(),
        stats.chunks,
        stats.chunk_size,
        if stats.gpu { ", GPU" } else { "" }
    );
    Ok(())
}
