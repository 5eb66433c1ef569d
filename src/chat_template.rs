//! Chat templates: a GGUF's `tokenizer.chat_template` (Jinja) rendered with
//! minijinja the way Hugging Face `transformers` renders it
//! (`apply_chat_template`): `trim_blocks` and `lstrip_blocks` on, loop
//! controls, Python string/dict methods (`.strip()`, `.startswith()`,
//! `.items()`, … via minijinja-contrib's pycompat), `raise_exception(msg)`,
//! `strftime_now(fmt)`, and a `tojson` that writes what Python's
//! `json.dumps(ensure_ascii=False)` writes.
//!
//! Built-in templates ([`BUILTIN_NAMES`]): `airavata`, the format of the
//! Airavata model card (the default for checkpoints without a template), and
//! `chatml`. The engine applies a model's template in
//! [`crate::engine::prompt`]. [`resolve`] turns a `--chat-template FILE|NAME` argument into
//! a template; [`ChatTemplate::end_of_turn`] says what ends an assistant turn.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Airavata's chat format (`src/engine/prompt.rs`, from the model card's
/// `create_prompt_with_chat_format`) as a Jinja template:
/// `<s><|system|>\n{system}\n<|user|>\n{user}\n<|assistant|>\n{answer}</s>\n…<|assistant|>\n`.
/// Earlier answers are trimmed; `developer` counts as `system`; tool turns
/// have no place in it and are refused.
pub const AIRAVATA_TEMPLATE: &str = "{{ bos_token }}\
{% for message in messages %}\
{% if message['role'] == 'system' or message['role'] == 'developer' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}\
{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}\
{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + (message['content'] | trim) + eos_token + '\\n' }}\
{% else %}{{ raise_exception('the airavata chat format has no ' + message['role'] + ' role') }}\
{% endif %}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

/// ChatML (`<|im_start|>{role}\n{content}<|im_end|>\n`), as used by Qwen and
/// SmolLM2 (without SmolLM2's default system prompt).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Names [`resolve`] accepts besides file paths, with their sources.
pub const BUILTINS: [(&str, &str); 2] =
    [("airavata", AIRAVATA_TEMPLATE), ("chatml", CHATML_TEMPLATE)];

/// The built-in names alone, for help text and errors.
pub const BUILTIN_NAMES: [&str; 2] = [BUILTINS[0].0, BUILTINS[1].0];

/// The template used for a checkpoint without `tokenizer.chat_template`.
pub const DEFAULT_BUILTIN: &str = "airavata";

/// Marks the detail of an error raised by the template's `raise_exception`.
const RAISED: &str = "\u{0}raise_exception\u{0}";

/// Everything that can go wrong with a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("chat template{} does not compile: {msg}", at_line(*.line))]
    Syntax { msg: String, line: Option<usize> },
    /// Rendering failed inside minijinja (undefined operation, bad types, …).
    #[error("chat template{} failed: {msg}", at_line(*.line))]
    Render { msg: String, line: Option<usize> },
    /// The template called `raise_exception(message)`.
    #[error("chat template{} raised an exception: {message}", at_line(*.line))]
    Raised {
        message: String,
        line: Option<usize>,
    },
    /// `--chat-template` named neither a built-in nor a readable file.
    #[error(
        "--chat-template {spec}: not a built-in template ({}) and not a readable file: {source}",
        BUILTIN_NAMES.join(", ")
    )]
    Resolve {
        spec: String,
        #[source]
        source: std::io::Error,
    },
    /// A message could not be turned into template input.
    #[error("chat message {index}: {msg}")]
    Message { index: usize, msg: String },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

impl TemplateError {
    fn from_minijinja(e: minijinja::Error, compiling: bool) -> Self {
        let line = e.line();
        if let Some(message) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
            return Self::Raised {
                message: message.to_string(),
                line,
            };
        }
        let msg = match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        };
        if compiling {
            Self::Syntax { msg, line }
        } else {
            Self::Render { msg, line }
        }
    }
}

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    System,
    /// OpenAI's newer name for `system` (passed to templates as is).
    Developer,
    User,
    Assistant,
    Tool,
}

