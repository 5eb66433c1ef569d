//! HF checkpoint tensors as pipeline inputs: rows read from memory-mapped
//! shards one chunk at a time (converted to f32, checked for NaN/Inf in HF
//! order, Q/K rows permuted), or whole bitsandbytes NF4 weights dequantized
//! exactly as bitsandbytes does.

use super::pipeline::{first_non_finite, scheme_encoding, Job, TensorInput};
use super::plan::{self, PlannedTensor};
use super::{ConvertError, Prepared, Scheme};
use crate::bnb::WeightDtype;
use crate::safetensors::{self, Checkpoint, Dtype};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The pipeline jobs of a prepared checkpoint.
pub fn jobs<'a>(p: &'a Prepared, scheme: Scheme) -> Vec<Job<'a>> {
    p.plan
        .iter()
        .map(|(t, ty)| {
            let file = p
                .checkpoint
                .get(&t.hf_name)
                .map(|(f, _)| f.path.clone())
                .unwrap_or_else(|| p.checkpoint.dir.clone());
            let bnb = p.bnb_weights.contains(&t.hf_name);
            let dtype = p.checkpoint.get(&t.hf_name).map(|(_, e)| e.dtype);
            let source = match dtype {
                Some(Dtype::BF16) => WeightDtype::Bf16,
                Some(Dtype::F32) => WeightDtype::F32,
                _ => WeightDtype::F16,
            };
            let (transform, ty) = scheme_encoding(scheme, t.role, source, *ty);
            let input: Box<dyn TensorInput + 'a> = if bnb {
                Box::new(BnbTensor {
                    ck: &p.checkpoint,
                    t,
                    file,
                })
            } else {
                Box::new(HfTensor {
                    ck: &p.checkpoint,
                    t,
                    file,
                })
            };
            Job {
                name: t.gguf_name.clone(),
                dims: t.gguf_dims(),
                ty,
                transform,
                input,
            }
        })
        .collect()
}

struct HfTensor<'a> {
    ck: &'a Checkpoint,
    t: &'a PlannedTensor,
    file: PathBuf,
}

impl TensorInput for HfTensor<'_> {
    fn origin(&self) -> (&Path, &str) {
        (&self.file, &self.t.hf_name)
    }

    fn row_unit(&self) -> usize {
        // Chunks hold whole heads so the rope permutation stays local.
        match self.t.permute {
            plan::Permute::Rope { n_heads } => (self.t.n_rows() / n_heads).max(1),
            plan::Permute::None => 1,
        }
    }

    fn read(&self, row0: usize, nrows: usize) -> Result<Vec<f32>, ConvertError> {
        let t = self.t;
        let (file, entry) = self
            .ck
            .get(&t.hf_name)
            .ok_or_else(|| ConvertError::MissingTensor {
                dir: self.ck.dir.clone(),
                tensor: t.hf_name.clone(),
            })?;
        let row_len = t.row_len();
        let esz = entry.dtype.size();
        // Map only this chunk: resident pages are released with the map.
        let mapped = file.map_range(
            entry,
            (row0 * row_len * esz) as u64,
            (nrows * row_len * esz) as u64,
        )?;
        let src = mapped.bytes();
        let mut f = vec![0f32; nrows * row_len];
        f.par_chunks_mut(1 << 16)
            .zip(src.par_chunks((1 << 16) * esz))
            .try_for_each(|(d, s)| safetensors::to_f32(entry.dtype, s, d))
            .map_err(|msg| ConvertError::Tensor {
                file: file.path.clone(),
                tensor: t.hf_name.clone(),
                msg,
            })?;
        drop(mapped);
        // Report non-finite values at their index in the checkpoint's order.
        if let Some(i) = first_non_finite(&f) {
            return Err(ConvertError::NonFinite {
                file: file.path.clone(),
                tensor: t.hf_name.clone(),
                index: row0 * row_len + i,
                value: f[i],
            });
        }
        plan::apply_permute(t.permute, &mut f, row_len, t.n_rows());
        Ok(f)
    }
}

/// A bitsandbytes NF4 weight: dequantized whole, exactly as bitsandbytes does.
struct BnbTensor<'a> {
    ck: &'a Checkpoint,
    t: &'a PlannedTensor,
    file: PathBuf,
}

impl TensorInput for BnbTensor<'_> {
    fn origin(&self) -> (&Path, &str) {
        (&self.file, &self.t.hf_name)
    }

    fn row_unit(&self) -> usize {
        self.t.n_rows().max(1)
    }

    fn read(&self, row0: usize, nrows: usize) -> Result<Vec<f32>, ConvertError> {
        let t = self.t;
        let terr = |msg: String| ConvertError::Tensor {
            file: self.file.clone(),
            tensor: t.hf_name.clone(),
            msg,
        };
        if row0 != 0 || nrows != t.n_rows() {
            return Err(terr("bitsandbytes weights are read whole".into()));
        }
        let mut map_err = None;
        let deq = crate::bnb::dequantize_with(&t.hf_name, |name| {
            let (f, e) = self.ck.get(name)?;
            match f.map(e) {
                Ok(m) => Some(crate::bnb::TensorData {
                    dtype: e.dtype.name().to_string(),
                    shape: e.shape.clone(),
                    data: m.bytes().to_vec(),
                }),
                Err(err) => {
                    map_err = Some(err);
                    None
                }
            }
        });
        if let Some(e) = map_err {
            return Err(e.into());
        }
        let deq = deq.map_err(|e| terr(e.to_string()))?;
        if deq.shape != t.shape {
            return Err(ConvertError::Shape {
                file: self.file.clone(),
                tensor: t.hf_name.clone(),
                got: deq.shape,
                expected: t.shape.clone(),
            });
        }
        let mut f = deq.data;
        plan::apply_permute(t.permute, &mut f, t.row_len(), t.n_rows());
        Ok(f)
    }
}
