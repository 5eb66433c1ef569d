//! Calibration: activation statistics collected by running the model through
//! llama.cpp, and the per-tensor data the quantizers use.
//!
//! * [`collect`] runs a GGUF on calibration text and records per-column
//!   sums of squares and diagonal blocks of `XᵀX` for every layer weight.
//! * [`Calibration`] turns them (or a llama-imatrix file) into per-tensor
//!   importance vectors and error-feedback factors.
//! * [`write_imatrix`] writes llama-imatrix's GGUF format, which
//!   `llama-quantize --imatrix` reads.
//! * [`BUILTIN_TEXT`] is the built-in Hindi/English calibration text
//!   (`data/calibration/`, written for this project, same license).

pub mod collect;

pub use collect::{
    collect, collect_cancellable, gpu_available, CollectOptions, HessianBlocks, Stats,
};

use crate::gguf::{GgmlType, GgufValue, GgufWriter, TensorSpec};
use crate::quant::gptq::{self, Feedback};
use crate::quant::{self, Imatrix, QuantError, QuantMode};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The built-in calibration text: original Hindi and English prose, chat
/// exchanges in Airavata's format, code, arithmetic, expository and news-style
/// prose (about 116 KB).
pub const BUILTIN_TEXT: &str = include_str!("../../data/calibration/hi-en.txt");
/// Its name in metadata.
pub const BUILTIN_NAME: &str = "airavata-builtin-hi-en";

#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("llama.cpp: {0}")]
    Llama(String),
    #[error("calibration text: {0}")]
    Text(String),
    #[error("calibration cancelled")]
    Cancelled,
    #[error("calibration too slow here: {tokens} tokens in {secs:.0} s; {min_tokens} tokens would take about {needed:.0} s, more than the {budget:.0} s budget")]
    Budget {
        tokens: usize,
        secs: f64,
        min_tokens: usize,
        budget: f64,
        /// Seconds the minimum would take at the measured pace.
        needed: f64,
    },
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
}

/// What a file was calibrated with (recorded in its metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// `collected` (statistics gathered by us) or `imatrix` (a given file).
    pub method: &'static str,
    /// Dataset name or file path.
    pub dataset: String,
    pub tokens: u64,
    pub chunks: u64,
    /// Diagonal `XᵀX` block size used for error feedback (0: none).
    pub hessian_block: usize,
}

/// Per-tensor calibration data.
#[derive(Debug, Clone)]
pub struct Calibration {
    importance: HashMap<String, Arc<Vec<f32>>>,
    feedback: HashMap<String, Arc<Feedback>>,
    pub provenance: Provenance,
}

/// The calibration data of one tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorCalib<'a> {
    pub importance: Option<&'a [f32]>,
    pub feedback: Option<&'a Feedback>,
}

impl TensorCalib<'_> {
    /// Quantize rows of `row_len` to `ty`: with error feedback where the type
    /// supports it, else per block with the importance.
    pub fn quantize(
        &self,
        ty: GgmlType,
        src: &[f32],
        row_len: usize,
        mode: QuantMode,
    ) -> Result<Vec<u8>, QuantError> {
        match self.feedback {
            Some(fb) if ty.block_size() > 1 => gptq::quantize_rows(ty, src, row_len, fb, mode),
            _ => quant::quantize(ty, src, row_len, self.importance, mode),
        }
    }
}

impl Calibration {
    /// From a llama-imatrix file (importance only).
    pub fn from_imatrix(m: &Imatrix, path: &Path) -> Self {
        Self {
            importance: m
                .names()
                .filter_map(|n| Some((n.to_string(), Arc::new(m.get(n)?.to_vec()))))
                .collect(),
            feedback: HashMap::new(),
            provenance: Provenance {
                method: "imatrix",
                dataset: m
                    .datasets
                    .first()
                    .cloned()
                    .unwrap_or_else(|| path.display().to_string()),
                tokens: 0,
                chunks: m.chunk_count.unwrap_or(0),
                hessian_block: 0,
            },
        }
    }

