//! The official `openai` Python client against our server: structured output
//! with `response_format: json_schema` (every sampled answer parses and
//! validates with the `jsonschema` package) and `logprobs` (equal to a
//! log-softmax of llama.cpp's logits).
//!
//! The client is installed from PyPI into a virtual environment under
//! `target/` (reused by later runs). Without PyPI the test prints
//! `skipped: …`, unless `CI` is set, where that is a failure.

mod common;
#[path = "common/oracle.rs"]
mod oracle;

use std::path::PathBuf;
use std::process::Command;

use airavata::engine::{ChatMessage, Prompt};
use serde_json::{json, Value};

use common::server::{start, test_options};

/// A virtual environment with `openai` and `jsonschema`, or `None` (skip).
fn python_env(test: &str) -> Option<PathBuf> {
    common::pyenv::python_venv(
        test,
        "py-openai-venv",
        &["openai", "jsonschema"],
        "openai, jsonschema",
    )
}

/// Runs a client `script` against the server at `url` (as `BASE_URL`, with
/// one more variable `var`) on a blocking thread; its stdout is one JSON value.
async fn run_client(python: PathBuf, script: &str, url: String, var: (&str, String)) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("client.py");
    std::fs::write(&path, script).expect("script");
    let (name, value) = (var.0.to_string(), var.1);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(path)
            .env("BASE_URL", url)
            .env(name, value)
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("script output")
}

const SCRIPT: &str = r#"
import json, os, sys
import jsonschema
from openai import OpenAI

client = OpenAI(base_url=os.environ["BASE_URL"] + "/v1", api_key="unused")
schema = json.loads(os.environ["SCHEMA"])
answers = []
for seed in range(20):
    r = client.chat.completions.create(
        model="stories",
        messages=[{"role": "user", "content": "Describe a toy."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "toy", "schema": schema, "strict": True}},
        temperature=1.0, seed=seed, max_tokens=200)
    text = r.choices[0].message.content
    value = json.loads(text)                      # raises if not JSON
    jsonschema.validate(value, schema)            # raises if not valid
    answers.append({"text": text, "finish": r.choices[0].finish_reason})

r = client.chat.completions.create(
    model="stories",
    messages=[{"role": "user", "content": "Tell me a story."}],
    logprobs=True, top_logprobs=5, temperature=0, max_tokens=12,
    extra_body={"ignore_eos": True})
lp = [c.model_dump() for c in r.choices[0].logprobs.content]
print(json.dumps({"answers": answers, "logprobs": lp, "text": r.choices[0].message.content}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_structured_output_and_logprobs() {
    let test = "openai_python_client_structured_output_and_logprobs";
    let Some(path) = common::asset(test, "stories260k-gguf/stories260K.gguf") else {
        return;
    };
    let Some(python) = python_env(test) else {
        return;
    };
    let server = start(test_options(), path.clone()).await;
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 10},
            "price": {"type": "integer", "minimum": 1, "maximum": 999},
            "kind": {"enum": ["ball", "doll", "car"]},
            "new": {"type": "boolean"},
            "colors": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 2}
        },
        "required": ["name", "price", "kind", "new", "colors"],
        "additionalProperties": false
    });
    let v = run_client(python, SCRIPT, server.url(), ("SCHEMA", schema.to_string())).await;
    let answers = v["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 20, "every answer parsed and validated: {v}");
    assert!(answers.iter().all(|a| a["finish"] == "stop"), "{v}");
    let distinct: std::collections::HashSet<&str> =
        answers.iter().filter_map(|a| a["text"].as_str()).collect();
    assert!(distinct.len() > 1, "sampled answers differ: {distinct:?}");

    // logprobs against llama.cpp's own logits.
    let lp = v["logprobs"].as_array().expect("logprobs");
    assert_eq!(lp.len(), 12, "{v}");
    let reported: Vec<(Vec<u8>, f64)> = lp
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone()).expect("bytes");
            (bytes, e["logprob"].as_f64().expect("logprob"))
        })
        .collect();
    let all: Vec<u8> = reported.iter().flat_map(|(b, _)| b.clone()).collect();
    assert_eq!(
        String::from_utf8_lossy(&all),
        v["text"].as_str().unwrap_or("")
    );
    let messages: Vec<ChatMessage> =
        serde_json::from_value(json!([{"role": "user", "content": "Tell me a story."}]))
            .expect("messages");
    let prompt = server
        .engine()
        .tokenize_prompt(&Prompt::Chat(messages))
        .expect("tokens");
    let n_ctx = server.engine().info().expect("info").n_ctx_slot;
    let model = common::load_model(&path);
    let (ids, rows) = oracle::follow(&model, prompt.ids(), &reported, true, n_ctx);
    for (k, e) in lp.iter().enumerate() {
        let got = reported[k].1;
        let want = rows[k][ids[k] as usize];
        assert!((got - want).abs() < 1e-4, "token {k}: {got} vs {want}");
        let best = rows[k].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            (got - best).abs() < 1e-4,
            "temperature 0 takes the most likely token"
        );
        let top = e["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 5);
        let mut sorted: Vec<f64> = rows[k].clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (j, t) in top.iter().enumerate() {
            let lp = t["logprob"].as_f64().expect("lp");
            assert!((lp - sorted[j]).abs() < 1e-4, "token {k} alternative {j}");
        }
    }
    server.shutdown().await.expect("shutdown");
}

