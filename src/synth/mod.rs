//! Synthetic random-weight Llama checkpoints in Hugging Face layout, for
//! tests and benchmarks (kernel speed does not depend on weight values).

mod vocab;

pub use vocab::synth_vocab;

use crate::convert::{self, plan, LlamaConfig};
use crate::quant;
use crate::safetensors::{self, Dtype, TensorHeader};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafetensorsError),
    #[error(transparent)]
    Convert(#[from] convert::ConvertError),
}

/// ai4bharat/Airavata's exact config.json values.
pub fn airavata_config() -> Value {
    json!({
        "_name_or_path": "ai4bharat/Airavata",
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": null,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.37.1",
        "use_cache": true,
        "vocab_size": 48065
    })
}

/// A small GQA Llama (2 layers, 4 heads, 2 KV heads, head_dim 16) whose row
/// lengths are multiples of 256 where the 4-bit formats need it.
pub fn tiny_config() -> Value {
    json!({
        "_name_or_path": "airavata-tiny-random",
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "vocab_size": 1024
    })
}

/// How to synthesize.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub config: Value,
    pub dtype: Dtype,
    pub shards: usize,
    pub seed: u64,
    /// Standard deviation of the weight matrices.
    pub std: f32,
    /// Number of SentencePiece pieces (the rest of vocab_size is `<pad>`-style added tokens).
    pub sp_pieces: Option<usize>,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            config: airavata_config(),
            dtype: Dtype::BF16,
            shards: 3,
            seed: 0,
            std: 0.02,
            sp_pieces: None,
        }
    }
}

/// splitmix64: the next value of the stream whose state is `x`.
pub(crate) fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Deterministic N(mean, std) values for one tensor.
pub fn gaussian(seed: u64, name: &str, n: usize, mean: f32, std: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, c)| {
        let mut s = seed ^ name_hash(name) ^ (ci as u64).wrapping_mul(0xA24B_AED4_963E_E407);
        for pair in c.chunks_mut(2) {
            let u1 = ((splitmix(&mut s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt();
            let th = std::f64::consts::TAU * u2;
            pair[0] = mean + std * (r * th.cos()) as f32;
            if pair.len() > 1 {
                pair[1] = mean + std * (r * th.sin()) as f32;
            }
        }
    });
    out
}

fn encode(dtype: Dtype, v: &[f32]) -> Result<Vec<u8>, SynthError> {
    let ty = match dtype {
        Dtype::F32 => crate::gguf::GgmlType::F32,
        Dtype::F16 => crate::gguf::GgmlType::F16,
        Dtype::BF16 => crate::gguf::GgmlType::Bf16,
        other => {
            return Err(SynthError::Config(format!(
                "dtype {} not supported",
                other.name()
            )))
        }
    };
    quant::quantize(ty, v, v.len().max(1), None, quant::QuantMode::Reference)
        .map_err(|e| SynthError::Config(e.to_string()))
}

/// Write a complete random checkpoint (config, shards + index, tokenizer) into `dir`.
pub fn write_checkpoint(dir: &Path, o: &SynthOptions) -> Result<(), SynthError> {
    std::fs::create_dir_all(dir).map_err(|e| SynthError::Io(dir.to_path_buf(), e))?;
    let cfg = LlamaConfig::from_value(o.config.clone(), dir).map_err(SynthError::Config)?;
    let planned = plan::plan(&cfg, !cfg.tie_word_embeddings);
    let headers: Vec<TensorHeader> = planned
        .iter()
        .map(|t| TensorHeader {
            name: t.hf_name.clone(),
            dtype: o.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    // Split into shards of roughly equal bytes, keeping order.
    let total: usize = headers.iter().map(|h| h.byte_len()).sum();
    let n_shards = o.shards.clamp(1, headers.len());
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); n_shards];
    let mut acc = 0usize;
    for (i, h) in headers.iter().enumerate() {
        let g = ((acc * n_shards) / total.max(1)).min(n_shards - 1);
        groups[g].push(i);
        acc += h.byte_len();
    }
    groups.retain(|g| !g.is_empty());
    let n_files = groups.len();
    let mut weight_map = serde_json::Map::new();
    for (gi, g) in groups.iter().enumerate() {
        let fname = if n_files == 1 && o.shards <= 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", gi + 1, n_files)
        };
        let hs: Vec<TensorHeader> = g.iter().map(|&i| headers[i].clone()).collect();
        for h in &hs {
            weight_map.insert(h.name.clone(), Value::String(fname.clone()));
        }
        let mut err = None;
        safetensors::write_file(&dir.join(&fname), &hs, &[("format", "pt")], |k| {
            let t = &planned[g[k]];
            let n: usize = t.shape.iter().product();
            let v = if t.role == plan::Role::Norm {
                gaussian(o.seed, &t.hf_name, n, 1.0, 0.1)
            } else {
                gaussian(o.seed, &t.hf_name, n, 0.0, o.std)
            };
            encode(o.dtype, &v).unwrap_or_else(|e| {
                err = Some(e);
                Vec::new()
            })
        })?;
        if let Some(e) = err {
            return Err(e);
        }
    }
    if n_files > 1 || o.shards > 1 {
        let idx = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &idx)?;
    }
    let mut config = o.config.clone();
    if let Some(m) = config.as_object_mut() {
        m.insert(
            "torch_dtype".into(),
            Value::String(
                match o.dtype {
                    Dtype::F32 => "float32",
                    Dtype::F16 => "float16",
                    _ => "bfloat16",
                }
                .into(),
            ),
        );
    }
    write_json(&dir.join("config.json"), &config)?;
    // Tokenizer: SentencePiece pieces plus `<pad>` added tokens up to vocab_size.
    let n_sp = o.sp_pieces.unwrap_or(if cfg.vocab_size > 300 {
        cfg.vocab_size - 1
    } else {
        cfg.vocab_size
    });
    let sp = synth_vocab(n_sp.min(cfg.vocab_size));
    std::fs::write(dir.join("tokenizer.model"), sp.encode())
        .map_err(|e| SynthError::Io(dir.join("tokenizer.model"), e))?;
    if n_sp < cfg.vocab_size {
        let added: serde_json::Map<String, Value> = (n_sp..cfg.vocab_size)
            .map(|i| {
                let name = if i == n_sp {
                    "<pad>".to_string()
                } else {
                    format!("<pad{i}>")
                };
                (name, json!(i))
            })
            .collect();
        write_json(&dir.join("added_tokens.json"), &Value::Object(added))?;
    }
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"}),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
    )?;
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<(), SynthError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| SynthError::Config(e.to_string()))?;
    std::fs::write(path, s + "\n").map_err(|e| SynthError::Io(path.to_path_buf(), e))
}

