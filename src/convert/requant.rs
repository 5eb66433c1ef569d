//! `airavata quantize IN.gguf OUT.gguf`: re-encode any GGUF llama.cpp loads
//! through the same pipeline, policy and calibration as `convert`.
//!
//! As llama-quantize: 2-D `*.weight` tensors other than norms and expert
//! routers are quantized; everything else, and tensors already of the chosen
//! type, is copied byte for byte. F32/F16/BF16 tensors are read directly;
//! already-quantized ones only with `allow_requantize` (dequantized first).
//! Metadata and tokenizer are copied; `general.file_type` and the
//! calibration record are replaced.

use super::calibrate::{self, Calibrate};
use super::pipeline::{self, Encoding, Job, TensorInput};
use super::{
    ConvertError, ConvertReport, ModelFacts, Progress, Role, Statistics, TensorRef, TypePolicy,
};
use crate::gguf::{llama_ftype_for, GgmlType, GgufFile, GgufValue, TensorInfo};
use crate::quant::{self, QuantMode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// What to re-quantize and how.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub policy: TypePolicy,
    /// None: `search` when calibrated, else ggml's reference.
    pub quantizer: Option<QuantMode>,
    pub calibrate: Calibrate,
    /// Dequantize already-quantized tensors instead of refusing them.
    pub allow_requantize: bool,
    pub overwrite: bool,
    pub progress: bool,
}

/// Metadata keys that describe the old encoding and are not copied.
fn stale_key(k: &str) -> bool {
    k == "general.file_type"
        || k == "general.quantization_version"
        || k == "general.alignment"
        || k.starts_with("quantize.imatrix.")
        || k.starts_with("airavata.calibration.")
}

/// llama-quantize's rule for which tensors are quantized (the parts that
/// apply to Llama-family models).
pub fn quantizable(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.ends_with("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("position_embd")
        && !name.contains("token_types")
}

fn role_of(name: &str, n_dims: usize) -> Role {
    if !quantizable(name, n_dims) {
        Role::Norm
    } else if name == "token_embd.weight" {
        Role::Embedding
    } else if name == "output.weight" {
        Role::Output
    } else {
        Role::Weight
    }
}

fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
}

/// llama-quantize's facts about the model, from its metadata.
fn facts(f: &GgufFile) -> ModelFacts {
    let arch = f.get_str("general.architecture").unwrap_or("llama");
    let u = |k: &str| f.get_u64(&format!("{arch}.{k}")).unwrap_or(0) as usize;
    let heads = u("attention.head_count");
    let kv = u("attention.head_count_kv").max(1);
    ModelFacts {
        n_layer: u("block_count"),
        n_gqa: if heads > 0 { heads / kv } else { 1 },
        tied_embeddings: f.tensor("output.weight").is_none(),
    }
}

struct GgufTensor<'a> {
    file: &'a GgufFile,
    info: &'a TensorInfo,
}

impl TensorInput for GgufTensor<'_> {
    fn origin(&self) -> (&Path, &str) {
        (&self.file.path, &self.info.name)
    }

    fn read(&self, row0: usize, nrows: usize) -> Result<Vec<f32>, ConvertError> {
        let ne0 = self.info.dims.first().copied().unwrap_or(1) as usize;
        let terr = |msg: String| ConvertError::Tensor {
            file: self.file.path.clone(),
            tensor: self.info.name.clone(),
            msg,
        };
        let rb = self
            .info
            .ty
            .row_bytes(ne0)
            .ok_or_else(|| terr(format!("rows of {ne0} do not fit type {}", self.info.ty)))?;
        let data = self.file.tensor_data(self.info);
        let bytes = data
            .get(row0 * rb..(row0 + nrows) * rb)
            .ok_or_else(|| terr("tensor data is shorter than its shape".into()))?;
        quant::dequantize(self.info.ty, bytes, nrows * ne0).map_err(|e| terr(e.to_string()))
    }

    fn raw(&self, ty: GgmlType) -> Option<&[u8]> {
        (ty == self.info.ty).then(|| self.file.tensor_data(self.info))
    }
}

