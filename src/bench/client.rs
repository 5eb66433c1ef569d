//! One benchmark request: payload, streaming (SSE) or plain, and timing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::args::Api;

/// What one request is asked to do.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// API shape.
    pub api: Api,
    /// Full URL (base + path).
    pub url: String,
    /// Prompt text.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// `model` for OpenAI payloads.
    pub model: Option<String>,
    /// Bearer key.
    pub api_key: Option<String>,
    /// `/generate`: `"raw": true`.
    pub raw: bool,
    /// Stream (SSE) or wait for one JSON answer.
    pub stream: bool,
    /// Send exactly the old FastAPI contract `{"prompt", "max_new_tokens"}`.
    pub old_app: bool,
    /// `openai-chat`: the whole conversation as (role, content) pairs, sent
    /// instead of one user message holding `prompt` (when not empty).
    pub messages: Vec<(String, String)>,
    /// Keep the generated text in [`Outcome::text`] (multi-turn chats).
    pub keep_text: bool,
}

impl RequestSpec {
    /// The JSON body.
    pub fn body(&self) -> Value {
        if self.old_app {
            return json!({"prompt": self.prompt, "max_new_tokens": self.max_tokens});
        }
        let mut body = match self.api {
            Api::Generate => json!({
                "prompt": self.prompt,
                "max_new_tokens": self.max_tokens,
                "raw": self.raw,
            }),
            Api::OpenaiCompletions => json!({
                "prompt": self.prompt,
                "max_tokens": self.max_tokens,
            }),
            Api::OpenaiChat if !self.messages.is_empty() => json!({
                "messages": self.messages.iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect::<Vec<_>>(),
                "max_tokens": self.max_tokens,
            }),
            Api::OpenaiChat => json!({
                "messages": [{"role": "user", "content": self.prompt}],
                "max_tokens": self.max_tokens,
            }),
        };
        body["temperature"] = json!(self.temperature);
        body["ignore_eos"] = json!(true);
        body["stream"] = json!(self.stream);
        if self.api != Api::Generate {
            if self.stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            if let Some(m) = &self.model {
                body["model"] = json!(m);
            }
        }
        body
    }
}

/// Timings and counts of one successful request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Time to the first non-empty text event (streaming only).
    pub ttft: Option<Duration>,
    /// Gaps between consecutive text events (streaming only).
    pub itl: Vec<Duration>,
    /// Send to last byte.
    pub e2e: Duration,
    /// Number of streamed events that carried text.
    pub token_events: u64,
    /// `usage.completion_tokens`, when the server sent it.
    pub usage_completion_tokens: Option<u64>,
    /// `usage.prompt_tokens`, when the server sent it.
    pub usage_prompt_tokens: Option<u64>,
    /// Generated text length in bytes.
    pub text_bytes: usize,
    /// The server's own time to first token, ms (`timings` of the last event
    /// or of the JSON answer), when it reports one.
    pub server_ttft_ms: Option<f64>,
    /// The generated text, when the request asked to keep it.
    pub text: Option<String>,
}

impl Outcome {
    /// Output tokens: `usage` when given, else the number of text events.
    /// `None` for a non-streamed answer without `usage`.
    pub fn output_tokens(&self) -> Option<u64> {
        self.usage_completion_tokens.or(if self.ttft.is_some() {
            Some(self.token_events)
        } else {
            None
        })
    }
}

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The TCP connection could not be made (server down / wrong URL).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Non-2xx answer.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The request ran past `--timeout-s`.
    #[error("timed out")]
    Timeout,
    /// The server reported an error inside the stream.
    #[error("error event: {0}")]
    ErrorEvent(String),
    /// Transport failure mid-request or an unusable answer.
    #[error("{0}")]
    Protocol(String),
}

impl From<reqwest::Error> for RequestError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_connect() {
            RequestError::Connect(chain(&e))
        } else if e.is_timeout() {
            RequestError::Timeout
        } else {
            RequestError::Protocol(chain(&e))
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Sends one request and measures it.
pub async fn send(client: &reqwest::Client, spec: &RequestSpec) -> Result<Outcome, RequestError> {
    let mut req = client.post(&spec.url).json(&spec.body());
    if let Some(k) = &spec.api_key {
        req = req.bearer_auth(k);
    }
    if spec.stream {
        req = req.header(reqwest::header::ACCEPT, "text/event-stream");
    }
    let start = Instant::now();
    let resp = req.send().await?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(RequestError::Status {
            status: status.as_u16(),
            body: body.chars().take(300).collect(),
        });
    }
    if spec.stream {
        read_stream(resp, start, spec.keep_text).await
    } else {
        read_json(resp, start, spec.keep_text).await
    }
}