impl MessageRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// One part of an array `content` (OpenAI's `{"type": "text", "text": …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A message's `content`: a string or an array of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text a string-expecting template sees: the string itself, or the
    /// text parts joined by `\n` (as llama.cpp's server does). Parts of other
    /// types are refused, since the text would silently lose them.
    pub fn flatten(&self) -> Result<String, String> {
        match self {
            Self::Text(t) => Ok(t.clone()),
            Self::Parts(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => texts.push(t.as_str()),
                        ("text", None) => return Err("a text part has no \"text\"".into()),
                        (other, _) => {
                            return Err(format!(
                                "content parts of type {other:?} are not supported"
                            ))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
        }
    }
}

/// The function a tool call invokes (OpenAI shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON-encoded arguments, as OpenAI sends them.
    pub arguments: String,
}

/// One tool call of an assistant turn (OpenAI shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// One turn of a conversation, as OpenAI's chat API carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: MessageRole,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A turn with plain text content.
    pub fn text(role: MessageRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(Content::Text(content.into())),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    /// The message as templates see it: `content` flattened to a string
    /// (`""` when absent), and each tool call's `arguments` decoded to an
    /// object when they are a JSON object (Hugging Face templates write
    /// `tool_call.arguments | tojson`), also reachable as
    /// `tool_call.name`/`tool_call.arguments` beside `tool_call.function`.
    fn to_template_value(&self, index: usize) -> Result<serde_json::Value, TemplateError> {
        use serde_json::{json, Map, Value};
        let content = match &self.content {
            Some(c) => c
                .flatten()
                .map_err(|msg| TemplateError::Message { index, msg })?,
            None => String::new(),
        };
        let mut m = Map::new();
        m.insert("role".into(), json!(self.role.as_str()));
        m.insert("content".into(), json!(content));
        if let Some(calls) = &self.tool_calls {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let args = match serde_json::from_str::<Value>(&c.function.arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => json!(c.function.arguments),
                    };
                    let mut call = Map::new();
                    if let Some(id) = &c.id {
                        call.insert("id".into(), json!(id));
                    }
                    call.insert("type".into(), json!(c.kind));
                    call.insert(
                        "function".into(),
                        json!({"name": c.function.name, "arguments": args}),
                    );
                    call.insert("name".into(), json!(c.function.name));
                    call.insert("arguments".into(), args);
                    Value::Object(call)
                })
                .collect();
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), json!(id));
        }
        if let Some(name) = &self.name {
            m.insert("name".into(), json!(name));
        }
        Ok(Value::Object(m))
    }
}

/// What a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    pub messages: &'a [Message],
    /// OpenAI `tools` (`[{"type": "function", "function": {...}}]`); templates
    /// see `tools` undefined when this is `None`.
    pub tools: Option<&'a [serde_json::Value]>,
    /// End with the opening of an assistant turn.
    pub add_generation_prompt: bool,
    /// Text of the model's BOS token (`<s>` for Llama-2).
    pub bos_token: &'a str,
    /// Text of the model's EOS token (`</s>` for Llama-2).
    pub eos_token: &'a str,
}

/// What ends an assistant turn in a template's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfTurn {
    /// Texts that end a turn: special-token texts (such as `<|im_end|>` or
    /// the EOS text) to be matched as tokens when the vocabulary has them as
    /// one token, else as stop strings.
    pub stops: Vec<String>,
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    builtin: Option<&'static str>,
}

