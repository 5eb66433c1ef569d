//! One JSON error envelope for every failure:
//! `{"error": {"message", "type", "code", "param"}}` (OpenAI's shape).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::EngineError;

use super::validate::{RequestError, ValidationError};

/// An HTTP error with its envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable explanation.
    pub message: String,
    /// Broad class (`invalid_request_error`, `authentication_error`, ...).
    pub kind: &'static str,
    /// Machine-readable code.
    pub code: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    param: Option<&'a str>,
}

impl ApiError {
    /// A new error.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
            retry_after: None,
        }
    }

    /// Names the field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 422: a field has an unusable value.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            "invalid_value",
            message,
        )
        .with_param(param)
    }

    /// 500 `internal_error` (details go to the log, not the caller).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "internal server error",
        )
    }

    /// 404.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "not_found",
            format!("no route for {path}"),
        )
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed for this route",
        )
    }

    /// The envelope as JSON (also used inside event streams).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                code: self.code,
                param: self.param.as_deref(),
            },
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

/// The one map from engine failures to statuses.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            EngineError::NotReady => {
                let mut err = Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable_error",
                    "model_loading",
                    msg,
                );
                err.retry_after = Some(5);
                err
            }
            EngineError::ShuttingDown => Self::new(
                S::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "shutting_down",
                msg,
            ),
            EngineError::Stopped | EngineError::Backend(_) | EngineError::Load(_) => Self::new(
                S::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "engine_unavailable",
                msg,
            ),
            EngineError::QueueFull { .. } => {
                let mut err =
                    Self::new(S::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full", msg);
                err.retry_after = Some(1);
                err
            }
            EngineError::InvalidRequest { param, message } => Self::invalid_field(&param, message),
            // The conversation does not fit the model's template (e.g. its
            // raise_exception): the caller's messages, named by the template.
            EngineError::Template(_) => Self::new(
                S::BAD_REQUEST,
                "invalid_request_error",
                "chat_template_error",
                msg,
            )
            .with_param("messages"),
            EngineError::Timeout(_) => {
                Self::new(S::GATEWAY_TIMEOUT, "timeout_error", "request_timeout", msg)
            }
            EngineError::Decode(_) => Self::new(
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                "decode_failed",
                msg,
            ),
            EngineError::Sampling(_) => Self::new(
                S::INTERNAL_SERVER_ERROR,
                "server_error",
                "sampling_failed",
                msg,
            ),
        }
    }
}

/// The one map from validation failures to statuses: 400
/// `context_length_exceeded` when the prompt and budget do not fit a slot,
/// 400 `unsupported_schema` / `invalid_schema` / `invalid_grammar` for a
/// structured-output constraint that cannot be enforced, 400 `invalid_tools`
/// for `tools`/`tool_choice` that cannot be served, 400
/// `invalid_token_id` for a prompt token outside the vocabulary, 400
/// `unsupported_stream` for a stream of several choices, else 422
/// `invalid_value`; all name the caller's field.
impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let field = e.field().to_string();
        match e {
            ValidationError::ContextExceeded { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                e.to_string(),
            )
            .with_param(field),
            ValidationError::Schema { ref issue, .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                if issue.unsupported {
                    "unsupported_schema"
                } else {
                    "invalid_schema"
                },
                e.to_string(),
            )
            .with_param(field),
            ValidationError::InvalidGrammar { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_grammar",
                e.to_string(),
            )
            .with_param(field),
            ValidationError::InvalidTools { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_tools",
                e.to_string(),
            )
            .with_param(field),
            ValidationError::TokenOutOfVocab { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_token_id",
                e.to_string(),
            )
            .with_param(field),
            ValidationError::StreamChoices { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_stream",
                e.to_string(),
            )
            .with_param(field),
            ValidationError::Unsupported { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_field",
                e.to_string(),
            )
            .with_param(field),
            _ => Self::invalid_field(&field, e.to_string()),
        }
    }
}

