//! The one validation stage: every generation route parses its body into its
//! own serde struct, turns it into a [`GenerationInput`], and [`validate`]
//! makes the single [`ValidatedRequest`] the engine runs (after TGI's router:
//! one validated type, one error type, one error→status map in
//! [`super::errors`]).
//!
//! Errors name the caller's own fields: each route passes a [`RouteSpec`]
//! saying what it calls the token budget and the prompt (`max_new_tokens` on
//! `/generate`, `max_tokens` or `max_completion_tokens` on the OpenAI
//! routes), so no message is ever rewritten afterwards.
//!
//! The sampling and generation fields every body shares are declared once,
//! in [`SamplingFields`], which each body flattens: a new setting is one field
//! there (and its check in [`check`]). `airavata chat` runs the same
//! [`validate`]. Failures are a [`RequestError`]; [`super::errors`] alone
//! maps them to HTTP.

use std::time::Duration;

use serde::Deserialize;

use crate::engine::{EngineError, GenerateRequest, Prompt, SamplingParams};
use crate::router::{Admission, Engines};

use super::structured::{self, Constraint, ResponseFormat, SchemaIssue};

/// Why a request was not run: a field the caller got wrong, or the engine
/// (not ready, queue full, tokenizer failure, ...). Mapped to HTTP in
/// [`super::errors`] only.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A field with an unusable value.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A blocking tokenizer task panicked or was cancelled.
    #[error("a tokenizer task failed: {0}")]
    Task(String),
}

/// Most choices (prompts × `n`) one completions request may ask for.
pub const MAX_CHOICES: usize = 128;