impl ChatTemplate {
    /// Compiles Jinja `source`.
    pub fn new(source: impl Into<String>) -> Result<Self, TemplateError> {
        let source = source.into();
        let mut env = minijinja::Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| TemplateError::from_minijinja(e, true))?;
        Ok(Self {
            env,
            source,
            builtin: None,
        })
    }

    /// The built-in template `name` ([`BUILTIN_NAMES`]), if there is one.
    pub fn builtin(name: &str) -> Option<Self> {
        let (name, source) = BUILTINS.iter().find(|(n, _)| *n == name)?;
        let mut t = Self::new(*source).ok()?;
        t.builtin = Some(name);
        Some(t)
    }

    /// The template for a model: its own `tokenizer.chat_template`, else the
    /// built-in default ([`DEFAULT_BUILTIN`]).
    pub fn for_model(gguf_template: Option<&str>) -> Result<Self, TemplateError> {
        match gguf_template {
            Some(src) => Self::new(src),
            None => Ok(Self::default_builtin()),
        }
    }

    fn default_builtin() -> Self {
        // The built-ins are constants compiled by this module's tests.
        Self::builtin(DEFAULT_BUILTIN).expect("built-in templates compile")
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The built-in name, when this is a built-in.
    pub fn builtin_name(&self) -> Option<&'static str> {
        self.builtin
    }

    /// Renders a conversation to the prompt text.
    pub fn render(&self, input: &RenderInput<'_>) -> Result<String, TemplateError> {
        let messages = input
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| m.to_template_value(i))
            .collect::<Result<Vec<_>, _>>()?;
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::from_minijinja(e, true))?;
        let tools = input.tools.map(minijinja::Value::from_serialize);
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from_serialize(&messages),
            tools => tools,
            add_generation_prompt => input.add_generation_prompt,
            bos_token => input.bos_token,
            eos_token => input.eos_token,
        })
        .map_err(|e| TemplateError::from_minijinja(e, false))
    }

    /// What ends an assistant turn: found by rendering a probe conversation
    /// (a user turn and an answer) and taking what directly follows the
    /// answer up to the first whitespace — `<|im_end|>` for ChatML,
    /// `<|eot_id|>` for Llama 3, the EOS text for Airavata. The EOS text is
    /// always among the stops (a model may end with EOS in any format).
    pub fn end_of_turn(&self, bos_token: &str, eos_token: &str) -> EndOfTurn {
        const ANSWER: &str = "\u{E000}answer\u{E001}";
        let probe = [
            Message::text(MessageRole::User, "\u{E000}question\u{E001}"),
            Message::text(MessageRole::Assistant, ANSWER),
        ];
        let mut stops = Vec::new();
        let rendered = self.render(&RenderInput {
            messages: &probe,
            tools: None,
            add_generation_prompt: false,
            bos_token,
            eos_token,
        });
        if let Some(after) = rendered
            .ok()
            .as_deref()
            .and_then(|r| r.rfind(ANSWER).map(|p| r[p + ANSWER.len()..].to_string()))
        {
            let after = after.trim_start();
            let marker = if !eos_token.is_empty() && after.starts_with(eos_token) {
                eos_token
            } else {
                after.split(char::is_whitespace).next().unwrap_or("")
            };
            if !marker.is_empty() {
                stops.push(marker.to_string());
            }
        }
        if !eos_token.is_empty() && !stops.iter().any(|s| s == eos_token) {
            stops.push(eos_token.to_string());
        }
        EndOfTurn { stops }
    }
}

/// Resolves `--chat-template FILE|NAME`: a built-in name ([`BUILTIN_NAMES`])
/// or a file holding Jinja text.
pub fn resolve(spec: &str) -> Result<ChatTemplate, TemplateError> {
    if let Some(t) = ChatTemplate::builtin(spec) {
        return Ok(t);
    }
    let source =
        std::fs::read_to_string(Path::new(spec)).map_err(|source| TemplateError::Resolve {
            spec: spec.to_string(),
            source,
        })?;
    ChatTemplate::new(source)
}

fn raise_exception(msg: String) -> Result<minijinja::Value, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

fn strftime_now(fmt: String) -> Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(&fmt, secs)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))
}

