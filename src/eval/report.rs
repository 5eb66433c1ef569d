//! The result of an evaluation: serializable, and printable as a table in the
//! layout of llama-perplexity's final `--kl-divergence` report.

use super::scoring::BaseLogProbs;
use super::stats::{Percentiles, Summary};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Per-chunk means (not cumulative).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkStats {
    pub chunk: usize,
    pub ppl_model: f64,
    pub ppl_base: f64,
    pub kld: f64,
    pub same_top: f64,
}

/// Everything `airavata eval` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub base: String,
    pub model: String,
    pub text: String,
    pub n_ctx: usize,
    pub n_vocab: usize,
    /// Tokens in the whole text (with BOS).
    pub n_text_tokens: usize,
    pub n_chunks: usize,
    pub base_logprobs: BaseLogProbs,
    pub summary: Summary,
    pub chunks: Vec<ChunkStats>,
    pub seconds: f64,
}

impl EvalReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data (no maps with non-string keys) cannot fail;
        // non-finite floats become null.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn pct_lines(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    p: &Percentiles,
    scale: f64,
    unit: &str,
) -> fmt::Result {
    let rows = [
        ("Maximum", p.max),
        ("99.9%  ", p.p99_9),
        ("99.0%  ", p.p99),
        ("95.0%  ", p.p95),
        ("90.0%  ", p.p90),
        ("Median ", p.median),
        ("10.0%  ", p.p10),
        (" 5.0%  ", p.p5),
        (" 1.0%  ", p.p1),
        ("Minimum", p.min),
    ];
    for (name, v) in rows {
        writeln!(f, "{name} {label}: {:>10.6}{unit}", v * scale)?;
    }
    Ok(())
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(f, "base : {}", self.base)?;
        writeln!(f, "model: {}", self.model)?;
        writeln!(
            f,
            "text : {} ({} tokens; {} chunks x {} ctx, {} scored tokens; base log-probs {:?})",
            self.text,
            self.n_text_tokens,
            self.n_chunks,
            self.n_ctx,
            s.n_tokens,
            self.base_logprobs
        )?;
        writeln!(f)?;
        writeln!(f, "====== Perplexity statistics ======")?;
        writeln!(
            f,
            "Mean PPL(Q)                   : {:>10.6} ± {:>10.6}",
            s.ppl_model.value, s.ppl_model.uncertainty
        )?;
        writeln!(
            f,
            "Mean PPL(base)                : {:>10.6} ± {:>10.6}",
            s.ppl_base.value, s.ppl_base.uncertainty
        )?;
        writeln!(
            f,
            "Cor(ln(PPL(Q)), ln(PPL(base))): {:>6.2}%",
            100.0 * s.ln_ppl_correlation
        )?;
        writeln!(
            f,
            "Mean ln(PPL(Q)/PPL(base))     : {:>10.6} ± {:>10.6}",
            s.ln_ppl_ratio.value, s.ln_ppl_ratio.uncertainty
        )?;
        writeln!(
            f,
            "Mean PPL(Q)/PPL(base)         : {:>10.6} ± {:>10.6}",
            s.ppl_ratio.value, s.ppl_ratio.uncertainty
        )?;
        writeln!(
            f,
            "Mean PPL(Q)-PPL(base)         : {:>10.6} ± {:>10.6}",
            s.ppl_diff.value, s.ppl_diff.uncertainty
        )?;
        writeln!(f)?;
        writeln!(f, "====== KL divergence statistics ======")?;
        writeln!(
            f,
            "Mean    KLD: {:>10.6} ± {:>10.6}",
            s.kld.value, s.kld.uncertainty
        )?;
        pct_lines(f, "KLD", &s.kld_percentiles, 1.0, "")?;
        writeln!(f)?;
        writeln!(f, "====== Token probability statistics ======")?;
        writeln!(
            f,
            "Mean    Δp: {:>6.3} ± {:>5.3} %",
            100.0 * s.delta_p.value,
            100.0 * s.delta_p.uncertainty
        )?;
        pct_lines(f, "Δp", &s.delta_p_percentiles, 100.0, "%")?;
        writeln!(
            f,
            "RMS Δp    : {:>6.3} ± {:>5.3} %",
            100.0 * s.delta_p_rms.value,
            100.0 * s.delta_p_rms.uncertainty
        )?;
        writeln!(
            f,
            "Same top p: {:>6.3} ± {:>5.3} %",
            100.0 * s.same_top.value,
            100.0 * s.same_top.uncertainty
        )?;
        Ok(())
    }
}
