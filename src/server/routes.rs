//! The native routes: `/generate`, `/tokenize`, `/detokenize`, `/health`,
//! `/info`, `/metrics`.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{Completion, Event, GenerationStream, Prompt, Usage};

use super::errors::{ApiError, ApiJson};
use super::validate::{self, validate, GenerationInput, SamplingFields, UnknownFields};
use super::{metrics, AppState};

/// Default `max_new_tokens` for `/generate` (the FastAPI app's value).
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 50;

fn default_max_new_tokens() -> u32 {
    DEFAULT_MAX_NEW_TOKENS
}

/// `POST /generate` body.
#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    /// The user's text (wrapped in the chat format unless `raw`).
    pub prompt: String,
    /// Most tokens to generate.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    /// Use the prompt verbatim instead of wrapping it.
    #[serde(default)]
    pub raw: bool,
    /// Sampling and output settings (`temperature` 0 = greedy by default,
    /// `top_p` 0.9 as Airavata's generation_config; the rest off).
    #[serde(flatten)]
    pub fields: SamplingFields,
    /// Anything else: refused with 400 naming the field.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

impl From<GenerateBody> for GenerationInput {
    fn from(b: GenerateBody) -> Self {
        GenerationInput {
            prompt: if b.raw {
                Prompt::Raw(b.prompt)
            } else {
                Prompt::User(b.prompt)
            },
            max_tokens: Some(b.max_new_tokens),
            logprobs: None,
            echo: false,
            fields: b.fields,
            unknown: b.unknown,
        }
    }
}

/// `POST /generate` non-streamed answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct GenerateResponse {
    /// The generated text (prompt excluded).
    pub generated_text: String,
    /// `eos`, `stop` or `length`.
    pub finish_reason: String,
    /// Token counts.
    pub usage: serde_json::Value,
    /// Latencies in milliseconds.
    pub timings: serde_json::Value,
}

/// OpenAI-style usage object (with llama.cpp/OpenAI cached-token detail).
pub fn usage_json(u: &Usage) -> serde_json::Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

fn finish_name(c: &Completion) -> String {
    serde_json::to_value(c.finish_reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `POST /generate`.
pub async fn generate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<Response, ApiError> {
    let v = validate(
        &state.engine,
        body.into(),
        validate::GENERATE,
        state.request_timeout,
    )
    .await?;
    let gen = state.engine.submit(v.admission, v.request);
    if v.stream {
        return Ok(Sse::new(generate_events(gen))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (text, c) = gen.collect().await?;
    Ok(Json(GenerateResponse {
        generated_text: text,
        finish_reason: finish_name(&c),
        usage: usage_json(&c.usage),
        timings: serde_json::to_value(c.timings).unwrap_or_default(),
    })
    .into_response())
}

/// SSE for `/generate`: `{"text": delta}` events, then one
/// `{"text": "", "done": true, "generated_text", "finish_reason", "usage", "timings"}`;
/// failures arrive as an `error` event carrying the error envelope.
fn generate_events(mut gen: GenerationStream) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        let mut full = String::new();
        while let Some(ev) = gen.next_event().await {
            match ev {
                Event::Logprobs(_) | Event::PromptLogprobs(_) => {}
                Event::Text(t) => {
                    full.push_str(&t);
                    yield Ok(SseEvent::default().data(json!({"text": t}).to_string()));
                }
                Event::Done(c) => {
                    let done = json!({
                        "text": "",
                        "done": true,
                        "generated_text": full,
                        "finish_reason": finish_name(&c),
                        "usage": usage_json(&c.usage),
                        "timings": c.timings,
                    });
                    yield Ok(SseEvent::default().data(done.to_string()));
                    return;
                }
                Event::Error(e) => {
                    let err = ApiError::from(e);
                    yield Ok(SseEvent::default().event("error").data(err.to_json().to_string()));
                    return;
                }
            }
        }
    }
}

/// `POST /tokenize` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeBody {
    /// Text to tokenize.
    #[serde(alias = "prompt")]
    pub content: String,
    /// Prepend BOS as the model asks (default true); `add_special_tokens` is
    /// vLLM's name for it.
    #[serde(default = "yes", alias = "add_special_tokens")]
    pub add_special: bool,
    /// Wrap in the chat format first, as `/generate` does.
    #[serde(default)]
    pub chat: bool,
    /// Return `{id, piece}` pairs instead of ids.
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /tokenize`.
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenizeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let TokenizeBody {
        content,
        add_special,
        chat,
        with_pieces,
    } = body;
    let (tokens, pieces) = validate::blocking(&state.engine, move |e| {
        let tokens = if chat {
            e.tokenize_prompt(&Prompt::User(content))?.ids().to_vec()
        } else {
            e.tokenize(&content, add_special)?
        };
        let pieces = if with_pieces {
            Some(e.token_pieces(&tokens)?)
        } else {
            None
        };
        Ok((tokens, pieces))
    })
    .await?;
    let count = tokens.len();
    if let Some(pieces) = pieces {
        let items: Vec<_> = tokens
            .iter()
            .zip(pieces)
            .map(|(id, piece)| json!({"id": id, "piece": piece}))
            .collect();
        return Ok(Json(json!({"tokens": items, "count": count})));
    }
    Ok(Json(json!({"tokens": tokens, "count": count})))
}

/// `POST /detokenize` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeBody {
    /// Token ids.
    pub tokens: Vec<i32>,
}

/// `POST /detokenize`.
pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DetokenizeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let content = validate::blocking(&state.engine, move |e| e.detokenize(&body.tokens)).await?;
    // `content` is llama-server's key, `prompt` vLLM's (lm-evaluation-harness
    // reads it): the same text under both names.
    Ok(Json(json!({ "content": content, "prompt": content })))
}

/// `GET /tokenizer_info`: BOS/EOS text, whether BOS is prepended, and the
/// chat template, under vLLM's names (lm-evaluation-harness's remote
/// tokenizer reads them).
pub async fn tokenizer_info(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = state.engine.tokenizer_info()?;
    Ok(Json(json!(info)))
}

/// `GET /metrics` (Prometheus text).
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state.http, &state.engine),
    )
        .into_response()
}

/// Unknown route.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
