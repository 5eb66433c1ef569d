//! Per-token scores of one position: base vs model next-token distributions.
//!
//! Mirrors `log_softmax(n_vocab, logits, base_log_prob, tok, kld)` in
//! llama.cpp's `tools/perplexity/perplexity.cpp` (the `--kl-divergence`
//! pass), with two ways to hold the base distribution:
//!
//! * [`BaseLogProbs::Exact`] (default): base log-probabilities in f64 straight
//!   from its logits. KLD of a model against itself is exactly 0.
//! * [`BaseLogProbs::U16`]: the base log-probabilities are first squeezed
//!   through llama-perplexity's on-disk format (`--kl-divergence-base` file:
//!   16-bit codes over `[max-16, max]` nats, tokens below clamped) and the KLD
//!   sum skips tokens with base log-prob <= -16, exactly as llama-perplexity
//!   does. Use it to reproduce llama-perplexity's numbers digit for digit
//!   (self-KLD is then ~1e-6, not 0).

use serde::{Deserialize, Serialize};

/// How the base model's distribution is held (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseLogProbs {
    #[default]
    Exact,
    U16,
}

/// Scores of one scored position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScore {
    /// -log p_model(target).
    pub nll_model: f64,
    /// -log p_base(target).
    pub nll_base: f64,
    /// KL(base || model) = sum_i p_base(i) (log p_base(i) - log p_model(i)).
    pub kld: f64,
    /// Model and base agree on the most likely next token.
    pub same_top: bool,
    /// p_model(target) - p_base(target).
    pub p_diff: f64,
}

/// Index of the first maximum (ties resolve to the lowest index, as the C++ loop).
fn argmax(v: &[f32]) -> usize {
    let mut imax = 0;
    let mut vmax = v[0];
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > vmax {
            vmax = x;
            imax = i;
        }
    }
    imax
}

/// `max(logits)` and `log(sum(exp(logits - max)))`, the sum in f64 over f32
/// exponentials like the C++ (`sum_exp += expf(logit - max)`).
fn max_and_log_sum_exp(logits: &[f32]) -> (f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    (max, sum.ln())
}

/// Exact per-position scores from the two logit rows and the target token.
pub fn score_exact(base: &[f32], model: &[f32], target: usize) -> TokenScore {
    debug_assert_eq!(base.len(), model.len());
    let (bmax, blse) = max_and_log_sum_exp(base);
    let (mmax, mlse) = max_and_log_sum_exp(model);
    let lp_base = |i: usize| (base[i] - bmax) as f64 - blse;
    let lp_model = |i: usize| (model[i] - mmax) as f64 - mlse;
    let mut kld = 0f64;
    for i in 0..base.len() {
        let lb = lp_base(i);
        kld += lb.exp() * (lb - lp_model(i));
    }
    let nll_model = -lp_model(target);
    let nll_base = -lp_base(target);
    TokenScore {
        nll_model,
        nll_base,
        kld,
        same_top: argmax(base) == argmax(model),
        p_diff: (-nll_model).exp() - (-nll_base).exp(),
    }
}