async fn read_json(
    resp: reqwest::Response,
    start: Instant,
    keep_text: bool,
) -> Result<Outcome, RequestError> {
    let bytes = resp.bytes().await?;
    let e2e = start.elapsed();
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| RequestError::Protocol(format!("answer is not JSON: {e}")))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(RequestError::ErrorEvent(err.to_string()));
    }
    let text = v
        .get("generated_text")
        .and_then(Value::as_str)
        .or_else(|| text_of(&v))
        .ok_or_else(|| RequestError::Protocol("answer has no generated text".into()))?;
    let (completion, prompt) = usage_of(&v);
    Ok(Outcome {
        e2e,
        text_bytes: text.len(),
        usage_completion_tokens: completion,
        usage_prompt_tokens: prompt,
        server_ttft_ms: server_ttft_of(&v),
        text: keep_text.then(|| text.to_string()),
        ..Outcome::default()
    })
}

async fn read_stream(
    resp: reqwest::Response,
    start: Instant,
    keep_text: bool,
) -> Result<Outcome, RequestError> {
    let mut out = Outcome {
        text: keep_text.then(String::new),
        ..Outcome::default()
    };
    let mut parser = SseParser::default();
    let mut last: Option<Instant> = None;
    let mut body = resp.bytes_stream();
    let mut finished = false;
    'read: while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let now = Instant::now();
        for ev in parser.push(&chunk) {
            match interpret(&ev)? {
                Parsed::Done => {
                    finished = true;
                    break 'read;
                }
                Parsed::Other => {}
                Parsed::Data {
                    text,
                    content,
                    usage,
                    done,
                    server_ttft_ms,
                } => {
                    if let Some(t) = out.text.as_mut() {
                        t.push_str(&content);
                    }
                    if server_ttft_ms.is_some() {
                        out.server_ttft_ms = server_ttft_ms;
                    }
                    if let (Some(c), p) = usage {
                        out.usage_completion_tokens = Some(c);
                        out.usage_prompt_tokens = p;
                    }
                    if text > 0 {
                        out.text_bytes += text;
                        out.token_events += 1;
                        match last {
                            None => out.ttft = Some(now - start),
                            Some(prev) => out.itl.push(now - prev),
                        }
                        last = Some(now);
                    }
                    if done {
                        finished = true;
                        break 'read;
                    }
                }
            }
        }
    }
    out.e2e = start.elapsed();
    if !finished {
        return Err(RequestError::Protocol(format!(
            "stream ended without a final event after {} text events",
            out.token_events
        )));
    }
    if out.ttft.is_none() {
        if out.usage_completion_tokens.unwrap_or(0) > 0 {
            return Err(RequestError::Protocol(
                "stream reported generated tokens but carried no text events".into(),
            ));
        }
        // Nothing generated (e.g. immediate EOS): the first token time is the end.
        out.ttft = Some(out.e2e);
    }
    Ok(out)
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:` field (empty = "message").
    pub event: String,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

/// Incremental SSE parser (handles `\n`, `\r\n`, events split across chunks,
/// comments, several `data:` lines per event).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.cur));
                }
                self.cur = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                    self.has_data = true;
                }
                "event" => self.cur.event = value.to_string(),
                _ => {}
            }
        }
        out
    }
}

/// What an event means to the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// `[DONE]`.
    Done,
    /// Not JSON or nothing of interest (keep-alives, unknown shapes).
    Other,
    /// A JSON data event.
    Data {
        /// Bytes of generated text it carries (0 = not a token event).
        text: usize,
        /// That text.
        content: String,
        /// (`completion_tokens`, `prompt_tokens`) from `usage`.
        usage: (Option<u64>, Option<u64>),
        /// Final event of our `/generate` stream (`"done": true`) or
        /// llama.cpp's native one (`"stop": true`).
        done: bool,
        /// The server's own time to first token, ms, from `timings`.
        server_ttft_ms: Option<f64>,
    },
}

/// Interprets one event; error events become `Err`.
pub fn interpret(ev: &SseEvent) -> Result<Parsed, RequestError> {
    let data = ev.data.trim();
    if data == "[DONE]" {
        return Ok(Parsed::Done);
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        if ev.event == "error" {
            return Err(RequestError::ErrorEvent(data.chars().take(300).collect()));
        }
        return Ok(Parsed::Other);
    };
    if ev.event == "error" {
        return Err(RequestError::ErrorEvent(v.to_string()));
    }
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(RequestError::ErrorEvent(err.to_string()));
    }
    // Our `/generate` ends with `"done": true`, llama.cpp's native
    // `/completion` with `"stop": true`; OpenAI streams with `[DONE]`.
    let done = ["done", "stop"]
        .iter()
        .any(|k| v.get(*k).and_then(Value::as_bool).unwrap_or(false));
    // Our final `/generate` event repeats the whole text in `generated_text`
    // but carries `"text": ""`, so it is not a token event.
    let content = text_of(&v).unwrap_or_default().to_string();
    Ok(Parsed::Data {
        text: content.len(),
        content,
        usage: usage_of(&v),
        done,
        server_ttft_ms: server_ttft_of(&v),
    })
}

/// The server-side time to first token, from a final event's `timings`: ours
/// report `time_to_first_token_ms` (submission to first token); llama.cpp's
/// server reports `prompt_ms` (prompt processing, without its queue wait).
fn server_ttft_of(v: &Value) -> Option<f64> {
    let t = v.get("timings")?;
    t.get("time_to_first_token_ms")
        .or_else(|| t.get("prompt_ms"))
        .and_then(Value::as_f64)
}

/// The text delta of an event in any of the shapes we know: our `{"text"}`,
/// OpenAI completions `choices[0].text`, chat `choices[0].delta.content`,
/// llama.cpp's native `{"content"}`, or `{"token": {"text"}}`.
fn text_of(v: &Value) -> Option<&str> {
    if let Some(t) = v.get("text").and_then(Value::as_str) {
        return Some(t);
    }
    if let Some(c) = v.get("choices").and_then(|c| c.get(0)) {
        return c
            .get("text")
            .and_then(Value::as_str)
            .or_else(|| c.pointer("/delta/content").and_then(Value::as_str))
            .or_else(|| c.pointer("/message/content").and_then(Value::as_str));
    }
    v.get("content")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/token/text").and_then(Value::as_str))
}

fn usage_of(v: &Value) -> (Option<u64>, Option<u64>) {
    match v.get("usage").filter(|u| u.is_object()) {
        Some(u) => (
            u.get("completion_tokens").and_then(Value::as_u64),
            u.get("prompt_tokens").and_then(Value::as_u64),
        ),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"te").is_empty());
        let evs = p.push(b"xt\": \"a\"}\r\n\r\n: keep-alive\n\nevent: error\ndata: x\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].data, "{\"text\": \"a\"}");
        assert_eq!(evs[1].event, "error");
    }

    #[test]
    fn interpret_shapes() {
        let ev = |d: &str| SseEvent {
            event: String::new(),
            data: d.into(),
        };
        assert_eq!(interpret(&ev("[DONE]")), Ok(Parsed::Done));
        let chat_role = ev(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#);
        assert!(matches!(
            interpret(&chat_role),
            Ok(Parsed::Data { text: 0, .. })
        ));
        // Server-side first-token times: ours, then llama.cpp's `prompt_ms`.
        let ours = ev(
            r#"{"text":"","done":true,"timings":{"time_to_first_token_ms":12.5,"prompt_ms":9.0}}"#,
        );
        assert!(matches!(
            interpret(&ours),
            Ok(Parsed::Data { server_ttft_ms: Some(t), done: true, .. }) if t == 12.5
        ));
        let llama =
            ev(r#"{"choices":[{"text":""}],"timings":{"prompt_ms":4.25,"predicted_ms":80}}"#);
        assert!(matches!(
            interpret(&llama),
            Ok(Parsed::Data { server_ttft_ms: Some(t), .. }) if t == 4.25
        ));
        let usage = ev(r#"{"choices":[],"usage":{"completion_tokens":7,"prompt_tokens":3}}"#);
        assert!(matches!(
            interpret(&usage),
            Ok(Parsed::Data {
                text: 0,
                usage: (Some(7), Some(3)),
                ..
            })
        ));
        let done = ev(r#"{"text":"","done":true,"generated_text":"abc"}"#);
        assert!(matches!(
            interpret(&done),
            Ok(Parsed::Data {
                text: 0,
                done: true,
                ..
            })
        ));
        assert!(interpret(&ev(r#"{"error":{"message":"x"}}"#)).is_err());
    }
}
