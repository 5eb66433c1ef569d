//! GGUF v3 files: types, a validating reader and a streaming writer.

mod reader;
mod types;
mod writer;

pub use crate::ggml_type::{llama_ftype_for, GgmlType};
pub use reader::{GgufFile, TensorInfo};
pub use types::{GgufValue, GgufValueType};
pub use writer::{encode_header, GgufWriter, TensorSpec, ALIGNMENT};

use std::path::PathBuf;

/// Errors reading or writing GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path}: invalid GGUF: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{0}: no tensor named {1}")]
    MissingTensor(PathBuf, String),
    #[error("cannot write GGUF: {0}")]
    Invalid(String),
}

/// Ordered GGUF metadata.
pub type Metadata = Vec<(String, GgufValue)>;

/// Parse a GGUF image held in memory (for tests and fuzzing); returns the
/// metadata and tensor table or the validation message.
pub fn parse_bytes(buf: &[u8]) -> Result<(Metadata, Vec<TensorInfo>), String> {
    reader::parse(buf).map(|p| (p.metadata, p.tensors))
}

/// A metadata value as JSON (arrays longer than 16 abbreviated unless `full`).
pub fn to_json(v: &GgufValue, full: bool) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        GgufValue::Array(_, items) => {
            let take = if full {
                items.len()
            } else {
                items.len().min(16)
            };
            let mut a: Vec<J> = items[..take].iter().map(|x| to_json(x, full)).collect();
            if take < items.len() {
                a.push(J::String(format!("… {} more", items.len() - take)));
            }
            J::Array(a)
        }
        GgufValue::String(s) => J::String(s.clone()),
        GgufValue::Bool(b) => J::Bool(*b),
        GgufValue::F32(x) => serde_json::json!(x),
        GgufValue::F64(x) => serde_json::json!(x),
        GgufValue::I8(x) => serde_json::json!(x),
        GgufValue::I16(x) => serde_json::json!(x),
        GgufValue::I32(x) => serde_json::json!(x),
        GgufValue::I64(x) => serde_json::json!(x),
        other => serde_json::json!(other.as_u64()),
    }
}
