//! A bitsandbytes-compatible NF4 quantizer, to build test checkpoints with
//! exactly the tensor layout `transformers` + bitsandbytes save (4-bit NF4,
//! blockwise absmax, optional double quantization of the absmax values).
//!
//! Follows `bitsandbytes.functional.quantize_4bit(..., quant_type="nf4",
//! compress_statistics=True)`:
//! * input is first held in the weight dtype (bf16/f16 rounding), then read
//!   as f32;
//! * per block of `blocksize` elements: `absmax = max |x|`, `x * (1/absmax)`
//!   encoded with the NF4 decision thresholds; codes packed high nibble first;
//! * nested: `offset = mean(absmax)`, `absmax - offset` quantized blockwise
//!   (256) with the signed dynamic 8-bit map (per-block max, scale by its
//!   reciprocal, nearest map entry).
//!
//! Floating-point summation order of the mean differs from CUDA's reduction,
//! so the stored offset can differ from bitsandbytes' in the last bit; the
//! stored values are self-consistent, which is what dequantization needs.

use super::codebook::{
    dynamic_map_signed, nearest_in_sorted, nf4_encode, nf4_thresholds, NF4_CODE,
};
use super::layout::{QuantStateJson, WeightDtype, NF4_STATE_SUFFIX};
use super::BnbError;

/// An owned tensor ready to be written to safetensors.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    pub name: String,
    /// safetensors dtype string: "U8" or "F32".
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Options of [`quantize_nf4`].
#[derive(Debug, Clone, Copy)]
pub struct Nf4QuantizeOptions {
    pub dtype: WeightDtype,
    /// First-level block size (bitsandbytes default 64).
    pub blocksize: usize,
    /// Double quantization (`bnb_4bit_use_double_quant=True`) with this nested block size (256).
    pub nested_blocksize: Option<usize>,
}

impl Default for Nf4QuantizeOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::Bf16,
            blocksize: 64,
            nested_blocksize: Some(256),
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Quantize `values` (row-major, `shape`) of the weight named `weight`
/// (e.g. `"model.layers.0.mlp.up_proj.weight"`) into the tensors bitsandbytes
/// would save: `weight`, `weight.absmax`, `weight.quant_map`, and with double
/// quantization `weight.nested_absmax`, `weight.nested_quant_map`, plus
/// `weight.quant_state.bitsandbytes__nf4`.
pub fn quantize_nf4(
    weight: &str,
    values: &[f32],
    shape: &[usize],
    opts: Nf4QuantizeOptions,
) -> Result<Vec<OwnedTensor>, BnbError> {
    let n: usize = shape.iter().product();
    if n != values.len() || n == 0 {
        return Err(BnbError::Layout(format!(
            "{} values for shape {shape:?}",
            values.len()
        )));
    }
    let bs = opts.blocksize;
    if !bs.is_power_of_two() || !(64..=4096).contains(&bs) {
        return Err(BnbError::Unsupported(format!("blocksize {bs}")));
    }
    let x: Vec<f32> = values.iter().map(|&v| opts.dtype.round(v)).collect();
    let thresholds = nf4_thresholds();

    let mut absmax = Vec::with_capacity(n.div_ceil(bs));
    let mut packed = vec![0u8; n.div_ceil(2)];
    for (b, block) in x.chunks(bs).enumerate() {
        let m = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        absmax.push(m);
        let inv = 1.0f32 / m;
        for (k, &v) in block.iter().enumerate() {
            let e = b * bs + k;
            let code = nf4_encode(v * inv, &thresholds);
            if e.is_multiple_of(2) {
                packed[e / 2] |= code << 4;
            } else {
                packed[e / 2] |= code;
            }
        }
    }

    let mut state = QuantStateJson {
        quant_type: "nf4".into(),
        blocksize: bs,
        dtype: opts.dtype.torch_name().into(),
        shape: shape.to_vec(),
        nested_blocksize: None,
        nested_dtype: None,
        nested_offset: None,
    };
    let mut out = vec![OwnedTensor {
        name: weight.to_owned(),
        dtype: "U8",
        shape: vec![packed.len(), 1],
        data: packed,
    }];

    match opts.nested_blocksize {
        None => out.push(OwnedTensor {
            name: format!("{weight}.absmax"),
            dtype: "F32",
            shape: vec![absmax.len()],
            data: f32_bytes(&absmax),
        }),
        Some(nb) => {
            if !nb.is_power_of_two() || !(64..=4096).contains(&nb) {
                return Err(BnbError::Unsupported(format!("nested blocksize {nb}")));
            }
            // absmax.mean() in f32 (accumulated in f64 here, then rounded).
            let mean = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32;
            let centered: Vec<f32> = absmax.iter().map(|&a| a - mean).collect();
            let map = dynamic_map_signed();
            let mut q = Vec::with_capacity(centered.len());
            let mut nested_absmax = Vec::new();
            for block in centered.chunks(nb) {
                let m = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                nested_absmax.push(m);
                let inv = 1.0f32 / m;
                q.extend(block.iter().map(|&v| nearest_in_sorted(&map, v * inv)));
            }
            state.nested_blocksize = Some(nb);
            state.nested_dtype = Some("float32".into());
            state.nested_offset = Some(mean as f64);
            out.push(OwnedTensor {
                name: format!("{weight}.absmax"),
                dtype: "U8",
                shape: vec![q.len()],
                data: q,
            });
            out.push(OwnedTensor {
                name: format!("{weight}.nested_absmax"),
                dtype: "F32",
                shape: vec![nested_absmax.len()],
                data: f32_bytes(&nested_absmax),
            });
            out.push(OwnedTensor {
                name: format!("{weight}.nested_quant_map"),
                dtype: "F32",
                shape: vec![256],
                data: f32_bytes(&map),
            });
        }
    }
    out.push(OwnedTensor {
        name: format!("{weight}.quant_map"),
        dtype: "F32",
        shape: vec![16],
        data: f32_bytes(&NF4_CODE),
    });
    let json = state.to_python_json().into_bytes();
    out.push(OwnedTensor {
        name: format!("{weight}{NF4_STATE_SUFFIX}"),
        dtype: "U8",
        shape: vec![json.len()],
        data: json,
    });
    Ok(out)
}

/// The old app's weights: `values` (row-major, `shape`) after an exact
/// bitsandbytes NF4 + double-quantization round trip in `dtype` (block 64,
/// 8-bit absmax with an fp32 scale per 256 blocks), i.e. what
/// `dequantize_4bit` returns for the weight `transformers` would save.
pub fn nf4_round_trip(
    values: &[f32],
    shape: &[usize],
    dtype: WeightDtype,
) -> Result<Vec<f32>, BnbError> {
    const NAME: &str = "w.weight";
    let opts = Nf4QuantizeOptions {
        dtype,
        ..Default::default()
    };
    let tensors = quantize_nf4(NAME, values, shape, opts)?;
    let d = super::dequantize_with(NAME, |n| {
        tensors
            .iter()
            .find(|t| t.name == n)
            .map(|t| super::TensorData {
                dtype: t.dtype.to_string(),
                shape: t.shape.clone(),
                data: t.data.as_slice(),
            })
    })?;
    Ok(d.data)
}