/// Write the tiny random checkpoint (bf16, 2 shards) into `dir/hf` and
/// convert it to `dir/tiny-<scheme>.gguf`. Returns the GGUF path.
/// (Test fixture: `test-support` builds only.)
#[cfg(any(test, feature = "test-support"))]
pub fn tiny_test_gguf_with(dir: &Path, scheme: convert::Scheme) -> Result<PathBuf, SynthError> {
    let hf = dir.join("hf");
    if !hf.join("config.json").is_file() {
        write_checkpoint(
            &hf,
            &SynthOptions {
                config: tiny_config(),
                dtype: Dtype::BF16,
                shards: 2,
                seed: 7,
                std: 0.08,
                sp_pieces: None,
            },
        )?;
    }
    let out = dir.join(format!("tiny-{}.gguf", scheme.name()));
    if !out.is_file() {
        let opts = convert::ConvertOptions {
            input: hf,
            output: out.clone(),
            policy: convert::TypePolicy {
                scheme,
                ..Default::default()
            },
            quantizer: Some(quant::QuantMode::Reference),
            calibrate: Default::default(),
            overwrite: true,
            progress: false,
        };
        convert::convert(
            &opts,
            &convert::Silent,
            &std::sync::atomic::AtomicBool::new(false),
        )?;
    }
    Ok(out)
}

/// The tiny random model as an F16 GGUF (for server and engine tests;
/// `test-support` builds only).
#[cfg(any(test, feature = "test-support"))]
pub fn tiny_test_gguf(dir: &Path) -> Result<PathBuf, SynthError> {
    tiny_test_gguf_with(dir, convert::Scheme::F16)
}
