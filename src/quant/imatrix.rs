//! Importance matrices from `llama-imatrix`, in both file formats.
//!
//! * Legacy `.dat`: `i32 n_entries`, then per entry `i32 name_len`, the name
//!   bytes, `i32 ncall`, `i32 nval`, `f32[nval]` (sums of squared
//!   activations); optionally followed by `i32 last_call`, `i32 len` and the
//!   dataset name. Value = sum / ncall (the raw sums when `ncall <= 0`).
//! * GGUF (newer `llama-imatrix`): for each weight, an F32 tensor
//!   `<name>.in_sum2` of `ne0 * n_mat` sums and an F32 tensor `<name>.counts`
//!   of `n_mat` counts. Value = in_sum2 / count per matrix (1 where the count
//!   is 0), as `llama-quantize` loads it.
//!
//! GGUF files are read with `crate::gguf::GgufFile`.
//! Keys are GGUF tensor names such as `blk.0.attn_q.weight`.

use super::QuantError;
use crate::gguf::{GgmlType, GgufFile, GgufValue, TensorInfo};
use std::collections::HashMap;
use std::path::Path;

/// A loaded importance matrix: one vector of per-column importances per
/// weight tensor.
#[derive(Debug, Clone, Default)]
pub struct Imatrix {
    entries: HashMap<String, Vec<f32>>,
    /// Datasets named in the file (if any).
    pub datasets: Vec<String>,
    /// Number of chunks the statistics were collected over, when recorded.
    pub chunk_count: Option<u64>,
}

fn bad(path: &Path, msg: impl Into<String>) -> QuantError {
    QuantError::ImatrixFile {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Little-endian reader over a byte slice with bounds-checked reads.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let b = self.bytes(n.checked_mul(4)?)?;
        Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

impl Imatrix {
    /// Loads a `.dat` or GGUF imatrix file (detected by the GGUF magic).
    pub fn load(path: impl AsRef<Path>) -> Result<Imatrix, QuantError> {
        let path = path.as_ref();
        let buf = std::fs::read(path).map_err(|e| QuantError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        if buf.starts_with(b"GGUF") {
            Self::parse_gguf(path)
        } else {
            Self::parse_dat(path, &buf)
        }
    }

    /// The importance vector of `tensor_name` (e.g. `blk.0.attn_q.weight`).
    pub fn get(&self, tensor_name: &str) -> Option<&[f32]> {
        self.entries.get(tensor_name).map(Vec::as_slice)
    }

    /// Number of tensors with an importance vector.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tensor names present, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn parse_dat(path: &Path, buf: &[u8]) -> Result<Imatrix, QuantError> {
        let mut r = Reader { buf, pos: 0 };
        let trunc = || bad(path, "truncated legacy imatrix file");
        let n = r.i32().ok_or_else(trunc)?;
        if n < 0 {
            return Err(bad(path, format!("negative entry count {n}")));
        }
        let mut m = Imatrix::default();
        for _ in 0..n {
            let len = r.i32().ok_or_else(trunc)?;
            let len = usize::try_from(len).map_err(|_| bad(path, "negative name length"))?;
            let name = String::from_utf8_lossy(r.bytes(len).ok_or_else(trunc)?).into_owned();
            let ncall = r.i32().ok_or_else(trunc)?;
            let nval = r.i32().ok_or_else(trunc)?;
            let nval = usize::try_from(nval).map_err(|_| bad(path, "negative value count"))?;
            let mut v = r.f32s(nval).ok_or_else(trunc)?;
            if ncall > 0 {
                let c = ncall as f32;
                v.iter_mut().for_each(|x| *x /= c);
            }
            m.entries.insert(name, v);
        }
        // Optional trailer: last call and dataset name.
        if let Some(last_call) = r.i32() {
            m.chunk_count = u64::try_from(last_call).ok();
            if let Some(len) = r.i32().and_then(|l| usize::try_from(l).ok()) {
                if let Some(b) = r.bytes(len) {
                    m.datasets.push(String::from_utf8_lossy(b).into_owned());
                }
            }
        }
        Ok(m)
    }

    fn parse_gguf(path: &Path) -> Result<Imatrix, QuantError> {
        let f = GgufFile::open(path).map_err(|e| bad(path, e.to_string()))?;
        let mut m = Imatrix {
            chunk_count: f.get_u64("imatrix.chunk_count"),
            ..Imatrix::default()
        };
        match f.get("imatrix.datasets") {
            Some(GgufValue::Array(_, v)) => {
                m.datasets = v
                    .iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            }
            Some(GgufValue::String(s)) => m.datasets = vec![s.clone()],
            _ => {}
        }
        let f32s = |t: &TensorInfo| -> Result<Vec<f32>, QuantError> {
            if t.ty != GgmlType::F32 {
                return Err(bad(path, format!("tensor {} is {}, not F32", t.name, t.ty)));
            }
            Ok(f.tensor_data(t)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        for t in &f.tensors {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue; // `.counts` are read with their sums; `.in_sum` is not needed
            };
            let counts_name = format!("{name}.counts");
            let c = f
                .tensor(&counts_name)
                .ok_or_else(|| bad(path, format!("{} has no {counts_name}", t.name)))?;
            let mut s = f32s(t)?;
            let c = f32s(c)?;
            if c.is_empty() || !s.len().is_multiple_of(c.len()) {
                return Err(bad(
                    path,
                    format!(
                        "{name}: {} sums do not split over {} counts",
                        s.len(),
                        c.len()
                    ),
                ));
            }
            let ne0 = s.len() / c.len();
            for (chunk, &count) in s.chunks_exact_mut(ne0).zip(&c) {
                if count > 0.0 {
                    chunk.iter_mut().for_each(|x| *x /= count);
                } else {
                    chunk.iter_mut().for_each(|x| *x = 1.0);
                }
            }
            m.entries.insert(name.to_string(), s);
        }
        Ok(m)
    }
}
