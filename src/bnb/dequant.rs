//! Dequantization of one bitsandbytes NF4 weight from its raw tensors.
//!
//! Semantics (bitsandbytes `dequantize_4bit` with a nested `QuantState`,
//! CUDA kernels `kDequantizeBlockwise<General8bit>` and `<NF4>`):
//!
//! 1. absmax, when nested (double quantization), all in f32 and in this order:
//!    `a = nested_quant_map[absmax_u8[j]] * nested_absmax[j / nested_blocksize]`,
//!    then `absmax[j] = a + nested_offset` (a separate torch add, no FMA);
//!    otherwise `absmax` is stored as f32.
//! 2. element `2i` is the HIGH nibble of packed byte `i`, element `2i+1` the low
//!    nibble (`qvals[j] >> 4` then `qvals[j] & 0x0F`).
//! 3. `w = NF4_LUT[code] * absmax[e / blocksize]` in f32, then stored into the
//!    quant-state dtype (bf16 / f16: round to nearest even). The kernel uses
//!    its built-in NF4 table, not the stored `quant_map`; we require the two to
//!    agree and use the built-in one.

use super::codebook::NF4_CODE;
use super::layout::{QuantStateJson, WeightDtype};
use super::BnbError;

/// One raw tensor as found in a safetensors file: dtype string ("U8", "F32",
/// "F16", "BF16"; case-insensitive), shape, little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    pub dtype: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// The raw tensors of one quantized weight `X.weight`. `nested_*` are present
/// only with double quantization (`bnb_4bit_use_double_quant=True`).
#[derive(Debug, Clone, Copy)]
pub struct Nf4Parts<'a> {
    /// `X.weight`: packed codes, uint8, shape `[ceil(n/2), 1]`.
    pub weight: RawTensor<'a>,
    /// `X.weight.absmax`: uint8 when nested, else f32; one per block.
    pub absmax: RawTensor<'a>,
    /// `X.weight.quant_map`: 16 f32 values.
    pub quant_map: RawTensor<'a>,
    /// `X.weight.nested_absmax`: f32, one per nested block.
    pub nested_absmax: Option<RawTensor<'a>>,
    /// `X.weight.nested_quant_map`: 256 f32 values.
    pub nested_quant_map: Option<RawTensor<'a>>,
    /// `X.weight.quant_state.bitsandbytes__nf4`: uint8 bytes of JSON.
    pub quant_state: RawTensor<'a>,
}

/// A dequantized weight: row-major values (already rounded to `dtype`, so
/// writing them as `dtype` is lossless), with the original shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Dequantized {
    pub shape: Vec<usize>,
    pub dtype: WeightDtype,
    pub data: Vec<f32>,
}

const BLOCKSIZES: [usize; 7] = [64, 128, 256, 512, 1024, 2048, 4096];

fn dtype_is(t: &RawTensor<'_>, want: &str) -> bool {
    t.dtype.eq_ignore_ascii_case(want)
}

fn elems(t: &RawTensor<'_>) -> usize {
    t.shape.iter().product()
}

fn f32_values(name: &str, t: &RawTensor<'_>, expect: Option<usize>) -> Result<Vec<f32>, BnbError> {
    if !dtype_is(t, "F32") {
        return Err(BnbError::Layout(format!(
            "{name}: dtype {} (expected F32)",
            t.dtype
        )));
    }
    let n = elems(t);
    if t.data.len() != n * 4 {
        return Err(BnbError::Layout(format!(
            "{name}: {} bytes for {n} f32 values",
            t.data.len()
        )));
    }
    if let Some(e) = expect {
        if n != e {
            return Err(BnbError::Layout(format!(
                "{name}: {n} values, expected {e}"
            )));
        }
    }
    Ok(t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn u8_values<'a>(name: &str, t: &RawTensor<'a>, expect: usize) -> Result<&'a [u8], BnbError> {
    if !dtype_is(t, "U8") {
        return Err(BnbError::Layout(format!(
            "{name}: dtype {} (expected U8)",
            t.dtype
        )));
    }
    if t.data.len() != elems(t) || t.data.len() != expect {
        return Err(BnbError::Layout(format!(
            "{name}: {} bytes / shape {:?}, expected {expect}",
            t.data.len(),
            t.shape
        )));
    }
    Ok(t.data)
}

/// Parsed quant state plus derived sizes, validated against bitsandbytes' limits.
#[derive(Debug, Clone)]
pub struct QuantState {
    pub json: QuantStateJson,
    pub dtype: WeightDtype,
    pub n: usize,
    pub n_blocks: usize,
}

impl QuantState {
    /// Parse and validate the JSON bytes of `X.weight.quant_state.bitsandbytes__nf4`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BnbError> {
        let json = QuantStateJson::parse(bytes)?;
        if json.quant_type != "nf4" {
            return Err(BnbError::Unsupported(format!(
                "quant_type {:?}",
                json.quant_type
            )));
        }
        if !BLOCKSIZES.contains(&json.blocksize) {
            return Err(BnbError::QuantState(format!(
                "blocksize {}",
                json.blocksize
            )));
        }
        let dtype = WeightDtype::from_torch_name(&json.dtype)?;
        let n: usize = json.shape.iter().product();
        if json.shape.is_empty() || n == 0 {
            return Err(BnbError::QuantState(format!("shape {:?}", json.shape)));
        }
        let n_blocks = n.div_ceil(json.blocksize);
        if let Some(nb) = json.nested_blocksize {
            if !BLOCKSIZES.contains(&nb) {
                return Err(BnbError::QuantState(format!("nested_blocksize {nb}")));
            }
        }
        Ok(Self {
            json,
            dtype,
            n,
            n_blocks,
        })
    }

    /// True with double quantization (nested absmax).
    pub fn nested(&self) -> bool {
        self.json.nested_offset.is_some() || self.json.nested_blocksize.is_some()
    }
}

