//! Output type policy: which ggml type each tensor is written as.

use super::plan::{PlannedTensor, Role};
use crate::gguf::GgmlType;
use std::fmt;
use std::str::FromStr;

/// A conversion scheme (`--scheme` / `--outtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// NF4-equivalent 4-bit: IQ4_XS (IQ4_NL where rows are not a multiple of
    /// 256), output Q6_K, norms F32.
    #[default]
    Nf4,
    F32,
    F16,
    Bf16,
    Q8_0,
    /// Plain Q4_0 everywhere (output Q6_K), for comparisons.
    Q4_0,
    /// Q4_K everywhere (output Q6_K), for comparisons.
    Q4K,
}

impl Scheme {
    /// The type most of the file is in (for `general.file_type`).
    pub fn main_type(self) -> GgmlType {
        match self {
            Self::Nf4 => GgmlType::Iq4Xs,
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
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
        }
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
        Ok(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "nf4" | "iq4_xs" => Self::Nf4,
            "f32" => Self::F32,
            "f16" => Self::F16,
            "bf16" => Self::Bf16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_k" => Self::Q4K,
            other => {
                return Err(format!(
                    "unknown scheme `{other}` (expected nf4, f32, f16, bf16, q8_0, q4_0 or q4_k)"
                ))
            }
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

/// The full policy: scheme plus overrides.
#[derive(Debug, Clone, Default)]
pub struct TypePolicy {
    pub scheme: Scheme,
    pub output_type: Option<GgmlType>,
    pub embedding_type: Option<GgmlType>,
    pub overrides: Vec<TypeOverride>,
}

/// Types tried, in order, when the wanted type does not fit the row length.
fn fallback(t: GgmlType) -> &'static [GgmlType] {
    match t {
        GgmlType::Iq4Xs => &[GgmlType::Iq4Nl, GgmlType::Q8_0, GgmlType::F16],
        GgmlType::Q4K | GgmlType::Q6K => &[GgmlType::Q8_0, GgmlType::F16],
        GgmlType::Iq4Nl | GgmlType::Q4_0 | GgmlType::Q8_0 => &[GgmlType::F16],
        _ => &[],
    }
}

impl TypePolicy {
    /// The type wanted for `t` before checking the row length.
    fn wanted(&self, t: &PlannedTensor) -> GgmlType {
        if t.role == Role::Norm || t.shape.len() < 2 {
            return GgmlType::F32;
        }
        if let Some(o) = self
            .overrides
            .iter()
            .find(|o| glob_match(&o.pattern, &t.gguf_name))
        {
            return o.ty;
        }
        let base = self.scheme.main_type();
        match t.role {
            Role::Output => self.output_type.unwrap_or(match self.scheme {
                Scheme::Nf4 | Scheme::Q4_0 | Scheme::Q4K => GgmlType::Q6K,
                _ => base,
            }),
            Role::Embedding => self.embedding_type.unwrap_or(base),
            _ => base,
        }
    }

    /// The type `t` is written as: the wanted type, or the first fallback
    /// whose block fits the row length.
    pub fn choose(&self, t: &PlannedTensor) -> GgmlType {
        let want = self.wanted(t);
        let n = t.row_len();
        if want.row_bytes(n).is_some() {
            return want;
        }
        fallback(want)
            .iter()
            .copied()
            .find(|f| f.row_bytes(n).is_some())
            .unwrap_or(GgmlType::F32)
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

    #[test]
    fn nf4_policy_by_row_length() {
        let p = TypePolicy::default();
        assert_eq!(
            p.choose(&t("blk.0.attn_q.weight", vec![4096, 4096], Role::Weight)),
            GgmlType::Iq4Xs
        );
        assert_eq!(
            p.choose(&t("blk.0.ffn_down.weight", vec![4096, 11008], Role::Weight)),
            GgmlType::Iq4Xs
        );
        assert_eq!(
            p.choose(&t("x", vec![4096, 288], Role::Weight)),
            GgmlType::Iq4Nl
        );
        assert_eq!(
            p.choose(&t("x", vec![64, 172], Role::Weight)),
            GgmlType::F16
        );
        assert_eq!(
            p.choose(&t("output.weight", vec![48065, 4096], Role::Output)),
            GgmlType::Q6K
        );
        assert_eq!(
            p.choose(&t("output.weight", vec![512, 64], Role::Output)),
            GgmlType::Q8_0
        );
        assert_eq!(
            p.choose(&t("token_embd.weight", vec![48065, 4096], Role::Embedding)),
            GgmlType::Iq4Xs
        );
        assert_eq!(
            p.choose(&t("blk.0.attn_norm.weight", vec![4096], Role::Norm)),
            GgmlType::F32
        );
        let q8 = TypePolicy {
            scheme: Scheme::Q8_0,
            ..Default::default()
        };
        assert_eq!(
            q8.choose(&t("output.weight", vec![48065, 4096], Role::Output)),
            GgmlType::Q8_0
        );
    }

    #[test]
    fn scheme_names_parse() {
        for s in ["nf4", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k"] {
            assert_eq!(s.parse::<Scheme>().unwrap().name(), s);
        }
        assert!("q3"
            .parse::<Scheme>()
            .unwrap_err()
            .contains("unknown scheme"));
    }
}
