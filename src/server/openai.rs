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
    ChatMessage, Collected, EngineError, Event, GenerationStream, Prompt, PromptLogprobs,
    TokenLogprob, Usage,
};

use super::errors::{ApiError, ApiJson};
use super::routes::usage_json;
use super::tools::{self, Tool, ToolChoice, ToolPlan};
use super::validate::{
    self, validate, GenerationInput, RouteSpec, SamplingFields, UnknownFields, ValidationError,
};
use super::AppState;

/// `prompt`: a string, a list of strings, a list of token ids, or a list of
/// token-id lists; each prompt is one choice (`n` each).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One prompt.
    One(String),
    /// Several prompts.
    Many(Vec<String>),
    /// One prompt as token ids (used as is: no BOS is added).
    Tokens(Vec<i64>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<i64>>),
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
    /// Choices per prompt (completions; chat supports only 1).
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
    /// Log-probabilities of each token with this many alternatives (0..=5);
    /// with `echo`, the prompt's tokens too.
    pub logprobs: Option<u32>,
    /// Answer with the prompt ahead of the completion.
    #[serde(default)]
    pub echo: bool,
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
    /// The prompt's text goes ahead of the completion's (completions' `echo`).
    echo: bool,
    /// Choices per prompt.
    n: usize,
    /// Tools whose call the answer may be (read back as `tool_calls`).
    tools: Option<ToolPlan>,
}

