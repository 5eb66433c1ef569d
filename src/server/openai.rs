//! OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`,
//! `/v1/models`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{ChatMessage, Event, GenerationStream, Prompt};

use super::errors::{ApiError, ApiJson};
use super::routes::usage_json;
use super::validate::{self, validate, GenerationInput, RouteSpec, StopField, ValidationError};
use super::AppState;

/// `prompt` may be a string or a one-element list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One prompt.
    One(String),
    /// A batch of prompts (only one is supported).
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Deserialize)]
pub struct CommonFields {
    /// Echoed back; the server serves one model.
    pub model: Option<String>,
    /// Most tokens to generate (default 16 for completions, the slot's room for chat).
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`; wins when both are sent.
    pub max_completion_tokens: Option<u32>,
    /// Default 1.0.
    pub temperature: Option<f32>,
    /// Default 1.0.
    pub top_p: Option<f32>,
    /// Extension (default off).
    pub top_k: Option<i32>,
    /// Extension (default off).
    pub min_p: Option<f32>,
    /// Extension (default 1.0).
    pub repetition_penalty: Option<f32>,
    /// Generate past end-of-generation tokens (for fixed-length benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// -2..2.
    pub frequency_penalty: Option<f32>,
    /// -2..2.
    pub presence_penalty: Option<f32>,
    /// RNG seed.
    pub seed: Option<u32>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Only 1 is supported.
    pub n: Option<u32>,
    /// Stream chunks.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    /// Text to continue (used verbatim, BOS prepended).
    pub prompt: PromptField,
    /// Shared fields.
    #[serde(flatten)]
    pub common: CommonFields,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    /// The conversation (`system`, `user`, `assistant`).
    pub messages: Vec<ChatMessage>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: CommonFields,
}

enum Kind {
    Completion,
    Chat,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{nanos:08x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the OpenAI routes keep besides the validated request.
struct Reply {
    kind: Kind,
    model: String,
    include_usage: bool,
}

impl CommonFields {
    /// The route-independent input, the route's field names (the budget
    /// field is the one the caller used) and what the reply needs.
    fn split(
        self,
        prompt: Prompt,
        default_max: Option<u32>,
        spec: RouteSpec,
        kind: Kind,
        state: &AppState,
    ) -> Result<(GenerationInput, RouteSpec, Reply), ValidationError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ValidationError::OnlyOneChoice { field: "n" });
        }
        let (max_tokens, spec) = match self.max_completion_tokens {
            Some(m) => (
                Some(m),
                RouteSpec {
                    max_tokens: "max_completion_tokens",
                    ..spec
                },
            ),
            None => (self.max_tokens.or(default_max), spec),
        };
        let input = GenerationInput {
            prompt,
            max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed: self.seed,
            ignore_eos: self.ignore_eos,
            stop: self.stop,
            stream: self.stream,
        };
        let reply = Reply {
            kind,
            model: self.model.unwrap_or_else(|| state.model_name.to_string()),
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        };
        Ok((input, spec, reply))
    }
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompletionBody>,
) -> Result<Response, ApiError> {
    let spec = validate::COMPLETIONS;
    let prompt = match body.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => {
            return Err(ValidationError::OnePrompt { field: spec.prompt }.into())
        }
    };
    let (input, spec, reply) = body.common.split(
        Prompt::Raw(prompt),
        Some(16),
        spec,
        Kind::Completion,
        &state,
    )?;
    run(state, input, spec, reply).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
    let spec = validate::CHAT;
    if body.messages.is_empty() {
        return Err(ValidationError::NoMessages { field: spec.prompt }.into());
    }
    let (input, spec, reply) =
        body.common
            .split(Prompt::Chat(body.messages), None, spec, Kind::Chat, &state)?;
    run(state, input, spec, reply).await
}

async fn run(
    state: AppState,
    input: GenerationInput,
    spec: RouteSpec,
    reply: Reply,
) -> Result<Response, ApiError> {
    let v = validate(&state.engine, input, spec, state.request_timeout).await?;
    let gen = state.engine.submit(v.admission, v.request);
    let created = now_secs();
    let Reply {
        kind,
        model,
        include_usage,
    } = reply;
    if v.stream {
        let events = chunks(gen, kind, model, created, include_usage);
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (text, c) = gen.collect().await?;
    let finish = c.finish_reason.openai();
    let body = match kind {
        Kind::Completion => json!({
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
            "usage": usage_json(&c.usage),
            "timings": c.timings,
        }),
        Kind::Chat => json!({
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage_json(&c.usage),
            "timings": c.timings,
        }),
    };
    Ok(Json(body).into_response())
}

fn chunks(
    mut gen: GenerationStream,
    kind: Kind,
    model: String,
    created: u64,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let (id, object) = match kind {
        Kind::Completion => (new_id("cmpl"), "text_completion"),
        Kind::Chat => (new_id("chatcmpl"), "chat.completion.chunk"),
    };
    let is_chat = matches!(kind, Kind::Chat);
    let chunk = move |choice: Value, usage: Value| {
        let mut v = json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if include_usage {
            v["usage"] = usage;
        }
        SseEvent::default().data(v.to_string())
    };
    let choice = move |text: Option<&str>, finish: Option<&str>, first: bool| -> Value {
        if is_chat {
            let mut delta = json!({});
            if first {
                delta["role"] = json!("assistant");
            }
            if let Some(t) = text {
                delta["content"] = json!(t);
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        }
    };
    async_stream::stream! {
        if is_chat {
            yield Ok(chunk(choice(Some(""), None, true), Value::Null));
        }
        while let Some(ev) = gen.next_event().await {
            match ev {
                Event::Text(t) => {
                    yield Ok(chunk(choice(Some(&t), None, false), Value::Null));
                }
                Event::Done(c) => {
                    yield Ok(chunk(choice(None, Some(c.finish_reason.openai()), false), Value::Null));
                    if include_usage {
                        yield Ok(chunk(Value::Null, usage_json(&c.usage)));
                    }
                    yield Ok(SseEvent::default().data("[DONE]"));
                    return;
                }
                Event::Error(e) => {
                    let err = ApiError::from(e);
                    yield Ok(SseEvent::default().data(err.to_json().to_string()));
                    return;
                }
            }
        }
    }
}

/// `GET /v1/models`.
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": &*state.model_name,
            "object": "model",
            "created": now_secs(),
            "owned_by": "airavata",
            "meta": state.engine.info(),
        }],
    }))
}
