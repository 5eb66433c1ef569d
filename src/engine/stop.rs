//! Stop-string matching over streamed text.
//!
//! Text that could still turn out to be the start of a stop string is held
//! back, so a client never receives part of a stop string.

/// Tracks generated text against a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// All text produced so far (before truncation at a stop string).
    text: String,
    /// Bytes of `text` already released to the caller.
    released: usize,
}

/// Result of feeding text to a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to release now.
    pub emit: String,
    /// Whether a stop string was found (generation must end).
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            released: 0,
        }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, new_text: &str) -> StopOutcome {
        let search_from = self
            .text
            .len()
            .saturating_sub(self.max_stop_len())
            .min(self.released);
        let search_from = floor_char_boundary(&self.text, search_from);
        self.text.push_str(new_text);

        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()))
            .min()
            .map(|p| p + search_from);
        if let Some(pos) = hit {
            let emit = self.text[self.released.min(pos)..pos].to_string();
            self.text.truncate(pos);
            self.released = pos;
            return StopOutcome {
                emit,
                stopped: true,
            };
        }

        let hold = self.partial_suffix_len();
        let upto = floor_char_boundary(&self.text, self.text.len() - hold);
        let emit = if upto > self.released {
            self.text[self.released..upto].to_string()
        } else {
            String::new()
        };
        self.released = self.released.max(upto);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// Releases any held-back text (generation ended without a stop string).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }

    /// Everything released or releasable so far (truncated at a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Length of the longest suffix of `text` that is a proper prefix of a stop string.
    fn partial_suffix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(self.text.len());
            for len in (best + 1..=max).rev() {
                let start = self.text.len() - len;
                if self.text.is_char_boundary(start)
                    && stop.is_char_boundary(len)
                    && stop.as_bytes()[..len] == self.text.as_bytes()[start..]
                {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(
            run(&["<|user|>"], &["hi <|", "us", "er|> more"]),
            ("hi ".into(), true)
        );
    }

    #[test]
    fn partial_prefix_released_at_end() {
        assert_eq!(run(&["###"], &["a#", "#"]), ("a##".into(), false));
    }

    #[test]
    fn holdback_is_released_when_it_diverges() {
        let mut m = StopMatcher::new(vec!["\nUser".into()]);
        assert_eq!(m.push("ok\nUs").emit, "ok");
        assert_eq!(m.push("a").emit, "\nUsa");
    }

    #[test]
    fn devanagari_stop() {
        assert_eq!(run(&["।"], &["नमस्ते", "। आगे"]), ("नमस्ते".into(), true));
    }
}
