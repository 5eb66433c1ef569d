//! Structured output (`response_format`, `grammar`) and log-probabilities,
//! end to end: a real server on 127.0.0.1:0.

mod common;
#[path = "common/oracle.rs"]
mod oracle;

use std::num::NonZeroU16;

use airavata::engine::Prompt;
use futures::StreamExt;
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Value};

use common::server::{client, sse_events, start, test_model, test_options};

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("send");
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json body");
    (status, v)
}

async fn stream(c: &reqwest::Client, url: String, body: Value) -> Vec<Value> {
    let r = c.post(url).json(&body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let mut raw = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        raw.extend_from_slice(&chunk.expect("chunk"));
    }
    sse_events(&raw)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(&d).expect("event JSON"))
        .collect()
}

fn stories(test: &str) -> Option<std::path::PathBuf> {
    common::asset(test, "stories260k-gguf/stories260K.gguf")
}

/// The schema of the structured-output tests: every kind of constraint the
/// converter enforces, bounded so a small model finishes it.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "color": {"enum": ["red", "green", "blue"]},
            "happy": {"type": "boolean"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "pet": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pet"}]}
        },
        "required": ["name", "age", "color", "happy", "tags", "pet"],
        "additionalProperties": false,
        "$defs": {"pet": {"type": "object", "properties": {"kind": {"const": "cat"}}, "required": ["kind"], "additionalProperties": false}}
    })
}

/// Validates `v` against [`person_schema`] by hand (every keyword it uses).
fn check_person(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["age", "color", "happy", "name", "pet", "tags"] {
        return Err(format!("keys {keys:?}"));
    }
    let name = o["name"].as_str().ok_or("name not a string")?;
    let n = name.chars().count();
    if !(1..=12).contains(&n) {
        return Err(format!("name has {n} characters"));
    }
    let age = o["age"].as_i64().ok_or("age not an integer")?;
    if !(0..=120).contains(&age) || !o["age"].is_i64() && !o["age"].is_u64() {
        return Err(format!("age {age}"));
    }
    if !["red", "green", "blue"].contains(&o["color"].as_str().unwrap_or("")) {
        return Err(format!("color {}", o["color"]));
    }
    if !o["happy"].is_boolean() {
        return Err("happy not a boolean".into());
    }
    let tags = o["tags"].as_array().ok_or("tags not an array")?;
    if tags.len() > 3
        || tags
            .iter()
            .any(|t| !["a", "b", "c"].contains(&t.as_str().unwrap_or("")))
    {
        return Err(format!("tags {tags:?}"));
    }
    match &o["pet"] {
        Value::Null => {}
        p if *p == json!({"kind": "cat"}) => {}
        p => return Err(format!("pet {p}")),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_output_parses_and_validates_on_every_route() {
    let Some(model) = stories("json_schema_output_parses_and_validates_on_every_route") else {
        return;
    };
    let server = start(test_options(), model).await;
    let c = client();
    let base = server.url();
    let format = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
    let mut outputs = Vec::new();
    // Sampled answers (temperature 1, different seeds) run side by side.
    let futs = (0..8).map(|seed| {
        let (c, base, format) = (c.clone(), base.clone(), format.clone());
        async move {
            post(
                &c,
                format!("{base}/v1/chat/completions"),
                json!({"messages": [{"role": "user", "content": "Describe a person."}],
                       "response_format": format, "temperature": 1.0, "seed": seed, "max_tokens": 200}),
            )
            .await
        }
    });
    for (s, v) in futures::future::join_all(futs).await {
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        outputs.push(
            v["choices"][0]["message"]["content"]
                .as_str()
                .expect("content")
                .to_string(),
        );
    }
    let (s, v) = post(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": "Once upon a time", "response_format": format, "max_tokens": 200, "temperature": 0.7, "seed": 3}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    outputs.push(v["choices"][0]["text"].as_str().expect("text").to_string());
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "Lily", "response_format": format, "max_new_tokens": 200}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["finish_reason"], "eos",
        "the grammar ends generation: {v}"
    );
    outputs.push(v["generated_text"].as_str().expect("text").to_string());
    for out in &outputs {
        let parsed: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        check_person(&parsed).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    }
    // json_object: any JSON object.
    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "Give me JSON."}],
               "response_format": {"type": "json_object"}, "temperature": 0, "max_tokens": 400}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let out = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    if v["choices"][0]["finish_reason"] == "stop" {
        let parsed: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        assert!(parsed.is_object(), "{out}");
    } else {
        assert!(out.starts_with('{'), "{out}");
    }
    server.shutdown().await.expect("shutdown");
}