/// Most stop strings per request.
pub const MAX_STOPS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// A request field with an unusable value; each variant names the field as
/// the caller spelled it. Mapped to a status in [`super::errors`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// A number outside `[min, max]` (or not finite).
    #[error("`{field}` must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Smallest allowed value.
        min: f32,
        /// Largest allowed value.
        max: f32,
        /// What the caller sent.
        got: f32,
    },
    /// A number outside `(min, max]` (or not finite).
    #[error("`{field}` must be greater than {min} and at most {max}, got {got}")]
    OutOfRangeOpenLow {
        /// The field.
        field: &'static str,
        /// Exclusive lower bound.
        min: f32,
        /// Largest allowed value.
        max: f32,
        /// What the caller sent.
        got: f32,
    },
    /// A token budget of 0 (allowed only with `unless: true`, the route's
    /// echo field, when it has one).
    #[error(
        "`{field}` must be at least 1{}",
        unless.map(|u| format!(" (0 only with `{u}: true`)")).unwrap_or_default()
    )]
    ZeroTokens {
        /// The field.
        field: &'static str,
        /// The field that allows 0 (`echo` on completions).
        unless: Option<&'static str>,
    },
    /// A negative `top_k`.
    #[error("`{field}` must be 0 (off) or positive, got {got}")]
    NegativeTopK {
        /// The field.
        field: &'static str,
        /// What the caller sent.
        got: i32,
    },
    /// More than [`MAX_STOPS`] stop strings.
    #[error("`{field}` has {count} entries; at most {MAX_STOPS} are allowed")]
    TooManyStops {
        /// The field.
        field: &'static str,
        /// How many the caller sent.
        count: usize,
    },
    /// A stop string longer than [`MAX_STOP_BYTES`].
    #[error("`{field}` entries must be at most {MAX_STOP_BYTES} bytes")]
    StopTooLong {
        /// The field.
        field: &'static str,
    },
    /// More than one choice asked for.
    #[error("only `{field}: 1` is supported")]
    OnlyOneChoice {
        /// The field.
        field: &'static str,
    },
    /// An empty list of prompts.
    #[error("`{field}` must hold at least one prompt")]
    NoPrompts {
        /// The field.
        field: &'static str,
    },
    /// More choices (prompts × `n`) than one request may ask for.
    #[error(
        "the request asks for {choices} choices (prompts × `n`); at most {MAX_CHOICES} are allowed"
    )]
    TooManyChoices {
        /// The field (`prompt` or `n`).
        field: &'static str,
        /// Prompts × `n`.
        choices: usize,
    },
    /// A stream asked for several choices.
    #[error("`{field}: true` answers one choice; this request asks for {choices} (prompts × `n`): send them without `{field}`, or one request each")]
    StreamChoices {
        /// The field (`stream`).
        field: &'static str,
        /// Prompts × `n`.
        choices: usize,
    },
    /// A token id in a prompt that is outside the vocabulary.
    #[error("`{field}` holds token id {token}, outside the vocabulary (0..{n_vocab})")]
    TokenOutOfVocab {
        /// The field.
        field: &'static str,
        /// The id.
        token: i64,
        /// Tokens in the vocabulary.
        n_vocab: i32,
    },
    /// An empty conversation.
    #[error("`{field}` must contain at least one message")]
    NoMessages {
        /// The field.
        field: &'static str,
    },
    /// The prompt has no tokens (empty text and a model without BOS).
    #[error("`{field}` is empty and the model adds no BOS token")]
    EmptyPrompt {
        /// The field.
        field: &'static str,
    },
    /// A JSON schema that cannot be enforced (an unsupported keyword) or is
    /// not a valid schema.
    #[error("`{field}.json_schema.schema`: {issue}")]
    Schema {
        /// The field (`response_format`).
        field: &'static str,
        /// The keyword and where it is.
        issue: SchemaIssue,
    },
    /// A grammar llama.cpp cannot use (or a schema it could not convert).
    #[error("`{field}` cannot be used: {reason}")]
    InvalidGrammar {
        /// `grammar` or `response_format`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// `tools` or `tool_choice` that cannot be served (no tools to choose
    /// from, an unknown function name, a bad parameter schema).
    #[error("`{field}`: {reason}")]
    InvalidTools {
        /// `tools` or `tool_choice`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Two fields that exclude each other.
    #[error("`{field}` cannot be combined with `{other}`")]
    Conflict {
        /// The field at fault.
        field: &'static str,
        /// The field it conflicts with.
        other: &'static str,
    },
    /// `top_logprobs` without `logprobs: true`.
    #[error("`{field}` requires `logprobs: true`")]
    NeedsLogprobs {
        /// The field.
        field: &'static str,
    },
    /// A field this server does not implement: refused rather than ignored,
    /// so a client never believes it got what it asked for.
    #[error("`{field}` is not supported by this server")]
    Unsupported {
        /// The field as the caller spelled it.
        field: String,
    },
    /// The prompt plus the token budget do not fit a slot.
    #[error(
        "the prompt has {prompt_tokens} tokens and `{field}` is {max_tokens}: {} tokens exceed the per-slot context of {n_ctx_slot} tokens",
        *prompt_tokens + *max_tokens as usize
    )]
    ContextExceeded {
        /// The token-budget field.
        field: &'static str,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The requested budget.
        max_tokens: u32,
        /// Tokens one slot holds.
        n_ctx_slot: usize,
    },
}

impl ValidationError {
    /// The field at fault, as the caller named it.
    pub fn field(&self) -> &str {
        use ValidationError as V;
        match self {
            V::Unsupported { field } => field,
            V::OutOfRange { field, .. }
            | V::OutOfRangeOpenLow { field, .. }
            | V::ZeroTokens { field, .. }
            | V::NegativeTopK { field, .. }
            | V::TooManyStops { field, .. }
            | V::StopTooLong { field }
            | V::OnlyOneChoice { field }
            | V::NoPrompts { field }
            | V::TooManyChoices { field, .. }
            | V::StreamChoices { field, .. }
            | V::TokenOutOfVocab { field, .. }
            | V::NoMessages { field }
            | V::EmptyPrompt { field }
            | V::Schema { field, .. }
            | V::InvalidGrammar { field, .. }
            | V::InvalidTools { field, .. }
            | V::Conflict { field, .. }
            | V::NeedsLogprobs { field }
            | V::ContextExceeded { field, .. } => field,
        }
    }
}

