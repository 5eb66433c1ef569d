//! ggml tensor types and GGUF metadata value types, with their on-disk codes.

use std::fmt;
use std::str::FromStr;

/// A ggml tensor type as stored in GGUF (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq4Nl,
    Iq4Xs,
    Bf16,
    /// Any other code: readable (sizes known or not), never written by us.
    Other(u32),
}

impl GgmlType {
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            20 => Self::Iq4Nl,
            23 => Self::Iq4Xs,
            30 => Self::Bf16,
            c => Self::Other(c),
        }
    }

    pub fn code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::Iq4Nl => 20,
            Self::Iq4Xs => 23,
            Self::Bf16 => 30,
            Self::Other(c) => c,
        }
    }

    /// (elements per block, bytes per block), or None for a type we do not know.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Iq4Nl => (32, 18),
            Self::Iq4Xs => (256, 136),
            Self::Other(c) => match c {
                9 => (32, 36), // Q8_1
                24 => (1, 1),     // I8
                25 => (1, 2),     // I16
                26 => (1, 4),     // I32
                27 | 28 => (1, 8),
                _ => return None,
            },
        })
    }

    pub fn block_size(self) -> usize {
        self.block_layout().map_or(1, |l| l.0)
    }

    /// Bytes for a row of `n` elements; None when `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let (bs, bb) = self.block_layout()?;
        if !n.is_multiple_of(bs) {
            return None;
        }
        Some(n / bs * bb)
    }

    /// Bits per weight.
    pub fn bpw(self) -> f64 {
        match self.block_layout() {
            Some((bs, bb)) => bb as f64 * 8.0 / bs as f64,
            None => f64::NAN,
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q5_0 => "Q5_0".into(),
            Self::Q5_1 => "Q5_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q2K => "Q2_K".into(),
            Self::Q3K => "Q3_K".into(),
            Self::Q4K => "Q4_K".into(),
            Self::Q5K => "Q5_K".into(),
            Self::Q6K => "Q6_K".into(),
            Self::Q8K => "Q8_K".into(),
            Self::Iq4Nl => "IQ4_NL".into(),
            Self::Iq4Xs => "IQ4_XS".into(),
            Self::Bf16 => "BF16".into(),
            Self::Other(c) => format!("type#{c}"),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for GgmlType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "F32" => Self::F32,
            "F16" => Self::F16,
            "BF16" => Self::Bf16,
            "Q4_0" => Self::Q4_0,
            "Q4_1" => Self::Q4_1,
            "Q5_0" => Self::Q5_0,
            "Q5_1" => Self::Q5_1,
            "Q8_0" => Self::Q8_0,
            "Q2_K" | "Q2K" => Self::Q2K,
            "Q3_K" | "Q3K" => Self::Q3K,
            "Q4_K" | "Q4K" => Self::Q4K,
            "Q5_K" | "Q5K" => Self::Q5K,
            "Q6_K" | "Q6K" => Self::Q6K,
            "IQ4_NL" | "IQ4NL" => Self::Iq4Nl,
            "IQ4_XS" | "IQ4XS" => Self::Iq4Xs,
            other => {
                return Err(format!(
                    "unknown tensor type `{other}` (expected one of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)"
                ))
            }
        })
    }
}

/// `general.file_type` (`enum llama_ftype`) for a file whose bulk is `t`.
pub fn llama_ftype_for(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q8_0 => 7,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 12, // Q3_K_M
        GgmlType::Q4K => 15, // Q4_K_M
        GgmlType::Q5K => 17, // Q5_K_M
        GgmlType::Q6K => 18,
        GgmlType::Q8K => 1024,
        GgmlType::Iq4Nl => 25,
        GgmlType::Iq4Xs => 30,
        GgmlType::Bf16 => 32,
        GgmlType::Other(_) => 1024, // LLAMA_FTYPE_GUESSED
    }
}

/// GGUF metadata value type codes (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    pub fn from_code(c: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match c {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Homogeneous array: element type plus values (each of that type).
    Array(GgufValueType, Vec<GgufValue>),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        match self {
            Self::U8(_) => GgufValueType::U8,
            Self::I8(_) => GgufValueType::I8,
            Self::U16(_) => GgufValueType::U16,
            Self::I16(_) => GgufValueType::I16,
            Self::U32(_) => GgufValueType::U32,
            Self::I32(_) => GgufValueType::I32,
            Self::F32(_) => GgufValueType::F32,
            Self::Bool(_) => GgufValueType::Bool,
            Self::String(_) => GgufValueType::String,
            Self::U64(_) => GgufValueType::U64,
            Self::I64(_) => GgufValueType::I64,
            Self::F64(_) => GgufValueType::F64,
            Self::Array(..) => GgufValueType::Array,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v as u64),
            Self::U16(v) => Some(v as u64),
            Self::U32(v) => Some(v as u64),
            Self::U64(v) => Some(v),
            Self::I8(v) if v >= 0 => Some(v as u64),
            Self::I16(v) if v >= 0 => Some(v as u64),
            Self::I32(v) if v >= 0 => Some(v as u64),
            Self::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v as f64),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn strings(v: impl IntoIterator<Item = String>) -> Self {
        Self::Array(
            GgufValueType::String,
            v.into_iter().map(Self::String).collect(),
        )
    }

    pub fn f32s(v: impl IntoIterator<Item = f32>) -> Self {
        Self::Array(GgufValueType::F32, v.into_iter().map(Self::F32).collect())
    }

    pub fn i32s(v: impl IntoIterator<Item = i32>) -> Self {
        Self::Array(GgufValueType::I32, v.into_iter().map(Self::I32).collect())
    }

    /// Short human-readable rendering (arrays abbreviated).
    pub fn display_short(&self) -> String {
        match self {
            Self::String(s) => {
                let mut t: String = s.chars().take(80).collect();
                if s.chars().count() > 80 {
                    t.push('…');
                }
                format!("{t:?}")
            }
            Self::Array(t, v) => {
                let head: Vec<String> = v.iter().take(5).map(|x| x.display_short()).collect();
                let more = if v.len() > 5 { ", …" } else { "" };
                format!("[{t:?}; {}] [{}{}]", v.len(), head.join(", "), more)
            }
            Self::U8(x) => x.to_string(),
            Self::I8(x) => x.to_string(),
            Self::U16(x) => x.to_string(),
            Self::I16(x) => x.to_string(),
            Self::U32(x) => x.to_string(),
            Self::I32(x) => x.to_string(),
            Self::F32(x) => x.to_string(),
            Self::Bool(x) => x.to_string(),
            Self::U64(x) => x.to_string(),
            Self::I64(x) => x.to_string(),
            Self::F64(x) => x.to_string(),
        }
    }
}