/// A reasoning-first schema: the model writes `reasoning` before `answer`,
/// on every route, because the property order survives from the request to
/// the grammar (serde_json `preserve_order`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_property_order_is_kept() {
    let Some(model) = stories("json_schema_property_order_is_kept") else {
        return;
    };
    let server = start(test_options(), model).await;
    let c = client();
    let base = server.url();
    // Sent as text, so nothing on the client side can reorder it.
    let schema_text = r#"{"type": "object", "properties": {"reasoning": {"type": "string", "maxLength": 24}, "answer": {"enum": ["yes", "no"]}}, "required": ["reasoning", "answer"], "additionalProperties": false}"#;
    let format = format!(
        r#"{{"type": "json_schema", "json_schema": {{"name": "r", "strict": true, "schema": {schema_text}}}}}"#
    );
    let bodies = [
        (
            "generate",
            format!(r#"{{"prompt": "Lily", "max_new_tokens": 120, "response_format": {format}}}"#),
        ),
        (
            "v1/completions",
            format!(
                r#"{{"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0.8, "seed": 5, "response_format": {format}}}"#
            ),
        ),
        (
            "v1/chat/completions",
            format!(
                r#"{{"messages": [{{"role": "user", "content": "Is the sky blue?"}}], "max_tokens": 120, "temperature": 0, "response_format": {format}}}"#
            ),
        ),
    ];
    for (route, body) in bodies {
        let r = c
            .post(format!("{base}/{route}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 200, "{route}");
        let v: Value = r.json().await.expect("json");
        let out = v
            .pointer("/generated_text")
            .or_else(|| v.pointer("/choices/0/text"))
            .or_else(|| v.pointer("/choices/0/message/content"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{route}: no text in {v}"));
        let parsed: Value =
            serde_json::from_str(out).unwrap_or_else(|e| panic!("{route}: {out:?}: {e}"));
        let keys: Vec<&str> = parsed
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["reasoning", "answer"], "{route}: {out}");
        let (r, a) = (out.find("\"reasoning\""), out.find("\"answer\""));
        assert!(
            matches!((r, a), (Some(r), Some(a)) if r < a),
            "{route}: {out}"
        );
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_schema_features_are_400_naming_the_feature() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let base = server.url();
    let cases = [
        (
            json!({"type": "object", "patternProperties": {"^x_": {"type": "string"}}}),
            "patternProperties",
            "#",
        ),
        (
            json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}),
            "$ref",
            "#/properties/a",
        ),
        (
            json!({"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}}),
            "format",
            "#/properties/mail",
        ),
        (
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
            "oneOf",
            "#",
        ),
        (json!({"type": "number", "maximum": 3.5}), "maximum", "#"),
        (
            json!({"type": "string", "pattern": "^\\d{3}$"}),
            "pattern",
            "#",
        ),
        (
            json!({"type": "array", "uniqueItems": true}),
            "uniqueItems",
            "#",
        ),
    ];
    for (schema, keyword, at) in cases {
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        for (route, body) in [
            (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "hi"}], "response_format": format}),
            ),
            (
                "/v1/completions",
                json!({"prompt": "hi", "response_format": format}),
            ),
            (
                "/generate",
                json!({"prompt": "hi", "response_format": format}),
            ),
        ] {
            let (s, v) = post(&c, format!("{base}{route}"), body).await;
            assert_eq!(s, 400, "{route} {schema}: {v}");
            assert_eq!(v["error"]["code"], "unsupported_schema", "{v}");
            assert_eq!(v["error"]["param"], "response_format", "{v}");
            let msg = v["error"]["message"].as_str().expect("message");
            assert!(
                msg.starts_with(&format!(
                    "`response_format.json_schema.schema`: `{keyword}` at {at}: "
                )),
                "{msg}"
            );
        }
    }
    // Not a schema at all: 400 invalid_schema.
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}});
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "hi", "response_format": format}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_schema")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("strng"),
        "{v}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grammars_are_400_and_the_engine_keeps_serving() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let base = server.url();
    for (grammar, says) in [
        ("root ::= (", "parser rejected"),
        ("root ::= undefined-rule", "parser rejected"),
        ("start ::= \"a\"", "no `root` rule"),
        ("   ", "empty"),
        ("root ::= root \"a\"", "parser rejected"),
    ] {
        for (route, body) in [
            ("/generate", json!({"prompt": "hi", "grammar": grammar})),
            (
                "/v1/completions",
                json!({"prompt": "hi", "grammar": grammar}),
            ),
        ] {
            let (s, v) = post(&c, format!("{base}{route}"), body).await;
            assert_eq!(s, 400, "{grammar:?}: {v}");
            assert_eq!(v["error"]["code"], "invalid_grammar", "{v}");
            assert_eq!(v["error"]["param"], "grammar", "{v}");
            let msg = v["error"]["message"].as_str().unwrap_or("");
            assert!(
                msg.starts_with("`grammar` cannot be used: ") && msg.contains(says),
                "{grammar:?}: {msg}"
            );
        }
    }
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "hi", "grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (422, Some("grammar")),
        "{v}"
    );
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "hi", "grammar": "root ::= \"a\"", "ignore_eos": true}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (422, Some("ignore_eos")),
        "{v}"
    );
    // Still serving, grammar requests included.
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "hi", "grammar": "root ::= \"ok\""}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["generated_text"].as_str(), v["finish_reason"].as_str()),
        (Some("ok"), Some("eos")),
        "{v}"
    );
    server.shutdown().await.expect("shutdown");
}

