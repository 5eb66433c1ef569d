//! Tokenizer files of a Hugging Face checkpoint → GGUF `tokenizer.ggml.*` metadata.
//!
//! Follows llama.cpp's own converter for SentencePiece ("llama") vocabularies:
//! pieces, scores and types from `tokenizer.model`; ids beyond the model padded
//! as `[PADn]`; `added_tokens.json` entries as user-defined tokens; special
//! tokens from `tokenizer_config.json`'s `added_tokens_decoder` as control
//! tokens. A `tokenizer.json` alone (SentencePiece-BPE layout) is also read.

mod proto;
pub mod sentencepiece;

use crate::gguf::GgufValue;
pub use sentencepiece::{Piece, PieceType, SpModel};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Airavata's chat format as a Jinja template (written into GGUFs whose
/// checkpoint has none): the built-in `airavata` template, which the engine
/// renders for a GGUF without one.
pub const AIRAVATA_CHAT_TEMPLATE: &str = crate::chat_template::AIRAVATA_TEMPLATE;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path}: unreadable tokenizer: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{0}: no tokenizer.model or tokenizer.json found")]
    Missing(PathBuf),
}

/// A complete GGUF vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| TokenizerError::Io(path.to_path_buf(), e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TokenizerError::Format {
            path: path.to_path_buf(),
            msg: format!("invalid JSON: {e}"),
        })
}

