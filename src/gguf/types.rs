//! GGUF metadata value types, with their on-disk codes (tensor types are
//! `crate::ggml_type`).

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
