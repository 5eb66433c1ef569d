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
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("client.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let out = tokio::task::spawn_blocking({
        let url = server.url();
        move || {
            Command::new(python)
                .arg(script)
                .env("BASE_URL", url)
                .env("SCHEMA", schema.to_string())
                .output()
                .expect("run python")
        }
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("script output");
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