/// A request that was not run: the caller's field, or the engine.
impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(e) => e.into(),
            RequestError::Engine(e) => e.into(),
            RequestError::Task(why) => {
                tracing::error!(error = %why, "tokenizer task failed");
                Self::internal()
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.to_json())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON body extractor whose every rejection is an [`ApiError`]:
/// 415 for a wrong content type, 413 for an oversized body, 400 for malformed
/// JSON, 422 (naming the field) for well-formed JSON of the wrong shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "payload_too_large",
                    "the request body is larger than the server's limit (--max-body-bytes)",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "unreadable_body",
                    format!("could not read the request body: {}", rej.body_text()),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_json(ct: Option<&HeaderValue>) -> bool {
    let Some(ct) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parses JSON, classifying failures as 400 (syntax) or 422 (shape, with the field).
///
/// Bodies flatten shared fields (`#[serde(flatten)]`), which hides the path of
/// a wrong-typed field from serde; such an error is traced back to the
/// top-level key whose removal changes it, so `param` still names the
/// caller's field (`max_tokens`, not `.`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| classify(&e, "."))?;
    serde_path_to_error::deserialize::<_, T>(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let path = if path == "." && !inner.to_string().starts_with("missing field `") {
            culprit::<T>(&value, &inner.to_string()).unwrap_or(path)
        } else {
            path
        };
        classify(&inner, &path)
    })
}

/// The top-level key of `value` that causes the error `msg`: the first whose
/// removal removes the error or changes it into another one than that key
/// missing (removing a valid required key only makes that key missing).
fn culprit<T: DeserializeOwned>(value: &serde_json::Value, msg: &str) -> Option<String> {
    let obj = value.as_object()?;
    obj.keys()
        .find(|key| {
            let rest: serde_json::Map<String, serde_json::Value> = obj
                .iter()
                .filter(|(k, _)| k != key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match serde_json::from_value::<T>(serde_json::Value::Object(rest)) {
                Ok(_) => true,
                Err(e) => {
                    let m = e.to_string();
                    m != msg && m != format!("missing field `{key}`")
                }
            }
        })
        .cloned()
}

fn classify(e: &serde_json::Error, path: &str) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data if e.to_string().starts_with("unknown field `") => {
            let msg = e.to_string();
            let field = msg
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .unwrap_or_default()
                .to_string();
            ApiError::from(ValidationError::Unsupported { field })
        }
        Category::Data => {
            let msg = e.to_string();
            // Missing fields are reported at the parent path.
            let field = msg
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(|f| {
                    if path == "." {
                        f.to_string()
                    } else {
                        format!("{path}.{f}")
                    }
                })
                .unwrap_or_else(|| path.to_string());
            let message = strip_position(&msg);
            ApiError::invalid_field(&field, format!("field `{field}`: {message}"))
        }
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            format!("malformed JSON: {e}"),
        ),
    }
}

fn strip_position(msg: &str) -> &str {
    match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        prompt: String,
        max_new_tokens: Option<u32>,
    }

    #[test]
    fn classifies_json_errors() {
        let e = parse_json::<T>(b"{\"prompt\": ").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        let e = parse_json::<T>(b"{\"max_new_tokens\": 5}").unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (422, Some("prompt"))
        );
        let e = parse_json::<T>(b"{\"prompt\": \"x\", \"max_new_tokens\": -1}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_new_tokens"));
        let e = parse_json::<T>(b"{\"prompt\": \"x\"} x").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        prompt: String,
        #[serde(flatten)]
        inner: Inner,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        max_tokens: Option<u32>,
        temperature: Option<f32>,
    }

    #[test]
    fn flattened_fields_are_named_in_type_errors() {
        let e = parse_json::<Outer>(br#"{"prompt": "x", "temperature": 1, "max_tokens": -1}"#)
            .unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.param.as_deref()),
            (422, Some("max_tokens"))
        );
        assert!(
            e.message.starts_with("field `max_tokens`: invalid value"),
            "{}",
            e.message
        );
        let e = parse_json::<Outer>(br#"{"temperature": "hot", "prompt": "x"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        // A wrong type in a field of the outer struct, before a flattened one.
        let e = parse_json::<Outer>(br#"{"prompt": 5, "max_tokens": 3}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = parse_json::<Outer>(br#"{"max_tokens": 3}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        assert!(parse_json::<Outer>(br#"{"prompt": "x", "max_tokens": 3}"#).is_ok());
    }

    #[test]
    fn content_types() {
        assert!(is_json(Some(&HeaderValue::from_static(
            "application/json; charset=utf-8"
        ))));
        assert!(is_json(Some(&HeaderValue::from_static(
            "application/vnd.api+json"
        ))));
        assert!(!is_json(Some(&HeaderValue::from_static("text/plain"))));
        assert!(!is_json(None));
    }
}
