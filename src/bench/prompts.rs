//! Prompt lengths users have (`--prompt-lengths`): fixed lengths, a long-tail
//! mix drawn from a prompt set plus padding, and multi-turn chats that grow.
//!
//! * `fixed:N`: every prompt is [`synth_prompt`]`(N)`, exactly as
//!   `--prompt-tokens N` (which is the same thing under another name).
//! * `mix:LO-HI`: request `i` gets a target length drawn log-uniformly from
//!   `[LO, HI]` ([`mix_length`]: every doubling equally likely, so the median
//!   is about `sqrt(LO * HI)`, well below the mean and far below `HI`; seeded
//!   by `--seed` and the request's number, so a run is reproducible). Its text
//!   is padding words and then a prompt of the set ([`pad_prompt`]): like a
//!   document followed by a question. The padding words are drawn per
//!   request, so two requests share at most a few leading tokens and the
//!   prompt cache can't serve them.
//! * `chat:TURNS`: each stream runs conversations of TURNS requests; turn `k`
//!   sends the whole history (earlier user messages and the server's answers)
//!   and a new user message, so the context grows turn by turn and, as in
//!   real chats, each turn's prefix is in the server's prompt cache. The
//!   first message carries a tag unique to the conversation, so conversations
//!   don't share prefixes. `openai-chat` sends a `messages` list;
//!   `generate` (with `"raw": true`) and `openai-completions` send the
//!   history as text in Airavata's chat format ([`render_transcript`]).
//!
//! Lengths are targets in (Llama) tokens, estimated client-side
//! ([`estimate_tokens`]); the report states the server's own counts
//! (`usage.prompt_tokens`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use super::args::{synth_prompt, WORDS};

/// Largest token target accepted in a spec.
pub const MAX_PROMPT_TOKENS: usize = 1 << 20;
/// Largest number of turns accepted in `chat:TURNS`.
pub const MAX_TURNS: usize = 1000;
/// `--seed` default.
pub const DEFAULT_SEED: u64 = 24;
/// Where the shared Airavata prompt set lives under `$AIRAVATA_ASSETS`.
pub const ASSET_PROMPTS: &str = "eval-airavata-prompts/prompts.jsonl";

/// A `--prompt-lengths` spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptLengths {
    /// `fixed:N`: every prompt about N tokens.
    Fixed(usize),
    /// `mix:LO-HI`: log-uniform targets in `[lo, hi]`.
    Mix {
        /// Shortest target.
        lo: usize,
        /// Longest target.
        hi: usize,
    },
    /// `chat:TURNS`: conversations of `turns` requests each.
    Chat {
        /// Requests per conversation.
        turns: usize,
    },
}

const USAGE: &str =
    "expected fixed:N, mix:LO-HI or chat:TURNS (e.g. fixed:512, mix:128-2048, chat:4)";

impl FromStr for PromptLengths {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let spec = s.trim();
        let Some((kind, rest)) = spec.split_once(':') else {
            return Err(format!("{s:?}: {USAGE}"));
        };
        let num = |what: &str, t: &str, max: usize| -> Result<usize, String> {
            let n: usize = t
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: {what} must be a whole number, got {:?}", t.trim()))?;
            if n == 0 {
                return Err(format!("{s:?}: {what} must be at least 1"));
            }
            if n > max {
                return Err(format!("{s:?}: {what} must be at most {max}"));
            }
            Ok(n)
        };
        match kind.trim() {
            "fixed" => Ok(PromptLengths::Fixed(num("N", rest, MAX_PROMPT_TOKENS)?)),
            "mix" => {
                let Some((lo, hi)) = rest.split_once('-') else {
                    return Err(format!(
                        "{s:?}: mix needs a range LO-HI of tokens (e.g. mix:128-2048)"
                    ));
                };
                let lo = num("LO", lo, MAX_PROMPT_TOKENS)?;
                let hi = num("HI", hi, MAX_PROMPT_TOKENS)?;
                if lo > hi {
                    return Err(format!("{s:?}: LO ({lo}) must not exceed HI ({hi})"));
                }
                Ok(PromptLengths::Mix { lo, hi })
            }
            "chat" => Ok(PromptLengths::Chat {
                turns: num("TURNS", rest, MAX_TURNS)?,
            }),
            other => Err(format!("{s:?}: unknown kind {other:?}; {USAGE}")),
        }
    }
}

