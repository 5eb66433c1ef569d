//! Hugging Face Llama checkpoint → GGUF, tensor by tensor.
//!
//! Shards are memory-mapped one tensor at a time and processed in row chunks
//! (converted to f32, checked for NaN/Inf, Q/K rows permuted, quantized on all
//! cores), so peak memory is bounded by the largest tensor's mapping plus a
//! chunk, not by the model size. Output goes to a temporary file that is
//! renamed into place only when everything succeeded.

pub mod config;
pub mod plan;
pub mod scheme;

pub use config::LlamaConfig;
pub use plan::{PlannedTensor, Role};
pub use scheme::{Scheme, TypeOverride, TypePolicy};

use crate::gguf::{self, llama_ftype_for, GgmlType, GgufValue, GgufWriter, TensorSpec};
use crate::quant::{self, QuantMode};
use crate::safetensors::{self, Checkpoint};
use crate::tokenizer::{self, Vocab};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Elements per processing chunk (rows are grouped up to about this many).
const CHUNK_ELEMS: usize = 1 << 22;

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
    #[error("conversion cancelled")]
    Cancelled,
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub policy: TypePolicy,
    pub quantizer: QuantMode,
    /// Per-tensor importance weights (GGUF tensor name → one weight per column).
    pub imatrix: Option<crate::quant::Imatrix>,
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