    /// From collected statistics; inputs with `XᵀX` blocks get error
    /// feedback (prepared in parallel, once per shared input).
    pub fn from_stats(stats: &Stats, dataset: &str) -> Result<Self, CalibError> {
        let prepared: Vec<Option<Arc<Feedback>>> = stats
            .inputs
            .par_iter()
            .map(|s| {
                s.hessian
                    .as_ref()
                    .map(|h| Feedback::new(h, gptq::DAMP).map(Arc::new))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let imp: Vec<Arc<Vec<f32>>> = stats
            .inputs
            .iter()
            .map(|s| {
                let c = s.count.max(1) as f64;
                Arc::new(s.sum_sq.iter().map(|v| (v / c) as f32).collect())
            })
            .collect();
        let mut importance = HashMap::new();
        let mut feedback = HashMap::new();
        for (w, &i) in &stats.weight_input {
            importance.insert(w.clone(), imp[i].clone());
            if let Some(f) = &prepared[i] {
                feedback.insert(w.clone(), f.clone());
            }
        }
        let hessian_block = stats
            .inputs
            .iter()
            .filter_map(|s| s.hessian.as_ref())
            .flat_map(|h| h.blocks.iter().map(|b| b.len))
            .max()
            .unwrap_or(0);
        Ok(Self {
            importance,
            feedback,
            provenance: Provenance {
                method: "collected",
                dataset: dataset.to_string(),
                tokens: stats.tokens,
                chunks: stats.chunks as u64,
                hessian_block,
            },
        })
    }

    /// The data for tensor `name` with rows of `row_len`, if any.
    pub fn for_tensor(&self, name: &str, row_len: usize) -> Option<TensorCalib<'_>> {
        // A fused QKV weight multiplies its layer's Q input (`--fuse-qkv`).
        if !self.importance.contains_key(name) && !self.feedback.contains_key(name) {
            if let Some(q) = qkv_source(name) {
                return self.for_tensor(&q, row_len);
            }
        }
        let importance = self
            .importance
            .get(name)
            .map(|v| v.as_slice())
            .filter(|v| v.len() == row_len);
        let feedback = self
            .feedback
            .get(name)
            .map(|f| f.as_ref())
            .filter(|f| f.n() == row_len);
        (importance.is_some() || feedback.is_some()).then_some(TensorCalib {
            importance,
            feedback,
        })
    }

    /// Tensors with data.
    pub fn len(&self) -> usize {
        self.importance.len()
    }

    pub fn is_empty(&self) -> bool {
        self.importance.is_empty()
    }

    /// GGUF metadata recording what was used: llama-quantize's
    /// `quantize.imatrix.*` keys plus `airavata.calibration.*`.
    pub fn metadata(&self) -> Vec<(String, GgufValue)> {
        let p = &self.provenance;
        let s = |v: &str| GgufValue::String(v.to_string());
        let mut m = vec![
            ("quantize.imatrix.dataset".into(), s(&p.dataset)),
            (
                "quantize.imatrix.entries_count".into(),
                GgufValue::U32(self.importance.len() as u32),
            ),
            (
                "quantize.imatrix.chunks_count".into(),
                GgufValue::U32(p.chunks as u32),
            ),
            ("airavata.calibration.method".into(), s(p.method)),
            ("airavata.calibration.dataset".into(), s(&p.dataset)),
            (
                "airavata.calibration.tokens".into(),
                GgufValue::U64(p.tokens),
            ),
        ];
        if p.hessian_block > 0 {
            m.push((
                "airavata.calibration.rounding".into(),
                s("error-feedback (GPTQ-style, block-diagonal XᵀX)"),
            ));
            m.push((
                "airavata.calibration.hessian_block".into(),
                GgufValue::U32(p.hessian_block as u32),
            ));
        }
        m
    }
}

/// Write `stats` in llama-imatrix's GGUF format: per weight `<name>.in_sum2`
/// (F32, sums of squares) and `<name>.counts` (F32, rows), with
/// `general.type = imatrix`, `imatrix.datasets`, `imatrix.chunk_count`,
/// `imatrix.chunk_size`. Written atomically.
pub fn write_imatrix(path: &Path, stats: &Stats, dataset: &str) -> Result<(), CalibError> {
    let meta = vec![
        (
            "general.type".to_string(),
            GgufValue::String("imatrix".into()),
        ),
        (
            "imatrix.datasets".to_string(),
            GgufValue::strings([dataset.to_string()]),
        ),
        (
            "imatrix.chunk_count".to_string(),
            GgufValue::U32(stats.chunks),
        ),
        (
            "imatrix.chunk_size".to_string(),
            GgufValue::U32(stats.chunk_size),
        ),
    ];
    let mut specs = Vec::new();
    let mut data: Vec<(String, Vec<u8>)> = Vec::new();
    for (w, &i) in &stats.weight_input {
        let s = &stats.inputs[i];
        let sums: Vec<u8> = s
            .sum_sq
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect();
        specs.push(TensorSpec {
            name: format!("{w}.in_sum2"),
            dims: vec![s.sum_sq.len() as u64, 1],
            ty: GgmlType::F32,
        });
        data.push((format!("{w}.in_sum2"), sums));
        specs.push(TensorSpec {
            name: format!("{w}.counts"),
            dims: vec![1, 1],
            ty: GgmlType::F32,
        });
        data.push((
            format!("{w}.counts"),
            (s.count as f32).to_le_bytes().to_vec(),
        ));
    }
    let mut w = GgufWriter::create(path, &meta, &specs)?;
    for (name, bytes) in &data {
        w.write_data(name, bytes)?;
    }
    w.finish()?;
    Ok(())
}

/// The Q weight whose input a fused `blk.N.attn_qkv.weight` multiplies (Q, K
/// and V share one input, so a fused weight uses Q's statistics), or None.
pub fn qkv_source(name: &str) -> Option<String> {
    let layer = name
        .strip_prefix("blk.")?
        .strip_suffix(".attn_qkv.weight")?;
    layer
        .parse::<usize>()
        .ok()
        .map(|l| format!("blk.{l}.attn_q.weight"))
}