/// What a route calls its fields, and its bounds and defaults where the
/// routes differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSpec {
    /// The token-budget field.
    pub max_tokens: &'static str,
    /// The prompt field.
    pub prompt: &'static str,
    /// Largest accepted `temperature`.
    pub max_temperature: f32,
    /// `temperature` when absent.
    pub default_temperature: f32,
    /// `top_p` when absent.
    pub default_top_p: f32,
    /// The field that asks for alternatives per token (`top_logprobs` on
    /// chat, `logprobs` on completions).
    pub top_logprobs: &'static str,
    /// Most alternatives per token.
    pub max_top_logprobs: u32,
    /// The field that echoes the prompt back (`echo` on completions): with
    /// it the budget may be 0 and `logprobs` covers the prompt too.
    pub echo: Option<&'static str>,
}

/// `POST /generate`: the FastAPI app's names; greedy by default, top-p 0.9
/// (Airavata's generation_config).
pub const GENERATE: RouteSpec = RouteSpec {
    max_tokens: "max_new_tokens",
    prompt: "prompt",
    max_temperature: 100.0,
    default_temperature: 0.0,
    default_top_p: 0.9,
    top_logprobs: "logprobs",
    max_top_logprobs: 0,
    echo: None,
};

/// `POST /v1/completions`: OpenAI's names and bounds (`logprobs` up to 5).
pub const COMPLETIONS: RouteSpec = RouteSpec {
    max_tokens: "max_tokens",
    prompt: "prompt",
    max_temperature: 2.0,
    default_temperature: 1.0,
    default_top_p: 1.0,
    top_logprobs: "logprobs",
    max_top_logprobs: 5,
    echo: Some("echo"),
};

/// `POST /v1/chat/completions`: as [`COMPLETIONS`], the prompt is
/// `messages`, alternatives are `top_logprobs` (up to 20).
pub const CHAT: RouteSpec = RouteSpec {
    prompt: "messages",
    top_logprobs: "top_logprobs",
    max_top_logprobs: crate::engine::logprobs::MAX_TOP as u32,
    echo: None,
    ..COMPLETIONS
};

/// `stop` may be one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// The sampling and generation fields of every route's body, declared once
/// and `#[serde(flatten)]`ed into each body (and filled by `airavata chat`).
/// Route-specific fields (the prompt, the budget's name, log-probabilities)
/// stay in the bodies.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Softmax temperature (0 = greedy); the default is the route's.
    pub temperature: Option<f32>,
    /// Top-k (0 = off).
    pub top_k: Option<i32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Min-p (0 = off).
    pub min_p: Option<f32>,
    /// Repetition penalty (1 = off).
    pub repetition_penalty: Option<f32>,
    /// OpenAI frequency penalty (0 = off).
    pub frequency_penalty: Option<f32>,
    /// OpenAI presence penalty (0 = off).
    pub presence_penalty: Option<f32>,
    /// RNG seed.
    pub seed: Option<u32>,
    /// Generate past end-of-generation tokens (for fixed-length benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Stop strings (one or a list).
    pub stop: Option<StopField>,
    /// Answer with server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// OpenAI's `response_format`.
    pub response_format: Option<ResponseFormat>,
    /// A raw GBNF grammar (root rule `root`).
    pub grammar: Option<String>,
}

/// The fields of a body that no struct claimed (each body flattens one of
/// these last, after its own fields and [`SamplingFields`]).
pub type UnknownFields = serde_json::Map<String, serde_json::Value>;

/// The generation fields of any route, before validation.
#[derive(Debug, Clone)]
pub struct GenerationInput {
    /// What to continue.
    pub prompt: Prompt,
    /// Token budget; `None` = whatever room the slot has after the prompt.
    pub max_tokens: Option<u32>,
    /// Log-probabilities with this many alternatives per token; `None` = off.
    pub logprobs: Option<u32>,
    /// The answer repeats the prompt (the route's `echo`): the budget may be
    /// 0, and `logprobs` covers the prompt's tokens too.
    pub echo: bool,
    /// Sampling and output settings.
    pub fields: SamplingFields,
    /// Fields of the body that nothing claimed (refused by [`check`]).
    pub unknown: UnknownFields,
}

