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

use crate::engine::{
    ChatMessage, Event, GenerateRequest, GenerationStream, Prompt, SamplingParams,
};

use super::errors::{ApiError, ApiJson};
use super::routes::usage_json;
use super::validate::{self, StopField};
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
    #[serde(alias = "max_completion_tokens")]
    pub max_tokens: Option<u32>,
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

fn build(
    state: &AppState,
    prompt: Prompt,
    c: CommonFields,
    default_max: Option<u32>,
) -> Result<(GenerateRequest, bool, bool, String), ApiError> {
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::invalid_field("n", "only `n: 1` is supported"));
        }
    }
    validate::range_f32("temperature", c.temperature, 0.0, 2.0)?;
    validate::range_f32_open_low("top_p", c.top_p, 0.0, 1.0)?;
    validate::top_k("top_k", c.top_k)?;
    validate::range_f32("min_p", c.min_p, 0.0, 1.0)?;
    validate::range_f32_open_low("repetition_penalty", c.repetition_penalty, 0.0, 10.0)?;
    validate::range_f32("frequency_penalty", c.frequency_penalty, -2.0, 2.0)?;
    validate::range_f32("presence_penalty", c.presence_penalty, -2.0, 2.0)?;
    let stop = match c.stop {
        Some(s) => s.into_vec("stop")?,
        None => Vec::new(),
    };
    let max_tokens = match c.max_tokens.or(default_max) {
        Some(m) => {
            validate::positive("max_tokens", m)?;
            m
        }
        None => {
            // Chat without max_tokens: whatever room the slot has left.
            let room = state
                .engine
                .info()
                .map(|i| i.n_ctx_slot as usize)
                .unwrap_or(0);
            let used = state
                .engine
                .prompt_tokens(&prompt)
                .map_err(|e| ApiError::from_engine(e, "max_tokens"))?
                .len();
            u32::try_from(room.saturating_sub(used).max(1)).unwrap_or(u32::MAX)
        }
    };
    let sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_k: c.top_k.unwrap_or(0),
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        seed: c.seed,
        ignore_eos: c.ignore_eos,
        ..SamplingParams::default()
    };
    let include_usage = c.stream_options.map(|o| o.include_usage).unwrap_or(false);
    let model = c.model.unwrap_or_else(|| state.model_name.to_string());
    Ok((
        GenerateRequest {
            prompt,
            max_new_tokens: max_tokens,
            sampling,
            stop,
            timeout: state.request_timeout,
        },
        c.stream,
        include_usage,
        model,
    ))
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompletionBody>,
) -> Result<Response, ApiError> {
    let prompt = match body.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => {
            return Err(ApiError::invalid_field(
                "prompt",
                "only a single prompt per request is supported",
            ))
        }
    };
    let (req, stream, include_usage, model) =
        build(&state, Prompt::Raw(prompt), body.common, Some(16))?;
    run(state, req, stream, include_usage, model, Kind::Completion).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
    if body.messages.is_empty() {
        return Err(ApiError::invalid_field(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    let (req, stream, include_usage, model) =
        build(&state, Prompt::Chat(body.messages), body.common, None)?;
    run(state, req, stream, include_usage, model, Kind::Chat).await
}

async fn run(
    state: AppState,
    req: GenerateRequest,
    stream: bool,
    include_usage: bool,
    model: String,
    kind: Kind,
) -> Result<Response, ApiError> {
    let gen = state
        .engine
        .generate(req)
        .map_err(|e| ApiError::from_engine(e, "max_tokens"))?;
    let created = now_secs();
    if stream {
        let events = chunks(gen, kind, model, created, include_usage);
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (text, c) = gen
        .collect()
        .await
        .map_err(|e| ApiError::from_engine(e, "max_tokens"))?;
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
                    let err = ApiError::from_engine(e, "max_tokens");
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
