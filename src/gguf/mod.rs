//! GGUF v3 files: types, a validating reader and a streaming writer.

mod types;

pub use types::{llama_ftype_for, GgmlType, GgufValue, GgufValueType};
