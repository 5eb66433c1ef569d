//! What a caller asks the engine for, and what it gets back.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;

use super::prompt::ChatMessage;

/// Sampling settings for one request. `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 selects the arg-max token (greedy).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: i32,
    /// Nucleus sampling mass (1.0 = off).
    pub top_p: f32,
    /// Drop tokens below `min_p` times the best probability (0 = off).
    pub min_p: f32,
    /// Repetition penalty over the last [`Self::penalty_last_n`] tokens (1.0 = off).
    pub repetition_penalty: f32,
    /// OpenAI-style frequency penalty (0 = off).
    pub frequency_penalty: f32,
    /// OpenAI-style presence penalty (0 = off).
    pub presence_penalty: f32,
    /// Window for the penalties, in tokens.
    pub penalty_last_n: i32,
    /// RNG seed; `None` picks a random one.
    pub seed: Option<u32>,
    /// Keep generating past end-of-generation tokens (fixed-length benchmarks).
    pub ignore_eos: bool,
    /// A GBNF grammar (start rule `root`) the output must match, already
    /// checked against the model's vocabulary by the caller's validation.
    /// Generation then ends when the grammar is complete (llama.cpp's grammar
    /// sampler allows an end-of-generation token only there).
    pub grammar: Option<String>,
}

impl SamplingParams {
    /// Deterministic arg-max decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            ignore_eos: false,
            grammar: None,
        }
    }
}

/// The prompt, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// One user turn, rendered by the model's chat template (Airavata's:
    /// `<s><|user|>\n{text}\n<|assistant|>\n`).
    User(String),
    /// Used verbatim (the model's BOS is still prepended).
    Raw(String),
    /// A conversation rendered by the model's chat template.
    Chat(Vec<ChatMessage>),
    /// A conversation with the functions the model may call (OpenAI
    /// `tools` entries), handed to the template as its `tools`.
    ChatTools {
        /// The conversation.
        messages: Vec<ChatMessage>,
        /// The `tools` entries.
        tools: Vec<serde_json::Value>,
    },
    /// Already tokenized; used as is.
    Tokens(Vec<i32>),
}

impl Prompt {
    /// Whether the first generated token's leading space is stripped (as
    /// Hugging Face's `decode` does): when the prompt text ends in whitespace
    /// (the chat format ends in `\n`) or is empty.
    fn strips_leading_space(&self) -> bool {
        match self {
            Prompt::User(_) | Prompt::Chat(_) | Prompt::ChatTools { .. } => true,
            Prompt::Raw(t) => t.is_empty() || t.ends_with(char::is_whitespace),
            Prompt::Tokens(_) => false,
        }
    }
}

/// A tokenized prompt, made by [`super::Engine::tokenize_prompt`].
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTokens {
    ids: Vec<i32>,
    strip_leading_space: bool,
}

impl PromptTokens {
    /// The tokens of `prompt`.
    pub(super) fn new(prompt: &Prompt, ids: Vec<i32>) -> Self {
        Self {
            ids,
            strip_leading_space: prompt.strips_leading_space(),
        }
    }

    /// Token ids (BOS included when the model adds one).
    pub fn ids(&self) -> &[i32] {
        &self.ids
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// No tokens at all (an empty prompt for a model without BOS).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the first generated token's leading space is stripped.
    pub fn strip_leading_space(&self) -> bool {
        self.strip_leading_space
    }

    pub(super) fn into_ids(self) -> Vec<i32> {
        self.ids
    }
}

/// One generation job, already validated: the prompt is not empty and
/// `prompt.len() + max_new_tokens` fits a slot's context (the server's
/// validation guarantees both; the engine only asserts them in debug builds).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: PromptTokens,
    /// Upper bound on sampled tokens (the EOS token counts). 0: the prompt
    /// is evaluated (for its log-probabilities) and the request ends
    /// (`length`) without sampling a token.
    pub max_new_tokens: u32,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Wall-clock budget from submission (queue time included).
    pub timeout: Option<Duration>,
    /// Report each sampled token's log-probability and this many of the most
    /// likely alternatives (at most [`super::logprobs::MAX_TOP`]); `None` = off.
    pub logprobs: Option<usize>,
    /// Report the log-probability of every prompt token after the first,
    /// given the tokens before it, with this many of the most likely
    /// alternatives ([`Event::PromptLogprobs`]); `None` = off. Such a request
    /// evaluates its whole prompt (no prompt cache) with logits for every
    /// position.
    pub prompt_logprobs: Option<usize>,
}

impl GenerateRequest {
    /// A greedy request for `prompt`.
    pub fn greedy(prompt: PromptTokens, max_new_tokens: NonZeroU32) -> Self {
        Self {
            prompt,
            max_new_tokens: max_new_tokens.get(),
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            timeout: None,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's name for it (`stop` or `length`).
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt (BOS included).
    pub prompt_tokens: u32,
    /// Sampled tokens (an EOS counts).
    pub completion_tokens: u32,
    /// Prompt tokens whose KV was reused from the shared chat preamble.
    pub cached_prompt_tokens: u32,
}

/// Latencies of one request, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Submission until a slot took the request.
    pub queue_ms: f64,
    /// Slot assignment until the first sampled token (prompt processing).
    pub prompt_ms: f64,
    /// Submission until the first sampled token.
    pub time_to_first_token_ms: f64,
    /// First token until the last.
    pub generation_ms: f64,
    /// Submission until the end.
    pub total_ms: f64,
    /// Generated tokens per second after the first token.
    pub tokens_per_second: f64,
}

/// What the engine streams back for a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// New text (always complete UTF-8; may be empty never).
    Text(String),
    /// The prompt's tokens and their log-probabilities, once the prompt is
    /// evaluated and before any generated token's event; only when the
    /// request asked for them ([`GenerateRequest::prompt_logprobs`]).
    PromptLogprobs(super::logprobs::PromptLogprobs),
    /// Log-probabilities of the tokens whose text comes in the next
    /// [`Event::Text`] (or, at the end, of tokens that added no text); only
    /// when the request asked for them.
    Logprobs(Vec<super::logprobs::TokenLogprob>),
    /// Generation finished normally.
    Done(Completion),
    /// Generation failed or was cut off (e.g. its deadline passed).
    Error(super::EngineError),
}

/// Final facts about a finished request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Latencies.
    pub timings: Timings,
}
