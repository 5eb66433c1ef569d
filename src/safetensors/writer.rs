//! Writing safetensors files (used by `airavata synth` and tests).

use super::{Dtype, SafetensorsError};
use std::io::{BufWriter, Write};
use std::path::Path;

/// A tensor to write: name, dtype, row-major shape.
#[derive(Debug, Clone)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorHeader {
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Write a safetensors file whose tensors' bytes are produced in order by
/// `data(i)`; goes through a temporary file renamed into place.
pub fn write_file(
    path: &Path,
    tensors: &[TensorHeader],
    metadata: &[(&str, &str)],
    mut data: impl FnMut(usize) -> Vec<u8>,
) -> Result<(), SafetensorsError> {
    let io = |e| SafetensorsError::Io(path.to_path_buf(), e);
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), m.into());
    }
    let mut off = 0usize;
    for t in tensors {
        let n = t.byte_len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| io(std::io::Error::other(e)))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io)?;
    let mut w = BufWriter::with_capacity(8 << 20, tmp);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for (i, t) in tensors.iter().enumerate() {
        let b = data(i);
        if b.len() != t.byte_len() {
            return Err(SafetensorsError::Tensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                msg: format!("{} bytes supplied, {} expected", b.len(), t.byte_len()),
            });
        }
        w.write_all(&b).map_err(io)?;
    }
    let tmp = w.into_inner().map_err(|e| io(e.into_error()))?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
