//! Hugging Face Llama checkpoint → GGUF, tensor by tensor.
//!
//! Shards are memory-mapped one tensor at a time and processed in row chunks
//! (converted to f32, checked for NaN/Inf, Q/K rows permuted, quantized on all
//! cores), so peak memory is bounded by the largest tensor's mapping plus a
//! chunk, not by the model size. Output goes to a temporary file that is
//! renamed into place only when everything succeeded.

pub mod calibrate;
pub mod config;
pub mod fuse;
mod hf_input;
pub mod pipeline;
pub mod plan;
pub mod requant;
pub mod scheme;

pub use calibrate::Calibrate;
pub use config::LlamaConfig;
pub use plan::{PlannedTensor, Role};
pub use requant::{quantize_gguf, QuantizeOptions};
pub use scheme::{ModelFacts, Scheme, Statistics, TensorRef, TypeOverride, TypePolicy};

use crate::gguf::{self, llama_ftype_for, GgmlType, GgufValue};
use crate::quant::QuantMode;
use crate::safetensors::{self, Checkpoint};
use crate::tokenizer::{self, Vocab};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafetensorsError),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error("{dir}: missing tensor {tensor} (required by config.json)")]
    MissingTensor { dir: PathBuf, tensor: String },
    #[error(
        "{file}: unexpected tensor {tensor} (not part of a LlamaForCausalLM with this config)"
    )]
    ExtraTensor { file: PathBuf, tensor: String },
    #[error("{file}: tensor {tensor} has shape {got:?} but config.json implies {expected:?}")]
    Shape {
        file: PathBuf,
        tensor: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{file}: tensor {tensor}: {msg}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("{file}: tensor {tensor} holds a non-finite value ({value}) at element {index}")]
    NonFinite {
        file: PathBuf,
        tensor: String,
        index: usize,
        value: f32,
    },
    #[error("output {0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("{file}: tensor {tensor} is {ty}; re-quantizing it loses precision (pass --allow-requantize to dequantize it first)")]
    Requantize {
        file: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error(transparent)]
    Calibration(#[from] crate::calib::CalibError),
    #[error("conversion cancelled")]
    Cancelled,
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub policy: TypePolicy,
    /// Block rounding; None: `search` when calibrated, else ggml's reference
    /// (what llama-quantize writes).
    pub quantizer: Option<QuantMode>,
    pub calibrate: Calibrate,
    pub overwrite: bool,
    pub progress: bool,
}

/// Summary of a finished conversion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub output: PathBuf,
    pub bytes: u64,
    pub n_tensors: usize,
    pub types: BTreeMap<String, usize>,
    pub seconds: f64,
    pub n_params: u64,
    /// What calibration was used (None: uncalibrated), as recorded in the file.
    pub calibration: Option<String>,
}

/// Receives progress events (elements done out of a total).
pub trait Progress: Sync {
    fn start(&self, _total_elems: u64) {}
    fn tensor(&self, _name: &str, _ty: GgmlType) {}
    fn advance(&self, _elems: u64) {}
    fn finish(&self) {}
}

/// No progress output.
pub struct Silent;
impl Progress for Silent {}

/// A terminal progress bar (drawn on stderr; hidden when it is not a terminal).
pub struct Bar(indicatif::ProgressBar);

