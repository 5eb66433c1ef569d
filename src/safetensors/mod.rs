//! Validating safetensors reader (single files and sharded checkpoints).
//!
//! Headers are checked before any data is touched: JSON well-formed, every
//! dtype known, shapes consistent with byte ranges, ranges inside the file and
//! not overlapping. Tensor data is memory-mapped one tensor at a time.

mod checkpoint;
mod writer;

pub use checkpoint::Checkpoint;
pub use writer::{write_file, TensorHeader};

use half::{bf16, f16};
use memmap2::{Mmap, MmapOptions};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest header we accept (the format's own reference limit is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path}: invalid safetensors header: {msg}")]
    Header { path: PathBuf, msg: String },
    #[error("{path}: tensor {tensor}: {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Index { path: PathBuf, msg: String },
}

/// Element types found in safetensors files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "I16" => Self::I16,
            "U16" => Self::U16,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "I32" => Self::I32,
            "U32" => Self::U32,
            "F32" => Self::F32,
            "F64" => Self::F64,
            "I64" => Self::I64,
            "U64" => Self::U64,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::BF16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "U8",
            Self::I8 => "I8",
            Self::I16 => "I16",
            Self::U16 => "U16",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I32 => "I32",
            Self::U32 => "U32",
            Self::F32 => "F32",
            Self::F64 => "F64",
            Self::I64 => "I64",
            Self::U64 => "U64",
        }
    }
    /// Whether `to_f32` accepts this dtype.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F16 | Self::BF16 | Self::F32)
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    /// Shape in row-major (PyTorch) order.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open safetensors file with a validated header.
#[derive(Debug)]
pub struct SafetensorsFile {
    pub path: PathBuf,
    file: File,
    pub tensors: BTreeMap<String, TensorEntry>,
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref().to_path_buf();
        let io = |e| SafetensorsError::Io(path.clone(), e);
        let mut file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let herr = |msg: String| SafetensorsError::Header {
            path: path.clone(),
            msg,
        };
        if file_len < 8 {
            return Err(herr(format!(
                "file is {file_len} bytes, too short for a header"
            )));
        }
        let mut lenb = [0u8; 8];
        file.read_exact(&mut lenb).map_err(io)?;
        let hlen = u64::from_le_bytes(lenb);
        if hlen > MAX_HEADER || hlen > file_len - 8 {
            return Err(herr(format!(
                "header length {hlen} exceeds the file ({file_len} bytes) or the 100 MB limit"
            )));
        }
        let mut hbuf = vec![0u8; hlen as usize];
        file.read_exact(&mut hbuf).map_err(io)?;
        let (tensors, metadata) = parse_header(&hbuf, 8 + hlen, file_len).map_err(herr)?;
        Ok(Self {
            path,
            file,
            tensors,
            metadata,
        })
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Map a tensor's bytes (read-only). The map is dropped with the value.
    pub fn map(&self, t: &TensorEntry) -> Result<Mapped, SafetensorsError> {
        self.map_range(t, 0, t.end - t.start)
    }

    /// Map `len` bytes of a tensor starting `offset` bytes into its data.
    pub fn map_range(
        &self,
        t: &TensorEntry,
        offset: u64,
        len: u64,
    ) -> Result<Mapped, SafetensorsError> {
        if offset.checked_add(len).is_none_or(|e| e > t.end - t.start) {
            return Err(SafetensorsError::Tensor {
                path: self.path.clone(),
                tensor: t.name.clone(),
                msg: format!("range {offset}+{len} is outside the tensor"),
            });
        }
        if len == 0 {
            return Ok(Mapped(None));
        }
        // SAFETY: read-only mapping of a range validated against the file
        // length at open; the bytes are only read. Concurrent truncation of
        // the file by another process is outside what we can guard against.
        let m = unsafe {
            MmapOptions::new()
                .offset(t.start + offset)
                .len(len as usize)
                .map(&self.file)
        }
        .map_err(|e| SafetensorsError::Io(self.path.clone(), e))?;
        Ok(Mapped(Some(m)))
    }

    /// Whole tensor as f32 (F32, F16 or BF16 sources).
    pub fn read_f32(&self, t: &TensorEntry) -> Result<Vec<f32>, SafetensorsError> {
        let m = self.map(t)?;
        let mut out = vec![0f32; t.numel()];
        to_f32(t.dtype, m.bytes(), &mut out).map_err(|msg| SafetensorsError::Tensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            msg,
        })?;
        Ok(out)
    }
}

/// A mapped tensor range.
pub struct Mapped(Option<Mmap>);

impl Mapped {
    pub fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// Convert raw little-endian elements of `dtype` to f32.
pub fn to_f32(dtype: Dtype, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    let n = dst.len();
    if src.len() != n * dtype.size() {
        return Err(format!(
            "{} bytes do not hold {n} {} values",
            src.len(),
            dtype.name()
        ));
    }
    match dtype {
        Dtype::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        Dtype::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        other => {
            return Err(format!(
                "dtype {} is not supported (expected F32, F16 or BF16)",
                other.name()
            ))
        }
    }
    Ok(())
}

type Parsed = (BTreeMap<String, TensorEntry>, BTreeMap<String, String>);

/// Parse a header JSON; `data_start` is the absolute offset of the data
/// section and `file_len` the file size.
pub fn parse_header(json: &[u8], data_start: u64, file_len: u64) -> Result<Parsed, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("header is not a JSON object")?;
    let data_len = file_len.saturating_sub(data_start);
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, val) in obj {
        if name == "__metadata__" {
            let m = val.as_object().ok_or("__metadata__ is not an object")?;
            for (k, v) in m {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("__metadata__.{k} is not a string"))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let t = val
            .as_object()
            .ok_or_else(|| format!("tensor {name}: entry is not an object"))?;
        let dts = t
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| format!("tensor {name}: missing dtype"))?;
        let dtype =
            Dtype::parse(dts).ok_or_else(|| format!("tensor {name}: unknown dtype {dts:?}"))?;
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("tensor {name}: missing shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("tensor {name}: shape has a non-integer entry"))?;
        let offs = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| format!("tensor {name}: data_offsets must be [start, end]"))?;
        let (s, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(s), Some(e)) => (s, e),
            _ => return Err(format!("tensor {name}: data_offsets are not integers")),
        };
        if s > e {
            return Err(format!(
                "tensor {name}: data_offsets [{s}, {e}] are reversed"
            ));
        }
        if e > data_len {
            return Err(format!(
                "tensor {name}: data_offsets [{s}, {e}] run past the end of the data ({data_len} bytes)"
            ));
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        let need = numel
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| format!("tensor {name}: size overflows"))?;
        if need != e - s {
            return Err(format!(
                "tensor {name}: shape {shape:?} of {} needs {need} bytes but data_offsets span {}",
                dtype.name(),
                e - s
            ));
        }
        tensors.insert(
            name.clone(),
            TensorEntry {
                name: name.clone(),
                dtype,
                shape,
                start: data_start + s,
                end: data_start + e,
            },
        );
    }
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .values()
        .filter(|t| t.end > t.start)
        .map(|t| (t.start, t.end, t.name.as_str()))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors {} and {} overlap", w[0].2, w[1].2));
        }
    }
    Ok((tensors, metadata))
}
