//! The one write path shared by `convert` (HF checkpoints) and `quantize`
//! (GGUF files): each output tensor is a [`Job`] that reads f32 rows from a
//! [`TensorInput`] in chunks, checks them for NaN/Inf, applies the scheme's
//! transform, quantizes (calibration-aware where statistics exist) and hands
//! the bytes to a writer thread. Output goes to a temporary file renamed into
//! place only when every tensor was written.

use super::{ConvertError, Progress};
use crate::calib::Calibration;
use crate::gguf::{GgmlType, GgufValue, GgufWriter, TensorSpec};
use crate::quant::{self, QuantMode};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Elements per processing chunk (rows are grouped up to about this many).
pub const CHUNK_ELEMS: usize = 1 << 22;

/// Where one tensor's values come from.
pub trait TensorInput: Sync {
    /// The file and the tensor name errors should name.
    fn origin(&self) -> (&Path, &str);
    /// f32 values of rows `row0 .. row0 + nrows`, in output (GGUF) order.
    fn read(&self, row0: usize, nrows: usize) -> Result<Vec<f32>, ConvertError>;
    /// Chunks hold a multiple of this many rows (whole rope heads; all rows
    /// for inputs that are decoded as a whole).
    fn row_unit(&self) -> usize {
        1
    }
    /// The stored bytes when they can be copied unchanged as `ty`.
    fn raw(&self, _ty: GgmlType) -> Option<&[u8]> {
        None
    }
    /// The same, for inputs stored in pieces (rows one after another).
    fn raw_parts(&self, ty: GgmlType) -> Option<Vec<&[u8]>> {
        self.raw(ty).map(|r| vec![r])
    }
}

/// What happens to the values before they are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// bitsandbytes NF4 + double-quant round trip in this dtype (whole tensor).
    BnbNf4(crate::bnb::WeightDtype),
}

/// One output tensor.
pub struct Job<'a> {
    /// GGUF name.
    pub name: String,
    /// ggml-order dims (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub transform: Transform,
    pub input: Box<dyn TensorInput + 'a>,
}

impl Job<'_> {
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// How values are rounded.
pub struct Encoding<'c> {
    pub mode: QuantMode,
    pub calibration: Option<&'c Calibration>,
}

impl<'c> Encoding<'c> {
    /// `quantizer` None: `search` when calibrated, else ggml's reference
    /// rounding (what llama-quantize writes).
    pub fn new(quantizer: Option<QuantMode>, calibration: Option<&'c Calibration>) -> Self {
        let mode = quantizer.unwrap_or(if calibration.is_some() {
            QuantMode::Search
        } else {
            QuantMode::Reference
        });
        Self { mode, calibration }
    }
}

/// The transform and stored type of a tensor under `scheme`: `bnb-nf4`
/// round-trips linear weights in their own dtype and keeps bf16 tensors
/// BF16 (exact); other schemes store `ty` as it is.
pub fn scheme_encoding(
    scheme: super::Scheme,
    role: super::Role,
    source: crate::bnb::WeightDtype,
    ty: GgmlType,
) -> (Transform, GgmlType) {
    use crate::bnb::WeightDtype;
    if scheme != super::Scheme::BnbNf4 {
        return (Transform::None, ty);
    }
    let transform = if role == super::Role::Weight {
        Transform::BnbNf4(source)
    } else {
        Transform::None
    };
    let ty = if source == WeightDtype::Bf16 && ty == GgmlType::F16 {
        GgmlType::Bf16
    } else {
        ty
    };
    (transform, ty)
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub output: PathBuf,
    pub bytes: u64,
    pub types: BTreeMap<String, usize>,
}