/// A request that passed validation and holds a place in the engine's
/// queue: submit it with [`Engines::submit`].
#[derive(Debug)]
pub struct ValidatedRequest {
    /// The place in the queue.
    pub admission: Admission,
    /// What the engine runs (tokenized once, here).
    pub request: GenerateRequest,
    /// Answer with server-sent events.
    pub stream: bool,
}

/// Everything that can be checked without the model.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedInput {
    /// What to continue.
    pub prompt: Prompt,
    /// The budget, when the caller gave one (0 only with `echo`).
    pub max_tokens: Option<u32>,
    /// Sampling settings with the route's defaults filled in.
    pub sampling: SamplingParams,
    /// Non-empty stop strings.
    pub stop: Vec<String>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// What constrains the output (its grammar is made and checked against
    /// the model in [`validate`]).
    pub constraint: Option<Constraint>,
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<usize>,
    /// Alternatives per prompt token when the prompt's log-probabilities
    /// are asked for (`echo` with `logprobs`).
    pub prompt_logprobs: Option<usize>,
}

/// The validation stage: field checks, then (holding a queue place, so a
/// flood is refused before any tokenization) the prompt is tokenized once on
/// a blocking thread and the budget is checked against a slot's context.
/// The HTTP routes and `airavata chat` both call it.
pub async fn validate(
    engine: &Engines,
    input: GenerationInput,
    spec: RouteSpec,
    timeout: Option<Duration>,
) -> Result<ValidatedRequest, RequestError> {
    let mut checked = check(input, spec)?;
    let admission = engine.admit()?;
    if let Some(c) = checked.constraint.clone() {
        let field = c.field();
        let gbnf = blocking(engine, move |e| {
            let gbnf = match c.to_gbnf() {
                Ok(g) => g,
                Err(reason) => return Ok(Err(reason)),
            };
            Ok(e.check_grammar(&gbnf)?.map(|()| gbnf))
        })
        .await?
        .map_err(|reason| ValidationError::InvalidGrammar { field, reason })?;
        checked.sampling.grammar = Some(gbnf);
    }
    let tokens = blocking(engine, {
        let prompt = checked.prompt.clone();
        move |e| e.tokenize_prompt(&prompt)
    })
    .await?;
    // A chat answer ends where the template ends an assistant turn.
    if matches!(
        checked.prompt,
        Prompt::User(_) | Prompt::Chat(_) | Prompt::ChatTools { .. }
    ) {
        for s in engine.turn_stops()? {
            if !checked.stop.contains(&s) {
                checked.stop.push(s);
            }
        }
    }
    let n_ctx_slot = engine.info().map_or(0, |i| i.n_ctx_slot as usize);
    let max_new_tokens = fit(tokens.len(), checked.max_tokens, n_ctx_slot, spec)?;
    Ok(ValidatedRequest {
        admission,
        request: GenerateRequest {
            prompt: tokens,
            max_new_tokens,
            sampling: checked.sampling,
            stop: checked.stop,
            timeout,
            logprobs: checked.logprobs,
            prompt_logprobs: checked.prompt_logprobs,
        },
        stream: checked.stream,
    })
}

/// Runs tokenizer work (`f`) on tokio's blocking pool, off the async worker
/// threads that serve every connection.
pub async fn blocking<T, F>(engine: &Engines, f: F) -> Result<T, RequestError>
where
    T: Send + 'static,
    F: FnOnce(&Engines) -> Result<T, EngineError> + Send + 'static,
{
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || f(&engine)).await {
        Ok(res) => Ok(res?),
        Err(e) => Err(RequestError::Task(e.to_string())),
    }
}

