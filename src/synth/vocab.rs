//! A SentencePiece vocabulary for synthetic models: specials, the 256 byte
//! pieces, ASCII and Devanagari pieces, then filler pieces up to the size.

use crate::tokenizer::{Piece, PieceType, SpModel};

const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "of",
    "in",
    "is",
    "it",
    "how",
    "time",
    "manage",
    "effectively",
    "Hello",
    "world",
    "once",
    "upon",
    "there",
    "was",
    "little",
    "girl",
    "named",
    "Lily",
];

/// Devanagari letters, signs and common syllables/words.
const DEVANAGARI: &[&str] = &[
    "अ",
    "आ",
    "इ",
    "ई",
    "उ",
    "ऊ",
    "ए",
    "ऐ",
    "ओ",
    "औ",
    "क",
    "ख",
    "ग",
    "घ",
    "च",
    "छ",
    "ज",
    "झ",
    "ट",
    "ठ",
    "ड",
    "ढ",
    "ण",
    "त",
    "थ",
    "द",
    "ध",
    "न",
    "प",
    "फ",
    "ब",
    "भ",
    "म",
    "य",
    "र",
    "ल",
    "व",
    "श",
    "ष",
    "स",
    "ह",
    "ा",
    "ि",
    "ी",
    "ु",
    "ू",
    "े",
    "ै",
    "ो",
    "ौ",
    "ं",
    "ः",
    "्",
    "़",
    "।",
    "है",
    "में",
    "के",
    "की",
    "को",
    "से",
    "का",
    "और",
    "मैं",
    "हूँ",
    "नमस्ते",
    "भारत",
    "समय",
    "प्रबंधन",
    "कैसे",
    "क्या",
    "हिंदी",
];

/// Build a vocabulary of exactly `n` pieces (n ≥ 3 + 256 + a few).
pub fn synth_vocab(n: usize) -> SpModel {
    let mut pieces: Vec<Piece> = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    let mut push = |piece: String, kind: PieceType, pieces: &mut Vec<Piece>| {
        if pieces.len() < n && seen.insert(piece.clone()) {
            let score = if kind == PieceType::Normal {
                -(pieces.len() as f32)
            } else {
                0.0
            };
            pieces.push(Piece { piece, score, kind });
        }
    };
    push("<unk>".into(), PieceType::Unknown, &mut pieces);
    push("<s>".into(), PieceType::Control, &mut pieces);
    push("</s>".into(), PieceType::Control, &mut pieces);
    for b in 0..=255u8 {
        push(format!("<0x{b:02X}>"), PieceType::Byte, &mut pieces);
    }
    push("\u{2581}".into(), PieceType::Normal, &mut pieces);
    for c in ('a'..='z').chain('A'..='Z').chain('0'..='9') {
        push(c.to_string(), PieceType::Normal, &mut pieces);
    }
    for c in [".", ",", "!", "?", "'", "\"", "-", ":", "|", "<", ">", "\n"] {
        push(c.to_string(), PieceType::Normal, &mut pieces);
    }
    // Every prefix of each word, so SentencePiece's pairwise merges reach
    // the whole word (with and without the leading-space marker).
    for w in DEVANAGARI.iter().chain(WORDS) {
        for word in [w.to_string(), format!("\u{2581}{w}")] {
            let chars: Vec<char> = word.chars().collect();
            for k in 1..=chars.len() {
                push(chars[..k].iter().collect(), PieceType::Normal, &mut pieces);
            }
        }
    }
    // Two-letter pieces, then numbered filler pieces.
    let letters: Vec<char> = ('a'..='z').collect();
    'outer: for a in &letters {
        for b in &letters {
            if pieces.len() >= n {
                break 'outer;
            }
            push(format!("{a}{b}"), PieceType::Normal, &mut pieces);
        }
    }
    let mut i = 0usize;
    while pieces.len() < n {
        push(format!("\u{2581}w{i}"), PieceType::Normal, &mut pieces);
        i += 1;
    }
    SpModel {
        pieces,
        model_type: 2,
        unk_id: 0,
        bos_id: 1,
        eos_id: 2,
        pad_id: -1,
        byte_fallback: true,
        add_dummy_prefix: true,
    }
}
