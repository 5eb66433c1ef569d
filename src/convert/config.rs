//! `config.json` of a Llama checkpoint.

use super::ConvertError;
use serde_json::Value;
use std::path::Path;

/// The hyper-parameters the GGUF needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub name: String,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    /// Linear rope scaling factor, if any.
    pub rope_linear_factor: Option<f32>,
    pub raw: Value,
}

impl LlamaConfig {
    pub fn load(dir: &Path) -> Result<Self, ConvertError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ConvertError::Io(path.clone(), e))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| ConvertError::Config {
            path: path.clone(),
            msg: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(raw, dir).map_err(|msg| ConvertError::Config { path, msg })
    }

    pub fn from_value(raw: Value, dir: &Path) -> Result<Self, String> {
        let archs: Vec<&str> = raw
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let model_type = raw.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
        if !(archs.contains(&"LlamaForCausalLM") || (archs.is_empty() && model_type == "llama")) {
            return Err(format!(
                "unsupported architecture {archs:?} (model_type {model_type:?}); only LlamaForCausalLM is supported"
            ));
        }
        let req = |k: &str| -> Result<usize, String> {
            raw.get(k)
                .and_then(|v| v.as_u64())
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| format!("missing or invalid \"{k}\" (a positive integer)"))
        };
        let hidden_size = req("hidden_size")?;
        let n_heads = req("num_attention_heads")?;
        let n_kv_heads = match raw.get("num_key_value_heads") {
            None | Some(Value::Null) => n_heads,
            Some(_) => req("num_key_value_heads")?,
        };
        let head_dim = match raw.get("head_dim") {
            None | Some(Value::Null) => hidden_size / n_heads,
            Some(_) => req("head_dim")?,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}"
            ));
        }
        if head_dim * n_heads != hidden_size && raw.get("head_dim").is_none() {
            return Err(format!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {n_heads}"
            ));
        }
        if head_dim % 2 != 0 {
            return Err(format!("head dimension {head_dim} must be even for RoPE"));
        }
        if let Some(act) = raw.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "silu" {
                return Err(format!(
                    "hidden_act {act:?} is not supported (expected \"silu\")"
                ));
            }
        }
        if raw.get("attention_bias").and_then(|b| b.as_bool()) == Some(true)
            || raw.get("mlp_bias").and_then(|b| b.as_bool()) == Some(true)
        {
            return Err("attention_bias/mlp_bias = true is not supported".into());
        }
        let rope_linear_factor = match raw.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(s) => {
                let ty = s
                    .get("type")
                    .or_else(|| s.get("rope_type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                let f = s.get("factor").and_then(|f| f.as_f64()).unwrap_or(1.0) as f32;
                if ty != "linear" {
                    return Err(format!(
                        "rope_scaling type {ty:?} is not supported (only linear)"
                    ));
                }
                Some(f)
            }
        };
        let name = raw
            .get("_name_or_path")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "llama".into());
        Ok(Self {
            name,
            hidden_size,
            n_layers: req("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            intermediate_size: req("intermediate_size")?,
            vocab_size: req("vocab_size")?,
            rms_norm_eps: raw
                .get("rms_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-6) as f32,
            rope_theta: raw
                .get("rope_theta")
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0) as f32,
            context_length: raw
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .unwrap_or(4096) as usize,
            tie_word_embeddings: raw
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            rope_linear_factor,
            raw,
        })
    }
}
