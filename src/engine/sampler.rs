//! Per-request sampler chains, and the grammar that may constrain them.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use super::request::SamplingParams;

/// Why a constrained request cannot go on.
const DEAD_END: &str = "the grammar allows no token of the vocabulary here";

/// The root rule of every grammar the engine runs.
pub const GRAMMAR_ROOT: &str = "root";

/// Parses `gbnf` against the model's vocabulary (llama.cpp's grammar
/// sampler); the error says why it cannot be used.
pub fn compile_grammar(model: &LlamaModel, gbnf: &str) -> Result<LlamaSampler, String> {
    if gbnf.trim().is_empty() {
        return Err("the grammar is empty".into());
    }
    use llama_cpp_2::GrammarError as G;
    LlamaSampler::grammar(model, gbnf, GRAMMAR_ROOT).map_err(|e| match e {
        G::RootNotFound => format!("the grammar has no `{GRAMMAR_ROOT}` rule"),
        G::GrammarNullBytes | G::TriggerWordNullBytes => "the grammar contains a NUL byte".into(),
        G::NullGrammar => format!(
            "llama.cpp's GBNF parser rejected it (a syntax error, an undefined rule, \
             left recursion, or no `{GRAMMAR_ROOT}` rule)"
        ),
    })
}

/// A request's sampler: the chain, and the grammar kept apart from it so
/// that most tokens are checked against the grammar one at a time rather
/// than the grammar being applied to the whole vocabulary (as llama.cpp's
/// common sampler does).
pub struct Sampler {
    chain: LlamaSampler,
    grammar: Option<LlamaSampler>,
}

// SAFETY: a `Sampler` owns its llama.cpp sampler objects outright (a chain of
// stateful stages and a grammar whose only outside reference is the model's
// vocabulary, which is immutable after loading and shared across threads by
// llama-cpp-2 itself). llama.cpp's samplers keep no thread-local state, so
// moving one to another thread and using it there is sound; it is never
// shared: the engine moves it to its grammar thread and back
// (`super::grammar_thread`), which is joined before the model is dropped.
unsafe impl Send for Sampler {}

impl Sampler {
    /// Feeds tokens that precede generation to the chain's history
    /// (penalties); the grammar sees only generated tokens.
    pub fn accept_history<'a>(&mut self, tokens: impl IntoIterator<Item = &'a LlamaToken>) {
        self.chain.accept_many(tokens);
    }

    /// Whether a grammar constrains the output.
    pub fn constrained(&self) -> bool {
        self.grammar.is_some()
    }

    /// Samples from one row of logits and accepts the token. The engine draws
    /// the step's rows side by side on its own threads, and hands constrained
    /// requests to its grammar thread with a copy of theirs.
    pub fn sample_row(&mut self, logits: &[f32]) -> Result<LlamaToken, String> {
        // Unconstrained choice first; a grammar keeps it when it allows it.
        let mut cur = candidates(logits);
        cur.apply_sampler(&mut self.chain);
        let mut token = cur.selected_token().ok_or("the sampler chose no token")?;
        let Some(grammar) = self.grammar.as_mut() else {
            self.chain.accept(token);
            return Ok(token);
        };
        if !allowed(grammar, token, logits) {
            // Otherwise mask with the grammar and sample again.
            let mut cur = candidates(logits);
            cur.apply_sampler(grammar);
            // Only the tokens the grammar allows go on to the chain. The
            // masked ones have probability 0 in every stage (penalties,
            // top-k/p, min-p, temperature, dist draw once per call), so the
            // choice is the one the chain would make on the whole masked
            // vocabulary, without sorting tens of thousands of -inf entries.
            cur.data.retain(|d| d.logit() > f32::NEG_INFINITY);
            cur.selected = None;
            // A dead end must not reach the chain's sampling stage.
            if cur.data.is_empty() {
                return Err(DEAD_END.into());
            }
            cur.apply_sampler(&mut self.chain);
            let selected = cur.selected.and_then(|i| cur.data.get(i));
            token = match selected {
                Some(d) if d.logit() > f32::NEG_INFINITY => d.id(),
                _ => return Err(DEAD_END.into()),
            };
        }
        grammar
            .try_accept(token)
            .map_err(|e| format!("the grammar rejected token {}: {e}", token.0))?;
        self.chain.accept(token);
        Ok(token)
    }
}

fn candidates(logits: &[f32]) -> LlamaTokenDataArray {
    LlamaTokenDataArray::from_iter(
        logits.iter().enumerate().map(|(i, &l)| {
            LlamaTokenData::new(LlamaToken(i32::try_from(i).unwrap_or(i32::MAX)), l, 0.0)
        }),
        false,
    )
}

/// Whether the grammar, in its current state, allows `token`.
fn allowed(grammar: &mut LlamaSampler, token: LlamaToken, logits: &[f32]) -> bool {
    let logit = usize::try_from(token.0)
        .ok()
        .and_then(|i| logits.get(i))
        .copied()
        .unwrap_or(0.0);
    let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, logit, 0.0)], false);
    one.apply_sampler(grammar);
    one.data
        .first()
        .is_some_and(|d| d.logit() > f32::NEG_INFINITY)
}

/// The sampler for `params`: the chain of [`chain`], plus the grammar when
/// one is set (validated by the caller; an error here fails the request).
pub fn build(params: &SamplingParams, model: &LlamaModel) -> Result<Sampler, String> {
    let grammar = params
        .grammar
        .as_deref()
        .map(|g| compile_grammar(model, g))
        .transpose()?;
    Ok(Sampler {
        chain: chain(params, model.n_vocab()),
        grammar,
    })
}

/// llama.cpp's "pick a random seed" value.
const RANDOM_SEED: u32 = 0xFFFF_FFFF;

/// Builds the chain llama.cpp's server uses, minus the exotic stages:
/// penalties → (greedy | top-k → top-p → min-p → temperature → dist).
pub fn chain(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
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

/// Whether the chain is greedy with no penalties and no grammar: the token
/// is then the argmax of the logits, and the sampler keeps no state.
pub fn is_plain_greedy(params: &SamplingParams) -> bool {
    params.temperature <= 0.0 && !applies_penalties(params) && params.grammar.is_none()
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
        p.grammar = Some("root ::= \"a\"".into());
        assert!(!is_plain_greedy(&p), "a grammar needs the sampler");
        p.grammar = None;
        p.temperature = 0.7;
        assert!(!is_plain_greedy(&p));
    }
}
