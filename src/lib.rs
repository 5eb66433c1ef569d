//! airavata: convert Hugging Face Llama checkpoints (ai4bharat/Airavata) to GGUF
//! with an NF4-equivalent 4-bit scheme, and serve them over HTTP on llama.cpp.

pub mod bench;
pub mod bnb;
pub mod calib;
pub mod chat_template;
pub mod cli;
pub mod convert;
pub mod engine;
pub mod eval;
pub mod ggml_type;
pub mod gguf;
pub mod hub;
pub mod model_cache;
pub mod quant;
pub mod router;
pub mod safetensors;
pub mod server;
pub mod synth;
pub mod tokenizer;
pub mod version;