impl OpenAiFields {
    /// The route-independent input, the route's field names (the budget
    /// field is the one the caller used) and what the reply needs.
    #[allow(clippy::too_many_arguments)]
    fn split(
        self,
        prompt: Prompt,
        logprobs: Option<u32>,
        echo: bool,
        default_max: Option<u32>,
        spec: RouteSpec,
        kind: Kind,
        state: &AppState,
    ) -> Result<(GenerationInput, RouteSpec, Reply), ValidationError> {
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
            echo,
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
            echo,
            n: self.common.n.map_or(1, |n| n as usize),
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
    let mut prompts = prompts(body.prompt, &state, spec)?;
    let n = body.shared.common.n.unwrap_or(1) as usize;
    if !(1..=validate::MAX_CHOICES).contains(&n) {
        return Err(ValidationError::OutOfRange {
            field: "n",
            min: 1.0,
            max: validate::MAX_CHOICES as f32,
            got: n as f32,
        }
        .into());
    }
    let choices = prompts.len().saturating_mul(n);
    if choices > validate::MAX_CHOICES {
        return Err(ValidationError::TooManyChoices {
            field: spec.prompt,
            choices,
        }
        .into());
    }
    if body.shared.fields.stream && choices > 1 {
        return Err(ValidationError::StreamChoices {
            field: "stream",
            choices,
        }
        .into());
    }
    let last = prompts
        .pop()
        .ok_or(ValidationError::NoPrompts { field: spec.prompt })?;
    let (input, spec, reply) = body.shared.split(
        last,
        body.logprobs,
        body.echo,
        Some(16),
        spec,
        Kind::Completion,
        &state,
    )?;
    let mut inputs: Vec<GenerationInput> = prompts
        .into_iter()
        .map(|prompt| GenerationInput {
            prompt,
            ..input.clone()
        })
        .collect();
    inputs.push(input);
    run(state, inputs, spec, reply).await
}

/// The prompts of a completions body, in order; token ids are checked
/// against the vocabulary here (400 naming `prompt`).
fn prompts(field: PromptField, state: &AppState, spec: RouteSpec) -> Result<Vec<Prompt>, ApiError> {
    let ids = |ids: Vec<i64>| -> Result<Prompt, ApiError> {
        let n_vocab = state.engine.info().ok_or(EngineError::NotReady)?.n_vocab;
        let tokens = ids
            .iter()
            .map(|&token| {
                i32::try_from(token)
                    .ok()
                    .filter(|t| (0..n_vocab).contains(t))
                    .ok_or(ValidationError::TokenOutOfVocab {
                        field: spec.prompt,
                        token,
                        n_vocab,
                    })
            })
            .collect::<Result<Vec<i32>, _>>()?;
        Ok(Prompt::Tokens(tokens))
    };
    let prompts = match field {
        PromptField::One(p) => vec![Prompt::Raw(p)],
        PromptField::Many(v) => v.into_iter().map(Prompt::Raw).collect(),
        PromptField::Tokens(t) => vec![ids(t)?],
        PromptField::TokenLists(v) => v.into_iter().map(ids).collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(ValidationError::NoPrompts { field: spec.prompt }.into());
    }
    Ok(prompts)
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
    if body.shared.common.n.is_some_and(|n| n != 1) {
        return Err(ValidationError::OnlyOneChoice { field: "n" }.into());
    }
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
        shared.split(prompt, logprobs, false, None, spec, Kind::Chat, &state)?;
    reply.tools = plan.filter(ToolPlan::may_call);
    run(state, vec![input], spec, reply).await
}

/// The text `echo` puts ahead of the completion: a text prompt as sent,
/// token ids as their pieces' bytes (lossy where they split a code point).
fn echo_text(state: &AppState, prompt: &Prompt) -> Result<String, ApiError> {
    Ok(match prompt {
        Prompt::Raw(text) => text.clone(),
        Prompt::Tokens(ids) => {
            String::from_utf8_lossy(&state.engine.token_bytes(ids)?.concat()).into_owned()
        }
        _ => String::new(),
    })
}

/// Validates every input (one per prompt; each choice holds its own place
/// in the queue), then runs all of them; the answer lists the choices in
/// order, `index` = prompt × `n` + j.
async fn run(
    state: AppState,
    inputs: Vec<GenerationInput>,
    spec: RouteSpec,
    reply: Reply,
) -> Result<Response, ApiError> {
    let mut runs = Vec::with_capacity(inputs.len() * reply.n);
    let mut stream = false;
    for input in inputs {
        let echo = if reply.echo {
            Some(echo_text(&state, &input.prompt)?)
        } else {
            None
        };
        let v = validate(&state.engine, input, spec, state.request_timeout).await?;
        stream = v.stream;
        for _ in 1..reply.n {
            runs.push((state.engine.admit()?, v.request.clone(), echo.clone()));
        }
        runs.push((v.admission, v.request, echo));
    }
    let created = now_secs();
    let Reply {
        kind,
        model,
        include_usage,
        logprobs,
        tools,
        ..
    } = reply;
    let mut gens: Vec<(GenerationStream, Option<String>)> = runs
        .into_iter()
        .map(|(admission, request, echo)| (state.engine.submit(admission, request), echo))
        .collect();
    if stream {
        let Some((gen, echo)) = gens.pop() else {
            return Err(ApiError::internal());
        };
        let events = chunks(
            gen,
            kind,
            model,
            created,
            include_usage,
            logprobs,
            echo,
            tools,
        );
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let echoes: Vec<Option<String>> = gens.iter_mut().map(|(_, e)| e.take()).collect();
    let done =
        futures::future::try_join_all(gens.into_iter().map(|(g, _)| g.collect_all())).await?;
    let mut usage = Usage::default();
    for d in &done {
        let u = &d.completion.usage;
        usage.prompt_tokens += u.prompt_tokens;
        usage.completion_tokens += u.completion_tokens;
        usage.cached_prompt_tokens += u.cached_prompt_tokens;
    }
    let timings = done.first().map(|d| d.completion.timings);
    let body = match kind {
        Kind::Completion => {
            let choices: Vec<Value> = done
                .iter()
                .zip(echoes)
                .enumerate()
                .map(|(index, (d, echo))| completion_choice(index, d, echo.as_deref(), logprobs))
                .collect();
            json!({
                "id": new_id("cmpl"),
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage_json(&usage),
                "timings": timings,
            })
        }
        Kind::Chat => {
            let Some(d) = done.first() else {
                return Err(ApiError::internal());
            };
            let text = &d.text;
            let finish = d.completion.finish_reason.openai();
            let call = tools.as_ref().and_then(|p| tools::read_call(text, p));
            json!({
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
                    "logprobs": if logprobs { chat_logprobs(&d.logprobs) } else { Value::Null },
                    "finish_reason": if call.is_some() { "tool_calls" } else { finish },
                }],
                "usage": usage_json(&usage),
                "timings": timings,
            })
        }
    };
    Ok(Json(body).into_response())
}

