//! The server-side view of a level: our server's step profile, read from
//! `/metrics` before and after the level (`airavata_engine_*` counters).
//! Servers without those counters (llama-server, vLLM) give no profile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::stats::Phase;

/// Raw counter values scraped at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineCounters {
    seconds: BTreeMap<String, f64>,
    steps_decode: f64,
    steps_mixed: f64,
    tokens: f64,
    micro_batches: f64,
    padded_tokens: f64,
    graphs_reused: f64,
}

impl EngineCounters {
    /// Reads the counters out of a Prometheus exposition; `None` when the
    /// server does not export them.
    pub fn parse(text: &str) -> Option<Self> {
        let mut c = Self::default();
        let mut seen = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            if let Some(rest) = name.strip_prefix("airavata_engine_step_seconds_total{phase=\"") {
                if let Some(phase) = rest.strip_suffix("\"}") {
                    c.seconds.insert(phase.to_string(), v);
                    seen = true;
                }
                continue;
            }
            match name {
                "airavata_engine_steps_total{kind=\"decode\"}" => c.steps_decode = v,
                "airavata_engine_steps_total{kind=\"mixed\"}" => c.steps_mixed = v,
                "airavata_engine_step_tokens_total" => c.tokens = v,
                "airavata_engine_micro_batches_total" => c.micro_batches = v,
                "airavata_engine_padded_tokens_total" => c.padded_tokens = v,
                "airavata_engine_graphs_reused_total" => c.graphs_reused = v,
                _ => continue,
            }
            seen = true;
        }
        seen.then_some(c)
    }
}

/// What the engine did during one level, per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineProfile {
    /// Engine steps (`llama_decode` calls).
    pub steps: u64,
    /// Share of steps that also carried prompt tokens.
    pub mixed_fraction: f64,
    /// Tokens per step.
    pub tokens_per_step: f64,
    /// Graph evaluations per step (llama.cpp's micro-batches).
    pub micro_batches_per_step: f64,
    /// Dummy tokens on unfed slots per step (gap filling, decode padding;
    /// not in `tokens_per_step`).
    #[serde(default)]
    pub padded_tokens_per_step: f64,
    /// Graph evaluations per step that reused the previous graph (llama.cpp
    /// built and allocated a new one for the rest).
    #[serde(default)]
    pub reused_graphs_per_step: f64,
    /// Milliseconds per step by phase (plan, decode, sync, sample, emit, linger).
    pub ms_per_step: BTreeMap<String, f64>,
    /// Sum of the phases, ms per step.
    pub total_ms_per_step: f64,
}

impl EngineProfile {
    /// The difference between two scrapes; `None` if no step ran.
    pub fn between(before: &EngineCounters, after: &EngineCounters) -> Option<Self> {
        let steps =
            (after.steps_decode + after.steps_mixed) - (before.steps_decode + before.steps_mixed);
        if steps < 1.0 {
            return None;
        }
        let per = |a: f64, b: f64| (a - b) / steps;
        let mut ms_per_step = BTreeMap::new();
        for phase in Phase::ALL.map(Phase::name) {
            let get = |c: &EngineCounters| c.seconds.get(phase).copied().unwrap_or(0.0);
            ms_per_step.insert(phase.to_string(), per(get(after), get(before)) * 1e3);
        }
        Some(Self {
            steps: steps as u64,
            mixed_fraction: per(after.steps_mixed, before.steps_mixed),
            tokens_per_step: per(after.tokens, before.tokens),
            micro_batches_per_step: per(after.micro_batches, before.micro_batches),
            padded_tokens_per_step: per(after.padded_tokens, before.padded_tokens),
            reused_graphs_per_step: per(after.graphs_reused, before.graphs_reused),
            total_ms_per_step: ms_per_step.values().sum(),
            ms_per_step,
        })
    }

    /// Milliseconds per step in `phase` (0 when absent).
    pub fn phase_ms(&self, phase: &str) -> f64 {
        self.ms_per_step.get(phase).copied().unwrap_or(0.0)
    }
}

/// Scrapes `{base}/metrics`; `None` when unreachable or without our counters.
pub async fn scrape(client: &reqwest::Client, base: &str) -> Option<EngineCounters> {
    let resp = client.get(format!("{base}/metrics")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    EngineCounters::parse(&resp.text().await.ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(
        steps: (u32, u32),
        tokens: u32,
        micro: u32,
        padded: u32,
        reused: u32,
        decode_s: f64,
    ) -> String {
        format!(
            "# HELP airavata_engine_step_seconds_total x\n\
             airavata_engine_step_seconds_total{{phase=\"plan\"}} 0.5\n\
             airavata_engine_step_seconds_total{{phase=\"decode\"}} {decode_s}\n\
             airavata_engine_steps_total{{kind=\"decode\"}} {}\n\
             airavata_engine_steps_total{{kind=\"mixed\"}} {}\n\
             airavata_engine_step_tokens_total {tokens}\n\
             airavata_engine_micro_batches_total {micro}\n\
             airavata_engine_padded_tokens_total {padded}\n\
             airavata_engine_graphs_reused_total {reused}\n\
             airavata_generated_tokens_total 99\n",
            steps.0, steps.1
        )
    }

    #[test]
    fn profile_is_the_per_step_difference() {
        let a = EngineCounters::parse(&exposition((10, 2), 100, 14, 3, 5, 1.0)).expect("ours");
        let b = EngineCounters::parse(&exposition((16, 4), 400, 24, 7, 11, 1.8)).expect("ours");
        let p = EngineProfile::between(&a, &b).expect("steps ran");
        assert_eq!(p.steps, 8);
        assert!((p.mixed_fraction - 0.25).abs() < 1e-12);
        assert!((p.tokens_per_step - 37.5).abs() < 1e-12);
        assert!((p.micro_batches_per_step - 1.25).abs() < 1e-12);
        assert!((p.padded_tokens_per_step - 0.5).abs() < 1e-12);
        assert!((p.reused_graphs_per_step - 0.75).abs() < 1e-12);
        assert!((p.phase_ms("decode") - 100.0).abs() < 1e-9);
        assert_eq!(p.phase_ms("plan"), 0.0);
        assert!((p.total_ms_per_step - 100.0).abs() < 1e-9);
        assert!(EngineProfile::between(&b, &b).is_none());
    }

    #[test]
    fn other_servers_have_no_profile() {
        let llama_server =
            "# HELP llamacpp:prompt_tokens_total x\nllamacpp:prompt_tokens_total 12\n";
        assert_eq!(EngineCounters::parse(llama_server), None);
    }
}