/// Write `jobs` with `metadata` to `output` atomically.
pub fn write_gguf(
    output: &Path,
    metadata: &[(String, GgufValue)],
    jobs: &[Job],
    enc: &Encoding,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Written, ConvertError> {
    let specs: Vec<TensorSpec> = jobs
        .iter()
        .map(|j| TensorSpec {
            name: j.name.clone(),
            dims: j.dims.clone(),
            ty: j.ty,
        })
        .collect();
    let w = GgufWriter::create(output, metadata, &specs)?;
    // Writing runs on its own thread so that it overlaps the quantization of
    // the next chunk; the bounded channel keeps at most a few chunks in flight.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(2);
    let writer = std::thread::spawn(move || -> Result<GgufWriter, ConvertError> {
        let mut w = w;
        for (name, bytes) in rx {
            w.write_data(&name, &bytes)?;
        }
        Ok(w)
    });
    let mut sink = Sink { tx: Some(tx) };
    let result = write_all(jobs, enc, &mut sink, progress, cancel);
    drop(sink);
    let joined = writer.join().map_err(|_| {
        ConvertError::Io(
            output.to_path_buf(),
            std::io::Error::other("writer thread panicked"),
        )
    })?;
    // A write error explains a failed send, so it takes precedence.
    let w = joined?;
    let types = result?;
    let out = w.finish()?;
    progress.finish();
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    Ok(Written {
        output: out,
        bytes,
        types,
    })
}

/// Hands finished chunks to the writer thread.
struct Sink {
    tx: Option<std::sync::mpsc::SyncSender<(String, Vec<u8>)>>,
}

impl Sink {
    fn write(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), ConvertError> {
        let tx = self.tx.as_ref().ok_or(ConvertError::Cancelled)?;
        if tx.send((name.to_string(), bytes)).is_err() {
            // The writer stopped on an error; the caller reports it after join.
            self.tx = None;
            return Err(ConvertError::Cancelled);
        }
        Ok(())
    }
}

fn write_all(
    jobs: &[Job],
    enc: &Encoding,
    sink: &mut Sink,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<BTreeMap<String, usize>, ConvertError> {
    progress.start(jobs.iter().map(Job::n_elements).sum());
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for job in jobs {
        progress.tensor(&job.name, job.ty);
        *types.entry(job.ty.name()).or_default() += 1;
        if job.transform == Transform::None {
            if let Some(raw) = job.input.raw_parts(job.ty) {
                sink.write(&job.name, raw.concat())?;
                progress.advance(job.n_elements());
                continue;
            }
        }
        write_job(job, enc, sink, progress, cancel)?;
    }
    Ok(types)
}

fn write_job(
    job: &Job,
    enc: &Encoding,
    sink: &mut Sink,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<(), ConvertError> {
    let (file, tensor) = job.input.origin();
    let terr = |msg: String| ConvertError::Tensor {
        file: file.to_path_buf(),
        tensor: tensor.to_string(),
        msg,
    };
    let row_len = job.row_len();
    let n_rows = job.n_rows();
    let unit = match job.transform {
        Transform::BnbNf4(_) => n_rows.max(1),
        Transform::None => job.input.row_unit().max(1),
    };
    let rows_per_chunk = ((CHUNK_ELEMS / row_len.max(1)) / unit).max(1) * unit;
    let cal = enc
        .calibration
        .and_then(|c| c.for_tensor(&job.name, row_len));
    let mut row = 0;
    while row < n_rows {
        if cancel.load(Ordering::Relaxed) {
            return Err(ConvertError::Cancelled);
        }
        let nr = rows_per_chunk.min(n_rows - row);
        let mut f = job.input.read(row, nr)?;
        if f.len() != nr * row_len {
            return Err(terr(format!(
                "read {} values for {nr} rows of {row_len}",
                f.len()
            )));
        }
        if let Some(i) = first_non_finite(&f) {
            return Err(ConvertError::NonFinite {
                file: file.to_path_buf(),
                tensor: tensor.to_string(),
                index: row * row_len + i,
                value: f[i],
            });
        }
        if let Transform::BnbNf4(dtype) = job.transform {
            let shape = [n_rows, row_len];
            f = crate::bnb::nf4_round_trip(&f, &shape, dtype).map_err(|e| terr(e.to_string()))?;
        }
        let q = match &cal {
            Some(c) => c.quantize(job.ty, &f, row_len, enc.mode),
            None => quant::quantize(job.ty, &f, row_len, None, enc.mode),
        }
        .map_err(|e| terr(e.to_string()))?;
        let n = f.len() as u64;
        drop(f);
        sink.write(&job.name, q)?;
        progress.advance(n);
        row += nr;
    }
    Ok(())
}

/// Index of the first NaN or infinity in `f`. Chunks are scanned in
/// parallel with a branch-free test that vectorizes (rayon's per-element
/// `position_first` cost as much as quantizing in reference mode); only the
/// first chunk holding one is searched element by element.
pub fn first_non_finite(f: &[f32]) -> Option<usize> {
    const CHUNK: usize = 1 << 15;
    const EXP: u32 = 0x7f80_0000;
    let has_bad = |c: &[f32]| {
        c.iter()
            .fold(false, |acc, v| acc | (v.to_bits() & EXP == EXP))
    };
    let (ci, c) = f
        .par_chunks(CHUNK)
        .enumerate()
        .find_first(|(_, c)| has_bad(c))?;
    c.iter()
        .position(|v| !v.is_finite())
        .map(|i| ci * CHUNK + i)
}

#[cfg(test)]
mod tests {
    use super::first_non_finite;

    #[test]
    fn first_non_finite_finds_the_first_bad_value() {
        let mut f = vec![1.0f32; 100_000];
        assert_eq!(first_non_finite(&f), None);
        f[99_999] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&f), Some(99_999));
        f[70_000] = f32::NAN;
        f[40_000] = f32::MAX;
        assert_eq!(first_non_finite(&f), Some(70_000));
        f[3] = f32::INFINITY;
        assert_eq!(first_non_finite(&f), Some(3));
        assert_eq!(first_non_finite(&[]), None);
    }
}