/// The checks that need no model: ranges, counts, the route's defaults.
pub fn check(input: GenerationInput, spec: RouteSpec) -> Result<CheckedInput, ValidationError> {
    let GenerationInput {
        prompt,
        max_tokens,
        logprobs,
        echo,
        fields: input,
        unknown,
    } = input;
    if let Some(field) = unknown.keys().next() {
        return Err(ValidationError::Unsupported {
            field: field.clone(),
        });
    }
    if max_tokens == Some(0) && !(echo && spec.echo.is_some()) {
        return Err(ValidationError::ZeroTokens {
            field: spec.max_tokens,
            unless: spec.echo,
        });
    }
    range("temperature", input.temperature, 0.0, spec.max_temperature)?;
    if let Some(got) = input.top_k.filter(|k| *k < 0) {
        return Err(ValidationError::NegativeTopK {
            field: "top_k",
            got,
        });
    }
    range_open_low("top_p", input.top_p, 0.0, 1.0)?;
    range("min_p", input.min_p, 0.0, 1.0)?;
    range_open_low("repetition_penalty", input.repetition_penalty, 0.0, 10.0)?;
    range("frequency_penalty", input.frequency_penalty, -2.0, 2.0)?;
    range("presence_penalty", input.presence_penalty, -2.0, 2.0)?;
    let stop = stops("stop", input.stop)?;
    let constraint = constraint(input.response_format, input.grammar)?;
    if let Some(c) = &constraint {
        if input.ignore_eos {
            return Err(ValidationError::Conflict {
                field: "ignore_eos",
                other: c.field(),
            });
        }
    }
    if let Some(n) = logprobs {
        if n > spec.max_top_logprobs {
            return Err(ValidationError::OutOfRange {
                field: spec.top_logprobs,
                min: 0.0,
                max: spec.max_top_logprobs as f32,
                got: n as f32,
            });
        }
    }
    Ok(CheckedInput {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: input.temperature.unwrap_or(spec.default_temperature),
            top_k: input.top_k.unwrap_or(0),
            top_p: input.top_p.unwrap_or(spec.default_top_p),
            min_p: input.min_p.unwrap_or(0.0),
            repetition_penalty: input.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: input.frequency_penalty.unwrap_or(0.0),
            presence_penalty: input.presence_penalty.unwrap_or(0.0),
            seed: input.seed,
            ignore_eos: input.ignore_eos,
            ..SamplingParams::default()
        },
        stop,
        stream: input.stream,
        constraint,
        logprobs: logprobs.map(|n| n as usize),
        prompt_logprobs: logprobs.filter(|_| echo).map(|n| n as usize),
    })
}

/// The output constraint of `response_format` or `grammar` (not both),
/// after the checks that need no model: a schema only with keywords
/// llama.cpp's converter enforces, a grammar not empty and not too long.
pub fn constraint(
    response_format: Option<ResponseFormat>,
    grammar: Option<String>,
) -> Result<Option<Constraint>, ValidationError> {
    use structured::{GRAMMAR, MAX_GRAMMAR_BYTES, RESPONSE_FORMAT};
    let format = match response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(Constraint::JsonObject),
        Some(ResponseFormat::JsonSchema { json_schema }) => match json_schema.schema {
            None => Some(Constraint::JsonObject),
            Some(schema) => {
                structured::check_schema(&schema).map_err(|issue| ValidationError::Schema {
                    field: RESPONSE_FORMAT,
                    issue,
                })?;
                Some(Constraint::JsonSchema(schema))
            }
        },
    };
    let Some(g) = grammar else {
        return Ok(format);
    };
    if format.is_some() {
        return Err(ValidationError::Conflict {
            field: GRAMMAR,
            other: RESPONSE_FORMAT,
        });
    }
    if g.trim().is_empty() {
        return Err(ValidationError::InvalidGrammar {
            field: GRAMMAR,
            reason: "the grammar is empty".into(),
        });
    }
    if g.len() > MAX_GRAMMAR_BYTES {
        return Err(ValidationError::InvalidGrammar {
            field: GRAMMAR,
            reason: format!(
                "it has {} bytes; at most {MAX_GRAMMAR_BYTES} are allowed",
                g.len()
            ),
        });
    }
    Ok(Some(Constraint::Grammar(g)))
}