impl fmt::Display for PromptLengths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromptLengths::Fixed(n) => write!(f, "fixed:{n}"),
            PromptLengths::Mix { lo, hi } => write!(f, "mix:{lo}-{hi}"),
            PromptLengths::Chat { turns } => write!(f, "chat:{turns}"),
        }
    }
}

/// SplitMix64: a small, well-mixed hash of a 64-bit value.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic 64-bit draw for (seed, purpose, index, sub-index).
fn draw(seed: u64, purpose: u64, i: u64, j: u64) -> u64 {
    splitmix64(seed ^ splitmix64(purpose ^ splitmix64(i ^ splitmix64(j))))
}

const FOR_LENGTH: u64 = 1;
const FOR_PICK: u64 = 2;
const FOR_WORD: u64 = 3;

/// Request `i`'s target length under `mix:LO-HI`: log-uniform on
/// `[lo, hi + 1)`, rounded down, so every value lies in `[lo, hi]`.
pub fn mix_length(seed: u64, i: u64, lo: usize, hi: usize) -> usize {
    let (lo, hi) = (lo.max(1), hi.max(lo.max(1)));
    // 53 random bits -> [0, 1).
    let u = (draw(seed, FOR_LENGTH, i, 0) >> 11) as f64 / (1u64 << 53) as f64;
    let (a, b) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
    let x = (a + u * (b - a)).exp().floor() as usize;
    x.clamp(lo, hi)
}

/// Which of `n` prompts request (or message) `i` uses.
pub fn pick(seed: u64, i: u64, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (draw(seed, FOR_PICK, i, 0) % n as u64) as usize
}

/// A rough client-side count of `text`'s Llama tokens: about four ASCII
/// characters a token, two other characters (Devanagari) a token. The
/// server's count (`usage.prompt_tokens`) is what the report states.
pub fn estimate_tokens(text: &str) -> usize {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    let other = text.chars().filter(|c| !c.is_ascii()).count();
    ascii.div_ceil(4) + other.div_ceil(2)
}

/// `base` preceded by padding words (single tokens each, drawn per `(seed, i)`)
/// so the whole is about `target` tokens: a document, a blank line, then the
/// prompt. A base already as long as the target is sent unpadded.
pub fn pad_prompt(base: &str, target: usize, seed: u64, i: u64) -> String {
    // The blank line and the lead are about 3 tokens.
    let words = target.saturating_sub(estimate_tokens(base) + 3);
    if words == 0 {
        return base.to_string();
    }
    let mut s = String::with_capacity(words * 7 + base.len() + 2);
    for j in 0..words {
        if j > 0 {
            s.push(' ');
        }
        let w = draw(seed, FOR_WORD, i, j as u64) % WORDS.len() as u64;
        s.push_str(WORDS[w as usize]);
    }
    s.push_str("\n\n");
    s.push_str(base);
    s
}

/// Airavata's chat format of a conversation so far plus the next user
/// message (`<|user|>\n…\n<|assistant|>\n…</s>\n…<|assistant|>\n`); the
/// tokenizer adds BOS.
pub fn render_transcript(history: &[(String, String)], next: &str) -> String {
    let mut s = String::new();
    for (user, answer) in history {
        s.push_str("<|user|>\n");
        s.push_str(user);
        s.push_str("\n<|assistant|>\n");
        s.push_str(answer);
        s.push_str("</s>\n");
    }
    s.push_str("<|user|>\n");
    s.push_str(next);
    s.push_str("\n<|assistant|>\n");
    s
}

/// The texts that `mix` pads and `chat` sends as user messages.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSet {
    /// User messages.
    pub texts: Vec<String>,
    /// Where they came from, for the report.
    pub origin: String,
}

/// Reads a prompt set: JSON Lines, one object a line, whose text is its last
/// `messages` entry with `"role": "user"` (the shared Airavata set's shape),
/// else its `"prompt"` string; blank lines are skipped.
pub fn load_prompt_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}: not JSON: {e}", at()))?;
        let user = v
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            })
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str);
        let Some(t) = user.or_else(|| v.get("prompt").and_then(Value::as_str)) else {
            return Err(format!(
                "{}: no user message (messages[].role \"user\" with a string content) and no \"prompt\" string",
                at()
            ));
        };
        if t.trim().is_empty() {
            return Err(format!("{}: the prompt is empty", at()));
        }
        out.push(t.to_string());
    }
    if out.is_empty() {
        return Err(format!("{}: no prompts", path.display()));
    }
    Ok(out)
}