/// Whether `s` is in the language of [`ANSWER_GBNF`].
fn is_answer(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("उत्तर: ") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix("हाँ").or_else(|| rest.strip_prefix("नहीं"))
    else {
        return false;
    };
    let Some(word) = rest.strip_prefix(", ").and_then(|r| r.strip_suffix('.')) else {
        return false;
    };
    (1..=8).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_lowercase())
}

/// Devanagari literals (byte-fallback tokens in the test vocabulary) and a bounded ASCII word.
const ANSWER_GBNF: &str = "root ::= \"उत्तर: \" (\"हाँ\" | \"नहीं\") \", \" [a-z]{1,8} \".\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grammar_streams_with_continuous_batching() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let base = server.url();
    // Greedy with a grammar: non-streamed, then streamed on both APIs.
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "नमस्ते", "grammar": ANSWER_GBNF, "max_new_tokens": 64}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let whole = v["generated_text"].as_str().expect("text").to_string();
    assert!(is_answer(&whole), "{whole:?}");
    assert_eq!(v["finish_reason"], "eos");
    let events = stream(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "नमस्ते", "grammar": ANSWER_GBNF, "max_new_tokens": 64, "stream": true}),
    )
    .await;
    let streamed: String = events.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(streamed, whole);
    assert!(events.len() > 3, "streamed in pieces: {events:?}");
    // Four constrained streams (sampled) beside four unconstrained ones.
    let futs = (0..8).map(|i| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let mut body = json!({"messages": [{"role": "user", "content": format!("प्रश्न {i}")}],
                                  "stream": true, "max_tokens": 48, "temperature": 1.0, "seed": i});
            if i % 2 == 0 {
                body["grammar"] = json!(ANSWER_GBNF);
            }
            (
                i,
                stream(&c, format!("{base}/v1/chat/completions"), body).await,
            )
        }
    });
    let mut generated = 0;
    for (i, events) in futures::future::join_all(futs).await {
        let text: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        let finish = events
            .iter()
            .find_map(|e| e["choices"][0]["finish_reason"].as_str());
        generated += text.len();
        if i % 2 == 0 {
            assert!(is_answer(&text), "stream {i}: {text:?}");
            assert_eq!(finish, Some("stop"), "stream {i}");
        } else {
            assert!(
                !is_answer(&text),
                "unconstrained stream {i} is free text: {text:?}"
            );
        }
    }
    assert!(generated > 0);
    server.shutdown().await.expect("shutdown");
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("bytes array")
        .iter()
        .map(|b| u8::try_from(b.as_u64().expect("byte")).expect("byte"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_equal_log_softmax_of_llama_cpp_logits() {
    let Some(path) = stories("logprobs_equal_log_softmax_of_llama_cpp_logits") else {
        return;
    };
    let server = start(test_options(), path.clone()).await;
    let c = client();
    let base = server.url();
    let n_ctx_slot = server.engine().info().expect("info").n_ctx_slot;
    let model = common::load_model(&path);
    // Chat: logprobs of sampled tokens at temperature 1.3 are still the
    // model's own distribution (before temperature), non-streamed and streamed.
    let messages = json!([{"role": "user", "content": "Tell me a story about a cat."}]);
    let body = json!({"messages": messages, "logprobs": true, "top_logprobs": 20,
                      "temperature": 1.3, "seed": 7, "max_tokens": 24, "ignore_eos": true});
    let (s, v) = post(&c, format!("{base}/v1/chat/completions"), body.clone()).await;
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content")
        .clone();
    assert_eq!(content.len(), 24, "{v}");
    let text: Vec<u8> = content.iter().flat_map(|e| bytes_of(&e["bytes"])).collect();
    assert_eq!(
        String::from_utf8(text).expect("UTF-8"),
        v["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
    );
    let prompt = server
        .engine()
        .tokenize_prompt(&Prompt::Chat(
            serde_json::from_value(messages).expect("messages"),
        ))
        .expect("tokens");
    let reported: Vec<(Vec<u8>, f64)> = content
        .iter()
        .map(|e| {
            (
                bytes_of(&e["bytes"]),
                e["logprob"].as_f64().expect("logprob"),
            )
        })
        .collect();
    let (ids, oracle) = oracle::follow(&model, prompt.ids(), &reported, true, n_ctx_slot);
    let vocab = model.vocab();
    for (k, e) in content.iter().enumerate() {
        let want = oracle[k][ids[k] as usize];
        let got = e["logprob"].as_f64().expect("logprob");
        assert!((got - want).abs() < 1e-4, "token {k}: {got} vs {want}");
        assert_eq!(
            e["token"],
            String::from_utf8_lossy(&bytes_of(&e["bytes"])).as_ref()
        );
        let top = e["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 20);
        let mut order: Vec<usize> = (0..oracle[k].len()).collect();
        order.sort_by(|&a, &b| oracle[k][b].total_cmp(&oracle[k][a]).then(a.cmp(&b)));
        for (j, t) in top.iter().enumerate() {
            let lp = t["logprob"].as_f64().expect("lp");
            assert!((lp - oracle[k][order[j]]).abs() < 1e-4, "token {k} alt {j}");
            if j > 0 {
                assert!(
                    lp <= top[j - 1]["logprob"].as_f64().unwrap_or(f64::NAN),
                    "sorted"
                );
            }
            let lstrip = if k == 0 { NonZeroU16::new(1) } else { None };
            assert_eq!(
                bytes_of(&t["bytes"]),
                vocab.token_to_piece(LlamaToken(order[j] as i32), false, lstrip),
                "token {k} alt {j}"
            );
        }
        // The sampled token is among the alternatives when likely enough.
        if want >= top[19]["logprob"].as_f64().unwrap_or(0.0) {
            assert!(top.iter().any(|t| t["bytes"] == e["bytes"]), "token {k}");
        }
    }
    let mut streamed = Vec::new();
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    for ev in stream(&c, format!("{base}/v1/chat/completions"), streaming).await {
        if let Some(l) = ev["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(l.iter().cloned());
        }
    }
    // The same tokens and values (the second request reuses the first one's
    // prompt KV, so the last prompt token is evaluated alone: equal up to rounding).
    assert_eq!(streamed.len(), content.len());
    for (k, (a, b)) in streamed.iter().zip(&content).enumerate() {
        assert_eq!(a["bytes"], b["bytes"], "token {k}");
        let close = |x: &Value, y: &Value| {
            (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(0.0)).abs() < 1e-4
        };
        assert!(close(&a["logprob"], &b["logprob"]), "token {k}");
        let (ta, tb) = (a["top_logprobs"].as_array(), b["top_logprobs"].as_array());
        let (ta, tb) = (ta.expect("top"), tb.expect("top"));
        assert_eq!(ta.len(), tb.len());
        for (x, y) in ta.iter().zip(tb) {
            assert!(close(&x["logprob"], &y["logprob"]), "token {k}: {x} vs {y}");
        }
    }

    // Completions: greedy, `logprobs: 5`, OpenAI's legacy shape.
    let (s, v) = post(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": "Once upon a time", "logprobs": 5, "temperature": 0, "max_tokens": 16, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<String> = serde_json::from_value(lp["tokens"].clone()).expect("tokens");
    assert_eq!(
        tokens.concat(),
        v["choices"][0]["text"].as_str().expect("text")
    );
    let prompt = server
        .engine()
        .tokenize_prompt(&Prompt::Raw("Once upon a time".into()))
        .expect("tokens");
    let reported: Vec<(Vec<u8>, f64)> = tokens
        .iter()
        .enumerate()
        .map(|(k, t)| {
            (
                t.as_bytes().to_vec(),
                lp["token_logprobs"][k].as_f64().expect("lp"),
            )
        })
        .collect();
    let (ids, oracle) = oracle::follow(&model, prompt.ids(), &reported, false, n_ctx_slot);
    let mut offset = 0;
    for (k, t) in tokens.iter().enumerate() {
        let got = lp["token_logprobs"][k].as_f64().expect("lp");
        let best = oracle[k].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!((got - oracle[k][ids[k] as usize]).abs() < 1e-4, "token {k}");
        assert!(
            (got - best).abs() < 1e-4,
            "greedy picks the most likely token"
        );
        let top = lp["top_logprobs"][k].as_object().expect("top");
        assert!(!top.is_empty() && top.len() <= 5);
        assert!(top
            .values()
            .all(|x| x.as_f64().unwrap_or(0.0) <= got + 1e-9));
        // Most likely first, as the server built the map (key order kept by
        // serde_json's preserve_order, on the wire and in parsing here).
        let lps: Vec<f64> = top.values().filter_map(Value::as_f64).collect();
        assert!(
            lps.windows(2).all(|w| w[0] >= w[1]),
            "token {k}: top_logprobs not most-likely-first: {top:?}"
        );
        assert!((lps[0] - got).abs() < 1e-9, "token {k}: greedy pick first");
        assert_eq!(lp["text_offset"][k], offset, "token {k}");
        offset += t.chars().count();
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_of_partial_utf8_tokens_are_valid_json_with_exact_bytes() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let base = server.url();
    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "ज्ञ ॐ क्षत्रिय ऋषि"}], "logprobs": true,
               "top_logprobs": 20, "temperature": 0, "max_tokens": 24, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    let mut partial = 0;
    let mut all: Vec<u8> = Vec::new();
    for e in content {
        let b = bytes_of(&e["bytes"]);
        all.extend_from_slice(&b);
        for x in std::iter::once(e).chain(e["top_logprobs"].as_array().expect("top")) {
            let b = bytes_of(&x["bytes"]);
            assert_eq!(x["token"], String::from_utf8_lossy(&b).as_ref());
            partial += usize::from(std::str::from_utf8(&b).is_err());
            assert!(x["logprob"].as_f64().is_some_and(|l| l <= 0.0));
        }
    }
    assert!(
        partial > 0,
        "expected byte-fallback pieces among the tokens"
    );
    // The exact bytes rebuild the text.
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert_eq!(String::from_utf8_lossy(&all), text);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_limits_follow_openai() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let base = server.url();
    for (route, body, param) in [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 6}),
            "logprobs",
        ),
    ] {
        let (s, v) = post(&c, format!("{base}{route}"), body).await;
        assert_eq!((s, v["error"]["param"].as_str()), (422, Some(param)), "{v}");
    }
    // Off by default: `logprobs: null`.
    let (s, v) = post(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": "x", "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
    // 0 alternatives: the sampled tokens only.
    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "max_tokens": 3, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, 200);
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(content.len(), 3);
    assert!(content.iter().all(|e| e["top_logprobs"] == json!([])));
    server.shutdown().await.expect("shutdown");
}

/// The constrained sampler passes only the tokens the grammar allows to the
/// chain. That must choose exactly what llama.cpp's chain chooses on the
/// whole masked vocabulary (the masked tokens at -inf), token for token with
/// the same seed: the oracle below is that unshortened algorithm, built from
/// llama.cpp's own samplers.
#[test]
fn constrained_sampling_equals_the_chain_on_the_whole_masked_vocabulary() {
    use airavata::engine::model_load::{load, ModelPlacement};
    use airavata::engine::sampler;
    use airavata::engine::SamplingParams;
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;

    let Some(path) = stories("constrained_sampling_equals_the_chain") else {
        return;
    };
    airavata::engine::llama_backend(None).expect("backend");
    let model = load(&path, &ModelPlacement::offload(0)).expect("model");
    let n_vocab = usize::try_from(model.n_vocab()).expect("vocab");
    let gbnf = "root ::= (\"Once\" | \"the\" | [a-z ]){4,40} \".\"\n";
    let full = |logits: &[f32]| {
        LlamaTokenDataArray::from_iter(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
            false,
        )
    };
    let mut masked_steps = 0;
    let mut steps = 0;
    for (case, params) in [
        SamplingParams {
            temperature: 0.9,
            top_p: 0.9,
            min_p: 0.02,
            seed: Some(7),
            grammar: Some(gbnf.into()),
            ..SamplingParams::default()
        },
        SamplingParams {
            temperature: 1.0,
            top_k: 40,
            top_p: 1.0,
            seed: Some(11),
            repetition_penalty: 1.2,
            grammar: Some(gbnf.into()),
            ..SamplingParams::default()
        },
        SamplingParams {
            grammar: Some(gbnf.into()),
            ..SamplingParams::greedy()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut ours = sampler::build(&params, &model).expect("sampler");
        let mut chain = sampler::chain(&params, model.n_vocab());
        let mut grammar = sampler::compile_grammar(&model, gbnf).expect("grammar");
        // Logits from a fixed LCG, spread wide enough that the unconstrained
        // choice is often outside the grammar.
        let mut state = 0x9e37_79b9_u64 + case as u64;
        let mut row = vec![0f32; n_vocab];
        for step in 0..60 {
            for l in row.iter_mut() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                *l = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 12.0;
            }
            let mut cur = full(&row);
            cur.apply_sampler(&mut chain);
            let mut want = cur.selected_token().expect("chain choice");
            let mut one = LlamaTokenDataArray::new(
                vec![LlamaTokenData::new(want, row[want.0 as usize], 0.0)],
                false,
            );
            one.apply_sampler(&mut grammar);
            if one.data[0].logit() == f32::NEG_INFINITY {
                masked_steps += 1;
                let mut cur = full(&row);
                cur.apply_sampler(&mut grammar);
                cur.apply_sampler(&mut chain);
                want = cur.selected_token().expect("masked choice");
            }
            let got = ours.sample_row(&row).expect("our choice");
            assert_eq!(got, want, "case {case}, step {step}");
            steps += 1;
            if model.vocab().is_eog(want) {
                break;
            }
            grammar.accept(want);
            chain.accept(want);
        }
    }
    assert!(steps >= 30, "{steps} steps");
    assert!(
        masked_steps * 3 >= steps,
        "the masked path ran in only {masked_steps} of {steps} steps"
    );
}