/// The token budget for a prompt of `prompt_tokens` in a slot of
/// `n_ctx_slot`: the caller's (0 = the prompt only), when it fits, else (when
/// the caller gave none) the slot's remaining room, at least 1.
pub fn fit(
    prompt_tokens: usize,
    max_tokens: Option<u32>,
    n_ctx_slot: usize,
    spec: RouteSpec,
) -> Result<u32, ValidationError> {
    if prompt_tokens == 0 {
        return Err(ValidationError::EmptyPrompt { field: spec.prompt });
    }
    let room = n_ctx_slot.saturating_sub(prompt_tokens);
    let wanted = max_tokens.unwrap_or_else(|| u32::try_from(room).unwrap_or(u32::MAX).max(1));
    if prompt_tokens.saturating_add(wanted as usize) > n_ctx_slot {
        return Err(ValidationError::ContextExceeded {
            field: spec.max_tokens,
            prompt_tokens,
            max_tokens: wanted,
            n_ctx_slot,
        });
    }
    Ok(wanted)
}

/// `[min, max]` (or `(min, max]` when `open_low`), finite.
fn bounded(
    field: &'static str,
    value: Option<f32>,
    (min, max): (f32, f32),
    open_low: bool,
) -> Result<(), ValidationError> {
    let Some(got) = value else {
        return Ok(());
    };
    let below = if open_low { got <= min } else { got < min };
    if got.is_finite() && !below && got <= max {
        return Ok(());
    }
    Err(if open_low {
        ValidationError::OutOfRangeOpenLow {
            field,
            min,
            max,
            got,
        }
    } else {
        ValidationError::OutOfRange {
            field,
            min,
            max,
            got,
        }
    })
}

fn range(
    field: &'static str,
    value: Option<f32>,
    min: f32,
    max: f32,
) -> Result<(), ValidationError> {
    bounded(field, value, (min, max), false)
}

fn range_open_low(
    field: &'static str,
    value: Option<f32>,
    min: f32,
    max: f32,
) -> Result<(), ValidationError> {
    bounded(field, value, (min, max), true)
}

