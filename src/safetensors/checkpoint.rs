//! A Hugging Face checkpoint's weights: one `model.safetensors` or shards
//! listed by `model.safetensors.index.json`.

use super::{SafetensorsError, SafetensorsFile, TensorEntry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// All shards of a checkpoint, with a name → shard lookup.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub shards: Vec<SafetensorsFile>,
    /// tensor name → index into `shards`
    pub lookup: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Open the safetensors weights in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let dir = dir.as_ref().to_path_buf();
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        // The index's weight map, kept to check it against the shards below.
        let mut index_map: Option<serde_json::Map<String, serde_json::Value>> = None;
        let shard_names: Vec<String> = if index.is_file() {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| SafetensorsError::Io(index.clone(), e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| SafetensorsError::Index {
                    path: index.clone(),
                    msg: format!("not valid JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| SafetensorsError::Index {
                    path: index.clone(),
                    msg: "missing \"weight_map\" object".into(),
                })?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, f) in map {
                let f = f.as_str().ok_or_else(|| SafetensorsError::Index {
                    path: index.clone(),
                    msg: format!("weight_map[{tensor:?}] is not a file name"),
                })?;
                if f.contains('/') || f.contains("..") {
                    return Err(SafetensorsError::Index {
                        path: index.clone(),
                        msg: format!("weight_map[{tensor:?}] = {f:?} is not a plain file name"),
                    });
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            index_map = Some(map.clone());
            names
        } else if single.is_file() {
            vec!["model.safetensors".to_string()]
        } else {
            let mut found: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| SafetensorsError::Io(dir.clone(), e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                let has_bin = dir.join("pytorch_model.bin").exists()
                    || dir.join("pytorch_model.bin.index.json").exists();
                return Err(SafetensorsError::Index {
                    path: dir.clone(),
                    msg: if has_bin {
                        "only PyTorch .bin weights found; safetensors weights are required".into()
                    } else {
                        "no model.safetensors, model.safetensors.index.json or *.safetensors found"
                            .into()
                    },
                });
            }
            found
        };
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut lookup = BTreeMap::new();
        for (i, n) in shard_names.iter().enumerate() {
            let f = SafetensorsFile::open(dir.join(n))?;
            for name in f.tensors.keys() {
                if let Some(prev) = lookup.insert(name.clone(), i) {
                    return Err(SafetensorsError::Index {
                        path: dir.join(n),
                        msg: format!(
                            "tensor {name} appears in both {} and {n}",
                            shard_names[prev]
                        ),
                    });
                }
            }
            shards.push(f);
        }
        // The index must agree with the shards' contents.
        if let Some(map) = &index_map {
            for (tensor, f) in map {
                let f = f.as_str().unwrap_or_default();
                match lookup.get(tensor) {
                    Some(&i) if shard_names[i] == f => {}
                    Some(&i) => {
                        return Err(SafetensorsError::Index {
                            path: index.clone(),
                            msg: format!(
                                "index places {tensor} in {f} but it is in {}",
                                shard_names[i]
                            ),
                        })
                    }
                    None => {
                        return Err(SafetensorsError::Index {
                            path: index.clone(),
                            msg: format!("index lists {tensor} in {f} but that shard lacks it"),
                        })
                    }
                }
            }
            if let Some(extra) = lookup.keys().find(|k| !map.contains_key(*k)) {
                return Err(SafetensorsError::Index {
                    path: index.clone(),
                    msg: format!("tensor {extra} is in a shard but not in the index"),
                });
            }
        }
        Ok(Self {
            dir,
            shards,
            lookup,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.lookup.keys().map(|s| s.as_str())
    }

    /// The entry and the file holding it.
    pub fn get(&self, name: &str) -> Option<(&SafetensorsFile, &TensorEntry)> {
        let f = &self.shards[*self.lookup.get(name)?];
        Some((f, f.entry(name)?))
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.tensors.values())
            .map(|t| t.end - t.start)
            .sum()
    }
}
