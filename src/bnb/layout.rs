//! Tensor names and the packed JSON quant state of a bitsandbytes 4-bit
//! checkpoint, as written by `Linear4bit._save_to_state_dict` /
//! `QuantState.as_dict(packed=True)`.

use super::BnbError;
use serde::{Deserialize, Serialize};

/// Suffix of the packed-JSON tensor that marks an NF4-quantized weight.
pub const NF4_STATE_SUFFIX: &str = ".quant_state.bitsandbytes__nf4";
/// Suffix of the FP4 variant (recognised so it can be refused clearly).
pub const FP4_STATE_SUFFIX: &str = ".quant_state.bitsandbytes__fp4";

/// Companion tensor suffixes that sit next to a quantized `X.weight`
/// (`X.weight.absmax`, ...). The last one is the packed JSON quant state.
pub const COMPANION_SUFFIXES: [&str; 5] = [
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
    NF4_STATE_SUFFIX,
];

/// True when the tensor names look like a bitsandbytes 4-bit checkpoint
/// (at least one `*.quant_state.bitsandbytes__nf4` or `__fp4` tensor).
pub fn detect(names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| n.ends_with(NF4_STATE_SUFFIX) || n.ends_with(FP4_STATE_SUFFIX))
}

/// Names of the quantized weights (`X.weight`, the packed uint8 tensor), in
/// the order their quant-state tensors appear in `names`.
pub fn quantized_weights(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| {
            n.strip_suffix(NF4_STATE_SUFFIX)
                .or_else(|| n.strip_suffix(FP4_STATE_SUFFIX))
        })
        .map(str::to_owned)
        .collect()
}

/// The companion tensor names of one quantized weight (all five; the two
/// `nested_*` ones exist only with double quantization).
pub fn companion_names(weight: &str) -> [String; 5] {
    COMPANION_SUFFIXES.map(|s| format!("{weight}{s}"))
}

/// The names in `names` that are bitsandbytes companions of some quantized
/// weight present in `names`: the converter must not treat them as model
/// tensors ("unexpected tensor" checks) and must not copy them.
pub fn companion_tensors(names: &[&str]) -> Vec<String> {
    let weights = quantized_weights(names);
    let mut out = Vec::new();
    for w in &weights {
        for full in companion_names(w) {
            if names.contains(&full.as_str()) {
                out.push(full);
            }
        }
        let fp4 = format!("{w}{FP4_STATE_SUFFIX}");
        if names.contains(&fp4.as_str()) {
            out.push(fp4);
        }
    }
    out
}

/// True when `name` has the form of a bitsandbytes companion tensor.
pub fn is_companion(name: &str) -> bool {
    name.ends_with(FP4_STATE_SUFFIX) || COMPANION_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The float type bitsandbytes dequantizes into (`quant_state.dtype`), i.e.
/// the dtype of the original weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    /// Parse a torch dtype name as stored in the quant state ("bfloat16").
    pub fn from_torch_name(s: &str) -> Result<Self, BnbError> {
        match s {
            "float32" | "float" => Ok(Self::F32),
            "float16" | "half" => Ok(Self::F16),
            "bfloat16" => Ok(Self::Bf16),
            other => Err(BnbError::Unsupported(format!("weight dtype {other:?}"))),
        }
    }

    /// The torch dtype name `QuantState.as_dict` writes.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    /// Round an f32 to this dtype the way a CUDA float-to-T store does
    /// (round to nearest, ties to even), returned widened back to f32.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Self::F32 => x,
            Self::F16 => half::f16::from_f32(x).to_f32(),
            Self::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }
}

/// The non-tensor part of a quant state, stored as UTF-8 JSON bytes in
/// `X.weight.quant_state.bitsandbytes__nf4` (Python `json.dumps` of a dict
/// with these keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantStateJson {
    pub quant_type: String,
    pub blocksize: usize,
    pub dtype: String,
    pub shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_blocksize: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_dtype: Option<String>,
    /// The mean of the f32 absmax values, subtracted before they were quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_offset: Option<f64>,
}

impl QuantStateJson {
    /// Parse the packed bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, BnbError> {
        let s = std::str::from_utf8(bytes)
            .map_err(|e| BnbError::QuantState(format!("not UTF-8: {e}")))?;
        serde_json::from_str(s).map_err(|e| BnbError::QuantState(e.to_string()))
    }

    /// Serialize the way Python's `json.dumps` does (", " and ": " separators,
    /// keys in `QuantState.as_dict` order).
    pub fn to_python_json(&self) -> String {
        let shape = self
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.quant_type, self.blocksize, self.dtype, shape
        );
        if let (Some(nb), Some(nd), Some(off)) = (
            self.nested_blocksize,
            &self.nested_dtype,
            self.nested_offset,
        ) {
            s.push_str(&format!(
                ", \"nested_blocksize\": {nb}, \"nested_dtype\": \"{nd}\", \"nested_offset\": {}",
                python_float_repr(off)
            ));
        }
        s.push('}');
        s
    }
}

/// A float printed so that it parses back to the same f64 (as Python's repr);
/// always has a decimal point or exponent so JSON readers see a float.
fn python_float_repr(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}