/// The shared set under `$AIRAVATA_ASSETS`, when that file exists.
pub fn asset_prompt_file() -> Option<PathBuf> {
    let dir = std::env::var_os("AIRAVATA_ASSETS").filter(|v| !v.is_empty())?;
    let p = PathBuf::from(dir).join(ASSET_PROMPTS);
    p.is_file().then_some(p)
}

/// Synthetic user messages (when no prompt file is available): 64 requests
/// to write about ~24 words each.
pub fn synthetic_set() -> Vec<String> {
    (0..64u64)
        .map(|k| {
            let mut s = String::from("Write a short story using these words:");
            for j in 0..24 {
                let w = draw(DEFAULT_SEED, FOR_WORD, u64::MAX - k, j) % WORDS.len() as u64;
                s.push(' ');
                s.push_str(WORDS[w as usize]);
            }
            s
        })
        .collect()
}

/// The prompt set for `mix` / `chat`: `file` when given, else the shared set
/// under `$AIRAVATA_ASSETS`, else synthetic text (and the origin says so).
pub fn resolve_set(file: Option<&Path>) -> Result<PromptSet, String> {
    let (path, named) = match file {
        Some(p) => (Some(p.to_path_buf()), true),
        None => (asset_prompt_file(), false),
    };
    match path {
        Some(p) => {
            let texts = load_prompt_file(&p)?;
            let origin = format!(
                "{} prompts from {}{}",
                texts.len(),
                p.display(),
                if named { "" } else { " ($AIRAVATA_ASSETS)" }
            );
            Ok(PromptSet { texts, origin })
        }
        None => Ok(PromptSet {
            texts: synthetic_set(),
            origin: format!(
                "synthetic text (no --prompt-file, and no $AIRAVATA_ASSETS/{ASSET_PROMPTS})"
            ),
        }),
    }
}

