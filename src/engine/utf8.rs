//! Incremental UTF-8 decoding of token pieces.
//!
//! SentencePiece models emit Devanagari (and emoji) through byte-fallback
//! tokens such as `<0xE0>`, so one code point often spans two or three
//! tokens. [`Utf8Accumulator`] keeps the bytes of an unfinished code point
//! until the rest arrives, so every chunk it hands out is valid UTF-8.

/// Buffers token bytes and releases only complete UTF-8 text.
#[derive(Debug, Default, Clone)]
pub struct Utf8Accumulator {
    pending: Vec<u8>,
}

impl Utf8Accumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns the longest complete text now available.
    ///
    /// Bytes that can never become valid UTF-8 are replaced by U+FFFD;
    /// a trailing incomplete (but still possibly valid) sequence is held back.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid_up_to` bytes are valid UTF-8 by contract.
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &rest[valid + bad..];
                        }
                        None => {
                            // Incomplete sequence at the end: wait for more bytes.
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Bytes held back waiting for the rest of a code point.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Ends the stream: returns held-back bytes, lossily decoded.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devanagari_split_across_pushes() {
        let text = "नमस्ते दुनिया";
        let bytes = text.as_bytes();
        for chunk in 1..5 {
            let mut acc = Utf8Accumulator::new();
            let mut out = String::new();
            for piece in bytes.chunks(chunk) {
                let s = acc.push(piece);
                assert!(std::str::from_utf8(s.as_bytes()).is_ok());
                out.push_str(&s);
            }
            out.push_str(&acc.finish());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn holds_incomplete_sequence() {
        let mut acc = Utf8Accumulator::new();
        assert_eq!(acc.push(&[0xE0, 0xA4]), "");
        assert_eq!(acc.pending_len(), 2);
        assert_eq!(acc.push(&[0xA8, b'a']), "नa");
        assert_eq!(acc.pending_len(), 0);
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut acc = Utf8Accumulator::new();
        assert_eq!(acc.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(acc.push(&[0xE0]), "");
        assert_eq!(acc.finish(), "\u{FFFD}");
    }
}
