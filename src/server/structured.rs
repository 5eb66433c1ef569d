//! Structured output for the validation stage: `response_format`
//! (`json_object`, `json_schema`) and a raw GBNF `grammar` become the one
//! grammar string the engine runs ([`crate::engine::SamplingParams::grammar`]).
//!
//! JSON schemas are converted by llama.cpp's own converter
//! (`llama_cpp_2::json_schema_to_grammar`). That converter quietly drops what
//! it cannot express (unknown keywords, `format`s other than date/time/uuid,
//! regex features it lacks, bounds on non-integers): such a schema would be
//! "enforced" without its constraint. So every schema is first walked here
//! against the list of keywords the converter really enforces, and anything
//! else is refused, naming the keyword and where it is.

use serde::Deserialize;
use serde_json::Value;

/// Longest accepted `grammar`, in bytes.
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;
/// Largest `minLength`/`maxLength`/`minItems`/`maxItems` and `{n,m}` bound
/// (each unit becomes grammar rules).
pub const MAX_SCHEMA_COUNT: u64 = 1024;
/// Deepest schema nesting walked.
const MAX_DEPTH: usize = 64;

/// A JSON object, nothing else around it. Strings may hold any escaped or
/// printable character; numbers have at most 16 integer digits; at most one
/// space between tokens, so the model cannot stall on whitespace. After the
/// closing brace the grammar is complete and only end of generation remains.
pub const JSON_OBJECT_GBNF: &str = r#"root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( member ( "," ws member )* )? "}"
member ::= string ws ":" ws value ws
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1F\x7F] | "\\" escape )* "\""
escape ::= ["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [+-]? [0-9]{1,3} )?
ws ::= " "?
"#;

/// OpenAI's `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Plain text (no constraint).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    /// The schema's name (required by OpenAI; not used).
    pub name: String,
    /// Not used.
    #[serde(default)]
    pub description: Option<String>,
    /// The schema; absent = any JSON object.
    #[serde(default)]
    pub schema: Option<Value>,
    /// Accepted for compatibility: the schema is always enforced strictly.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// What constrains a request's output, after the checks that need no model.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object.
    JsonObject,
    /// JSON valid under this schema (only supported keywords).
    JsonSchema(Value),
    /// The caller's own GBNF.
    Grammar(String),
}

/// The field a constraint came from.
pub const RESPONSE_FORMAT: &str = "response_format";
/// The raw-grammar field.
pub const GRAMMAR: &str = "grammar";

impl Constraint {
    /// The caller's field it came from.
    pub fn field(&self) -> &'static str {
        match self {
            Constraint::JsonObject | Constraint::JsonSchema(_) => RESPONSE_FORMAT,
            Constraint::Grammar(_) => GRAMMAR,
        }
    }

    /// The GBNF text the engine runs (the schema conversion is llama.cpp's).
    pub fn to_gbnf(&self) -> Result<String, String> {
        match self {
            Constraint::JsonObject => Ok(JSON_OBJECT_GBNF.to_string()),
            Constraint::Grammar(g) => Ok(g.clone()),
            Constraint::JsonSchema(schema) => {
                llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
                    format!("llama.cpp's JSON-schema converter could not convert it ({e})")
                })
            }
        }
    }
}

/// Why a schema cannot be enforced: `keyword` at JSON pointer `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaIssue {
    /// The keyword (or value) at fault.
    pub keyword: String,
    /// JSON pointer to the schema holding it (`#` = the root).
    pub at: String,
    /// What is wrong.
    pub why: String,
    /// Whether the schema is valid JSON Schema that we cannot enforce
    /// (`true`) or is not a valid schema at all (`false`).
    pub unsupported: bool,
}