/// Re-quantize a GGUF file. `cancel` is polled between chunks.
pub fn quantize_gguf(
    opts: &QuantizeOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<ConvertReport, ConvertError> {
    let t0 = Instant::now();
    super::refuse_existing(&opts.output, opts.overwrite)?;
    if opts.input == opts.output {
        return Err(ConvertError::Config {
            path: opts.output.clone(),
            msg: "output would overwrite the input".into(),
        });
    }
    let f = GgufFile::open(&opts.input)?;
    let facts = facts(&f);
    let n_params: u64 = f.tensors.iter().map(TensorInfo::n_elements).sum();
    // Check requantization before a calibration run (types do not depend on
    // calibration except the mix's ffn_down bump, which is also a rounding).
    let plan = |stats: Statistics| -> Result<Vec<(usize, GgmlType)>, ConvertError> {
        f.tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let n_dims = t.dims.len();
                let r = TensorRef {
                    name: &t.name,
                    role: role_of(&t.name, n_dims),
                    row_len: t.dims.first().copied().unwrap_or(1) as usize,
                    n_dims,
                };
                let ty = if quantizable(&t.name, n_dims) {
                    opts.policy.choose(&r, &facts, stats)
                } else {
                    t.ty
                };
                if ty != t.ty && !is_float(t.ty) && !opts.allow_requantize {
                    return Err(ConvertError::Requantize {
                        file: f.path.clone(),
                        tensor: t.name.clone(),
                        ty: t.ty,
                    });
                }
                Ok((i, ty))
            })
            .collect()
    };
    plan(Statistics::None)?;
    let calibration = calibrate::for_gguf(
        &opts.input,
        n_params,
        opts.policy.scheme,
        &opts.calibrate,
        !opts.progress,
        cancel,
    )?;
    let chosen = plan(Statistics::of(calibration.as_ref()))?;
    let requant = chosen
        .iter()
        .filter(|(i, ty)| *ty != f.tensors[*i].ty && !is_float(f.tensors[*i].ty))
        .count();
    if requant > 0 && opts.progress {
        eprintln!(
            "warning: re-quantizing {requant} already-quantized tensors (dequantized first; precision already lost stays lost)"
        );
    }
    let mut meta: Vec<(String, GgufValue)> = f
        .metadata
        .iter()
        .filter(|(k, _)| !stale_key(k))
        .cloned()
        .collect();
    meta.push((
        "general.file_type".into(),
        GgufValue::U32(llama_ftype_for(opts.policy.scheme.main_type())),
    ));
    meta.push(("general.quantization_version".into(), GgufValue::U32(2)));
    if let Some(c) = &calibration {
        meta.extend(c.metadata());
    }
    let jobs: Vec<Job> = chosen
        .iter()
        .map(|&(i, ty)| {
            let t = &f.tensors[i];
            let source = if t.ty == GgmlType::Bf16 {
                crate::bnb::WeightDtype::Bf16
            } else {
                crate::bnb::WeightDtype::F16
            };
            let role = role_of(&t.name, t.dims.len());
            let (transform, ty) = pipeline::scheme_encoding(opts.policy.scheme, role, source, ty);
            Job {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty,
                transform,
                input: Box::new(GgufTensor { file: &f, info: t }),
            }
        })
        .collect();
    let jobs = super::fuse::apply(jobs, opts.policy.fuse_qkv, opts.progress);
    let enc = Encoding::new(opts.quantizer, calibration.as_ref());
    let w = pipeline::write_gguf(&opts.output, &meta, &jobs, &enc, progress, cancel)?;
    let mut types = BTreeMap::new();
    for (k, v) in w.types {
        types.insert(k, v);
    }
    Ok(ConvertReport {
        output: w.output,
        bytes: w.bytes,
        n_tensors: jobs.len(),
        types,
        seconds: t0.elapsed().as_secs_f64(),
        n_params,
        calibration: calibration.map(|c| calibrate::describe(&c.provenance)),
    })
}
