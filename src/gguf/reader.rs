//! A validating GGUF reader over a memory map.

use super::types::{GgufValue, GgufValueType};
use super::GgufError;
use crate::ggml_type::GgmlType;
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
/// Refuse absurd counts before allocating for them.
const MAX_DIMS: u32 = 4;

/// One tensor's entry in the GGUF tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (ne0).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file; tensor data is borrowed from the map on demand.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    map: Mmap,
}

impl GgufFile {
    /// Open and validate `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| GgufError::Io(path.clone(), e))?;
        // SAFETY: the file is opened read-only and mapped privately; we only
        // read it, and validate every offset against the mapped length.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::Io(path.clone(), e))?;
        let parsed = parse(&map).map_err(|msg| GgufError::Format {
            path: path.clone(),
            msg,
        })?;
        Ok(Self {
            path,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Raw bytes of a tensor (validated to lie within the file at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.map[start..start + t.size as usize]
    }
}

pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| format!("{what}: length {n} too large"))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what}: string is not valid UTF-8"))
    }
    /// A key or tensor name: a string without NUL bytes (ggml hands names out as C strings, so a NUL would make
    /// ggml see another, shorter name than ours).
    fn name(&mut self, what: &str) -> Result<String, String> {
        let s = self.string(what)?;
        if s.contains('\0') {
            return Err(format!("{what}: {s:?} contains a NUL byte"));
        }
        Ok(s)
    }
    fn value(&mut self, t: GgufValueType, what: &str, depth: u32) -> Result<GgufValue, String> {
        use GgufValueType as T;
        Ok(match t {
            T::U8 => GgufValue::U8(self.arr::<1>(what)?[0]),
            T::I8 => GgufValue::I8(self.arr::<1>(what)?[0] as i8),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.arr(what)?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.arr(what)?)),
            T::U32 => GgufValue::U32(self.u32(what)?),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.arr(what)?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.arr(what)?)),
            T::Bool => match self.arr::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{what}: invalid bool byte {b}")),
            },
            T::String => GgufValue::String(self.string(what)?),
            T::U64 => GgufValue::U64(self.u64(what)?),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.arr(what)?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.arr(what)?)),
            T::Array => {
                if depth > 0 {
                    return Err(format!("{what}: nested arrays are not supported"));
                }
                let code = self.u32(what)?;
                let et = GgufValueType::from_code(code)
                    .ok_or_else(|| format!("{what}: unknown array element type {code}"))?;
                let n = self.u64(what)?;
                // Every element takes at least one byte: bound n by what is left.
                let left = (self.buf.len() - self.pos) as u64;
                if n > left {
                    return Err(format!(
                        "{what}: array claims {n} elements but only {left} bytes remain"
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, what, depth + 1)?);
                }
                GgufValue::Array(et, v)
            }
        })
    }
}

/// Parse and validate a whole GGUF image.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let mut c = Cursor { buf, pos: 0 };
    if c.take(4, "magic")? != MAGIC {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    let left = buf.len() as u64;
    if n_tensors > left / 8 || n_kv > left / 8 {
        return Err(format!(
            "header claims {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold"
        ));
    }
    let mut metadata = Vec::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.name(&format!("metadata key #{i}"))?;
        if metadata
            .iter()
            .any(|(k, _): &(String, GgufValue)| *k == key)
        {
            return Err(format!("duplicate metadata key {key:?}"));
        }
        let code = c.u32(&key)?;
        let t = GgufValueType::from_code(code)
            .ok_or_else(|| format!("metadata {key:?}: unknown value type {code}"))?;
        let v = c.value(t, &key, 0)?;
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => {
            let a = v.as_u64().ok_or("general.alignment is not an integer")?;
            if a == 0 || !a.is_power_of_two() {
                return Err(format!("general.alignment {a} is not a power of two"));
            }
            a
        }
        None => 32,
    };
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.name(&format!("tensor name #{i}"))?;
        if tensors.iter().any(|t| t.name == name) {
            return Err(format!("duplicate tensor name {name:?}"));
        }
        let nd = c.u32(&name)?;
        if nd == 0 || nd > MAX_DIMS {
            return Err(format!(
                "tensor {name}: {nd} dimensions (1..={MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(c.u64(&name)?);
        }
        let code = c.u32(&name)?;
        let ty = GgmlType::from_code(code);
        let offset = c.u64(&name)?;
        let n: u64 = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: element count overflows"))?;
        let (bs, bb) = ty
            .block_layout()
            .ok_or_else(|| format!("tensor {name}: unknown ggml type {code}"))?;
        if dims[0] % bs as u64 != 0 {
            return Err(format!(
                "tensor {name}: row length {} is not a multiple of {ty}'s block size {bs}",
                dims[0]
            ));
        }
        let size = (n / bs as u64)
            .checked_mul(bb as u64)
            .ok_or_else(|| format!("tensor {name}: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor {name}: offset {offset} is not aligned to {alignment}"
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        });
    }
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (buf.len() as u64).saturating_sub(data_offset);
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.size, t.name.as_str()))
        .collect();
    spans.sort();
    for (s, e, name) in &spans {
        if *e > data_len {
            return Err(format!(
                "tensor {name}: data [{s}, {e}) runs past the end of the file (data section is {data_len} bytes)"
            ));
        }
    }
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors {} and {} overlap", w[0].2, w[1].2));
        }
    }
    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