/// llama-perplexity's 16-bit base log-probabilities of one row:
/// `(scale, min_log_prob, codes)`, from `log_softmax(n_vocab, logits, log_prob, tok)`.
pub fn base_logprobs_u16(logits: &[f32]) -> (f32, f32, Vec<u16>) {
    let mut max_logit = logits[0];
    let mut min_logit = logits[0];
    for &l in &logits[1..] {
        max_logit = max_logit.max(l);
        min_logit = min_logit.min(l);
    }
    min_logit = min_logit.max(max_logit - 16.0);
    let sum_exp: f64 = logits.iter().map(|&l| (l - max_logit).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min_logit - max_logit - log_sum_exp;
    let scale = (max_logit - min_logit) / 65535.0;
    let codes = if scale != 0.0 {
        let inv = 1.0 / scale;
        logits
            .iter()
            .map(|&l| {
                if l > min_logit {
                    // nearest_int(): round half to even via the 1.5*2^23 trick.
                    (inv * (l - min_logit)).round_ties_even() as i32 as u16
                } else {
                    0
                }
            })
            .collect()
    } else {
        vec![0; logits.len()]
    };
    (scale, min_log_prob, codes)
}

/// Per-position scores with the base held as llama-perplexity's 16-bit codes,
/// f32 arithmetic where the C++ uses float.
pub fn score_u16(base: &[f32], model: &[f32], target: usize) -> TokenScore {
    let (scale, min_log_prob, codes) = base_logprobs_u16(base);
    let imax = argmax(model);
    let mut max_logit = model[imax];
    let sum_exp: f64 = model.iter().map(|&l| (l - max_logit).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let nll: f32 = max_logit + log_sum_exp - model[target];
    let nll_base: f32 = -(scale * codes[target] as f32 + min_log_prob);
    max_logit += log_sum_exp;
    let mut sum = 0f64;
    let mut imax_base = 0usize;
    let mut p_log_base_max = 0f32;
    for (i, &c) in codes.iter().enumerate() {
        let p_log_base = scale * c as f32 + min_log_prob;
        if i == 0 || p_log_base > p_log_base_max {
            p_log_base_max = p_log_base;
            imax_base = i;
        }
        if p_log_base > -16.0 {
            let p_base = p_log_base.exp();
            sum += (p_base * (p_log_base - model[i] + max_logit)) as f64;
        }
    }
    let p_base = (-nll_base).exp();
    let p = (-nll).exp();
    TokenScore {
        nll_model: nll as f64,
        nll_base: nll_base as f64,
        kld: sum,
        same_top: imax == imax_base,
        p_diff: (p - p_base) as f64,
    }
}

/// Score one position with the chosen base representation.
pub fn score(base: &[f32], model: &[f32], target: usize, mode: BaseLogProbs) -> TokenScore {
    match mode {
        BaseLogProbs::Exact => score_exact(base, model, target),
        BaseLogProbs::U16 => score_u16(base, model, target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_have_zero_kld() {
        let row: Vec<f32> = (0..97)
            .map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0)
            .collect();
        let s = score_exact(&row, &row, 5);
        assert_eq!(s.kld, 0.0);
        assert!(s.same_top);
        assert_eq!(s.p_diff, 0.0);
        assert_eq!(s.nll_base, s.nll_model);
        let u = score_u16(&row, &row, 5);
        assert!(u.kld.abs() < 1e-4, "{}", u.kld);
        assert!(u.same_top);
    }

    #[test]
    fn two_token_kld_matches_closed_form() {
        // p = softmax([0, ln 3]) = (1/4, 3/4); q = (1/2, 1/2).
        let base = [0.0f32, 3f32.ln()];
        let model = [0.0f32, 0.0];
        let s = score_exact(&base, &model, 0);
        let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert!((s.kld - want).abs() < 1e-7, "{} vs {want}", s.kld);
        assert!((s.nll_base - 4f64.ln()).abs() < 1e-7);
        assert!((s.nll_model - 2f64.ln()).abs() < 1e-7);
        assert!((s.p_diff - 0.25).abs() < 1e-7);
        assert!(!s.same_top);
        let u = score_u16(&base, &model, 0);
        assert!((u.kld - want).abs() < 1e-4, "{} vs {want}", u.kld);
    }

    #[test]
    fn u16_codes_cover_sixteen_nats() {
        let logits = [10.0f32, -20.0, 0.0, 9.0];
        let (scale, min_lp, codes) = base_logprobs_u16(&logits);
        assert_eq!(codes[1], 0, "clamped below max-16");
        assert_eq!(codes[0], 65535);
        assert!((scale - 16.0 / 65535.0).abs() < 1e-9);
        // log p of the top token reconstructs to within one step.
        let lp0 = scale * codes[0] as f32 + min_lp;
        let lse = (logits
            .iter()
            .map(|&l| ((l - 10.0) as f64).exp())
            .sum::<f64>())
        .ln();
        assert!((lp0 as f64 + lse).abs() < 1e-3);
    }
}
