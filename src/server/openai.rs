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

use crate::engine::{ChatMessage, Event, GenerationStream, Prompt, TokenLogprob};

use super::errors::{ApiError, ApiJson};
use super::routes::usage_json;
use super::tools::{self, Tool, ToolChoice, ToolPlan};
use super::validate::{
    self, validate, GenerationInput, RouteSpec, SamplingFields, UnknownFields, ValidationError,
};
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

/// Fields shared by both endpoints besides [`SamplingFields`].
#[derive(Debug, Deserialize)]
pub struct CommonFields {
    /// Echoed back; the server serves one model.
    pub model: Option<String>,
    /// Most tokens to generate (default 16 for completions, the slot's room for chat).
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`; wins when both are sent.
    pub max_completion_tokens: Option<u32>,
    /// Only 1 is supported.
    pub n: Option<u32>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// What both OpenAI bodies flatten: their common fields, the sampling fields
/// of every route, and the rest (refused with 400 naming the field). Serde
/// hands each flat struct only its own keys, so `unknown` gets exactly the
/// keys nothing claimed.
#[derive(Debug, Deserialize)]
pub struct OpenAiFields {
    /// `model`, the budget, `n`, `stream_options`.
    #[serde(flatten)]
    pub common: CommonFields,
    /// Sampling and output settings (`temperature` and `top_p` default to
    /// 1.0; `top_k`, `min_p`, `repetition_penalty`, `ignore_eos` and
    /// `grammar` are extensions).
    #[serde(flatten)]
    pub fields: SamplingFields,
    /// Anything else.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    /// Text to continue (used verbatim, BOS prepended).
    pub prompt: PromptField,
    /// Log-probabilities of each token with this many alternatives (0..=5).
    pub logprobs: Option<u32>,
    /// The fields both routes share.
    #[serde(flatten)]
    pub shared: OpenAiFields,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    /// The conversation (`system`, `user`, `assistant`).
    pub messages: Vec<ChatMessage>,
    /// Return each token's log-probability.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token (0..=20); needs `logprobs: true`.
    pub top_logprobs: Option<u32>,
    /// Functions the model may call.
    pub tools: Option<Vec<Tool>>,
    /// `none`, `auto` (the default with tools), `required` or a named function.
    pub tool_choice: Option<ToolChoice>,
    /// Accepted: an answer holds at most one call, which any value allows.
    pub parallel_tool_calls: Option<bool>,
    /// The fields both routes share.
    #[serde(flatten)]
    pub shared: OpenAiFields,
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
    logprobs: bool,
    /// Tools whose call the answer may be (read back as `tool_calls`).
    tools: Option<ToolPlan>,
}

impl OpenAiFields {
    /// The route-independent input, the route's field names (the budget
    /// field is the one the caller used) and what the reply needs.
    fn split(
        self,
        prompt: Prompt,
        logprobs: Option<u32>,
        default_max: Option<u32>,
        spec: RouteSpec,
        kind: Kind,
        state: &AppState,
    ) -> Result<(GenerationInput, RouteSpec, Reply), ValidationError> {
        if self.common.n.is_some_and(|n| n != 1) {
            return Err(ValidationError::OnlyOneChoice { field: "n" });
        }
        let (max_tokens, spec) = match self.common.max_completion_tokens {
            Some(m) => (
                Some(m),
                RouteSpec {
                    max_tokens: "max_completion_tokens",
                    ..spec
                },
            ),
            None => (self.common.max_tokens.or(default_max), spec),
        };
        let input = GenerationInput {
            prompt,
            max_tokens,
            logprobs,
            fields: self.fields,
            unknown: self.unknown,
        };
        let reply = Reply {
            kind,
            model: self
                .common
                .model
                .unwrap_or_else(|| state.model_name.to_string()),
            include_usage: self.common.stream_options.is_some_and(|o| o.include_usage),
            logprobs: logprobs.is_some(),
            tools: None,
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
    let (input, spec, reply) = body.shared.split(
        Prompt::Raw(prompt),
        body.logprobs,
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
    let logprobs = match (body.logprobs, body.top_logprobs) {
        (true, n) => Some(n.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ValidationError::NeedsLogprobs {
                field: spec.top_logprobs,
            }
            .into())
        }
    };
    let plan = tools::plan(body.tools, body.tool_choice)?;
    let mut shared = body.shared;
    let fields = &mut shared.fields;
    if let Some(gbnf) = plan.as_ref().and_then(|p| p.gbnf.clone()) {
        if fields.grammar.is_some() || fields.response_format.is_some() {
            let other = if fields.grammar.is_some() {
                "grammar"
            } else {
                "response_format"
            };
            return Err(ValidationError::Conflict {
                field: tools::TOOL_CHOICE,
                other,
            }
            .into());
        }
        fields.grammar = Some(gbnf);
    }
    let prompt = match &plan {
        Some(p) => Prompt::ChatTools {
            messages: body.messages,
            tools: p.for_template.clone(),
        },
        None => Prompt::Chat(body.messages),
    };
    let (input, spec, mut reply) =
        shared.split(prompt, logprobs, None, spec, Kind::Chat, &state)?;
    reply.tools = plan.filter(ToolPlan::may_call);
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
        logprobs,
        tools,
    } = reply;
    if v.stream {
        let events = chunks(gen, kind, model, created, include_usage, logprobs, tools);
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (text, lps, c) = gen.collect_with_logprobs().await?;
    let finish = c.finish_reason.openai();
    let call = tools.as_ref().and_then(|p| tools::read_call(&text, p));
    let body = match kind {
        Kind::Completion => json!({
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": if logprobs {
                    completion_logprobs(&lps, &mut TextOffsets::default())
                } else {
                    Value::Null
                },
                "finish_reason": finish,
            }],
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
                "message": match &call {
                    Some(call) => json!({
                        "role": "assistant",
                        "content": Value::Null,
                        "tool_calls": tools::tool_calls_json(call, &new_id("call"), false),
                    }),
                    None => json!({"role": "assistant", "content": text}),
                },
                "logprobs": if logprobs { chat_logprobs(&lps) } else { Value::Null },
                "finish_reason": if call.is_some() { "tool_calls" } else { finish },
            }],
            "usage": usage_json(&c.usage),
            "timings": c.timings,
        }),
    };
    Ok(Json(body).into_response())
}

/// A token's text for JSON: its bytes, lossily (a byte-fallback piece of a
/// code point becomes U+FFFD; `bytes` keeps it exact).
fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`.
pub fn chat_logprobs(entries: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let top: Vec<Value> = e
                .top
                .iter()
                .map(|t| json!({"token": token_text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes}))
                .collect();
            json!({
                "token": token_text(&e.bytes),
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": top,
            })
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Where the next token starts in the completion's text, in characters
/// (as OpenAI's `text_offset`), across streamed chunks.
#[derive(Debug, Default, Clone)]
pub struct TextOffsets {
    /// Code points begun so far.
    started: usize,
    /// Continuation bytes the last begun code point still expects.
    open: usize,
}

impl TextOffsets {
    /// The offset of the next byte, then advances over `bytes`. A token that
    /// starts inside a code point gets that code point's offset.
    fn take(&mut self, bytes: &[u8]) -> usize {
        let at = self.started - usize::from(self.open > 0);
        for &b in bytes {
            if b & 0xC0 == 0x80 {
                self.open = self.open.saturating_sub(1);
            } else {
                self.started += 1;
                self.open = match b {
                    0xF0.. => 3,
                    0xE0.. => 2,
                    0xC0.. => 1,
                    _ => 0,
                };
            }
        }
        at
    }
}

/// Completions' `logprobs`: `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`.
/// Alternatives whose text repeats (e.g. several lossy byte tokens) keep the most likely.
pub fn completion_logprobs(entries: &[TokenLogprob], offsets: &mut TextOffsets) -> Value {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut token_logprobs = Vec::with_capacity(entries.len());
    let mut top_logprobs = Vec::with_capacity(entries.len());
    let mut text_offset = Vec::with_capacity(entries.len());
    for e in entries {
        tokens.push(token_text(&e.bytes));
        token_logprobs.push(e.logprob);
        let mut top = serde_json::Map::new();
        for t in &e.top {
            top.entry(token_text(&t.bytes))
                .or_insert_with(|| json!(t.logprob));
        }
        top_logprobs.push(Value::Object(top));
        text_offset.push(offsets.take(&e.bytes));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

fn chunks(
    mut gen: GenerationStream,
    kind: Kind,
    model: String,
    created: u64,
    include_usage: bool,
    logprobs: bool,
    tools: Option<ToolPlan>,
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
    let mut offsets = TextOffsets::default();
    let mut lp_json = move |entries: &[TokenLogprob]| -> Value {
        if !logprobs {
            Value::Null
        } else if is_chat {
            chat_logprobs(entries)
        } else {
            completion_logprobs(entries, &mut offsets)
        }
    };
    let choice = move |text: Option<&str>, finish: Option<&str>, first: bool, lp: Value| -> Value {
        if is_chat {
            let mut delta = json!({});
            if first {
                delta["role"] = json!("assistant");
            }
            if let Some(t) = text {
                delta["content"] = json!(t);
            }
            json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": finish})
        }
    };
    async_stream::stream! {
        if is_chat {
            yield Ok(chunk(choice(Some(""), None, true, Value::Null), Value::Null));
        }
        // Log-probabilities of the tokens whose text comes next.
        let mut pending: Vec<TokenLogprob> = Vec::new();
        // An answer that may be a tool call is held and sent whole at the
        // end: as `delta.tool_calls` when it is a call, else as text.
        let mut held = String::new();
        while let Some(ev) = gen.next_event().await {
            match ev {
                Event::Logprobs(l) => pending.extend(l),
                Event::Text(t) if tools.is_some() => held.push_str(&t),
                Event::Text(t) => {
                    let lp = lp_json(&std::mem::take(&mut pending));
                    yield Ok(chunk(choice(Some(&t), None, false, lp), Value::Null));
                }
                Event::Done(c) => {
                    let mut finish = c.finish_reason.openai();
                    if let Some(plan) = &tools {
                        let lp = lp_json(&std::mem::take(&mut pending));
                        match tools::read_call(&held, plan) {
                            Some(call) => {
                                let mut delta = choice(None, None, false, lp);
                                delta["delta"]["tool_calls"] =
                                    tools::tool_calls_json(&call, &new_id("call"), true);
                                yield Ok(chunk(delta, Value::Null));
                                finish = "tool_calls";
                            }
                            None => yield Ok(chunk(choice(Some(&held), None, false, lp), Value::Null)),
                        }
                    } else if !pending.is_empty() {
                        // Tokens that added no text (e.g. a held-back byte at the end).
                        let lp = lp_json(&std::mem::take(&mut pending));
                        yield Ok(chunk(choice(Some(""), None, false, lp), Value::Null));
                    }
                    yield Ok(chunk(choice(None, Some(finish), false, Value::Null), Value::Null));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TopLogprob;

    fn entry(bytes: &[u8], logprob: f64, top: &[(&[u8], f64)]) -> TokenLogprob {
        TokenLogprob {
            token: 7,
            bytes: bytes.to_vec(),
            logprob,
            top: top
                .iter()
                .enumerate()
                .map(|(i, (b, lp))| TopLogprob {
                    token: i32::try_from(i).unwrap_or(0),
                    bytes: b.to_vec(),
                    logprob: *lp,
                })
                .collect(),
        }
    }

    /// "नम" as a whole token, then "स" split over two byte-fallback tokens.
    fn devanagari() -> Vec<TokenLogprob> {
        let sa = "स".as_bytes();
        vec![
            entry(
                "नम".as_bytes(),
                -0.5,
                &[("नम".as_bytes(), -0.5), (b"x", -1.5)],
            ),
            entry(&sa[..1], -0.25, &[(&sa[..1], -0.25), (&sa[..1], -3.0)]),
            entry(&sa[1..], -0.125, &[]),
            entry(b"!", -2.0, &[]),
        ]
    }

    #[test]
    fn chat_shape_keeps_exact_bytes_and_lossy_text() {
        let v = chat_logprobs(&devanagari());
        assert_eq!(v["refusal"], Value::Null);
        let c = v["content"].as_array().expect("content");
        assert_eq!(c.len(), 4);
        assert_eq!(c[0]["token"], "नम");
        assert_eq!(c[0]["logprob"], -0.5);
        assert_eq!(c[0]["bytes"], json!("नम".as_bytes()));
        assert_eq!(
            c[0]["top_logprobs"][1],
            json!({"token": "x", "logprob": -1.5, "bytes": [120]})
        );
        // A partial code point: lossy text, exact bytes, valid JSON.
        assert_eq!(c[1]["token"], "\u{FFFD}");
        assert_eq!(c[1]["bytes"], json!([0xE0]));
        assert_eq!(c[2]["bytes"], json!(&"स".as_bytes()[1..]));
        assert_eq!(c[3]["top_logprobs"], json!([]));
        let text = v.to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
    }

    #[test]
    fn completion_shape_and_text_offsets_in_characters() {
        let mut offsets = TextOffsets::default();
        let v = completion_logprobs(&devanagari(), &mut offsets);
        // Lossy text: one U+FFFD for the lead byte, one per stray continuation byte.
        assert_eq!(
            v["tokens"],
            json!(["नम", "\u{FFFD}", "\u{FFFD}\u{FFFD}", "!"])
        );
        assert_eq!(v["token_logprobs"], json!([-0.5, -0.25, -0.125, -2.0]));
        // "नम" is 2 characters; the two halves of "स" both start at 2; "!" at 3.
        assert_eq!(v["text_offset"], json!([0, 2, 2, 3]));
        // Repeated alternative texts keep the first (most likely) value.
        assert_eq!(v["top_logprobs"][1], json!({"\u{FFFD}": -0.25}));
        assert_eq!(v["top_logprobs"][0], json!({"नम": -0.5, "x": -1.5}));
        assert_eq!(v["top_logprobs"][3], json!({}));
        // Offsets continue across streamed chunks.
        let more = completion_logprobs(&[entry(b"ab", -1.0, &[])], &mut offsets);
        assert_eq!(more["text_offset"], json!([4]));
    }
}
