//! SentencePiece `tokenizer.model` files (the `ModelProto` protobuf).

use super::proto::{fields, Field, Writer};

/// SentencePiece piece types; the numbering is also llama.cpp's token type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl PieceType {
    fn from_i32(v: i64) -> Option<Self> {
        Some(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The parts of a SentencePiece model a GGUF vocabulary needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpModel {
    pub pieces: Vec<Piece>,
    /// 1 = unigram, 2 = BPE.
    pub model_type: i32,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub byte_fallback: bool,
    pub add_dummy_prefix: bool,
}

impl Default for SpModel {
    fn default() -> Self {
        Self {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            byte_fallback: false,
            add_dummy_prefix: true,
        }
    }
}

fn as_i64(f: &Field) -> Option<i64> {
    match f {
        Field::Varint(v) => Some(*v as i64),
        _ => None,
    }
}

impl SpModel {
    /// Parse a serialized `ModelProto`.
    pub fn parse(buf: &[u8]) -> Result<Self, String> {
        let mut m = SpModel::default();
        for f in fields(buf) {
            let (num, v) = f?;
            match (num, v) {
                (1, Field::Bytes(b)) => {
                    let mut p = Piece {
                        piece: String::new(),
                        score: 0.0,
                        kind: PieceType::Normal,
                    };
                    for g in fields(b) {
                        match g? {
                            (1, Field::Bytes(s)) => {
                                p.piece = String::from_utf8(s.to_vec()).map_err(|_| {
                                    format!("piece #{} is not valid UTF-8", m.pieces.len())
                                })?
                            }
                            (2, Field::Fixed32(s)) => p.score = f32::from_bits(s),
                            (3, ref t) => {
                                let t = as_i64(t).ok_or("piece type is not a varint")?;
                                p.kind = PieceType::from_i32(t).ok_or_else(|| {
                                    format!("piece #{}: unknown type {t}", m.pieces.len())
                                })?;
                            }
                            _ => {}
                        }
                    }
                    m.pieces.push(p);
                }
                (2, Field::Bytes(b)) => {
                    for g in fields(b) {
                        let (n, v) = g?;
                        let Some(x) = as_i64(&v) else { continue };
                        match n {
                            3 => m.model_type = x as i32,
                            35 => m.byte_fallback = x != 0,
                            40 => m.unk_id = x as i32,
                            41 => m.bos_id = x as i32,
                            42 => m.eos_id = x as i32,
                            43 => m.pad_id = x as i32,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(b)) => {
                    for g in fields(b) {
                        if let (3, Field::Varint(x)) = g? {
                            m.add_dummy_prefix = x != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces found (is this a SentencePiece model?)".into());
        }
        Ok(m)
    }

    /// Serialize as a `ModelProto` that sentencepiece and `parse` accept.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for p in &self.pieces {
            let mut pw = Writer::default();
            pw.bytes(1, p.piece.as_bytes());
            pw.float(2, p.score);
            if p.kind != PieceType::Normal {
                pw.int(3, p.kind as i64);
            }
            w.bytes(1, &pw.0);
        }
        let mut t = Writer::default();
        t.int(3, self.model_type as i64);
        t.int(4, self.pieces.len() as i64);
        t.int(35, self.byte_fallback as i64);
        t.int(40, self.unk_id as i64);
        t.int(41, self.bos_id as i64);
        t.int(42, self.eos_id as i64);
        t.int(43, self.pad_id as i64);
        w.bytes(2, &t.0);
        let mut n = Writer::default();
        n.bytes(1, b"identity");
        n.int(3, self.add_dummy_prefix as i64);
        n.int(4, 0);
        n.int(5, 1);
        w.bytes(3, &n.0);
        w.0
    }
}