impl std::fmt::Display for SchemaIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` at {}: {}", self.keyword, self.at, self.why)
    }
}

/// Keywords that only annotate and constrain nothing.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords the converter enforces.
const ENFORCED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "minLength",
    "maxLength",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "$ref",
    "$defs",
    "definitions",
];

const TYPES: &[&str] = &[
    "null", "boolean", "number", "integer", "string", "array", "object",
];

/// `format`s the converter turns into grammar (others it silently ignores).
const FORMATS: &[&str] = &[
    "date",
    "time",
    "date-time",
    "uuid",
    "uuid1",
    "uuid2",
    "uuid3",
    "uuid4",
    "uuid5",
];

/// Checks that llama.cpp's converter enforces every keyword of `schema`.
pub fn check_schema(schema: &Value) -> Result<(), SchemaIssue> {
    Walker { root: schema }.node(schema, "#", 0)
}

struct Walker<'a> {
    root: &'a Value,
}

fn issue(keyword: &str, at: &str, why: impl Into<String>, unsupported: bool) -> SchemaIssue {
    SchemaIssue {
        keyword: keyword.to_string(),
        at: at.to_string(),
        why: why.into(),
        unsupported,
    }
}

fn unsupported(keyword: &str, at: &str, why: impl Into<String>) -> SchemaIssue {
    issue(keyword, at, why, true)
}

fn invalid(keyword: &str, at: &str, why: impl Into<String>) -> SchemaIssue {
    issue(keyword, at, why, false)
}

impl Walker<'_> {
    fn node(&self, v: &Value, at: &str, depth: usize) -> Result<(), SchemaIssue> {
        if depth > MAX_DEPTH {
            return Err(unsupported(
                "nesting",
                at,
                format!("schemas nested deeper than {MAX_DEPTH} levels are not supported"),
            ));
        }
        let obj = match v {
            Value::Object(o) => o,
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => {
                return Err(unsupported(
                    "false",
                    at,
                    "the schema `false` (nothing valid) is not supported",
                ))
            }
            _ => return Err(invalid("schema", at, "a schema must be an object")),
        };
        for key in obj.keys() {
            if !ANNOTATIONS.contains(&key.as_str()) && !ENFORCED.contains(&key.as_str()) {
                let hint = match key.as_str() {
                    "oneOf" => " (use `anyOf`)",
                    _ => "",
                };
                return Err(unsupported(
                    key,
                    at,
                    format!(
                        "this keyword is not supported: llama.cpp's grammar converter cannot enforce it{hint}"
                    ),
                ));
            }
        }
        let structural = |except: &str| {
            obj.keys().find(|k| {
                k.as_str() != except
                    && !ANNOTATIONS.contains(&k.as_str())
                    && !matches!(k.as_str(), "$defs" | "definitions")
            })
        };
        for defs in ["$defs", "definitions"] {
            if let Some(d) = obj.get(defs) {
                let d = d
                    .as_object()
                    .ok_or_else(|| invalid(defs, at, "must be an object of schemas"))?;
                for (name, s) in d {
                    self.node(s, &format!("{at}/{defs}/{name}"), depth + 1)?;
                }
            }
        }
        if let Some(r) = obj.get("$ref") {
            if let Some(other) = structural("$ref") {
                return Err(unsupported(
                    other,
                    at,
                    "keywords beside `$ref` are not supported (the reference alone is used)",
                ));
            }
            return self.reference(r, at);
        }
        if let Some(alts) = obj.get("anyOf") {
            if let Some(other) = structural("anyOf") {
                return Err(unsupported(
                    other,
                    at,
                    "keywords beside `anyOf` are not supported (move them into each alternative)",
                ));
            }
            let alts = alts
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| invalid("anyOf", at, "must be a non-empty array of schemas"))?;
            for (i, s) in alts.iter().enumerate() {
                self.node(s, &format!("{at}/anyOf/{i}"), depth + 1)?;
            }
            return Ok(());
        }
        let types = self.types(obj.get("type"), at)?;
        if let Some(values) = obj.get("enum") {
            if values.as_array().is_none_or(|a| a.is_empty()) {
                return Err(invalid("enum", at, "must be a non-empty array"));
            }
        }
        self.object(obj, at, depth)?;
        self.array(obj, at, depth)?;
        self.string(obj, at)?;
        for bound in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
            let Some(b) = obj.get(bound) else { continue };
            if !b.is_number() {
                return Err(invalid(bound, at, "must be a number"));
            }
            let integer_only =
                !types.is_empty() && types.contains(&"integer") && !types.contains(&"number");
            if !integer_only {
                return Err(unsupported(
                    bound,
                    at,
                    "numeric bounds are enforced only with `\"type\": \"integer\"`",
                ));
            }
        }
        Ok(())
    }

    fn types(&self, t: Option<&Value>, at: &str) -> Result<Vec<&'static str>, SchemaIssue> {
        let names: Vec<&Value> = match t {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
            Some(v @ Value::String(_)) => vec![v],
            Some(_) => {
                return Err(invalid(
                    "type",
                    at,
                    "must be a type name or a non-empty array of them",
                ))
            }
        };
        names
            .into_iter()
            .map(|n| {
                n.as_str()
                    .and_then(|s| TYPES.iter().copied().find(|t| *t == s))
                    .ok_or_else(|| invalid("type", at, format!("unknown type {n}")))
            })
            .collect()
    }

    fn reference(&self, r: &Value, at: &str) -> Result<(), SchemaIssue> {
        let r = r
            .as_str()
            .ok_or_else(|| invalid("$ref", at, "must be a string"))?;
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(unsupported(
                "$ref",
                at,
                format!("`{r}`: only references into the same document (`#/...`) are supported, not remote ones"),
            ));
        };
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(unsupported(
                "$ref",
                at,
                format!("`{r}`: only JSON-pointer references (`#/...`) are supported"),
            ));
        }
        if pointer.is_empty() {
            return Err(unsupported(
                "$ref",
                at,
                "`#` (a reference to the whole schema) is not supported",
            ));
        }
        match self.root.pointer(pointer) {
            Some(_) => Ok(()),
            None => Err(invalid(
                "$ref",
                at,
                format!("`{r}` does not name a part of the schema"),
            )),
        }
    }

    fn object(
        &self,
        obj: &serde_json::Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<(), SchemaIssue> {
        let props = match obj.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(invalid("properties", at, "must be an object of schemas")),
        };
        if let Some(p) = props {
            for (name, s) in p {
                self.node(s, &format!("{at}/properties/{name}"), depth + 1)?;
            }
        }
        if let Some(req) = obj.get("required") {
            let req = req
                .as_array()
                .ok_or_else(|| invalid("required", at, "must be an array of property names"))?;
            for name in req {
                let name = name
                    .as_str()
                    .ok_or_else(|| invalid("required", at, "must hold property names"))?;
                if !props.is_some_and(|p| p.contains_key(name)) {
                    return Err(unsupported(
                        "required",
                        at,
                        format!("`{name}` is required but not described in `properties`"),
                    ));
                }
            }
        }
        match obj.get("additionalProperties") {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(s @ Value::Object(_)) => {
                self.node(s, &format!("{at}/additionalProperties"), depth + 1)
            }
            Some(_) => Err(invalid(
                "additionalProperties",
                at,
                "must be a boolean or a schema",
            )),
        }
    }

    fn array(
        &self,
        obj: &serde_json::Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<(), SchemaIssue> {
        if obj.contains_key("items") && obj.contains_key("prefixItems") {
            return Err(unsupported(
                "prefixItems",
                at,
                "`prefixItems` together with `items` is not supported",
            ));
        }
        for key in ["items", "prefixItems"] {
            match obj.get(key) {
                None => {}
                Some(Value::Array(list)) => {
                    for (i, s) in list.iter().enumerate() {
                        self.node(s, &format!("{at}/{key}/{i}"), depth + 1)?;
                    }
                    if obj.contains_key("minItems") || obj.contains_key("maxItems") {
                        return Err(unsupported(
                            "minItems",
                            at,
                            "item counts on a tuple (`prefixItems`) are not supported",
                        ));
                    }
                }
                Some(s) if key == "items" => {
                    self.node(s, &format!("{at}/items"), depth + 1)?;
                }
                Some(_) => return Err(invalid(key, at, "must be an array of schemas")),
            }
        }
        counts(obj, at, "minItems", "maxItems")
    }

    fn string(&self, obj: &serde_json::Map<String, Value>, at: &str) -> Result<(), SchemaIssue> {
        counts(obj, at, "minLength", "maxLength")?;
        if let Some(f) = obj.get("format") {
            let f = f
                .as_str()
                .ok_or_else(|| invalid("format", at, "must be a string"))?;
            if !FORMATS.contains(&f) {
                return Err(unsupported(
                    "format",
                    at,
                    format!(
                        "format `{f}` is not supported (supported: {})",
                        FORMATS[..4].join(", ")
                    ),
                ));
            }
        }
        let has_length = obj.contains_key("minLength") || obj.contains_key("maxLength");
        if let Some(p) = obj.get("pattern") {
            let p = p
                .as_str()
                .ok_or_else(|| invalid("pattern", at, "must be a string"))?;
            check_pattern(p).map_err(|why| unsupported("pattern", at, format!("`{p}`: {why}")))?;
            if has_length || obj.contains_key("format") {
                return Err(unsupported(
                    "pattern",
                    at,
                    "`pattern` together with `minLength`, `maxLength` or `format` is not supported",
                ));
            }
        }
        if has_length && obj.contains_key("format") {
            return Err(unsupported(
                "format",
                at,
                "`format` together with `minLength` or `maxLength` is not supported",
            ));
        }
        Ok(())
    }
}