/// One completions choice: the text (after the prompt's with `echo`) and,
/// when asked, its log-probabilities (the prompt's first with `echo`).
fn completion_choice(index: usize, d: &Collected, echo: Option<&str>, logprobs: bool) -> Value {
    let text = match echo {
        Some(prompt) => format!("{prompt}{}", d.text),
        None => d.text.clone(),
    };
    let lp = if logprobs {
        let mut lp = CompletionLogprobs::default();
        if let (Some(prompt), Some(p)) = (echo, &d.prompt_logprobs) {
            lp.push_prompt(p, prompt);
        }
        lp.extend(&d.logprobs);
        lp.into_json()
    } else {
        Value::Null
    };
    json!({
        "text": text,
        "index": index,
        "logprobs": lp,
        "finish_reason": d.completion.finish_reason.openai(),
    })
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

/// Completions' `logprobs` being built: `{tokens, token_logprobs,
/// top_logprobs: [{token: logprob}], text_offset}`, with `text_offset`
/// running on across the prompt (with `echo`) and streamed chunks.
/// Alternatives whose text repeats (e.g. several lossy byte tokens) keep the
/// most likely.
#[derive(Debug, Default)]
pub struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    offsets: TextOffsets,
}

impl CompletionLogprobs {
    fn push_bytes(&mut self, bytes: &[u8], logprob: Value, top: Value) {
        self.tokens.push(token_text(bytes));
        self.token_logprobs.push(logprob);
        self.top_logprobs.push(top);
        self.text_offset.push(self.offsets.take(bytes));
    }

    /// The entries of generated tokens.
    pub fn extend(&mut self, entries: &[TokenLogprob]) {
        for e in entries {
            let mut top = serde_json::Map::new();
            for t in &e.top {
                top.entry(token_text(&t.bytes))
                    .or_insert_with(|| json!(t.logprob));
            }
            self.push_bytes(&e.bytes, json!(e.logprob), Value::Object(top));
        }
    }

    /// The prompt's entries, the first with `null` log-probabilities
    /// (nothing precedes it). When the tokenizer put a space ahead of the
    /// prompt's text (SentencePiece's prefix space), the first piece loses
    /// it, so that the tokens spell the echoed `text` and the offsets point
    /// into it.
    pub fn push_prompt(&mut self, p: &PromptLogprobs, text: &str) {
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(p.rest.len() + 1);
        pieces.push(&p.first_bytes);
        pieces.extend(p.rest.iter().map(|e| e.bytes.as_slice()));
        let spelled = pieces.concat();
        let prefix_space = spelled.first() == Some(&b' ') && &spelled[1..] == text.as_bytes();
        let mut strip = prefix_space;
        let mut piece = |bytes: &[u8]| -> Vec<u8> {
            match bytes.split_first() {
                Some((b' ', rest)) if strip => {
                    strip = false;
                    rest.to_vec()
                }
                _ => bytes.to_vec(),
            }
        };
        let first = piece(&p.first_bytes);
        self.push_bytes(&first, Value::Null, Value::Null);
        for e in &p.rest {
            let bytes = piece(&e.bytes);
            let mut top = serde_json::Map::new();
            for t in &e.top {
                top.entry(token_text(&t.bytes))
                    .or_insert_with(|| json!(t.logprob));
            }
            self.push_bytes(&bytes, json!(e.logprob), Value::Object(top));
        }
    }

    /// The JSON of the entries so far; later entries start a new list (a
    /// stream's next chunk) while the offsets run on.
    pub fn take_json(&mut self) -> Value {
        json!({
            "tokens": std::mem::take(&mut self.tokens),
            "token_logprobs": std::mem::take(&mut self.token_logprobs),
            "top_logprobs": std::mem::take(&mut self.top_logprobs),
            "text_offset": std::mem::take(&mut self.text_offset),
        })
    }

    /// The JSON of all entries.
    pub fn into_json(mut self) -> Value {
        self.take_json()
    }
}