fn stops(field: &'static str, stop: Option<StopField>) -> Result<Vec<String>, ValidationError> {
    let v = match stop {
        None => return Ok(Vec::new()),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if v.len() > MAX_STOPS {
        return Err(ValidationError::TooManyStops {
            field,
            count: v.len(),
        });
    }
    if v.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ValidationError::StopTooLong { field });
    }
    Ok(v.into_iter().filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> GenerationInput {
        GenerationInput {
            prompt: Prompt::Raw("x".into()),
            max_tokens: Some(8),
            logprobs: None,
            echo: false,
            fields: SamplingFields::default(),
            unknown: UnknownFields::new(),
        }
    }

    fn with(fields: SamplingFields) -> GenerationInput {
        GenerationInput { fields, ..input() }
    }

    #[test]
    fn errors_name_the_routes_own_budget_field() {
        let zero = GenerationInput {
            max_tokens: Some(0),
            ..input()
        };
        for (spec, name) in [
            (GENERATE, "max_new_tokens"),
            (COMPLETIONS, "max_tokens"),
            (CHAT, "max_tokens"),
        ] {
            let e = check(zero.clone(), spec).expect_err("0 tokens");
            assert_eq!(e.field(), name);
            let unless = if spec == COMPLETIONS {
                " (0 only with `echo: true`)"
            } else {
                ""
            };
            assert_eq!(
                e.to_string(),
                format!("`{name}` must be at least 1{unless}")
            );
            let e = fit(10, Some(7), 16, spec).expect_err("too long");
            assert_eq!(e.field(), name);
            assert_eq!(
                e.to_string(),
                format!(
                    "the prompt has 10 tokens and `{name}` is 7: 17 tokens exceed the per-slot context of 16 tokens"
                )
            );
        }
        assert_eq!(
            fit(0, None, 16, CHAT),
            Err(ValidationError::EmptyPrompt { field: "messages" })
        );
    }

    #[test]
    fn a_budget_of_zero_only_with_echo() {
        let zero = GenerationInput {
            max_tokens: Some(0),
            logprobs: Some(2),
            echo: true,
            ..input()
        };
        let c = check(zero.clone(), COMPLETIONS).expect("echo allows 0");
        assert_eq!(
            (c.max_tokens, c.logprobs, c.prompt_logprobs),
            (Some(0), Some(2), Some(2))
        );
        // Routes without an echo field never allow it.
        assert!(check(zero, CHAT).is_err());
        // The prompt alone must still fit the slot.
        assert_eq!(fit(16, Some(0), 16, COMPLETIONS), Ok(0));
        assert!(matches!(
            fit(17, Some(0), 16, COMPLETIONS),
            Err(ValidationError::ContextExceeded { max_tokens: 0, .. })
        ));
    }

    #[test]
    fn budget_defaults_to_the_slots_room() {
        let n = Some;
        assert_eq!(fit(10, n(6), 16, GENERATE).ok(), n(6));
        assert_eq!(fit(10, None, 16, CHAT).ok(), n(6));
        // A full slot still asks for one token, which then does not fit.
        assert!(matches!(
            fit(16, None, 16, CHAT),
            Err(ValidationError::ContextExceeded { max_tokens: 1, .. })
        ));
    }

    #[test]
    fn ranges_and_defaults_follow_the_route() {
        let hot = with(SamplingFields {
            temperature: Some(3.0),
            ..Default::default()
        });
        assert_eq!(
            check(hot.clone(), GENERATE).map(|c| c.sampling.temperature),
            Ok(3.0)
        );
        assert_eq!(
            check(hot, COMPLETIONS),
            Err(ValidationError::OutOfRange {
                field: "temperature",
                min: 0.0,
                max: 2.0,
                got: 3.0
            })
        );
        let g = check(input(), GENERATE).expect("valid");
        assert_eq!((g.sampling.temperature, g.sampling.top_p), (0.0, 0.9));
        let o = check(input(), CHAT).expect("valid");
        assert_eq!((o.sampling.temperature, o.sampling.top_p), (1.0, 1.0));
        for (bad, field) in [
            (
                with(SamplingFields {
                    top_p: Some(0.0),
                    ..Default::default()
                }),
                "top_p",
            ),
            (
                with(SamplingFields {
                    top_k: Some(-1),
                    ..Default::default()
                }),
                "top_k",
            ),
            (
                with(SamplingFields {
                    min_p: Some(f32::NAN),
                    ..Default::default()
                }),
                "min_p",
            ),
            (
                with(SamplingFields {
                    presence_penalty: Some(2.5),
                    ..Default::default()
                }),
                "presence_penalty",
            ),
        ] {
            let e = check(bad, GENERATE).expect_err(field);
            assert_eq!(e.field(), field);
            assert!(e.to_string().starts_with(&format!("`{field}`")), "{e}");
        }
    }

    #[test]
    fn stop_strings() {
        let with = |stop| {
            with(SamplingFields {
                stop: Some(stop),
                ..Default::default()
            })
        };
        let c = check(with(StopField::Many(vec!["".into(), "।".into()])), GENERATE);
        assert_eq!(c.map(|c| c.stop), Ok(vec!["।".to_string()]));
        let many = StopField::Many(vec!["a".into(); MAX_STOPS + 1]);
        assert_eq!(
            check(with(many), GENERATE),
            Err(ValidationError::TooManyStops {
                field: "stop",
                count: MAX_STOPS + 1
            })
        );
        // 86 three-byte Devanagari letters: 258 bytes.
        let long = StopField::One("क".repeat(86));
        assert_eq!(
            check(with(long), GENERATE),
            Err(ValidationError::StopTooLong { field: "stop" })
        );
    }
}
