//! Per-request sampler chains.

use llama_cpp_2::sampling::LlamaSampler;

use super::request::SamplingParams;

/// llama.cpp's "pick a random seed" value.
const RANDOM_SEED: u32 = 0xFFFF_FFFF;

/// Builds the chain llama.cpp's server uses, minus the exotic stages:
/// penalties → (greedy | top-k → top-p → min-p → temperature → dist).
pub fn build(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut stages = Vec::new();
    if applies_penalties(params) {
        stages.push(LlamaSampler::penalties(
            n_vocab,
            params.penalty_last_n,
            params.repetition_penalty,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    if params.temperature <= 0.0 {
        stages.push(LlamaSampler::greedy());
    } else {
        if params.top_k > 0 {
            stages.push(LlamaSampler::top_k(params.top_k));
        }
        if params.top_p < 1.0 {
            stages.push(LlamaSampler::top_p(params.top_p, 1));
        }
        if params.min_p > 0.0 {
            stages.push(LlamaSampler::min_p(params.min_p, 1));
        }
        stages.push(LlamaSampler::temp(params.temperature));
        stages.push(LlamaSampler::dist(params.seed.unwrap_or(RANDOM_SEED)));
    }
    LlamaSampler::chain(stages, true)
}

/// Whether the chain looks at previous tokens (so prompt tokens must be fed to it).
pub fn uses_history(params: &SamplingParams) -> bool {
    params.repetition_penalty != 1.0
        || params.frequency_penalty != 0.0
        || params.presence_penalty != 0.0
}

/// Whether the chain has a penalties stage.
fn applies_penalties(params: &SamplingParams) -> bool {
    uses_history(params) && params.penalty_last_n != 0
}

/// Whether the chain is greedy with no penalties: the token is then the
/// argmax of the logits, and the chain keeps no state.
pub fn is_plain_greedy(params: &SamplingParams) -> bool {
    params.temperature <= 0.0 && !applies_penalties(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_greedy_only_without_temperature_or_penalties() {
        let mut p = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        assert!(is_plain_greedy(&p));
        p.repetition_penalty = 1.1;
        assert!(!is_plain_greedy(&p));
        p.repetition_penalty = 1.0;
        p.temperature = 0.7;
        assert!(!is_plain_greedy(&p));
    }
}
