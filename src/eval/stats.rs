//! Accumulation of per-token scores into llama-perplexity's summary
//! statistics (`kl_divergence()` in `tools/perplexity/perplexity.cpp`).

use super::scoring::TokenScore;
use serde::{Deserialize, Serialize};

/// A value with its one-sigma uncertainty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub uncertainty: f64,
}

/// Running sums (the C++ `kl_divergence_result`) plus all per-token KLD and
/// Δp values for percentiles.
#[derive(Debug, Clone, Default)]
pub struct Accumulator {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    kld_values: Vec<f64>,
    p_diff_values: Vec<f64>,
}

/// `mean_and_uncertainty` of the C++: mean and standard error of the mean
/// (zero with 10 or fewer samples).
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count < 1 {
        return Estimate {
            value: 0.0,
            uncertainty: 0.0,
        };
    }
    let f = sum / count as f64;
    let df = sum2 / count as f64 - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    Estimate {
        value: f,
        uncertainty: df,
    }
}

fn covariance(suma: f64, sumb: f64, sumab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let c = count as f64;
    (sumab / c - (suma / c) * (sumb / c)) / (c - 1.0)
}

/// llama-perplexity's `percentile` on sorted values: linear interpolation
/// at `fraction * (len - 1)`.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p as usize;
    let t = p - ip as f64;
    (1.0 - t) * sorted[ip] + t * sorted[(ip + 1).min(sorted.len() - 1)]
}

/// Percentiles of a distribution of per-token values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub max: f64,
    pub p99_9: f64,
    pub p99: f64,
    pub p95: f64,
    pub p90: f64,
    pub p75: f64,
    pub median: f64,
    pub p25: f64,
    pub p10: f64,
    pub p5: f64,
    pub p1: f64,
    pub p0_1: f64,
    pub min: f64,
}

impl Percentiles {
    fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |f| percentile(&v, f);
        Self {
            max: q(1.0),
            p99_9: q(0.999),
            p99: q(0.99),
            p95: q(0.95),
            p90: q(0.90),
            p75: q(0.75),
            median: q(0.5),
            p25: q(0.25),
            p10: q(0.10),
            p5: q(0.05),
            p1: q(0.01),
            p0_1: q(0.001),
            min: q(0.0),
        }
    }
}

/// Final statistics, as llama-perplexity prints them at the end of a
/// `--kl-divergence` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n_tokens: usize,
    pub ppl_model: Estimate,
    pub ppl_base: Estimate,
    /// Correlation of ln PPL(model) and ln PPL(base).
    pub ln_ppl_correlation: f64,
    pub ln_ppl_ratio: Estimate,
    pub ppl_ratio: Estimate,
    pub ppl_diff: Estimate,
    pub kld: Estimate,
    pub kld_percentiles: Percentiles,
    /// Mean of p_model(target) - p_base(target).
    pub delta_p: Estimate,
    pub delta_p_rms: Estimate,
    pub delta_p_percentiles: Percentiles,
    /// Fraction (0..1) of positions where both models' argmax agree.
    pub same_top: Estimate,
}

impl Accumulator {
    pub fn push(&mut self, s: &TokenScore) {
        self.sum_nll += s.nll_model;
        self.sum_nll2 += s.nll_model * s.nll_model;
        self.sum_nll_base += s.nll_base;
        self.sum_nll_base2 += s.nll_base * s.nll_base;
        self.sum_nll_nll_base += s.nll_model * s.nll_base;
        self.sum_kld += s.kld;
        self.sum_kld2 += s.kld * s.kld;
        self.sum_p_diff += s.p_diff;
        let p2 = s.p_diff * s.p_diff;
        self.sum_p_diff2 += p2;
        self.sum_p_diff4 += p2 * p2;
        self.n_same_top += usize::from(s.same_top);
        self.kld_values.push(s.kld);
        self.p_diff_values.push(s.p_diff);
    }

    pub fn count(&self) -> usize {
        self.kld_values.len()
    }

    /// Compute the summary (formulas of llama-perplexity's final report).
    pub fn summary(&self) -> Summary {
        let n = self.count();
        let log_ppl = mean_and_uncertainty(self.sum_nll, self.sum_nll2, n);
        let log_ppl_base = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n);
        let ppl = log_ppl.value.exp();
        let ppl_unc = ppl * log_ppl.uncertainty;
        let ppl_base = log_ppl_base.value.exp();
        let ppl_base_unc = ppl_base * log_ppl_base.uncertainty;
        let cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n);
        let cor = cov / (log_ppl.uncertainty * log_ppl_base.uncertainty);
        let ratio_val = log_ppl.value - log_ppl_base.value;
        let ratio_unc = (log_ppl.uncertainty.powi(2) + log_ppl_base.uncertainty.powi(2)
            - 2.0 * cov)
            .max(0.0)
            .sqrt();
        let ppl_ratio = ratio_val.exp();
        let ppl_cov = ppl * ppl_base * cov;
        let diff_unc = (ppl_unc * ppl_unc + ppl_base_unc * ppl_base_unc - 2.0 * ppl_cov)
            .max(0.0)
            .sqrt();
        let p_diff_mse = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n);
        let rms = p_diff_mse.value.sqrt();
        let rms_unc = if rms > 0.0 {
            0.5 / rms * p_diff_mse.uncertainty
        } else {
            0.0
        };
        let same = if n > 0 {
            self.n_same_top as f64 / n as f64
        } else {
            0.0
        };
        let same_unc = if n > 1 {
            (same * (1.0 - same) / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Summary {
            n_tokens: n,
            ppl_model: Estimate {
                value: ppl,
                uncertainty: ppl_unc,
            },
            ppl_base: Estimate {
                value: ppl_base,
                uncertainty: ppl_base_unc,
            },
            ln_ppl_correlation: cor,
            ln_ppl_ratio: Estimate {
                value: ratio_val,
                uncertainty: ratio_unc,
            },
            ppl_ratio: Estimate {
                value: ppl_ratio,
                uncertainty: ppl_ratio * ratio_unc,
            },
            ppl_diff: Estimate {
                value: ppl - ppl_base,
                uncertainty: diff_unc,
            },
            kld: mean_and_uncertainty(self.sum_kld, self.sum_kld2, n),
            kld_percentiles: Percentiles::of(&self.kld_values),
            delta_p: mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n),
            delta_p_rms: Estimate {
                value: rms,
                uncertainty: rms_unc,
            },
            delta_p_percentiles: Percentiles::of(&self.p_diff_values),
            same_top: Estimate {
                value: same,
                uncertainty: same_unc,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_cpp() {
        let v = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 0.5), 1.5);
        assert_eq!(percentile(&v, 1.0), 3.0);
        assert_eq!(percentile(&v, 0.0), 0.0);
        assert!((percentile(&v, 0.9) - 2.7).abs() < 1e-12);
    }

    #[test]
    fn ppl_is_exp_mean_nll() {
        let mut a = Accumulator::default();
        for i in 0..20 {
            let nll = 1.0 + (i % 4) as f64 * 0.5;
            a.push(&TokenScore {
                nll_model: nll,
                nll_base: nll,
                kld: 0.0,
                same_top: i % 5 != 0,
                p_diff: 0.0,
            });
        }
        let s = a.summary();
        assert!((s.ppl_model.value - 1.75f64.exp()).abs() < 1e-12);
        assert_eq!(s.ppl_model, s.ppl_base);
        assert!((s.same_top.value - 0.8).abs() < 1e-12);
        assert!(s.ln_ppl_ratio.value.abs() < 1e-15);
        assert!((s.ln_ppl_correlation - 1.0).abs() < 1e-9);
    }
}