/// The f32 per-block absmax values (step 1 of the module docs).
pub fn block_absmax(parts: &Nf4Parts<'_>, qs: &QuantState) -> Result<Vec<f32>, BnbError> {
    if !qs.nested() {
        return f32_values("absmax", &parts.absmax, Some(qs.n_blocks));
    }
    let (Some(nb), Some(off)) = (qs.json.nested_blocksize, qs.json.nested_offset) else {
        return Err(BnbError::QuantState(
            "nested quant state needs nested_blocksize and nested_offset".into(),
        ));
    };
    if let Some(d) = &qs.json.nested_dtype {
        if d != "float32" {
            return Err(BnbError::Unsupported(format!("nested_dtype {d:?}")));
        }
    }
    let nested_absmax_t = parts
        .nested_absmax
        .ok_or_else(|| BnbError::Missing("nested_absmax".into()))?;
    let nested_map_t = parts
        .nested_quant_map
        .ok_or_else(|| BnbError::Missing("nested_quant_map".into()))?;
    let q = u8_values("absmax", &parts.absmax, qs.n_blocks)?;
    let nested_absmax = f32_values(
        "nested_absmax",
        &nested_absmax_t,
        Some(qs.n_blocks.div_ceil(nb)),
    )?;
    let map = f32_values("nested_quant_map", &nested_map_t, Some(256))?;
    // torch.tensor(float(nested_offset)) is float32.
    let offset = off as f32;
    Ok(q.iter()
        .enumerate()
        .map(|(j, &c)| {
            let a = map[c as usize] * nested_absmax[j / nb];
            a + offset
        })
        .collect())
}

/// Dequantize one NF4 weight exactly as bitsandbytes does (see module docs).
pub fn dequantize(parts: &Nf4Parts<'_>) -> Result<Dequantized, BnbError> {
    if !dtype_is(&parts.quant_state, "U8") {
        return Err(BnbError::Layout(format!(
            "quant_state: dtype {} (expected U8)",
            parts.quant_state.dtype
        )));
    }
    let qs = QuantState::from_bytes(parts.quant_state.data)?;
    let quant_map = f32_values("quant_map", &parts.quant_map, Some(16))?;
    if quant_map
        .iter()
        .zip(NF4_CODE)
        .any(|(a, b)| (a - b).abs() > 1e-6)
    {
        return Err(BnbError::Unsupported(
            "quant_map is not the standard NF4 codebook".into(),
        ));
    }
    let absmax = block_absmax(parts, &qs)?;
    let packed = u8_values("weight", &parts.weight, qs.n.div_ceil(2))?;
    let bs = qs.json.blocksize;
    let dt = qs.dtype;
    let mut data = Vec::with_capacity(qs.n);
    for (i, &byte) in packed.iter().enumerate() {
        let e = 2 * i;
        let hi = NF4_CODE[(byte >> 4) as usize] * absmax[e / bs];
        data.push(dt.round(hi));
        if e + 1 < qs.n {
            let lo = NF4_CODE[(byte & 0x0f) as usize] * absmax[(e + 1) / bs];
            data.push(dt.round(lo));
        }
    }
    Ok(Dequantized {
        shape: qs.json.shape.clone(),
        dtype: dt,
        data,
    })
}

/// One tensor handed over by a caller's reader: safetensors dtype string,
/// row-major shape, and the bytes in any holder (`Vec<u8>`, `&[u8]`, a map).
#[derive(Debug, Clone)]
pub struct TensorData<B> {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: B,
}

impl<B: AsRef<[u8]>> TensorData<B> {
    fn raw(&self) -> RawTensor<'_> {
        RawTensor {
            dtype: &self.dtype,
            shape: &self.shape,
            data: self.data.as_ref(),
        }
    }
}

/// Gather the parts of `weight` (e.g. `"model.layers.0.self_attn.q_proj.weight"`)
/// through an accessor that returns a tensor by full name (None when absent),
/// and dequantize. This is the entry point for a converter: pass a closure
/// over whatever safetensors reader it uses.
pub fn dequantize_with<B, F>(weight: &str, mut get: F) -> Result<Dequantized, BnbError>
where
    B: AsRef<[u8]>,
    F: FnMut(&str) -> Option<TensorData<B>>,
{
    let mut need = |suffix: &str| {
        let name = format!("{weight}{suffix}");
        get(&name).ok_or(BnbError::Missing(name))
    };
    let w = need("")?;
    let absmax = need(".absmax")?;
    let quant_map = need(".quant_map")?;
    let quant_state = need(super::layout::NF4_STATE_SUFFIX)?;
    let nested_absmax = need(".nested_absmax").ok();
    let nested_quant_map = need(".nested_quant_map").ok();
    dequantize(&Nf4Parts {
        weight: w.raw(),
        absmax: absmax.raw(),
        quant_map: quant_map.raw(),
        nested_absmax: nested_absmax.as_ref().map(TensorData::raw),
        nested_quant_map: nested_quant_map.as_ref().map(TensorData::raw),
        quant_state: quant_state.raw(),
    })
    .map_err(|e| e.for_weight(weight))
}
