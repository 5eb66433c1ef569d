//! Streaming GGUF v3 writer: header first, then tensor data in table order,
//! into a temporary file that is renamed over the destination only on success.

use super::types::GgufValue;
use super::GgufError;
use crate::ggml_type::GgmlType;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// Default (and llama.cpp's) data alignment.
pub const ALIGNMENT: u64 = 32;

/// A tensor to be written: name, ggml-order dims, type.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Data size in bytes, or None if the row length does not fit the type.
    pub fn byte_size(&self) -> Option<u64> {
        let row = self.ty.row_bytes(*self.dims.first()? as usize)? as u64;
        Some(row * self.dims.iter().skip(1).product::<u64>())
    }
}

/// Writes one GGUF file. Call `write_data` with each tensor's bytes in the
/// order given at creation (a tensor may arrive in several pieces), then `finish`.
pub struct GgufWriter {
    dest: PathBuf,
    out: BufWriter<NamedTempFile>,
    sizes: Vec<(String, u64)>,
    current: usize,
    written_in_current: u64,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.push(*x as u8),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(*x as u8),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(t, items) => {
            buf.extend_from_slice(&(*t as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(buf, it);
            }
        }
    }
}

/// Serialize the header (magic … tensor table … padding) for these inputs.
pub fn encode_header(
    metadata: &[(String, GgufValue)],
    tensors: &[TensorSpec],
) -> Result<(Vec<u8>, Vec<u64>), GgufError> {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"GGUF");
    buf.extend_from_slice(&3u32.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (i, (k, v)) in metadata.iter().enumerate() {
        if metadata[..i].iter().any(|(k2, _)| k2 == k) {
            return Err(GgufError::Invalid(format!("duplicate metadata key {k:?}")));
        }
        if let GgufValue::Array(t, items) = v {
            if items.iter().any(|x| x.value_type() != *t) {
                return Err(GgufError::Invalid(format!(
                    "metadata {k:?}: array elements are not all {t:?}"
                )));
            }
        }
        put_str(&mut buf, k);
        buf.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
        put_value(&mut buf, v);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut off = 0u64;
    for t in tensors {
        let size = t.byte_size().ok_or_else(|| {
            GgufError::Invalid(format!(
                "tensor {}: row length {:?} does not fit type {}",
                t.name,
                t.dims.first(),
                t.ty
            ))
        })?;
        put_str(&mut buf, &t.name);
        buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        buf.extend_from_slice(&t.ty.code().to_le_bytes());
        buf.extend_from_slice(&off.to_le_bytes());
        offsets.push(off);
        off = (off + size).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    let padded = (buf.len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
    buf.resize(padded as usize, 0);
    Ok((buf, offsets))
}

impl GgufWriter {
    /// Start writing `dest`. Nothing appears at `dest` until `finish` succeeds.
    pub fn create(
        dest: impl AsRef<Path>,
        metadata: &[(String, GgufValue)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        let dest = dest.as_ref().to_path_buf();
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let fname = dest
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out.gguf".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{fname}."))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| GgufError::Io(dir.clone(), e))?;
        let (header, _) = encode_header(metadata, tensors)?;
        let mut out = BufWriter::with_capacity(8 << 20, tmp);
        out.write_all(&header)
            .map_err(|e| GgufError::Io(dest.clone(), e))?;
        let sizes = tensors
            .iter()
            .map(|t| (t.name.clone(), t.byte_size().unwrap_or(0)))
            .collect();
        let mut w = Self {
            dest,
            out,
            sizes,
            current: 0,
            written_in_current: 0,
        };
        w.skip_empty()?;
        Ok(w)
    }

    /// Name of the tensor whose bytes are expected next.
    pub fn expecting(&self) -> Option<&str> {
        self.sizes.get(self.current).map(|(n, _)| n.as_str())
    }

    fn skip_empty(&mut self) -> Result<(), GgufError> {
        while let Some((_, 0)) = self.sizes.get(self.current) {
            self.current += 1;
        }
        Ok(())
    }

    /// Append bytes of the current tensor; moves on when it is complete.
    pub fn write_data(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        let (expected_name, size) = self.sizes.get(self.current).cloned().ok_or_else(|| {
            GgufError::Invalid(format!("tensor {name}: all tensors already written"))
        })?;
        if expected_name != name {
            return Err(GgufError::Invalid(format!(
                "tensor {name} written out of order (expected {expected_name})"
            )));
        }
        let total = self.written_in_current + bytes.len() as u64;
        if total > size {
            return Err(GgufError::Invalid(format!(
                "tensor {name}: {total} bytes written, but its type and shape need {size}"
            )));
        }
        self.out
            .write_all(bytes)
            .map_err(|e| GgufError::Io(self.dest.clone(), e))?;
        self.written_in_current = total;
        if total == size {
            let pad = (size.div_ceil(ALIGNMENT) * ALIGNMENT - size) as usize;
            self.out
                .write_all(&[0u8; ALIGNMENT as usize][..pad])
                .map_err(|e| GgufError::Io(self.dest.clone(), e))?;
            self.current += 1;
            self.written_in_current = 0;
            self.skip_empty()?;
        }
        Ok(())
    }

    /// Flush, sync and rename into place.
    pub fn finish(self) -> Result<PathBuf, GgufError> {
        if let Some((name, size)) = self.sizes.get(self.current) {
            return Err(GgufError::Invalid(format!(
                "tensor {name} incomplete: {} of {size} bytes written",
                self.written_in_current
            )));
        }
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| GgufError::Io(self.dest.clone(), e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| GgufError::Io(self.dest.clone(), e))?;
        // Temporary files are created private (0600); the finished model gets
        // the usual permissions of a new file (0666 less the umask).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = 0o666 & !current_umask();
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| GgufError::Io(self.dest.clone(), e))?;
        }
        tmp.persist(&self.dest)
            .map_err(|e| GgufError::Io(self.dest.clone(), e.error))?;
        Ok(self.dest)
    }
}

/// The process umask (read by setting and restoring it).
#[cfg(unix)]
fn current_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        // /proc/self/status has a `Umask:` line on Linux; fall back to 022.
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    })
}