const TOOL_SCRIPT: &str = r#"
import json, os
import jsonschema
from openai import OpenAI

client = OpenAI(base_url=os.environ["BASE_URL"] + "/v1", api_key="unused")
params = json.loads(os.environ["PARAMS"])
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city", "parameters": params}}]
messages = [{"role": "user", "content": "पुणे में मौसम कैसा है?"}]
out = {"turns": []}
for seed in range(3):
    # Turn 1: the model must call the tool; its arguments follow the schema.
    r = client.chat.completions.create(model="m", messages=messages, tools=tools,
                                       tool_choice="required", temperature=1.0, seed=seed,
                                       max_tokens=120)
    choice = r.choices[0]
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, params)
    # Streamed, the same request delivers the call as delta.tool_calls.
    stream = client.chat.completions.create(model="m", messages=messages, tools=tools,
                                            tool_choice="required", temperature=1.0, seed=seed,
                                            max_tokens=120, stream=True)
    streamed, finish = None, None
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.tool_calls:
                streamed = c.delta.tool_calls[0].function.arguments
            if c.finish_reason:
                finish = c.finish_reason
    # Turn 2: the tool's result goes back; with tool_choice none the model answers in text.
    history = messages + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 31})},
    ]
    r2 = client.chat.completions.create(model="m", messages=history, tools=tools,
                                        tool_choice="none", temperature=0, max_tokens=8)
    out["turns"].append({
        "finish": choice.finish_reason, "name": call.function.name, "args": args,
        "streamed_args": streamed, "streamed_finish": finish,
        "answer": r2.choices[0].message.content, "answer_finish": r2.choices[0].finish_reason,
        "answer_calls": r2.choices[0].message.tool_calls,
    })
print(json.dumps(out))
"#;

/// A two-turn weather-tool loop with the official client: the call is
/// generated under the function's schema (`tool_choice: required`), comes
/// back as `message.tool_calls` and streamed as `delta.tool_calls` with
/// `finish_reason: tool_calls`, and the tool's result goes back into the
/// history (`tool` role, `tool_call_id`) for a text answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_tool_call_loop() {
    let test = "openai_python_client_tool_call_loop";
    let Some(python) = python_env(test) else {
        return;
    };
    let mut opts = test_options();
    // The built-in Airavata format has no tool role; ChatML renders one.
    opts.chat_template = Some("chatml".into());
    let server = start(opts, common::server::test_model()).await;
    let params = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 20},
            "unit": {"enum": ["celsius", "fahrenheit"]}
        },
        "required": ["city", "unit"],
        "additionalProperties": false
    });
    let v = run_client(
        python,
        TOOL_SCRIPT,
        server.url(),
        ("PARAMS", params.to_string()),
    )
    .await;
    let turns = v["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 3, "{v}");
    for t in turns {
        assert_eq!(t["finish"], "tool_calls", "{t}");
        assert_eq!(t["name"], "get_weather", "{t}");
        assert!(t["args"]["city"].is_string(), "{t}");
        // The streamed call is the same call (same seed, same request).
        let streamed: Value =
            serde_json::from_str(t["streamed_args"].as_str().expect("streamed arguments"))
                .expect("streamed JSON");
        assert_eq!(streamed, t["args"], "{t}");
        assert_eq!(t["streamed_finish"], "tool_calls", "{t}");
        assert!(t["answer"].is_string(), "{t}");
        assert!(t["answer_calls"].is_null(), "{t}");
        assert_ne!(t["answer_finish"], "tool_calls", "{t}");
    }
    server.shutdown().await.expect("shutdown");
}