fn counts(
    obj: &serde_json::Map<String, Value>,
    at: &str,
    min: &str,
    max: &str,
) -> Result<(), SchemaIssue> {
    let get = |k: &str| -> Result<Option<u64>, SchemaIssue> {
        match obj.get(k) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| invalid(k, at, "must be a non-negative integer"))?;
                if n > MAX_SCHEMA_COUNT {
                    return Err(unsupported(
                        k,
                        at,
                        format!("values above {MAX_SCHEMA_COUNT} are not supported"),
                    ));
                }
                Ok(Some(n))
            }
        }
    };
    if let (Some(lo), Some(hi)) = (get(min)?, get(max)?) {
        if lo > hi {
            return Err(invalid(min, at, format!("is larger than `{max}`")));
        }
    }
    Ok(())
}

/// Checks that a regular expression uses only what llama.cpp's converter
/// turns into grammar (it silently accepts any string for the rest):
/// anchored with `^…$`, literals, `.`, classes, groups (`(?:` too), `|`,
/// `* + ?` and `{n,m}`; escapes of metacharacters and `\t \n \r \xHH \uHHHH`.
/// Class shorthands such as `\d`, `\w`, `\s` are not among them.
pub fn check_pattern(p: &str) -> Result<(), String> {
    let inner = p
        .strip_prefix('^')
        .and_then(|s| s.strip_suffix('$'))
        .filter(|_| p.len() >= 2)
        .ok_or("it must be anchored with `^` and `$`")?;
    let chars: Vec<char> = inner.chars().collect();
    let mut i = 0;
    let mut depth = 0usize;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => i += escape_len(&chars, i, true)?,
            '[' => {
                i += 1;
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '\\' {
                        i += escape_len(&chars, i, false)?;
                    } else {
                        i += 1;
                    }
                }
                if i >= chars.len() {
                    return Err("unterminated character class".into());
                }
                i += 1;
            }
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    if chars.get(i + 2) != Some(&':') {
                        return Err("only `(?:` groups are supported (no lookaround, named groups or flags)".into());
                    }
                    i += 2;
                }
                depth += 1;
                i += 1;
            }
            ')' => {
                depth = depth.checked_sub(1).ok_or("unbalanced parentheses")?;
                i += 1;
            }
            '^' | '$' => return Err(format!("anchor `{c}` inside the pattern")),
            '{' => {
                let close = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("unterminated `{`")?;
                let body: String = chars[i + 1..i + close].iter().collect();
                let parts: Vec<&str> = body.split(',').collect();
                let ok = match parts.as_slice() {
                    [n] => !n.is_empty(),
                    [a, b] => !(a.is_empty() && b.is_empty()),
                    _ => false,
                } && parts.iter().all(|n| n.chars().all(|c| c.is_ascii_digit()));
                if !ok {
                    return Err(format!("repetition `{{{body}}}` is not of the form {{n}}, {{n,}}, {{,m}} or {{n,m}}"));
                }
                if parts
                    .iter()
                    .any(|n| n.parse::<u64>().is_ok_and(|n| n > MAX_SCHEMA_COUNT))
                {
                    return Err(format!(
                        "repetition counts above {MAX_SCHEMA_COUNT} are not supported"
                    ));
                }
                i += close + 1;
            }
            '}' | ']' => return Err(format!("stray `{c}`")),
            _ => i += 1,
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    Ok(())
}