fn looks_special(t: &str) -> bool {
    (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<") && t.ends_with(">") && !t.starts_with("<0x"))
        || (t.starts_with('[') && t.ends_with(']'))
}

impl Vocab {
    /// Build the vocabulary of the checkpoint in `dir` for an embedding of
    /// `vocab_size` rows; `config` is the parsed config.json.
    pub fn from_dir(dir: &Path, vocab_size: usize, config: &Value) -> Result<Self, TokenizerError> {
        let sp_path = dir.join("tokenizer.model");
        let tj_path = dir.join("tokenizer.json");
        let mut v = if sp_path.is_file() {
            let bytes =
                std::fs::read(&sp_path).map_err(|e| TokenizerError::Io(sp_path.clone(), e))?;
            let sp = SpModel::parse(&bytes).map_err(|msg| TokenizerError::Format {
                path: sp_path.clone(),
                msg,
            })?;
            Self::from_sentencepiece(&sp, vocab_size)
        } else if tj_path.is_file() {
            let j = read_json(&tj_path)?.unwrap_or_default();
            Self::from_tokenizer_json(&j, vocab_size).map_err(|msg| TokenizerError::Format {
                path: tj_path.clone(),
                msg,
            })?
        } else {
            return Err(TokenizerError::Missing(dir.to_path_buf()));
        };

        if let Some(added) = read_json(&dir.join("added_tokens.json"))? {
            if let Some(obj) = added.as_object() {
                for (tok, id) in obj {
                    let Some(id) = id.as_u64().map(|i| i as usize) else {
                        continue;
                    };
                    if id < v.tokens.len() {
                        v.tokens[id] = tok.clone();
                        v.scores[id] = -1000.0;
                        v.types[id] = PieceType::UserDefined as i32;
                    }
                }
            }
        }
        let tcfg = read_json(&dir.join("tokenizer_config.json"))?;
        if let Some(dec) = tcfg
            .as_ref()
            .and_then(|c| c.get("added_tokens_decoder"))
            .and_then(|d| d.as_object())
        {
            for (id, data) in dec {
                let (Ok(id), Some(content)) = (
                    id.parse::<usize>(),
                    data.get("content").and_then(|c| c.as_str()),
                ) else {
                    continue;
                };
                if id >= v.tokens.len() {
                    continue;
                }
                let special = data.get("special").and_then(|s| s.as_bool()) == Some(true);
                if special || looks_special(content) {
                    v.types[id] = PieceType::Control as i32;
                    v.tokens[id] = content.to_string();
                } else {
                    v.types[id] = PieceType::UserDefined as i32;
                    v.tokens[id] = content.replace('\u{2581}', " ");
                }
                v.scores[id] = -1000.0;
            }
        }

        // Special ids: config.json first, then tokenizer_config / special_tokens_map contents.
        let special_map = read_json(&dir.join("special_tokens_map.json"))?;
        let id_of = |name: &str| -> Option<u32> {
            let content = |j: &Option<Value>| {
                j.as_ref().and_then(|j| j.get(name)).and_then(|t| {
                    t.as_str().map(str::to_string).or_else(|| {
                        t.get("content")
                            .and_then(|c| c.as_str())
                            .map(str::to_string)
                    })
                })
            };
            let c = content(&special_map).or_else(|| content(&tcfg))?;
            v.tokens.iter().position(|t| *t == c).map(|i| i as u32)
        };
        let cfg_id = |key: &str| {
            config
                .get(key)
                .and_then(|x| x.as_u64())
                .map(|x| x as u32)
                .filter(|&x| (x as usize) < v.tokens.len())
        };
        v.bos = cfg_id("bos_token_id")
            .or_else(|| id_of("bos_token"))
            .or(v.bos);
        v.eos = cfg_id("eos_token_id")
            .or_else(|| id_of("eos_token"))
            .or(v.eos);
        v.unk = id_of("unk_token").or(v.unk);
        v.pad = cfg_id("pad_token_id")
            .or_else(|| id_of("pad_token"))
            .or(v.pad);
        if let Some(c) = &tcfg {
            if let Some(b) = c.get("add_bos_token").and_then(|b| b.as_bool()) {
                v.add_bos = b;
            }
            if let Some(b) = c.get("add_eos_token").and_then(|b| b.as_bool()) {
                v.add_eos = b;
            }
            if let Some(t) = c.get("chat_template").and_then(|t| t.as_str()) {
                v.chat_template = Some(t.to_string());
            }
        }
        if v.chat_template.is_none() {
            v.chat_template = Some(AIRAVATA_CHAT_TEMPLATE.to_string());
        }
        Ok(v)
    }

    /// Vocabulary straight from a SentencePiece model, padded to `vocab_size`.
    pub fn from_sentencepiece(sp: &SpModel, vocab_size: usize) -> Self {
        let n = vocab_size;
        let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
        let mut scores = vec![-10000.0f32; n];
        let mut types = vec![PieceType::Unused as i32; n];
        for (i, p) in sp.pieces.iter().enumerate().take(n) {
            tokens[i] = p.piece.clone();
            scores[i] = p.score;
            types[i] = p.kind as i32;
        }
        let id = |x: i32| (x >= 0 && (x as usize) < n).then_some(x as u32);
        Self {
            tokens,
            scores,
            types,
            bos: id(sp.bos_id),
            eos: id(sp.eos_id),
            unk: id(sp.unk_id),
            pad: id(sp.pad_id),
            add_bos: true,
            add_eos: false,
            chat_template: None,
        }
    }

    /// Vocabulary from a Hugging Face `tokenizer.json` of the SentencePiece-BPE
    /// kind (Llama): ids from `model.vocab`, byte tokens `<0xXX>`, scores by rank.
    pub fn from_tokenizer_json(j: &Value, vocab_size: usize) -> Result<Self, String> {
        let model = j.get("model").ok_or("missing \"model\"")?;
        let ty = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if ty != "BPE" {
            return Err(format!(
                "tokenizer model type {ty:?} is not supported (expected BPE)"
            ));
        }
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .ok_or("missing model.vocab")?;
        let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
        let mut scores = vec![-10000.0f32; vocab_size];
        let mut types = vec![PieceType::Unused as i32; vocab_size];
        let unk = model.get("unk_token").and_then(|u| u.as_str());
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| format!("vocab id of {tok:?} is not an integer"))?
                as usize;
            if id >= vocab_size {
                continue;
            }
            tokens[id] = tok.clone();
            scores[id] = -(id as f32);
            types[id] = if Some(tok.as_str()) == unk {
                PieceType::Unknown as i32
            } else if tok.len() == 6 && tok.starts_with("<0x") && tok.ends_with('>') {
                PieceType::Byte as i32
            } else {
                PieceType::Normal as i32
            };
        }
        if let Some(added) = j.get("added_tokens").and_then(|a| a.as_array()) {
            for t in added {
                let (Some(id), Some(content)) = (
                    t.get("id").and_then(|i| i.as_u64()).map(|i| i as usize),
                    t.get("content").and_then(|c| c.as_str()),
                ) else {
                    continue;
                };
                if id >= vocab_size {
                    continue;
                }
                tokens[id] = content.to_string();
                scores[id] = 0.0;
                let special = t.get("special").and_then(|s| s.as_bool()) == Some(true);
                types[id] = if Some(content) == unk {
                    PieceType::Unknown as i32
                } else if special {
                    PieceType::Control as i32
                } else {
                    PieceType::UserDefined as i32
                };
            }
        }
        let find = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
        Ok(Self {
            bos: find("<s>"),
            eos: find("</s>"),
            unk: unk.and_then(find),
            pad: None,
            tokens,
            scores,
            types,
            add_bos: true,
            add_eos: false,
            chat_template: None,
        })
    }

    /// `tokenizer.ggml.*` key/value pairs.
    pub fn to_metadata(&self) -> Vec<(String, GgufValue)> {
        let mut m = vec![
            (
                "tokenizer.ggml.model".to_string(),
                GgufValue::String("llama".into()),
            ),
            (
                "tokenizer.ggml.pre".to_string(),
                GgufValue::String("default".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                GgufValue::strings(self.tokens.iter().cloned()),
            ),
            (
                "tokenizer.ggml.scores".to_string(),
                GgufValue::f32s(self.scores.iter().copied()),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                GgufValue::i32s(self.types.iter().copied()),
            ),
        ];
        for (k, v) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("unknown_token_id", self.unk),
            ("padding_token_id", self.pad),
        ] {
            if let Some(v) = v {
                m.push((format!("tokenizer.ggml.{k}"), GgufValue::U32(v)));
            }
        }
        m.push((
            "tokenizer.ggml.add_bos_token".to_string(),
            GgufValue::Bool(self.add_bos),
        ));
        m.push((
            "tokenizer.ggml.add_eos_token".to_string(),
            GgufValue::Bool(self.add_eos),
        ));
        if let Some(t) = &self.chat_template {
            m.push((
                "tokenizer.chat_template".to_string(),
                GgufValue::String(t.clone()),
            ));
        }
        m
    }
}