/// Python's `time.strftime(fmt)` for a UTC time `secs` after the epoch, for
/// the directives chat templates use.
pub fn strftime(fmt: &str, secs: u64) -> Result<String, String> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs / 86_400;
    let tod = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let yday = days as i64 - days_from_civil(y, 1, 1) + 1;
    let wday = DAYS[(days % 7) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(dir) = chars.next() else {
            return Err("strftime_now: format ends with a lone %".into());
        };
        match dir {
            'Y' => out.push_str(&y.to_string()),
            'y' => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            'm' => out.push_str(&format!("{m:02}")),
            '-' if chars.clone().next() == Some('d') => {
                chars.next();
                out.push_str(&d.to_string());
            }
            'd' => out.push_str(&format!("{d:02}")),
            'e' => out.push_str(&format!("{d:>2}")),
            'j' => out.push_str(&format!("{yday:03}")),
            'B' => out.push_str(month),
            'b' | 'h' => out.push_str(&month[..3]),
            'A' => out.push_str(wday),
            'a' => out.push_str(&wday[..3]),
            'H' => out.push_str(&format!("{:02}", tod / 3600)),
            'I' => out.push_str(&format!("{:02}", (tod / 3600 + 11) % 12 + 1)),
            'p' => out.push_str(if tod < 43_200 { "AM" } else { "PM" }),
            'M' => out.push_str(&format!("{:02}", tod / 60 % 60)),
            'S' => out.push_str(&format!("{:02}", tod % 60)),
            'F' => out.push_str(&format!("{y}-{m:02}-{d:02}")),
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            '%' => out.push('%'),
            other => return Err(format!("strftime_now: unsupported directive %{other}")),
        }
    }
    Ok(out)
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent)`, keys in their given order — `", "` and `": "` between
/// items when `indent` is absent, newlines and `indent` spaces when given.
fn tojson(
    value: &minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Python's sort_keys/separators are accepted only at their defaults.
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    if sort_keys == Some(true) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "tojson: sort_keys=true is not supported",
        ));
    }
    let mut out = Vec::new();
    let ser_err = |e: serde_json::Error| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    };
    match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&pad),
            );
            value.serialize(&mut ser).map_err(ser_err)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PyCompact);
            value.serialize(&mut ser).map_err(ser_err)?;
        }
    }
    let text = String::from_utf8(out).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    Ok(minijinja::Value::from_safe_string(text))
}

/// serde_json formatter writing Python `json.dumps`' default separators.
struct PyCompact;

/// `, ` before every item but the first (Python's item separator).
fn separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        separator(w, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        separator(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &ChatTemplate, msgs: &[Message], gen: bool) -> Result<String, TemplateError> {
        t.render(&RenderInput {
            messages: msgs,
            tools: None,
            add_generation_prompt: gen,
            bos_token: "<s>",
            eos_token: "</s>",
        })
    }

    fn airavata() -> ChatTemplate {
        ChatTemplate::builtin("airavata").expect("built-in")
    }

    /// The model card's `create_prompt_with_chat_format` (Python), the
    /// oracle for the built-in `airavata` template.
    fn model_card_format(turns: &[(MessageRole, &str)]) -> String {
        let mut text = String::from("<s>");
        for (role, content) in turns {
            match role {
                MessageRole::System => text += &format!("<|system|>\n{content}\n"),
                MessageRole::User => text += &format!("<|user|>\n{content}\n"),
                MessageRole::Assistant => {
                    text += &format!("<|assistant|>\n{}</s>\n", content.trim())
                }
                other => panic!("no {other:?} turns in the model card's format"),
            }
        }
        text + "<|assistant|>\n"
    }

    fn messages(turns: &[(MessageRole, &str)]) -> Vec<Message> {
        turns.iter().map(|(r, c)| Message::text(*r, *c)).collect()
    }

    #[test]
    fn builtins_compile() {
        for name in BUILTIN_NAMES {
            let t = ChatTemplate::builtin(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(t.builtin_name(), Some(name));
        }
        assert!(ChatTemplate::builtin("llama3").is_none());
    }

    #[test]
    fn airavata_builtin_is_byte_identical_to_the_model_card() {
        use MessageRole::{Assistant as A, System as S, User as U};
        let conversations: Vec<Vec<(MessageRole, &str)>> = vec![
            vec![(U, "नमस्ते")],
            vec![(S, "Be brief."), (U, "Hi"), (A, " Hello! "), (U, "भारत?")],
            vec![
                (S, "आप एक सहायक हैं।"),
                (U, "भारत की राजधानी क्या है?"),
                (A, "\n नई दिल्ली।\n"),
                (U, "और महाराष्ट्र की?"),
                (A, "मुंबई"),
                (U, "धन्यवाद!  "),
            ],
            vec![(U, "two\nlines\n"), (A, "")],
            vec![(U, "{{ not jinja }} {% raw %} <|user|>")],
            vec![],
        ];
        let t = airavata();
        for turns in conversations {
            let want = model_card_format(&turns);
            assert_eq!(
                render(&t, &messages(&turns), true).expect("render"),
                want,
                "{turns:?}"
            );
        }
        // The model card's own examples.
        assert_eq!(
            render(&t, &messages(&[(U, "नमस्ते")]), true).expect("render"),
            "<s><|user|>\nनमस्ते\n<|assistant|>\n"
        );
        assert_eq!(
            render(
                &t,
                &messages(&[(S, "Be brief."), (U, "Hi"), (A, " Hello! "), (U, "भारत?")]),
                true
            )
            .expect("render"),
            "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>\n<|user|>\nभारत?\n<|assistant|>\n"
        );
    }

    #[test]
    fn airavata_refuses_tool_turns_by_name() {
        let msgs = [Message::text(MessageRole::Tool, "42")];
        let e = render(&airavata(), &msgs, true).expect_err("tool turn");
        match &e {
            TemplateError::Raised { message, .. } => {
                assert_eq!(message, "the airavata chat format has no tool role")
            }
            other => panic!("{other:?}"),
        }
        assert!(e
            .to_string()
            .contains("raised an exception: the airavata chat format has no tool role"));
    }

    #[test]
    fn chatml_renders_conversation() {
        let t = ChatTemplate::builtin("chatml").expect("chatml");
        let msgs = [
            Message::text(MessageRole::System, "Be brief."),
            Message::text(MessageRole::User, "नमस्ते"),
        ];
        assert_eq!(
            render(&t, &msgs, true).expect("render"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nनमस्ते<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render(&t, &msgs[1..], false).expect("render"),
            "<|im_start|>user\nनमस्ते<|im_end|>\n"
        );
    }

    #[test]
    fn raise_exception_names_message_and_line() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n{% if m.role == 'user' %}\n{{ raise_exception('Conversation roles must alternate user/assistant') }}\n{% endif %}\n{% endfor %}",
        )
        .expect("compiles");
        let e = render(&t, &[Message::text(MessageRole::User, "x")], true).expect_err("raises");
        assert_eq!(
            e.to_string(),
            "chat template (line 3) raised an exception: Conversation roles must alternate user/assistant"
        );
    }

    #[test]
    fn syntax_and_render_errors_name_the_problem() {
        let e = ChatTemplate::new("{% for m in messages %}{{ m.role }}").expect_err("unclosed");
        let s = e.to_string();
        assert!(
            s.starts_with("chat template (line 1) does not compile: syntax error"),
            "{s}"
        );
        assert!(s.contains("unexpected end of input"), "{s}");
        let t = ChatTemplate::new("{{ messages[0].content + 1 }}").expect("compiles");
        let e = render(&t, &[Message::text(MessageRole::User, "x")], true).expect_err("str + int");
        assert!(
            matches!(e, TemplateError::Render { line: Some(1), .. }),
            "{e:?}"
        );
    }

    #[test]
    fn content_parts_flatten_and_python_methods_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}[{{ m.content.strip() }}|{{ m.content.strip().startswith('नम') }}|{{ m.role.upper() }}]{% endfor %}",
        )
        .expect("compiles");
        let msgs: Vec<Message> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": [{"type": "text", "text": "  नमस्ते"}, {"type": "text", "text": "दुनिया  "}]},
            {"role": "developer", "content": "x"}
        ]))
        .expect("messages");
        assert_eq!(
            render(&t, &msgs, false).expect("render"),
            "[नमस्ते\nदुनिया|True|USER][x|False|DEVELOPER]"
        );
        let img: Vec<Message> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": [{"type": "image_url", "text": null}]}
        ]))
        .expect("messages");
        let e = render(&t, &img, false).expect_err("image part");
        assert_eq!(
            e.to_string(),
            "chat message 0: content parts of type \"image_url\" are not supported"
        );
    }

    #[test]
    fn tools_and_tool_calls_render() {
        // In the style of Qwen2.5's template (trim_blocks drops the newline
        // after `{% endfor %}`, as Jinja2 does for transformers).
        let t = ChatTemplate::new(concat!(
            "{% if tools %}<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>\n{% endif %}",
            "{% for message in messages %}",
            "{% if message.tool_calls %}{% for call in message.tool_calls %}<call>{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}</call>{% endfor %}\n",
            "{% elif message.role == 'tool' %}<response id={{ message.tool_call_id }}>{{ message.content }}</response>\n",
            "{% else %}{{ message.role }}: {{ message.content }}\n",
            "{% endif %}{% endfor %}",
        ))
        .expect("compiles");
        let tools = [serde_json::json!({
            "function": {"name": "मौसम", "parameters": {"type": "object"}},
            "type": "function"
        })];
        let msgs: Vec<Message> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": "दिल्ली?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "मौसम", "arguments": "{\"city\": \"दिल्ली\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "35°C"}
        ]))
        .expect("messages");
        let out = t
            .render(&RenderInput {
                messages: &msgs,
                tools: Some(&tools),
                add_generation_prompt: false,
                bos_token: "",
                eos_token: "",
            })
            .expect("render");
        assert_eq!(
            out,
            concat!(
                "<tools>{\"function\": {\"name\": \"मौसम\", \"parameters\": {\"type\": \"object\"}}, \"type\": \"function\"}</tools>\n",
                "user: दिल्ली?\n",
                "<call>{\"name\": \"मौसम\", \"arguments\": {\"city\": \"दिल्ली\"}}</call>",
                "<response id=c1>35°C</response>\n",
            )
        );
        // No tools: `tools` is undefined, the block is skipped.
        let out = t
            .render(&RenderInput {
                messages: &msgs[..1],
                tools: None,
                add_generation_prompt: false,
                bos_token: "",
                eos_token: "",
            })
            .expect("render");
        assert_eq!(out, "user: दिल्ली?\n");
    }

    #[test]
    fn end_of_turn_of_builtins() {
        assert_eq!(
            airavata().end_of_turn("<s>", "</s>").stops,
            vec!["</s>".to_string()]
        );
        let chatml = ChatTemplate::builtin("chatml").expect("chatml");
        assert_eq!(
            chatml.end_of_turn("<|im_start|>", "<|im_end|>").stops,
            vec!["<|im_end|>".to_string()]
        );
        assert_eq!(
            chatml.end_of_turn("<s>", "</s>").stops,
            vec!["<|im_end|>".to_string(), "</s>".to_string()]
        );
        let llama3 = ChatTemplate::new(
            "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endfor %}",
        )
        .expect("compiles");
        assert_eq!(
            llama3
                .end_of_turn("<|begin_of_text|>", "<|end_of_text|>")
                .stops,
            vec!["<|eot_id|>".to_string(), "<|end_of_text|>".to_string()]
        );
        // A template that refuses the probe still stops at EOS.
        let strict = ChatTemplate::new("{{ raise_exception('no') }}").expect("compiles");
        assert_eq!(
            strict.end_of_turn("<s>", "</s>").stops,
            vec!["</s>".to_string()]
        );
    }

    #[test]
    fn resolve_names_files_and_errors() {
        assert_eq!(resolve("chatml").expect("chatml").source(), CHATML_TEMPLATE);
        assert_eq!(
            resolve("airavata").expect("airavata").source(),
            AIRAVATA_TEMPLATE
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.jinja");
        std::fs::write(&p, "{{ messages[0].content }}!").expect("write");
        let t = resolve(p.to_str().expect("utf-8 path")).expect("file");
        assert_eq!(
            render(&t, &[Message::text(MessageRole::User, "हाँ")], true).expect("render"),
            "हाँ!"
        );
        let missing = dir.path().join("nope.jinja");
        let e = resolve(missing.to_str().expect("utf-8 path")).expect_err("missing");
        let s = e.to_string();
        assert!(
            s.starts_with(&format!(
                "--chat-template {}: not a built-in template (airavata, chatml) and not a readable file:",
                missing.display()
            )),
            "{s}"
        );
        std::fs::write(&p, "{% if %}").expect("write");
        let e = resolve(p.to_str().expect("utf-8 path")).expect_err("bad jinja");
        assert!(matches!(e, TemplateError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn for_model_defaults_to_airavata() {
        let t = ChatTemplate::for_model(None).expect("default");
        assert_eq!(t.builtin_name(), Some("airavata"));
        let t = ChatTemplate::for_model(Some(CHATML_TEMPLATE)).expect("gguf");
        assert_eq!(t.builtin_name(), None);
        assert_eq!(t.source(), CHATML_TEMPLATE);
    }

    #[test]
    fn strftime_matches_python() {
        // 2024-02-29 13:05:09 UTC (a Thursday), python: time.strftime(fmt, time.gmtime(1709211909))
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t).expect("fmt"), "29 Feb 2024");
        assert_eq!(
            strftime("%A, %B %-d, %y %H:%M:%S %I%p %j %%", t).expect("fmt"),
            "Thursday, February 29, 24 13:05:09 01PM 060 %"
        );
        assert_eq!(strftime("%F", 0).expect("fmt"), "1970-01-01");
        assert!(strftime("%Q", t).is_err());
        let tmpl = ChatTemplate::new("{{ strftime_now('%Y') | length }}").expect("compiles");
        assert_eq!(render(&tmpl, &[], false).expect("render"), "4");
    }

    #[test]
    fn loop_controls_and_namespace() {
        let t = ChatTemplate::new(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'assistant' %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
        )
        .expect("compiles");
        let msgs = [
            Message::text(MessageRole::System, "s"),
            Message::text(MessageRole::User, "u"),
            Message::text(MessageRole::Assistant, "a"),
            Message::text(MessageRole::User, "u"),
        ];
        assert_eq!(render(&t, &msgs, false).expect("render"), "2");
    }
}
