//! OpenAI tool calls on `/v1/chat/completions`: the `tools` a request
//! declares, what `tool_choice` allows, the grammar a call is generated
//! under, and reading the generated call back.
//!
//! A call is generated as one JSON object `{"name": …, "arguments": {…}}`
//! under a grammar built from the functions' parameter schemas (llama.cpp's
//! JSON-schema converter): `required` and a named function always call;
//! `auto` lets the model answer in text instead (an answer that starts with
//! `{` must then be a valid call); `none` never calls. The functions are also
//! handed to the chat template (its `tools` variable).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::structured::{self, Constraint};
use super::validate::ValidationError;

/// The `tools` field.
pub const TOOLS: &str = "tools";
/// The `tool_choice` field.
pub const TOOL_CHOICE: &str = "tool_choice";

/// One entry of `tools`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Only `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// A function the model may call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    /// Its name.
    pub name: String,
    /// What it does (for the template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of its arguments (absent: any object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Accepted: the arguments are always generated under the schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"` or
/// `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// One named function.
    Named(NamedChoice),
}

/// `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedChoice {
    /// Only `"function"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function to call.
    pub function: NamedFunction,
}

/// The name of the function to call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    /// Its name.
    pub name: String,
}

/// What a request with tools runs: the functions for the template, the
/// grammar of its answer (none for `tool_choice: none`), and whether the
/// answer is read back as a call.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    /// The `tools` entries as the template's `tools` variable.
    pub for_template: Vec<Value>,
    /// The grammar a call is generated under (`None`: free text, no call).
    pub gbnf: Option<String>,
}

impl ToolPlan {
    /// Whether the answer may be a call (and is read back as one).
    pub fn may_call(&self) -> bool {
        self.gbnf.is_some()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ValidationError {
    ValidationError::InvalidTools {
        field,
        reason: reason.into(),
    }
}

/// Checks `tools` and `tool_choice` and builds the plan (`None` without
/// tools).
pub fn plan(
    tools: Option<Vec<Tool>>,
    choice: Option<ToolChoice>,
) -> Result<Option<ToolPlan>, ValidationError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        return match choice {
            Some(ToolChoice::Mode(m)) if m == "none" || m == "auto" => Ok(None),
            Some(_) => Err(invalid(TOOL_CHOICE, "there are no `tools` to choose from")),
            None => Ok(None),
        };
    };
    for t in &tools {
        if t.kind != "function" {
            return Err(invalid(
                TOOLS,
                format!(
                    "tool type {:?} is not supported (only \"function\")",
                    t.kind
                ),
            ));
        }
        if t.function.name.is_empty() {
            return Err(invalid(TOOLS, "a function has an empty name"));
        }
    }
    let for_template = tools
        .iter()
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .collect();
    let (callable, free_text): (Vec<&Tool>, bool) = match choice {
        None => (tools.iter().collect(), true),
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "auto" => (tools.iter().collect(), true),
            "required" => (tools.iter().collect(), false),
            "none" => {
                return Ok(Some(ToolPlan {
                    for_template,
                    gbnf: None,
                }))
            }
            other => {
                return Err(invalid(
                    TOOL_CHOICE,
                    format!("{other:?} is not one of \"none\", \"auto\", \"required\""),
                ))
            }
        },
        Some(ToolChoice::Named(n)) => {
            let Some(t) = tools.iter().find(|t| t.function.name == n.function.name) else {
                return Err(invalid(
                    TOOL_CHOICE,
                    format!("no tool is named {:?}", n.function.name),
                ));
            };
            (vec![t], false)
        }
    };
    let schema = call_schema(&callable);
    structured::check_schema(&schema).map_err(|issue| invalid(TOOLS, issue.to_string()))?;
    let call = Constraint::JsonSchema(schema)
        .to_gbnf()
        .map_err(|e| invalid(TOOLS, e))?;
    let gbnf = if free_text { or_free_text(&call) } else { call };
    Ok(Some(ToolPlan {
        for_template,
        gbnf: Some(gbnf),
    }))
}

/// The JSON schema of one call to any of `tools`.
fn call_schema(tools: &[&Tool]) -> Value {
    let alternatives: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "arguments": t.function.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    match alternatives.as_slice() {
        [one] => one.clone(),
        _ => json!({ "anyOf": alternatives }),
    }
}