/// Open `dir`, validate tensors against config.json, choose types.
pub fn prepare(dir: &Path, policy: &TypePolicy) -> Result<Prepared, ConvertError> {
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
    let plan = planned
        .into_iter()
        .map(|t| {
            let ty = policy.choose(&t);
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
    if opts.output.exists() && !opts.overwrite {
        return Err(ConvertError::Exists(opts.output.clone()));
    }
    let p = prepare(&opts.input, &opts.policy)?;
    let meta = metadata(&p, opts.policy.scheme.main_type());
    let specs: Vec<TensorSpec> = p
        .plan
        .iter()
        .map(|(t, ty)| TensorSpec {
            name: t.gguf_name.clone(),
            dims: t.gguf_dims(),
            ty: *ty,
        })
        .collect();
    let w = GgufWriter::create(&opts.output, &meta, &specs)?;
    // Writing runs on its own thread so that it overlaps the quantization of
    // the next chunk; the bounded channel keeps at most a few chunks in flight.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(2);
    let writer = std::thread::spawn(move || -> Result<GgufWriter, ConvertError> {
        let mut w = w;
        for (name, bytes) in rx {
            w.write_data(&name, &bytes)?;
        }
        Ok(w)
    });
    let mut sink = Sink { tx: Some(tx) };
    let result = write_all(&p, opts, &mut sink, progress, cancel);
    drop(sink);
    let joined = writer.join().map_err(|_| {
        ConvertError::Io(
            opts.output.clone(),
            std::io::Error::other("writer thread panicked"),
        )
    })?;
    // A write error explains a failed send, so it takes precedence.
    let w = joined?;
    let types = result?;
    let out = w.finish()?;
    progress.finish();
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    Ok(ConvertReport {
        output: out,
        bytes,
        n_tensors: p.plan.len(),
        types,
        seconds: t0.elapsed().as_secs_f64(),
        n_params: total_elems(&p),
    })
}

fn total_elems(p: &Prepared) -> u64 {
    p.plan
        .iter()
        .map(|(t, _)| t.shape.iter().product::<usize>() as u64)
        .sum()
}

/// Hands finished chunks to the writer thread.
struct Sink {
    tx: Option<std::sync::mpsc::SyncSender<(String, Vec<u8>)>>,
}

impl Sink {
    fn write(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), ConvertError> {
        let tx = self.tx.as_ref().ok_or(ConvertError::Cancelled)?;
        if tx.send((name.to_string(), bytes)).is_err() {
            // The writer stopped on an error; the caller reports it after join.
            self.tx = None;
            return Err(ConvertError::Cancelled);
        }
        Ok(())
    }
}

/// Convert every planned tensor into `sink`; returns the count per type.
fn write_all(
    p: &Prepared,
    opts: &ConvertOptions,
    sink: &mut Sink,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<BTreeMap<String, usize>, ConvertError> {
    progress.start(total_elems(p));
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for (t, ty) in &p.plan {
        progress.tensor(&t.gguf_name, *ty);
        *types.entry(ty.name()).or_default() += 1;
        let im = opts
            .imatrix
            .as_ref()
            .and_then(|m| m.get(&t.gguf_name))
            .filter(|v| v.len() == t.row_len());
        if opts.imatrix.is_some() && im.is_none() && *ty != GgmlType::F32 {
            tracing::debug!("no importance data for {}", t.gguf_name);
        }
        let job = TensorJob {
            ty: *ty,
            mode: opts.quantizer,
            imatrix: im,
        };
        if p.bnb_weights.contains(&t.hf_name) {
            write_bnb_tensor(&p.checkpoint, t, &job, sink, progress)?;
        } else {
            write_tensor(&p.checkpoint, t, &job, sink, progress, cancel)?;
        }
    }
    Ok(types)
}

/// How one tensor is encoded.
struct TensorJob<'a> {
    ty: GgmlType,
    mode: QuantMode,
    imatrix: Option<&'a [f32]>,
}

/// A bitsandbytes NF4 weight: dequantize exactly as bitsandbytes does, then
/// check, permute and quantize like any other tensor.
fn write_bnb_tensor(
    ck: &Checkpoint,
    t: &PlannedTensor,
    job: &TensorJob,
    sink: &mut Sink,
    progress: &dyn Progress,
) -> Result<(), ConvertError> {
    let file = ck
        .get(&t.hf_name)
        .map(|(f, _)| f.path.clone())
        .unwrap_or_else(|| ck.dir.clone());
    let terr = |msg: String| ConvertError::Tensor {
        file: file.clone(),
        tensor: t.hf_name.clone(),
        msg,
    };
    let mut map_err = None;
    let deq = crate::bnb::dequantize_with(&t.hf_name, |name| {
        let (f, e) = ck.get(name)?;
        match f.map(e) {
            Ok(m) => Some(crate::bnb::TensorData {
                dtype: e.dtype.name().to_string(),
                shape: e.shape.clone(),
                data: m.bytes().to_vec(),
            }),
            Err(err) => {
                map_err = Some(err);
                None
            }
        }
    });
    if let Some(e) = map_err {
        return Err(e.into());
    }
    let deq = deq.map_err(|e| terr(e.to_string()))?;
    if deq.shape != t.shape {
        return Err(ConvertError::Shape {
            file,
            tensor: t.hf_name.clone(),
            got: deq.shape,
            expected: t.shape.clone(),
        });
    }
    encode_rows(t, job, deq.data, 0, &file, sink, progress)
}

/// The common tail of every chunk: reject NaN/Inf (reporting the element's
/// index in the whole tensor), permute Q/K rows, quantize, hand to the writer.
fn encode_rows(
    t: &PlannedTensor,
    job: &TensorJob,
    mut f: Vec<f32>,
    first_elem: usize,
    file: &Path,
    sink: &mut Sink,
    progress: &dyn Progress,
) -> Result<(), ConvertError> {
    if let Some(i) = first_non_finite(&f) {
        return Err(ConvertError::NonFinite {
            file: file.to_path_buf(),
            tensor: t.hf_name.clone(),
            index: first_elem + i,
            value: f[i],
        });
    }
    plan::apply_permute(t.permute, &mut f, t.row_len(), t.n_rows());
    let q = quant::quantize(job.ty, &f, t.row_len(), job.imatrix, job.mode).map_err(|e| {
        ConvertError::Tensor {
            file: file.to_path_buf(),
            tensor: t.hf_name.clone(),
            msg: e.to_string(),
        }
    })?;
    let n = f.len() as u64;
    drop(f);
    sink.write(&t.gguf_name, q)?;
    progress.advance(n);
    Ok(())
}

/// Index of the first NaN or infinity in `f`. Chunks are scanned in
/// parallel with a branch-free test that vectorizes (rayon's per-element
/// `position_first` cost as much as quantizing in reference mode); only the
/// first chunk holding one is searched element by element.
fn first_non_finite(f: &[f32]) -> Option<usize> {
    const CHUNK: usize = 1 << 15;
    const EXP: u32 = 0x7f80_0000;
    let has_bad = |c: &[f32]| {
        c.iter()
            .fold(false, |acc, v| acc | (v.to_bits() & EXP == EXP))
    };
    let (ci, c) = f
        .par_chunks(CHUNK)
        .enumerate()
        .find_first(|(_, c)| has_bad(c))?;
    c.iter()
        .position(|v| !v.is_finite())
        .map(|i| ci * CHUNK + i)
}

fn write_tensor(
    ck: &Checkpoint,
    t: &PlannedTensor,
    job: &TensorJob,
    sink: &mut Sink,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(), ConvertError> {
    let (file, entry) = ck
        .get(&t.hf_name)
        .ok_or_else(|| ConvertError::MissingTensor {
            dir: ck.dir.clone(),
            tensor: t.hf_name.clone(),
        })?;
    let terr = |msg: String| ConvertError::Tensor {
        file: file.path.clone(),
        tensor: t.hf_name.clone(),
        msg,
    };
    let row_len = t.row_len();
    let n_rows = t.n_rows();
    let esz = entry.dtype.size();
    // Chunks hold whole heads so the rope permutation stays local.
    let unit = match t.permute {
        plan::Permute::Rope { n_heads } => (n_rows / n_heads).max(1),
        plan::Permute::None => 1,
    };
    let rows_per_chunk = ((CHUNK_ELEMS / row_len.max(1)) / unit).max(1) * unit;
    let mut row = 0;
    while row < n_rows {
        if cancel.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
        let nr = rows_per_chunk.min(n_rows - row);
        // Map only this chunk: resident pages are released with the map.
        let mapped = file.map_range(
            entry,
            (row * row_len * esz) as u64,
            (nr * row_len * esz) as u64,
        )?;
        let src = mapped.bytes();
        let mut f = vec![0f32; nr * row_len];
        f.par_chunks_mut(1 << 16)
            .zip(src.par_chunks((1 << 16) * esz))
            .try_for_each(|(d, s)| safetensors::to_f32(entry.dtype, s, d))
            .map_err(terr)?;
        drop(mapped);
        encode_rows(t, job, f, row * row_len, &file.path, sink, progress)?;
        row += nr;
    }
    Ok(())
}

/// Read a llama-imatrix file (GGUF or legacy .dat).
pub fn load_imatrix(path: &Path) -> Result<crate::quant::Imatrix, ConvertError> {
    crate::quant::Imatrix::load(path).map_err(|e| ConvertError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::first_non_finite;

    #[test]
    fn first_non_finite_finds_the_first_bad_value() {
        let mut f = vec![1.0f32; 100_000];
        assert_eq!(first_non_finite(&f), None);
        f[99_999] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&f), Some(99_999));
        f[70_000] = f32::NAN;
        f[40_000] = f32::MAX;
        assert_eq!(first_non_finite(&f), Some(70_000));
        f[3] = f32::INFINITY;
        assert_eq!(first_non_finite(&f), Some(3));
        assert_eq!(first_non_finite(&[]), None);
    }
}
