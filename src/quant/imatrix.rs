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
//! Keys are GGUF tensor names such as `blk.0.attn_q.weight`.

use super::QuantError;
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
        self.bytes(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        let b = self.bytes(n.checked_mul(4)?)?;
        Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
    fn gguf_string(&mut self) -> Option<String> {
        let n = usize::try_from(self.u64()?).ok()?;
        Some(String::from_utf8_lossy(self.bytes(n)?).into_owned())
    }
}

/// A GGUF metadata value, as far as the imatrix loader cares.
enum Meta {
    Int(u64),
    Str(String),
    Strs(Vec<String>),
    Other,
}

fn gguf_value(r: &mut Reader, t: u32, depth: u32) -> Option<Meta> {
    Some(match t {
        0 | 1 | 7 => Meta::Int(r.bytes(1)?[0] as u64),
        2 | 3 => {
            let b = r.bytes(2)?;
            Meta::Int(u16::from_le_bytes([b[0], b[1]]) as u64)
        }
        4 | 5 => Meta::Int(r.u32()? as u64),
        6 => {
            r.u32()?;
            Meta::Other
        }
        10 | 11 => Meta::Int(r.u64()?),
        12 => {
            r.u64()?;
            Meta::Other
        }
        8 => Meta::Str(r.gguf_string()?),
        9 if depth < 4 => {
            let et = r.u32()?;
            let n = r.u64()?;
            let mut strs = Vec::new();
            for _ in 0..n {
                match gguf_value(r, et, depth + 1)? {
                    Meta::Str(s) => strs.push(s),
                    _ if et == 8 => return None,
                    _ => {}
                }
            }
            if et == 8 {
                Meta::Strs(strs)
            } else {
                Meta::Other
            }
        }
        _ => return None,
    })
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
            Self::parse_gguf(path, &buf)
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

    fn parse_gguf(path: &Path, buf: &[u8]) -> Result<Imatrix, QuantError> {
        let mut r = Reader { buf, pos: 4 };
        let trunc = || bad(path, "truncated GGUF imatrix file");
        let version = r.u32().ok_or_else(trunc)?;
        if !(2..=3).contains(&version) {
            return Err(bad(path, format!("unsupported GGUF version {version}")));
        }
        let n_tensors = r.u64().ok_or_else(trunc)?;
        let n_kv = r.u64().ok_or_else(trunc)?;
        let mut m = Imatrix::default();
        let mut alignment = 32u64;
        for _ in 0..n_kv {
            let key = r.gguf_string().ok_or_else(trunc)?;
            let t = r.u32().ok_or_else(trunc)?;
            let v = gguf_value(&mut r, t, 0).ok_or_else(|| bad(path, format!("bad metadata value for {key}")))?;
            match (key.as_str(), v) {
                ("general.alignment", Meta::Int(a)) if a > 0 => alignment = a,
                ("imatrix.chunk_count", Meta::Int(c)) => m.chunk_count = Some(c),
                ("imatrix.datasets", Meta::Strs(s)) => m.datasets = s,
                ("imatrix.datasets", Meta::Str(s)) => m.datasets = vec![s],
                _ => {}
            }
        }
        struct Info {
            name: String,
            n: u64,
            ty: u32,
            off: u64,
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = r.gguf_string().ok_or_else(trunc)?;
            let nd = r.u32().ok_or_else(trunc)?;
            if nd > 4 {
                return Err(bad(path, format!("tensor {name} has {nd} dimensions")));
            }
            let mut n = 1u64;
            for _ in 0..nd {
                n = n
                    .checked_mul(r.u64().ok_or_else(trunc)?)
                    .ok_or_else(|| bad(path, "tensor too large"))?;
            }
            let ty = r.u32().ok_or_else(trunc)?;
            let off = r.u64().ok_or_else(trunc)?;
            infos.push(Info { name, n, ty, off });
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut sums: HashMap<String, Vec<f32>> = HashMap::new();
        let mut counts: HashMap<String, Vec<f32>> = HashMap::new();
        for t in infos {
            let (base, is_sum) = if let Some(b) = t.name.strip_suffix(".in_sum2") {
                (b, true)
            } else if let Some(b) = t.name.strip_suffix(".counts") {
                (b, false)
            } else {
                continue; // e.g. `.in_sum` (activation sums): not needed here
            };
            if t.ty != 0 {
                return Err(bad(path, format!("tensor {} is not F32 (type {})", t.name, t.ty)));
            }
            let n = usize::try_from(t.n).map_err(|_| bad(path, "tensor too large"))?;
            let mut rd = Reader {
                buf,
                pos: usize::try_from(data_start + t.off).map_err(|_| trunc())?,
            };
            let v = rd
                .f32s(n)
                .ok_or_else(|| bad(path, format!("data of {} out of range", t.name)))?;
            if is_sum {
                sums.insert(base.to_string(), v);
            } else {
                counts.insert(base.to_string(), v);
            }
        }
        for (name, mut s) in sums {
            let c = counts
                .get(&name)
                .ok_or_else(|| bad(path, format!("{name}.in_sum2 has no {name}.counts")))?;
            if c.is_empty() || s.len() % c.len() != 0 {
                return Err(bad(
                    path,
                    format!("{name}: {} sums do not split over {} counts", s.len(), c.len()),
                ));
            }
            let ne0 = s.len() / c.len();
            for (chunk, &count) in s.chunks_exact_mut(ne0).zip(c) {
                if count > 0.0 {
                    chunk.iter_mut().for_each(|x| *x /= count);
                } else {
                    chunk.iter_mut().for_each(|x| *x = 1.0);
                }
            }
            m.entries.insert(name, s);
        }
        Ok(m)
    }
}