/// A grammar whose answer is either a call (the `call` grammar) or text that
/// does not start with `{` (or nothing).
fn or_free_text(call: &str) -> String {
    let renamed: String = call
        .lines()
        .map(|l| match l.strip_prefix("root ::=") {
            Some(rest) => format!("tool-call ::={rest}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!("root ::= tool-call | free-text\nfree-text ::= ([^{{] [^\\x00]*)?\n{renamed}\n")
}

/// One generated call, as the response reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The function's name.
    pub name: String,
    /// Its arguments as JSON text (OpenAI's `arguments` string).
    pub arguments: String,
}

/// The call in a generated answer, when it is one (`{"name", "arguments"}`
/// with a name from `tools`).
pub fn read_call(text: &str, plan: &ToolPlan) -> Option<Call> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    let known = plan
        .for_template
        .iter()
        .any(|t| t["function"]["name"].as_str() == Some(name));
    let arguments = v.get("arguments")?;
    (known && arguments.is_object()).then(|| Call {
        name: name.to_string(),
        arguments: arguments.to_string(),
    })
}

/// `message.tool_calls` / `delta.tool_calls` for a call (the delta form also
/// carries `index`).
pub fn tool_calls_json(call: &Call, id: &str, delta: bool) -> Value {
    let mut c = json!({
        "id": id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    });
    if delta {
        c["index"] = json!(0);
    }
    json!([c])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        serde_json::from_value(json!({
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "unit": {"enum": ["celsius", "fahrenheit"]}
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": false
                }
            }
        }))
        .expect("tool")
    }

    #[test]
    fn choices_and_their_errors() {
        assert!(plan(None, None).expect("no tools").is_none());
        let none = plan(Some(vec![weather()]), Some(ToolChoice::Mode("none".into())))
            .expect("none")
            .expect("plan");
        assert!(!none.may_call());
        assert_eq!(none.for_template[0]["function"]["name"], "get_weather");
        let required = plan(
            Some(vec![weather()]),
            Some(ToolChoice::Mode("required".into())),
        )
        .expect("required")
        .expect("plan");
        let g = required.gbnf.as_deref().expect("grammar");
        assert!(g.contains("get_weather") && g.contains("celsius"), "{g}");
        assert!(!g.contains("free-text"), "{g}");
        let auto = plan(Some(vec![weather()]), None)
            .expect("auto")
            .expect("plan");
        let g = auto.gbnf.as_deref().expect("grammar");
        assert!(g.starts_with("root ::= tool-call | free-text"), "{g}");
        assert_eq!(g.matches("root ::=").count(), 1, "{g}");
        let e = plan(
            Some(vec![weather()]),
            Some(ToolChoice::Named(NamedChoice {
                kind: "function".into(),
                function: NamedFunction {
                    name: "get_time".into(),
                },
            })),
        )
        .expect_err("unknown name");
        assert_eq!(e.field(), TOOL_CHOICE);
        assert!(
            e.to_string().contains("no tool is named \"get_time\""),
            "{e}"
        );
        let e = plan(None, Some(ToolChoice::Mode("required".into()))).expect_err("no tools");
        assert_eq!(e.field(), TOOL_CHOICE);
        assert!(
            matches!(e, ValidationError::InvalidTools { .. }),
            "tool mistakes are not grammar errors: {e:?}"
        );
    }

    #[test]
    fn calls_are_read_back_only_for_known_functions() {
        let p = plan(Some(vec![weather()]), None)
            .expect("auto")
            .expect("plan");
        let call = read_call(
            r#" {"name": "get_weather", "arguments": {"city": "पुणे", "unit": "celsius"}} "#,
            &p,
        )
        .expect("a call");
        assert_eq!(call.name, "get_weather");
        let args: Value = serde_json::from_str(&call.arguments).expect("JSON arguments");
        assert_eq!(args, json!({"city": "पुणे", "unit": "celsius"}));
        assert!(read_call(r#"{"name": "other", "arguments": {}}"#, &p).is_none());
        assert!(read_call("It is sunny in Pune.", &p).is_none());
        let tc = tool_calls_json(&call, "call_1", true);
        assert_eq!(tc[0]["index"], 0);
        assert_eq!(tc[0]["function"]["name"], "get_weather");
    }
}
