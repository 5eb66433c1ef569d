//! Output type policy: which ggml type each tensor is written as.

use super::plan::{PlannedTensor, Role};
use crate::gguf::GgmlType;
use std::fmt;
use std::str::FromStr;

/// The importance statistics types are chosen with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistics {
    /// Uncalibrated.
    None,
    /// A llama-imatrix file (`--imatrix`): llama-quantize's mix for a
    /// quantization with an imatrix.
    ImatrixFile,
    /// Statistics we collected (default calibration, `--calibration`).
    Collected,
}

impl Statistics {
    /// The statistics of `c`.
    pub fn of(c: Option<&crate::calib::Calibration>) -> Self {
        match c {
            None => Self::None,
            Some(c) if c.provenance.method == "imatrix" => Self::ImatrixFile,
            Some(_) => Self::Collected,
        }
    }
}

/// A conversion scheme (`--scheme` / `--outtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// NF4-equivalent 4-bit: IQ4_XS (IQ4_NL where rows are not a multiple of
    /// 256) with llama-quantize's IQ4_XS mix (output Q6_K, tied embeddings
    /// as output, early `ffn_down` Q5_K unless an imatrix file is given), norms F32.
    #[default]
    Nf4,
    F32,
    F16,
    Bf16,
    Q8_0,
    /// Q4_0 with llama-quantize's Q4_0 mix (output Q6_K), for comparisons.
    Q4_0,
    /// Q4_K with llama-quantize's Q4_K_M mix, for comparisons.
    Q4K,
    /// The old app's bitsandbytes NF4 + double quantization, as a baseline:
    /// every linear weight after an exact NF4 round trip (block 64, 8-bit
    /// absmax with an fp32 scale per 256 blocks), stored as F16; embeddings
    /// and output kept 16-bit as transformers does; norms F32.
    BnbNf4,
}

/// Every scheme, for help texts and tests.
pub const SCHEMES: [Scheme; 8] = [
    Scheme::Nf4,
    Scheme::F32,
    Scheme::F16,
    Scheme::Bf16,
    Scheme::Q8_0,
    Scheme::Q4_0,
    Scheme::Q4K,
    Scheme::BnbNf4,
];

impl Scheme {
    /// The type most of the file is in (for `general.file_type`).
    pub fn main_type(self) -> GgmlType {
        match self {
            Self::Nf4 => GgmlType::Iq4Xs,
            Self::F32 => GgmlType::F32,
            Self::F16 | Self::BnbNf4 => GgmlType::F16,
            Self::Bf16 => GgmlType::Bf16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4K => GgmlType::Q4K,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
            Self::BnbNf4 => "bnb-nf4",
        }
    }
    /// Whether this scheme rounds weights to fewer than 8 bits (calibration
    /// and llama-quantize's type mixes apply).
    pub fn is_low_bit(self) -> bool {
        matches!(self, Self::Nf4 | Self::Q4_0 | Self::Q4K)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        SCHEMES
            .into_iter()
            .find(|sc| sc.name().replace('_', "-") == norm)
            .or(match norm.as_str() {
                "iq4-xs" => Some(Self::Nf4),
                _ => None,
            })
            .ok_or_else(|| {
                let names: Vec<&str> = SCHEMES.iter().map(|s| s.name()).collect();
                format!(
                    "unknown scheme `{s}` (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// A `--tensor-type PATTERN=TYPE` override. PATTERN is a glob over GGUF
/// tensor names (`*` matches any run of characters), e.g. `blk.*.ffn_down*`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeOverride {
    pub pattern: String,
    pub ty: GgmlType,
}

impl FromStr for TypeOverride {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, t) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected PATTERN=TYPE"))?;
        if p.is_empty() {
            return Err(format!("`{s}`: empty pattern"));
        }
        Ok(Self {
            pattern: p.to_string(),
            ty: t.parse()?,
        })
    }
}

/// Glob match with `*` wildcards.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Model facts that llama-quantize's type mixes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelFacts {
    pub n_layer: usize,
    /// Query heads per KV head.
    pub n_gqa: usize,
    /// No `output.weight`: `token_embd.weight` is also the output matrix.
    pub tied_embeddings: bool,
}

/// A tensor as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// GGUF name, e.g. `blk.3.ffn_down.weight`.
    pub name: &'a str,
    pub role: Role,
    /// Elements per row (ggml's `ne[0]`).
    pub row_len: usize,
    pub n_dims: usize,
}