/// Length of the escape at `chars[i]` (a backslash), or why it is not
/// supported. Outside classes, escaped metacharacters are literals.
fn escape_len(chars: &[char], i: usize, outside_class: bool) -> Result<usize, String> {
    let Some(&next) = chars.get(i + 1) else {
        return Err("trailing backslash".into());
    };
    let hex = |n: usize| -> Result<usize, String> {
        let ok =
            chars.len() >= i + 2 + n && chars[i + 2..i + 2 + n].iter().all(char::is_ascii_hexdigit);
        if ok {
            Ok(2 + n)
        } else {
            Err(format!("malformed escape `\\{next}`"))
        }
    };
    match next {
        't' | 'r' | 'n' | '\\' | '"' | '[' | ']' | '-' => Ok(2),
        'x' => hex(2),
        'u' => hex(4),
        'U' => hex(8),
        '^' | '$' | '.' | '(' | ')' | '|' | '{' | '}' | '*' | '+' | '?' if outside_class => Ok(2),
        other => Err(format!(
            "the escape `\\{other}` is not supported (write the class out, e.g. `[0-9]` for `\\d`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issue_of(schema: Value) -> SchemaIssue {
        check_schema(&schema).expect_err("should be refused")
    }

    /// Properties keep the schema's order from the request text to the
    /// grammar (serde_json's `preserve_order`; llama.cpp's converter keeps
    /// the order it is given): a reasoning-first schema makes the model
    /// write its reasoning before its answer.
    #[test]
    fn grammar_follows_the_schemas_property_order() {
        for (first, second) in [("reasoning", "answer"), ("answer", "reasoning")] {
            let text = format!(
                r#"{{"type": "object", "properties": {{"{first}": {{"type": "string"}}, "{second}": {{"type": "string"}}}}, "required": ["{first}", "{second}"], "additionalProperties": false}}"#
            );
            let schema: Value = serde_json::from_str(&text).expect("schema");
            assert_eq!(schema.to_string().replace(' ', ""), text.replace(' ', ""));
            let gbnf = Constraint::JsonSchema(schema).to_gbnf().expect("gbnf");
            let root = gbnf
                .lines()
                .find(|l| l.starts_with("root ::="))
                .unwrap_or_else(|| panic!("no root rule:\n{gbnf}"));
            let (a, b) = (
                root.find(&format!("{first}-kv")),
                root.find(&format!("{second}-kv")),
            );
            assert!(
                matches!((a, b), (Some(a), Some(b)) if a < b),
                "{first} must come before {second}: {root}"
            );
        }
    }

    #[test]
    fn supported_schemas_pass() {
        for s in [
            json!({"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
                "when": {"type": "string", "format": "date"},
                "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                "kind": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/k"}]},
            }, "required": ["name", "age"], "additionalProperties": false,
               "$defs": {"k": {"const": "x"}}, "title": "t"}),
            json!({"type": ["string", "null"]}),
            json!(true),
        ] {
            assert_eq!(check_schema(&s), Ok(()), "{s}");
        }
    }

    #[test]
    fn unsupported_features_are_named() {
        let cases = [
            (
                json!({"type": "object", "patternProperties": {"^x": {}}}),
                "patternProperties",
                "#",
            ),
            (
                json!({"properties": {"a": {"$ref": "https://example.com/s.json"}}}),
                "$ref",
                "#/properties/a",
            ),
            (json!({"type": "string", "format": "email"}), "format", "#"),
            (json!({"oneOf": [{"type": "string"}]}), "oneOf", "#"),
            (json!({"type": "number", "minimum": 1}), "minimum", "#"),
            (
                json!({"type": "string", "pattern": "^\\d+$"}),
                "pattern",
                "#",
            ),
            (json!({"type": "string", "pattern": "abc"}), "pattern", "#"),
            (
                json!({"type": "object", "properties": {"a": {}}, "required": ["b"]}),
                "required",
                "#",
            ),
            (
                json!({"type": "array", "items": {"not": {"type": "null"}}}),
                "not",
                "#/items",
            ),
            (
                json!({"$ref": "#/$defs/a", "type": "string", "$defs": {"a": {}}}),
                "type",
                "#",
            ),
            (
                json!({"type": "string", "maxLength": 100000}),
                "maxLength",
                "#",
            ),
        ];
        for (schema, keyword, at) in cases {
            let i = issue_of(schema.clone());
            assert_eq!(
                (i.keyword.as_str(), i.at.as_str()),
                (keyword, at),
                "{schema}: {i}"
            );
            assert!(i.unsupported, "{i}");
            assert!(
                i.to_string().starts_with(&format!("`{keyword}` at {at}: ")),
                "{i}"
            );
        }
        let i = issue_of(json!({"type": "strng"}));
        assert!(!i.unsupported && i.why.contains("strng"), "{i}");
        let i = issue_of(json!({"$ref": "#/$defs/missing"}));
        assert!(!i.unsupported && i.keyword == "$ref", "{i}");
    }

    #[test]
    fn patterns() {
        for ok in [
            "^abc$",
            "^[a-z]{1,8}(?:-[a-z]+)*$",
            "^\\.\\x41[\\-\\]]?$",
            "^(a|b)+$",
        ] {
            assert_eq!(check_pattern(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("^\\w+$", "\\w"),
            ("^(?=a)b$", "(?:"),
            ("^a$b$", "anchor"),
            ("^a{x}$", "{x}"),
            ("^[a-z$", "unterminated"),
            ("^(ab$", "unbalanced"),
            ("^a{1,5000}$", "above"),
        ] {
            let e = check_pattern(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn response_format_shapes_parse() {
        let f: ResponseFormat = serde_json::from_value(json!({"type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}}))
        .expect("json_schema");
        assert!(
            matches!(f, ResponseFormat::JsonSchema { json_schema } if json_schema.schema.is_some())
        );
        let f: ResponseFormat =
            serde_json::from_value(json!({"type": "json_object"})).expect("json_object");
        assert!(matches!(f, ResponseFormat::JsonObject));
        assert!(serde_json::from_value::<ResponseFormat>(json!({"type": "yaml"})).is_err());
    }
}