impl Default for Bar {
    fn default() -> Self {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg} (eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self(pb)
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.enable_steady_tick(Duration::from_millis(200));
    }
    fn tensor(&self, name: &str, ty: GgmlType) {
        self.0.set_message(format!("{name} → {ty}"));
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A checkpoint opened and checked against its config, ready to convert.
pub struct Prepared {
    pub config: LlamaConfig,
    pub checkpoint: Checkpoint,
    pub plan: Vec<(PlannedTensor, GgmlType)>,
    pub vocab: Vocab,
    /// Weights stored as bitsandbytes NF4 (dequantized on the way in).
    pub bnb_weights: std::collections::BTreeSet<String>,
}

/// Open `dir`, validate tensors against config.json, choose types for the
/// statistics quantization will use.
pub fn prepare(
    dir: &Path,
    policy: &TypePolicy,
    stats: Statistics,
) -> Result<Prepared, ConvertError> {
    let config = LlamaConfig::load(dir)?;
    let checkpoint = Checkpoint::open(dir)?;
    let has_lm_head = checkpoint.get("lm_head.weight").is_some();
    let planned = plan::plan(&config, has_lm_head);
    let names: Vec<&str> = checkpoint.names().collect();
    let bnb_weights: std::collections::BTreeSet<String> = if crate::bnb::detect(&names) {
        crate::bnb::quantized_weights(&names).into_iter().collect()
    } else {
        Default::default()
    };
    for t in &planned {
        let Some((file, entry)) = checkpoint.get(&t.hf_name) else {
            return Err(ConvertError::MissingTensor {
                dir: dir.to_path_buf(),
                tensor: t.hf_name.clone(),
            });
        };
        if bnb_weights.contains(&t.hf_name) {
            // Packed NF4: the shape is checked after dequantization.
            continue;
        }
        if entry.shape != t.shape {
            return Err(ConvertError::Shape {
                file: file.path.clone(),
                tensor: t.hf_name.clone(),
                got: entry.shape.clone(),
                expected: t.shape.clone(),
            });
        }
        if !entry.dtype.is_float() {
            return Err(ConvertError::Tensor {
                file: file.path.clone(),
                tensor: t.hf_name.clone(),
                msg: format!(
                    "unsupported dtype {} (expected BF16, F16 or F32)",
                    entry.dtype.name()
                ),
            });
        }
    }
    for name in checkpoint.names() {
        let companion = !bnb_weights.is_empty() && crate::bnb::is_companion(name);
        if !plan::is_ignored(name) && !companion && !planned.iter().any(|t| t.hf_name == name) {
            let (file, _) = checkpoint
                .get(name)
                .ok_or_else(|| ConvertError::MissingTensor {
                    dir: dir.to_path_buf(),
                    tensor: name.to_string(),
                })?;
            return Err(ConvertError::ExtraTensor {
                file: file.path.clone(),
                tensor: name.to_string(),
            });
        }
    }
    let vocab = Vocab::from_dir(dir, config.vocab_size, &config.raw)?;
    let facts = ModelFacts {
        n_layer: config.n_layers,
        n_gqa: config.n_heads / config.n_kv_heads.max(1),
        tied_embeddings: !planned.iter().any(|t| t.role == Role::Output),
    };
    let plan = planned
        .into_iter()
        .map(|t| {
            let ty = policy.choose(&TensorRef::of(&t), &facts, stats);
            (t, ty)
        })
        .collect();
    Ok(Prepared {
        config,
        checkpoint,
        plan,
        vocab,
        bnb_weights,
    })
}

/// GGUF metadata for a prepared conversion.
pub fn metadata(p: &Prepared, file_type: GgmlType) -> Vec<(String, GgufValue)> {
    let c = &p.config;
    let s = |v: &str| GgufValue::String(v.to_string());
    let u = |v: usize| GgufValue::U32(v as u32);
    let mut m: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(&c.name)),
        ("llama.block_count".into(), u(c.n_layers)),
        ("llama.context_length".into(), u(c.context_length)),
        ("llama.embedding_length".into(), u(c.hidden_size)),
        ("llama.feed_forward_length".into(), u(c.intermediate_size)),
        ("llama.attention.head_count".into(), u(c.n_heads)),
        ("llama.attention.head_count_kv".into(), u(c.n_kv_heads)),
        ("llama.rope.freq_base".into(), GgufValue::F32(c.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            GgufValue::F32(c.rms_norm_eps),
        ),
    ];
    if c.head_dim * c.n_heads != c.hidden_size {
        m.push(("llama.attention.key_length".into(), u(c.head_dim)));
        m.push(("llama.attention.value_length".into(), u(c.head_dim)));
    }
    m.push((
        "general.file_type".into(),
        GgufValue::U32(llama_ftype_for(file_type)),
    ));
    m.push(("llama.vocab_size".into(), u(c.vocab_size)));
    m.push(("llama.rope.dimension_count".into(), u(c.head_dim)));
    if let Some(f) = c.rope_linear_factor {
        m.push(("llama.rope.scaling.type".into(), s("linear")));
        m.push(("llama.rope.scaling.factor".into(), GgufValue::F32(f)));
    }
    m.push(("general.quantization_version".into(), GgufValue::U32(2)));
    m.extend(p.vocab.to_metadata());
    m
}

/// Run a conversion. `cancel` is polled between chunks.
pub fn convert(
    opts: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<ConvertReport, ConvertError> {
    let t0 = Instant::now();
    refuse_existing(&opts.output, opts.overwrite)?;
    // Validate before any (slow) calibration run.
    let probe = prepare(&opts.input, &opts.policy, Statistics::None)?;
    let calibration = calibrate::for_checkpoint(opts, &probe, cancel)?;
    drop(probe);
    let p = prepare(
        &opts.input,
        &opts.policy,
        Statistics::of(calibration.as_ref()),
    )?;
    let mut meta = metadata(&p, opts.policy.scheme.main_type());
    if let Some(c) = &calibration {
        meta.extend(c.metadata());
    }
    let jobs = fuse::apply(
        hf_input::jobs(&p, opts.policy.scheme),
        opts.policy.fuse_qkv,
        opts.progress,
    );
    let enc = pipeline::Encoding::new(opts.quantizer, calibration.as_ref());
    let w = pipeline::write_gguf(&opts.output, &meta, &jobs, &enc, progress, cancel)?;
    Ok(ConvertReport {
        output: w.output,
        bytes: w.bytes,
        n_tensors: jobs.len(),
        types: w.types,
        seconds: t0.elapsed().as_secs_f64(),
        n_params: total_elems(&p),
        calibration: calibration.map(|c| calibrate::describe(&c.provenance)),
    })
}

/// An existing output is kept unless `overwrite` (`--force`).
fn refuse_existing(output: &Path, overwrite: bool) -> Result<(), ConvertError> {
    if output.exists() && !overwrite {
        return Err(ConvertError::Exists(output.to_path_buf()));
    }
    Ok(())
}

fn total_elems(p: &Prepared) -> u64 {
    p.plan
        .iter()
        .map(|(t, _)| t.shape.iter().product::<usize>() as u64)
        .sum()
}

/// Read a llama-imatrix file (GGUF or legacy .dat).
pub fn load_imatrix(path: &Path) -> Result<crate::quant::Imatrix, ConvertError> {
    crate::quant::Imatrix::load(path).map_err(|e| ConvertError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}