impl<'a> TensorRef<'a> {
    pub fn of(t: &'a PlannedTensor) -> Self {
        Self {
            name: &t.gguf_name,
            role: t.role,
            row_len: t.row_len(),
            n_dims: t.shape.len(),
        }
    }
    /// `N` of a `blk.N.…` name.
    fn layer(&self) -> Option<usize> {
        self.name
            .strip_prefix("blk.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }
    fn is(&self, kind: &str) -> bool {
        self.name.ends_with(&format!(".{kind}.weight"))
    }
}

/// The full policy: scheme, explicit types and overrides, and whether
/// llama-quantize's per-tensor mix applies (`pure` turns it off, as
/// `llama-quantize --pure` does).
#[derive(Debug, Clone, Default)]
pub struct TypePolicy {
    pub scheme: Scheme,
    pub output_type: Option<GgmlType>,
    pub embedding_type: Option<GgmlType>,
    pub overrides: Vec<TypeOverride>,
    pub pure: bool,
    /// Write each layer's Q, K and V as one `attn_qkv` tensor where their
    /// types agree (a layout choice; `convert::fuse`).
    pub fuse_qkv: bool,
}

/// llama-quantize's fallback when a type's block does not divide the row
/// (`tensor_type_fallback`); F16 when the fallback does not fit either.
pub fn fallback(t: GgmlType, row_len: usize) -> GgmlType {
    if t.row_bytes(row_len).is_some() {
        return t;
    }
    let f = match t {
        GgmlType::Iq4Xs => GgmlType::Iq4Nl,
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if f.row_bytes(row_len).is_some() {
        f
    } else if GgmlType::F16.row_bytes(row_len).is_some() {
        GgmlType::F16
    } else {
        GgmlType::F32
    }
}

/// llama.cpp's `use_more_bits` layer rule of the K-quant mixes.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl TypePolicy {
    /// Whether `t` is rounded at all (norms and 1-D tensors stay F32).
    pub fn quantizes(t: &TensorRef) -> bool {
        t.role != Role::Norm && t.n_dims >= 2
    }

    /// The type `t` is written as, given the statistics quantization uses.
    pub fn choose(&self, t: &TensorRef, facts: &ModelFacts, stats: Statistics) -> GgmlType {
        if !Self::quantizes(t) {
            return GgmlType::F32;
        }
        let is_output =
            t.role == Role::Output || (facts.tied_embeddings && t.role == Role::Embedding);
        if let Some(o) = self
            .overrides
            .iter()
            .find(|o| glob_match(&o.pattern, t.name))
        {
            return fallback(o.ty, t.row_len);
        }
        if t.role == Role::Embedding && !facts.tied_embeddings {
            if let Some(e) = self.embedding_type {
                return fallback(e, t.row_len);
            }
        }
        if is_output {
            if let Some(o) = self.output_type {
                return fallback(o, t.row_len);
            }
        }
        let base = self.scheme.main_type();
        if self.scheme == Scheme::BnbNf4 || !self.scheme.is_low_bit() {
            return fallback(base, t.row_len);
        }
        if self.pure {
            return fallback(base, t.row_len);
        }
        let want = if is_output {
            if t.row_bytes_fit(base) {
                GgmlType::Q6K
            } else {
                GgmlType::Q8_0
            }
        } else {
            self.mix(t, facts, stats).unwrap_or(base)
        };
        fallback(want, t.row_len)
    }

    /// llama-quantize's per-tensor bumps for the scheme's ftype. With an
    /// imatrix file llama-quantize leaves early `ffn_down` of IQ4_XS at the
    /// base type; with statistics we collected the default mix keeps its
    /// Q5_K bump: it measured lower KLD at the same size as llama-quantize's
    /// default mix (SmolLM2, BENCHMARKS.md).
    fn mix(&self, t: &TensorRef, facts: &ModelFacts, stats: Statistics) -> Option<GgmlType> {
        let layer = t.layer()?;
        let n = facts.n_layer.max(1);
        match self.scheme {
            Scheme::Nf4 => {
                let bump = (t.is("attn_v") && facts.n_gqa >= 4)
                    || (t.is("ffn_down") && layer < n / 8 && stats != Statistics::ImatrixFile);
                if bump {
                    return Some(GgmlType::Q5K);
                }
                // With statistics we collected, a GQA model's `attn_v` (at
                // most half of `attn_q`, so a small share of the file) gets
                // 5 bits too: on SmolLM2 (3 query heads per KV head) −6 % KLD
                // for +0.45 % bytes (BENCHMARKS.md). Q5_0 where Q5_K's 256
                // does not divide the row (Q5_1 would cost a third more).
                (t.is("attn_v") && facts.n_gqa >= 2 && stats == Statistics::Collected).then(|| {
                    if t.row_bytes_fit(GgmlType::Q5K) {
                        GgmlType::Q5K
                    } else {
                        GgmlType::Q5_0
                    }
                })
            }
            Scheme::Q4K => ((t.is("attn_v") || t.is("ffn_down")) && use_more_bits(layer, n))
                .then_some(GgmlType::Q6K),
            Scheme::Q4_0 => (t.is("ffn_down") && stats != Statistics::None && layer < n / 8)
                .then_some(GgmlType::Q4_1),
            _ => None,
        }
    }
}

impl TensorRef<'_> {
    fn row_bytes_fit(&self, ty: GgmlType) -> bool {
        ty.row_bytes(self.row_len).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::plan::Permute;

    fn t(name: &str, shape: Vec<usize>, role: Role) -> PlannedTensor {
        PlannedTensor {
            hf_name: String::new(),
            gguf_name: name.into(),
            shape,
            permute: Permute::None,
            role,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("blk.*.ffn_down*", "blk.12.ffn_down.weight"));
        assert!(!glob_match("blk.*.ffn_down*", "blk.12.ffn_up.weight"));
        assert!(glob_match("output.weight", "output.weight"));
        assert!(!glob_match("output", "output.weight"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*attn_v*", "blk.0.attn_v.weight"));
    }

    /// `imatrix`: with a llama-imatrix file.
    fn choose(p: &TypePolicy, t: &PlannedTensor, facts: &ModelFacts, imatrix: bool) -> GgmlType {
        let stats = if imatrix {
            Statistics::ImatrixFile
        } else {
            Statistics::None
        };
        p.choose(&TensorRef::of(t), facts, stats)
    }

    const AIRAVATA: ModelFacts = ModelFacts {
        n_layer: 32,
        n_gqa: 1,
        tied_embeddings: false,
    };

    #[test]
    fn nf4_policy_by_row_length() {
        let p = TypePolicy::default();
        let f = &AIRAVATA;
        let w = |name: &str, shape: Vec<usize>| t(name, shape, Role::Weight);
        assert_eq!(
            choose(&p, &w("blk.0.attn_q.weight", vec![4096, 4096]), f, true),
            GgmlType::Iq4Xs
        );
        assert_eq!(
            choose(&p, &w("blk.9.ffn_down.weight", vec![4096, 11008]), f, false),
            GgmlType::Iq4Xs
        );
        assert_eq!(
            choose(&p, &w("blk.1.attn_k.weight", vec![4096, 288]), f, false),
            GgmlType::Iq4Nl
        );
        assert_eq!(
            choose(&p, &w("blk.1.attn_k.weight", vec![64, 172]), f, false),
            GgmlType::F16
        );
        assert_eq!(
            choose(
                &p,
                &t("output.weight", vec![48065, 4096], Role::Output),
                f,
                false
            ),
            GgmlType::Q6K
        );
        assert_eq!(
            choose(
                &p,
                &t("output.weight", vec![512, 64], Role::Output),
                f,
                false
            ),
            GgmlType::Q8_0
        );
        assert_eq!(
            choose(
                &p,
                &t("token_embd.weight", vec![48065, 4096], Role::Embedding),
                f,
                false
            ),
            GgmlType::Iq4Xs
        );
        assert_eq!(
            choose(
                &p,
                &t("blk.0.attn_norm.weight", vec![4096], Role::Norm),
                f,
                false
            ),
            GgmlType::F32
        );
        let q8 = TypePolicy {
            scheme: Scheme::Q8_0,
            ..Default::default()
        };
        assert_eq!(
            choose(
                &q8,
                &t("output.weight", vec![48065, 4096], Role::Output),
                f,
                false
            ),
            GgmlType::Q8_0
        );
    }

    /// llama-quantize's IQ4_XS mix (`llama_tensor_get_type_impl`).
    #[test]
    fn nf4_mix_follows_llama_quantize() {
        let p = TypePolicy::default();
        // SmolLM2-135M: 30 layers, 9 heads over 3 KV heads, tied embeddings.
        let smol = ModelFacts {
            n_layer: 30,
            n_gqa: 3,
            tied_embeddings: true,
        };
        let embd = t("token_embd.weight", vec![49152, 576], Role::Embedding);
        assert_eq!(
            choose(&p, &embd, &smol, false),
            GgmlType::Q8_0,
            "tied: output type"
        );
        let down = |i: usize| {
            t(
                &format!("blk.{i}.ffn_down.weight"),
                vec![576, 1536],
                Role::Weight,
            )
        };
        assert_eq!(
            choose(&p, &down(2), &smol, false),
            GgmlType::Q5K,
            "n_layer/8 = 3"
        );
        assert_eq!(choose(&p, &down(3), &smol, false), GgmlType::Iq4Xs);
        assert_eq!(
            choose(&p, &down(0), &smol, true),
            GgmlType::Iq4Xs,
            "no bump with imatrix"
        );
        assert_eq!(
            p.choose(&TensorRef::of(&down(0)), &smol, Statistics::Collected),
            GgmlType::Q5K,
            "collected statistics keep the default mix"
        );
        let v = t("blk.4.attn_v.weight", vec![192, 576], Role::Weight);
        assert_eq!(choose(&p, &v, &smol, false), GgmlType::Iq4Nl);
        assert_eq!(
            choose(&p, &v, &smol, true),
            GgmlType::Iq4Nl,
            "imatrix file: llama-quantize's mix"
        );
        assert_eq!(
            p.choose(&TensorRef::of(&v), &smol, Statistics::Collected),
            GgmlType::Q5_0,
            "collected statistics: GQA attn_v gets 5 bits (Q5_0 on 576-wide rows)"
        );
        let v7b = t("blk.4.attn_v.weight", vec![4096, 4096], Role::Weight);
        assert_eq!(
            p.choose(&TensorRef::of(&v7b), &AIRAVATA, Statistics::Collected),
            GgmlType::Iq4Xs,
            "no GQA (Airavata): no bump"
        );
        let gqa2 = ModelFacts {
            n_gqa: 2,
            ..AIRAVATA
        };
        assert_eq!(
            p.choose(&TensorRef::of(&v7b), &gqa2, Statistics::Collected),
            GgmlType::Q5K
        );
        let gqa8 = ModelFacts { n_gqa: 8, ..smol };
        assert_eq!(
            choose(&p, &v, &gqa8, false),
            GgmlType::Q5_1,
            "Q5_K falls back to Q5_1"
        );
        let pure = TypePolicy {
            pure: true,
            ..Default::default()
        };
        assert_eq!(choose(&pure, &down(0), &smol, false), GgmlType::Iq4Xs);
        assert_eq!(choose(&pure, &embd, &smol, false), GgmlType::Iq4Nl);
        // Q4_K_M: attn_v and ffn_down get Q6_K on use_more_bits layers.
        let q4km = TypePolicy {
            scheme: Scheme::Q4K,
            ..Default::default()
        };
        let f = &AIRAVATA;
        let down7b = |i: usize| {
            t(
                &format!("blk.{i}.ffn_down.weight"),
                vec![4096, 11008],
                Role::Weight,
            )
        };
        assert_eq!(choose(&q4km, &down7b(0), f, false), GgmlType::Q6K);
        assert_eq!(choose(&q4km, &down7b(4), f, false), GgmlType::Q4K);
        assert_eq!(
            choose(&q4km, &down7b(6), f, false),
            GgmlType::Q6K,
            "(6-4)%3 == 2"
        );
        assert_eq!(choose(&q4km, &down7b(31), f, false), GgmlType::Q6K);
        // bnb-nf4 keeps everything 16-bit.
        let bnb = TypePolicy {
            scheme: Scheme::BnbNf4,
            ..Default::default()
        };
        assert_eq!(choose(&bnb, &down7b(0), f, false), GgmlType::F16);
    }

    #[test]
    fn scheme_names_parse() {
        for s in SCHEMES {
            assert_eq!(s.name().parse::<Scheme>().unwrap(), s);
        }
        assert_eq!("BNB_NF4".parse::<Scheme>().unwrap(), Scheme::BnbNf4);
        assert!("q3"
            .parse::<Scheme>()
            .unwrap_err()
            .contains("unknown scheme"));
    }
}