/// `fixed:N`'s prompt (the same as `--prompt-tokens N`).
pub fn fixed_prompt(n: usize) -> String {
    synth_prompt(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Summary;

    #[test]
    fn specs_parse_and_print() {
        for (s, want) in [
            ("fixed:512", PromptLengths::Fixed(512)),
            (" fixed: 32 ", PromptLengths::Fixed(32)),
            ("mix:128-2048", PromptLengths::Mix { lo: 128, hi: 2048 }),
            ("mix:64-64", PromptLengths::Mix { lo: 64, hi: 64 }),
            ("chat:4", PromptLengths::Chat { turns: 4 }),
        ] {
            let got: PromptLengths = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(got, want, "{s}");
            // Display round-trips.
            assert_eq!(got.to_string().parse::<PromptLengths>(), Ok(want));
        }
        assert_eq!(PromptLengths::Mix { lo: 1, hi: 9 }.to_string(), "mix:1-9");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, needle) in [
            ("512", "expected fixed:N, mix:LO-HI or chat:TURNS"),
            ("", "expected fixed:N"),
            ("uniform:1-2", "unknown kind \"uniform\""),
            ("fixed:", "N must be a whole number"),
            ("fixed:abc", "N must be a whole number, got \"abc\""),
            ("fixed:-3", "N must be a whole number"),
            ("fixed:0", "N must be at least 1"),
            ("fixed:99999999", "N must be at most 1048576"),
            ("mix:128", "mix needs a range LO-HI"),
            ("mix:2048-128", "LO (2048) must not exceed HI (128)"),
            ("mix:0-10", "LO must be at least 1"),
            ("mix:1-x", "HI must be a whole number"),
            ("chat:0", "TURNS must be at least 1"),
            ("chat:1001", "TURNS must be at most 1000"),
            ("chat:two", "TURNS must be a whole number"),
        ] {
            let err = s
                .parse::<PromptLengths>()
                .expect_err(&format!("{s:?} must be refused"));
            assert!(err.contains(needle), "{s:?}: {err}");
        }
    }

    #[test]
    fn mix_lengths_lie_in_range_and_repeat_for_a_seed() {
        let (lo, hi) = (128, 2048);
        let a: Vec<usize> = (0..4000).map(|i| mix_length(7, i, lo, hi)).collect();
        assert!(a.iter().all(|&n| (lo..=hi).contains(&n)));
        let again: Vec<usize> = (0..4000).map(|i| mix_length(7, i, lo, hi)).collect();
        assert_eq!(a, again);
        let other: Vec<usize> = (0..4000).map(|i| mix_length(8, i, lo, hi)).collect();
        assert_ne!(a, other, "another seed gives other lengths");
        // Both ends are reached.
        assert!(a.iter().any(|&n| n < lo + 8) && a.iter().any(|&n| n > hi - 64));
        // A one-value range.
        assert!((0..50).all(|i| mix_length(1, i, 300, 300) == 300));
    }

    #[test]
    fn mix_has_a_long_tail() {
        let (lo, hi) = (128.0f64, 2048.0f64);
        let v: Vec<f64> = (0..20_000)
            .map(|i| mix_length(DEFAULT_SEED, i, 128, 2048) as f64)
            .collect();
        let s = Summary::of(&v).expect("summary");
        // Log-uniform: the median is the geometric mean (512), the mean
        // (HI - LO) / ln(HI / LO) ≈ 692, and each doubling holds a quarter.
        let gm = (lo * hi).sqrt();
        assert!((s.p50 / gm - 1.0).abs() < 0.05, "median {}", s.p50);
        assert!(
            (s.mean / ((hi - lo) / (hi / lo).ln()) - 1.0).abs() < 0.03,
            "mean {}",
            s.mean
        );
        assert!(s.p50 < 0.8 * s.mean && s.p50 < hi / 3.0, "{s:?}");
        assert!(s.p90 > 2.5 * s.p50, "p90 {} vs p50 {}", s.p90, s.p50);
        for k in 0..4 {
            let (a, b) = (lo * 2f64.powi(k), lo * 2f64.powi(k + 1));
            let share = v.iter().filter(|&&x| x >= a && x < b).count() as f64 / v.len() as f64;
            assert!((share - 0.25).abs() < 0.02, "[{a}, {b}): {share}");
        }
    }

    #[test]
    fn padding_reaches_the_target_and_differs_per_request() {
        let base = "What is the capital of France?";
        let p = pad_prompt(base, 600, 1, 5);
        assert!(p.ends_with(&format!("\n\n{base}")));
        let est = estimate_tokens(base) + 3 + p.split_whitespace().count()
            - base.split_whitespace().count();
        assert!((595..=605).contains(&est), "{est}");
        // Same (seed, request): same text; another request: other words from
        // the first few on.
        assert_eq!(p, pad_prompt(base, 600, 1, 5));
        let q = pad_prompt(base, 600, 1, 6);
        let common = p
            .split(' ')
            .zip(q.split(' '))
            .take_while(|(a, b)| a == b)
            .count();
        assert!(common < 4, "{common} leading words shared");
        // A base longer than the target is not cut.
        assert_eq!(pad_prompt(base, 3, 1, 5), base);
        // Devanagari counts two characters a token.
        assert_eq!(estimate_tokens("नमस्ते"), 3);
        assert_eq!(estimate_tokens("abcdefgh"), 2);
    }

    #[test]
    fn transcripts_use_airavatas_format() {
        assert_eq!(
            render_transcript(&[], "Hi"),
            "<|user|>\nHi\n<|assistant|>\n"
        );
        let h = vec![("Hi".to_string(), "Hello!".to_string())];
        assert_eq!(
            render_transcript(&h, "भारत?"),
            "<|user|>\nHi\n<|assistant|>\nHello!</s>\n<|user|>\nभारत?\n<|assistant|>\n"
        );
    }

    #[test]
    fn prompt_files_are_read_or_refused_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.jsonl");
        std::fs::write(
            &good,
            concat!(
                r#"{"id": "a", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "one"}], "prompt": "<|user|>\none"}"#,
                "\n\n",
                r#"{"prompt": "two"}"#,
                "\n"
            ),
        )
        .expect("write");
        assert_eq!(
            load_prompt_file(&good),
            Ok(vec!["one".into(), "two".into()])
        );
        let set = resolve_set(Some(&good)).expect("set");
        assert_eq!(set.texts.len(), 2);
        assert!(set.origin.starts_with("2 prompts from "), "{}", set.origin);

        for (body, needle) in [
            ("{\"prompt\": \"x\"}\nnot json\n", ":2: not JSON"),
            ("{\"id\": 1}\n", ":1: no user message"),
            ("{\"prompt\": \"  \"}\n", ":1: the prompt is empty"),
            ("\n\n", "no prompts"),
        ] {
            let p = dir.path().join("bad.jsonl");
            std::fs::write(&p, body).expect("write");
            let err = load_prompt_file(&p).expect_err(body);
            assert!(err.contains(needle), "{body:?}: {err}");
        }
        let err = resolve_set(Some(&dir.path().join("missing.jsonl"))).expect_err("missing");
        assert!(err.contains("missing.jsonl"), "{err}");
        assert_eq!(synthetic_set().len(), 64);
    }
}