/// Completions' `logprobs` of generated tokens (see [`CompletionLogprobs`]).
pub fn completion_logprobs(entries: &[TokenLogprob], lp: &mut CompletionLogprobs) -> Value {
    lp.extend(entries);
    lp.take_json()
}

/// The server-sent events of one choice. With `echo` (completions) the
/// prompt's text goes first, in a chunk of its own that carries the
/// prompt's log-probabilities when they are asked for.
#[allow(clippy::too_many_arguments)]
fn chunks(
    mut gen: GenerationStream,
    kind: Kind,
    model: String,
    created: u64,
    include_usage: bool,
    logprobs: bool,
    echo: Option<String>,
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
    let lp_json = move |entries: &[TokenLogprob], lp: &mut CompletionLogprobs| -> Value {
        if !logprobs {
            Value::Null
        } else if is_chat {
            chat_logprobs(entries)
        } else {
            completion_logprobs(entries, lp)
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
        // Completions' log-probabilities, their text offsets running on.
        let mut clp = CompletionLogprobs::default();
        // The prompt's text, sent at once, or (when its log-probabilities
        // are asked for) with them, before any generated text.
        let mut echo = echo;
        if !logprobs {
            if let Some(text) = echo.take() {
                yield Ok(chunk(choice(Some(&text), None, false, Value::Null), Value::Null));
            }
        }
        // Log-probabilities of the tokens whose text comes next.
        let mut pending: Vec<TokenLogprob> = Vec::new();
        // An answer that may be a tool call is held and sent whole at the
        // end: as `delta.tool_calls` when it is a call, else as text.
        let mut held = String::new();
        while let Some(ev) = gen.next_event().await {
            match ev {
                Event::Logprobs(l) => pending.extend(l),
                Event::PromptLogprobs(p) => {
                    if let Some(text) = echo.take() {
                        clp.push_prompt(&p, &text);
                        let lp = clp.take_json();
                        yield Ok(chunk(choice(Some(&text), None, false, lp), Value::Null));
                    }
                }
                Event::Text(t) if tools.is_some() => held.push_str(&t),
                Event::Text(t) => {
                    let lp = lp_json(&std::mem::take(&mut pending), &mut clp);
                    yield Ok(chunk(choice(Some(&t), None, false, lp), Value::Null));
                }
                Event::Done(c) => {
                    let mut finish = c.finish_reason.openai();
                    if let Some(plan) = &tools {
                        let lp = lp_json(&std::mem::take(&mut pending), &mut clp);
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
                        let lp = lp_json(&std::mem::take(&mut pending), &mut clp);
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
        let mut offsets = CompletionLogprobs::default();
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

    #[test]
    fn echoed_prompt_entries_come_first_with_null_and_spell_the_text() {
        // SentencePiece puts a space ahead of the text: the first piece
        // loses it, so the tokens spell the echoed text.
        let prompt = PromptLogprobs {
            first_token: 1,
            first_bytes: Vec::new(),
            rest: vec![
                entry(
                    " नम".as_bytes(),
                    -3.0,
                    &[(b" x", -0.5), (" नम".as_bytes(), -3.0)],
                ),
                entry(b"!", -1.0, &[(b"!", -1.0)]),
            ],
        };
        let mut lp = CompletionLogprobs::default();
        lp.push_prompt(&prompt, "नम!");
        lp.extend(&[entry(b" ok", -0.25, &[(b" ok", -0.25)])]);
        let v = lp.into_json();
        assert_eq!(v["tokens"], json!(["", "नम", "!", " ok"]));
        assert_eq!(v["token_logprobs"], json!([null, -3.0, -1.0, -0.25]));
        assert_eq!(v["top_logprobs"][0], Value::Null);
        // Alternatives keep the model's pieces, most likely first.
        let top: Vec<&String> = v["top_logprobs"][1]
            .as_object()
            .expect("map")
            .keys()
            .collect();
        assert_eq!(top, [" x", " नम"]);
        assert_eq!(v["text_offset"], json!([0, 0, 2, 3]));
        // Without the prefix space nothing is stripped.
        let mut lp = CompletionLogprobs::default();
        lp.push_prompt(&prompt, " नम!");
        assert_eq!(lp.into_json()["tokens"], json!(["", " नम", "!"]));
    }
}
