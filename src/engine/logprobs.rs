//! Log-probabilities of sampled tokens, from the raw logits llama.cpp
//! produced for the position: a log-softmax over the whole vocabulary,
//! before temperature, penalties, truncation or a grammar change anything.
//! So the numbers describe the model's own distribution, not the sampling
//! settings.
//!
//! The normaliser is a log-sum-exp accumulated in f64 after subtracting the
//! row's maximum, so no term overflows and a 48k-entry sum loses no digits
//! that matter at the 1e-6 level.

/// Most alternatives one position may report (OpenAI's `top_logprobs` bound).
pub const MAX_TOP: usize = 20;

/// One alternative at a position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopLogprob {
    /// Token id.
    pub token: i32,
    /// The token's bytes as generation emits them (may be part of a code point).
    pub bytes: Vec<u8>,
    /// Natural-log probability under the model's distribution.
    pub logprob: f64,
}

/// The sampled token at one position and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    /// Token id.
    pub token: i32,
    /// The token's bytes as they went into the generated text.
    pub bytes: Vec<u8>,
    /// Natural-log probability of the sampled token.
    pub logprob: f64,
    /// The most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<TopLogprob>,
}

/// A prompt's tokens with the log-probability the model gives each one
/// after the tokens before it: `log_softmax(logits after tokens[..i])[tokens[i]]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PromptLogprobs {
    /// The first prompt token (nothing precedes it, so it has no log-probability).
    pub first_token: i32,
    /// Its bytes (empty for a control token such as BOS).
    pub first_bytes: Vec<u8>,
    /// Every later prompt token, in order.
    pub rest: Vec<TokenLogprob>,
}

/// Log-probabilities read from one row of logits, before token bytes are
/// attached (that happens off the sampling phase).
#[derive(Debug, Clone, PartialEq)]
pub struct RowLogprobs {
    /// The sampled token's log-probability.
    pub logprob: f64,
    /// `(token, logprob)` of the most likely tokens, most likely first.
    pub top: Vec<(i32, f64)>,
}

impl RowLogprobs {
    /// The entry of `token` (whose bytes are `bytes`), each alternative's
    /// bytes from `piece`.
    pub fn with_bytes(
        self,
        token: i32,
        bytes: Vec<u8>,
        piece: impl Fn(i32) -> Vec<u8>,
    ) -> TokenLogprob {
        TokenLogprob {
            token,
            bytes,
            logprob: self.logprob,
            top: self
                .top
                .into_iter()
                .map(|(token, logprob)| TopLogprob {
                    token,
                    bytes: piece(token),
                    logprob,
                })
                .collect(),
        }
    }
}

/// `log Σ exp(row)`, computed stably in f64. `-inf` for an empty row or one
/// that is all `-inf`; NaN when the row holds a NaN.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if row.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let max = f64::from(max);
    let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    max + sum.ln()
}

/// The indices of the `n` largest values, largest first; equal values keep
/// index order; NaNs are never chosen.
pub fn top_indices(row: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(row.len());
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return Vec::new();
    }
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.len() == n && best.last().is_some_and(|&(w, _)| v <= w) {
            continue;
        }
        // First position whose value is below v: later equal values stay behind.
        let at = best.partition_point(|&(w, _)| w >= v);
        best.insert(at, (v, i));
        best.truncate(n);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

/// The log-probability of `token` and of the `n_top` most likely tokens in
/// `row` (a full row of raw logits).
pub fn row_logprobs(row: &[f32], token: usize, n_top: usize) -> RowLogprobs {
    let lse = log_sum_exp(row);
    let lp = |i: usize| {
        row.get(i)
            .map_or(f64::NEG_INFINITY, |&v| f64::from(v) - lse)
    };
    RowLogprobs {
        logprob: lp(token),
        top: top_indices(row, n_top.min(MAX_TOP))
            .into_iter()
            .map(|i| (i32::try_from(i).unwrap_or(i32::MAX), lp(i)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook log-softmax, in f64 without the max shift (fine for small values).
    fn naive(row: &[f32]) -> Vec<f64> {
        let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        row.iter().map(|&v| f64::from(v) - z.ln()).collect()
    }

    #[test]
    fn log_softmax_matches_the_definition_and_sums_to_one() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 113) as f32 / 10.0 - 5.0)
            .collect();
        let want = naive(&row);
        let lse = log_sum_exp(&row);
        for (i, w) in want.iter().enumerate() {
            assert!((f64::from(row[i]) - lse - w).abs() < 1e-12, "index {i}");
        }
        let total: f64 = row.iter().map(|&v| (f64::from(v) - lse).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "sum {total}");
    }

    #[test]
    fn large_logits_do_not_overflow() {
        // exp(1000) overflows f64; the shifted sum does not.
        let row = [1000.0f32, 999.0, -1000.0, f32::NEG_INFINITY];
        let r = row_logprobs(&row, 1, 2);
        let want0 = -(1.0f64 + (-1.0f64).exp()).ln();
        assert!((r.top[0].1 - want0).abs() < 1e-12);
        assert!((r.logprob - (want0 - 1.0)).abs() < 1e-12);
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            row_logprobs(&row, 3, 0).logprob,
            f64::NEG_INFINITY,
            "a masked token"
        );
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert!(log_sum_exp(&[0.0, f32::NAN]).is_nan());
    }

    #[test]
    fn top_indices_sorted_with_ties_in_index_order() {
        let row = [1.0f32, 3.0, 3.0, f32::NAN, 2.0, 3.0, -1.0];
        assert_eq!(top_indices(&row, 4), [1, 2, 5, 4]);
        assert_eq!(top_indices(&row, 0), Vec::<usize>::new());
        assert_eq!(top_indices(&row, 100), [1, 2, 5, 4, 0, 6]);
        // Against a full sort on a longer row with many ties.
        let row: Vec<f32> = (0..5000).map(|i| ((i * 31) % 97) as f32).collect();
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        assert_eq!(top_indices(&row, 20), idx[..20]);
    }

    #[test]
    fn n_top_is_capped() {
        let row: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(row_logprobs(&row, 0, 50).top.len(), MAX_TOP);
    }
}
