//! bitsandbytes 4-bit (NF4, optionally double-quantized) checkpoints as input.
//!
//! A `transformers` model saved with `BitsAndBytesConfig(load_in_4bit=True,
//! bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)` stores each
//! quantized Linear weight `X.weight` as packed uint8 codes plus companion
//! tensors (see [`COMPANION_SUFFIXES`]). This module recognises such
//! checkpoints, lists the companions the converter must hide, and turns the
//! raw tensors back into the exact values bitsandbytes' `dequantize_4bit`
//! produces. It is independent of any safetensors reader: callers pass raw
//! bytes, dtype strings and shapes ([`RawTensor`]).
//!
//! Converter usage:
//! ```no_run
//! # use airavata::bnb;
//! # fn lookup(_: &str) -> Option<bnb::TensorData<Vec<u8>>> { None }
//! # let names: Vec<&str> = vec![];
//! if bnb::detect(&names) {
//!     let hidden = bnb::companion_tensors(&names); // skip these
//!     for w in bnb::quantized_weights(&names) {
//!         let d = bnb::dequantize_with(&w, lookup)?; // d.shape, d.data (f32), d.dtype
//!     }
//! }
//! # Ok::<(), bnb::BnbError>(())
//! ```

mod codebook;
mod dequant;
mod layout;
mod quantize;

pub use codebook::{dynamic_map_signed, nf4_thresholds, NF4_CODE};
pub use dequant::{
    block_absmax, dequantize, dequantize_with, Dequantized, Nf4Parts, QuantState, RawTensor,
    TensorData,
};
pub use layout::{
    companion_names, companion_tensors, detect, is_companion, quantized_weights, QuantStateJson,
    WeightDtype, COMPANION_SUFFIXES, FP4_STATE_SUFFIX, NF4_STATE_SUFFIX,
};
pub use quantize::{nf4_round_trip, quantize_nf4, Nf4QuantizeOptions, OwnedTensor};

/// Errors reading a bitsandbytes quantized weight.
#[derive(Debug, thiserror::Error)]
pub enum BnbError {
    #[error("missing tensor {0}")]
    Missing(String),
    #[error("bad quant_state: {0}")]
    QuantState(String),
    #[error("unexpected tensor layout: {0}")]
    Layout(String),
    #[error("unsupported bitsandbytes checkpoint: {0}")]
    Unsupported(String),
    #[error("{weight}: {source}")]
    Weight {
        weight: String,
        #[source]
        source: Box<BnbError>,
    },
}

impl BnbError {
    fn for_weight(self, weight: &str) -> Self {
        match self {
            e @ (Self::Missing(_) | Self::Weight { .. }) => e,
            e => Self::Weight {
                weight: weight.to_owned(),
                source: Box::new(e),
            },
        }
    }
}
