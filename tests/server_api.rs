//! End-to-end tests: a real server on 127.0.0.1:0 with a small model.

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use airavata::engine::{GenerateRequest, Prompt};
use airavata::server::ServeOptions;
use futures::StreamExt;
use serde_json::{json, Value};

use common::server::{
    client, info, metric, sse_events, start, test_model, test_options, wait_info,
};

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("send");
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json body");
    (status, v)
}

fn assert_envelope(v: &Value, code: &str) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "no message in {v}");
    assert!(e["type"].is_string(), "no type in {v}");
    assert_eq!(e["code"], code, "{v}");
    assert!(e.get("param").is_some(), "no param key in {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generate_equals_direct_engine() {
    let model = test_model();
    let server = start(test_options(), model).await;
    let c = client();
    for prompt in ["Once upon a time", "नमस्ते, आप कैसे हैं?", ""] {
        let (status, v) = post(
            &c,
            format!("{}/generate", server.url()),
            json!({"prompt": prompt, "max_new_tokens": 40}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let engine = server.engine();
        let tokens = engine
            .tokenize_prompt(&Prompt::User(prompt.into()))
            .expect("tokens");
        let direct = engine
            .generate(GenerateRequest::greedy(
                tokens,
                NonZeroU32::new(40).expect("40"),
            ))
            .expect("admit")
            .collect()
            .await
            .expect("generate");
        assert_eq!(v["generated_text"], direct.0, "prompt {prompt:?}");
        assert_eq!(
            v["usage"]["completion_tokens"],
            direct.1.usage.completion_tokens
        );
        assert!(v["timings"]["total_ms"].as_f64().is_some());
    }
    server.shutdown().await.expect("shutdown");
}

/// What is guaranteed about batched greedy output on CPU: each slot has its
/// own KV stream, so a sequence reads the same cells whatever else runs, but
/// llama.cpp's CPU kernels are not batch-invariant (a batch of another size
/// may take another matmul path and round differently), so where the two
/// best tokens are nearly tied a batched answer can take the other one. How
/// often depends on the build: on the random-weight test model, at most 1 of
/// these 16 answers with the default (AVX2) build, 2–4 with a native AVX-512
/// one. The test asserts that the requests really were batched and that every
/// batched answer equals its serial answer up to the first token where the
/// serial run's two best candidates are within [`NEAR_TIE`] nats of each
/// other (the batched run's too). A batching bug (wrong cells, mixed-up
/// sequences, lost tokens) changes answers where one candidate clearly leads
/// and fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_greedy_requests_match_serial_results() {
    let model = test_model();
    // `test_options` turns flash attention off: the guarantee is for `--flash-attn off`.
    let server = start(test_options(), model).await;
    let c = client();
    let base = server.url();
    let prompts: Vec<String> = (0..16)
        .map(|i| match i % 4 {
            0 => format!("Tell me story number {i}."),
            1 => format!("कहानी संख्या {i} सुनाइए।"),
            2 => format!("Lily had {i} red balls"),
            _ => format!("भारत की राजधानी {i}"),
        })
        .collect();
    let body = |p: &str| json!({"prompt": p, "max_tokens": 96, "temperature": 0, "logprobs": 5});
    let url = format!("{base}/v1/completions");
    let mut serial = Vec::new();
    for p in &prompts {
        let (s, v) = post(&c, url.clone(), body(p)).await;
        assert_eq!(s, 200, "{v}");
        serial.push(Greedy::from(&v));
    }
    let steps_before =
        metric(&c, &base, &steps("decode")).await + metric(&c, &base, &steps("mixed")).await;
    let futs = prompts.iter().map(|p| {
        let c = c.clone();
        let (url, b) = (url.clone(), body(p));
        async move { post(&c, url, b).await }
    });
    let results = futures::future::join_all(futs).await;
    let mut generated = 0;
    let mut differing = Vec::new();
    for (i, (s, v)) in results.into_iter().enumerate() {
        assert_eq!(s, 200, "{v}");
        generated += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        let batched = Greedy::from(&v);
        let serial = &serial[i];
        let Some(k) = (0..serial.tokens.len().max(batched.tokens.len()))
            .find(|&k| serial.tokens.get(k) != batched.tokens.get(k))
        else {
            continue;
        };
        // Where one run ended (its end-of-generation token is not listed),
        // the other run's candidates at that position tell the margin.
        let gaps = [serial.gap(k), batched.gap(k)];
        let near_tie =
            gaps.iter().flatten().count() > 0 && gaps.iter().flatten().all(|&g| g < NEAR_TIE);
        differing.push(format!(
            "request {i}: first difference at token {k} (serial {:?} vs batched {:?}), \
             top-2 gaps {gaps:?}",
            serial.tokens.get(k),
            batched.tokens.get(k)
        ));
        assert!(
            near_tie,
            "request {i}: the batched answer leaves the serial one where no two tokens are \
             within {NEAR_TIE} nats:\n{}\nbatched {:?}\nserial  {:?}",
            differing.join("\n"),
            batched.tokens,
            serial.tokens
        );
    }
    // How much a chance difference could hide behind near-ties: few positions have one.
    let (ties, positions) = serial.iter().fold((0, 0), |(t, n), g| {
        let near = (0..g.tokens.len()).filter(|&k| g.gap(k).is_some_and(|x| x < NEAR_TIE));
        (t + near.count(), n + g.tokens.len())
    });
    assert!(
        ties * 10 < positions,
        "{ties} of {positions} positions are near-ties"
    );
    eprintln!(
        "{} of 16 batched answers took the other side of a near-tie \
         ({ties} of {positions} serial positions are near-ties)",
        differing.len()
    );
    for d in &differing {
        eprintln!("  {d}");
    }
    // Batched: the concurrent requests took fewer engine steps than tokens.
    let steps_after =
        metric(&c, &base, &steps("decode")).await + metric(&c, &base, &steps("mixed")).await;
    let batch_steps = steps_after - steps_before;
    assert!(
        batch_steps < generated as f64,
        "{batch_steps} steps for {generated} tokens: the requests were not batched"
    );
    server.shutdown().await.expect("shutdown");
}

/// Two candidates closer than this (in log-probability) are a near-tie that
/// kernel rounding may decide either way.
const NEAR_TIE: f64 = 0.01;

/// A greedy completion's tokens and, per position, its candidates'
/// log-probabilities (`"logprobs": N` of `/v1/completions`).
struct Greedy {
    tokens: Vec<String>,
    top: Vec<Vec<f64>>,
}

impl Greedy {
    fn from(v: &Value) -> Self {
        let lp = &v["choices"][0]["logprobs"];
        let tokens: Vec<String> = lp["tokens"]
            .as_array()
            .unwrap_or_else(|| panic!("no logprobs.tokens in {v}"))
            .iter()
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect();
        let top: Vec<Vec<f64>> = lp["top_logprobs"]
            .as_array()
            .unwrap_or_else(|| panic!("no logprobs.top_logprobs in {v}"))
            .iter()
            .map(|m| {
                let mut l: Vec<f64> = m
                    .as_object()
                    .map(|o| o.values().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                l.sort_by(|a, b| b.total_cmp(a));
                l
            })
            .collect();
        assert_eq!(tokens.len(), top.len(), "{v}");
        Greedy { tokens, top }
    }

    /// How far the best candidate at `k` leads the second (None past the end).
    fn gap(&self, k: usize) -> Option<f64> {
        let l = self.top.get(k)?;
        Some(match l.as_slice() {
            [a, b, ..] => a - b,
            _ => f64::INFINITY,
        })
    }
}

async fn stream_body(
    c: &reqwest::Client,
    url: String,
    body: Value,
) -> Vec<(Option<String>, String)> {
    let r = c.post(url).json(&body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut raw = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        raw.extend_from_slice(&chunk.expect("chunk"));
    }
    sse_events(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_concatenates_to_non_streamed_text() {
    let model = test_model();
    let server = start(test_options(), model).await;
    let c = client();
    let url = format!("{}/generate", server.url());
    for (prompt, raw) in [
        ("Once upon a time", true),
        ("नमस्ते! भारत के बारे में बताइए।", false),
        ("हिंदी में एक कहानी", true),
    ] {
        let (s, full) = post(
            &c,
            url.clone(),
            json!({"prompt": prompt, "max_new_tokens": 60, "raw": raw}),
        )
        .await;
        assert_eq!(s, 200);
        let events = stream_body(
            &c,
            url.clone(),
            json!({"prompt": prompt, "max_new_tokens": 60, "raw": raw, "stream": true}),
        )
        .await;
        let mut text = String::new();
        let mut done = None;
        for (name, data) in &events {
            assert!(name.is_none(), "unexpected event {name:?}: {data}");
            let v: Value = serde_json::from_str(data).expect("event is JSON");
            if v["done"] == true {
                done = Some(v);
            } else {
                text.push_str(v["text"].as_str().expect("text"));
            }
        }
        let done = done.expect("final event");
        assert_eq!(text, full["generated_text"].as_str().unwrap_or_default());
        assert_eq!(done["generated_text"], full["generated_text"]);
        assert_eq!(
            done["usage"]["completion_tokens"],
            full["usage"]["completion_tokens"]
        );
    }
    server.shutdown().await.expect("shutdown");
}

/// The `/metrics` series of engine steps of one kind (`decode` or `mixed`).
fn steps(kind: &str) -> String {
    format!("airavata_engine_steps_total{{kind=\"{kind}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_frees_the_slot() {
    let model = test_model();
    let mut opts = test_options();
    opts.step_delay_ms = Some(20);
    let server = start(opts, model).await;
    let c = client();
    let base = server.url();
    let r = c
        .post(format!("{base}/generate"))
        .json(&json!({"prompt": "Once", "raw": true, "max_new_tokens": 400, "stream": true}))
        .send()
        .await
        .expect("send");
    let mut s = r.bytes_stream();
    let mut got = 0;
    while got < 3 {
        let chunk = s.next().await.expect("event").expect("bytes");
        got += chunk.windows(5).filter(|w| w == b"data:").count();
    }
    assert_eq!(info(&c, &base).await["active"], 1);
    drop(s);
    wait_info(&c, &base, "/active", 0.into(), Duration::from_secs(3)).await;
    assert_eq!(
        metric(&c, &base, "airavata_generations_cancelled_total").await,
        1.0
    );
    assert_eq!(metric(&c, &base, "airavata_requests_running").await, 0.0);
    server.shutdown().await.expect("shutdown");
}

/// On the CPU `decode` computes the step itself, so a picked token's text
/// goes out at the end of the step that picked it, not after the next
/// step's decode: with a long pause after every step (test hook), the first
/// token arrives well before the first pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_engine_sends_a_token_in_the_step_that_picked_it() {
    let pause = Duration::from_millis(1500);
    let mut opts = test_options();
    opts.step_delay_ms = Some(pause.as_millis() as u64);
    let server = start(opts, test_model()).await;
    let c = client();
    let base = server.url();
    let t0 = Instant::now();
    let r = c
        .post(format!("{base}/generate"))
        .json(&json!({"prompt": "Once", "raw": true, "max_new_tokens": 2, "stream": true}))
        .send()
        .await
        .expect("send");
    let mut s = r.bytes_stream();
    let mut raw = Vec::new();
    let first = loop {
        let chunk = s.next().await.expect("event").expect("bytes");
        raw.extend_from_slice(&chunk);
        if raw.windows(8).any(|w| w == b"\"text\":\"") {
            break t0.elapsed();
        }
    };
    while let Some(chunk) = s.next().await {
        raw.extend_from_slice(&chunk.expect("bytes"));
    }
    let total = t0.elapsed();
    assert!(
        first < pause / 2,
        "first token after {first:?}: it waited for the next step (pause {pause:?})"
    );
    // The second token needs the next step: one pause later.
    assert!(total >= pause, "whole answer in {total:?}");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("\"done\":true"), "{text}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_and_keeps_serving() {
    let model = test_model();
    let mut opts = test_options();
    opts.parallel = 1;
    opts.max_queue = 1;
    opts.step_delay_ms = Some(5);
    let server = start(opts, model).await;
    let c = client();
    let url = format!("{}/generate", server.url());
    let long = json!({"prompt": "Once", "raw": true, "max_new_tokens": 200});
    let a = tokio::spawn({
        let (c, url, b) = (c.clone(), url.clone(), long.clone());
        async move { post(&c, url, b).await }
    });
    // Wait until A holds the slot, then queue B.
    wait_info(
        &c,
        &server.url(),
        "/active",
        1.into(),
        Duration::from_secs(5),
    )
    .await;
    let b = tokio::spawn({
        let (c, url, b) = (c.clone(), url.clone(), long.clone());
        async move { post(&c, url, b).await }
    });
    wait_info(
        &c,
        &server.url(),
        "/waiting",
        1.into(),
        Duration::from_secs(5),
    )
    .await;
    let r = c.post(url.clone()).json(&long).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 429);
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "Retry-After missing");
    let v: Value = r.json().await.expect("json");
    assert_envelope(&v, "queue_full");
    assert_eq!(a.await.expect("a").0, 200);
    assert_eq!(b.await.expect("b").0, 200);
    let (s, _) = post(&c, url, json!({"prompt": "hi", "max_new_tokens": 4})).await;
    assert_eq!(s, 200, "server keeps serving after 429");
    assert!(metric(&c, &server.url(), "airavata_requests_rejected_total").await >= 1.0);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_the_envelope() {
    let model = test_model();
    let mut opts = test_options();
    opts.max_body_bytes = 4096;
    let server = start(opts, model).await;
    let c = client();
    let url = format!("{}/generate", server.url());

    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    assert_envelope(&r.json().await.expect("json"), "invalid_json");

    let r = c
        .post(&url)
        .header("content-type", "text/plain")
        .body("{\"prompt\": \"x\"}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 415);
    assert_envelope(&r.json().await.expect("json"), "unsupported_media_type");

    let big = "अ".repeat(5000);
    let (s, v) = post(&c, url.clone(), json!({"prompt": big})).await;
    assert_eq!(s, 413);
    assert_envelope(&v, "payload_too_large");

    let (s, v) = post(&c, url.clone(), json!({"max_new_tokens": 5})).await;
    assert_eq!(s, 422);
    assert_envelope(&v, "invalid_value");
    assert_eq!(v["error"]["param"], "prompt");

    let (s, v) = post(
        &c,
        url.clone(),
        json!({"prompt": "x", "max_new_tokens": "many"}),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(v["error"]["param"], "max_new_tokens");

    for (field, value) in [
        ("temperature", json!(-1.0)),
        ("top_p", json!(0.0)),
        ("top_k", json!(-3)),
        ("min_p", json!(2.0)),
        ("repetition_penalty", json!(0.0)),
        ("max_new_tokens", json!(0)),
    ] {
        let mut body = json!({"prompt": "x"});
        body[field] = value;
        let (s, v) = post(&c, url.clone(), body).await;
        assert_eq!(s, 422, "{field}: {v}");
        assert_envelope(&v, "invalid_value");
        assert_eq!(v["error"]["param"], field);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(field));
    }

    let n_ctx_slot = server.engine().info().expect("info").n_ctx_slot;
    let (s, v) = post(
        &c,
        url.clone(),
        json!({"prompt": "hello", "max_new_tokens": n_ctx_slot}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_envelope(&v, "context_length_exceeded");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    let prompt_tokens = server
        .engine()
        .tokenize_prompt(&Prompt::User("hello".into()))
        .expect("tokens")
        .len();
    assert_eq!(
        msg,
        format!(
            "the prompt has {prompt_tokens} tokens and `max_new_tokens` is {n_ctx_slot}: {} tokens exceed the per-slot context of {n_ctx_slot} tokens",
            prompt_tokens + n_ctx_slot as usize
        )
    );
    assert_eq!(v["error"]["param"], "max_new_tokens");

    let r = c
        .get(format!("{}/nope", server.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 404);
    assert_envelope(&r.json().await.expect("json"), "not_found");
    let r = c.get(&url).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 405);
    assert_envelope(&r.json().await.expect("json"), "method_not_allowed");
    server.shutdown().await.expect("shutdown");
}

/// A small valid body for a generation route (two new tokens).
fn body_with(route: &str, chat: &Value) -> Value {
    match route {
        "/generate" => json!({"prompt": "x", "max_new_tokens": 2}),
        "/v1/completions" => json!({"prompt": "x", "max_tokens": 2}),
        _ => json!({"messages": chat, "max_tokens": 2}),
    }
}

/// Every route names its own token-budget field, in `param` and in the
/// message, for both a bad value (422) and a budget that does not fit (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_callers_own_fields() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let base = server.url();
    let n_ctx_slot = server.engine().info().expect("info").n_ctx_slot;
    let chat = json!([{"role": "user", "content": "नमस्ते"}]);
    let cases = [
        ("/generate", json!({"prompt": "x"}), "max_new_tokens"),
        ("/v1/completions", json!({"prompt": "x"}), "max_tokens"),
        (
            "/v1/chat/completions",
            json!({"messages": chat}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": chat}),
            "max_completion_tokens",
        ),
    ];
    for (route, body, field) in cases {
        let url = format!("{base}{route}");
        let mut zero = body.clone();
        zero[field] = json!(0);
        let (s, v) = post(&c, url.clone(), zero).await;
        assert_eq!(s, 422, "{route} {v}");
        assert_envelope(&v, "invalid_value");
        assert_eq!(v["error"]["param"], field, "{route}");
        // Completions allow 0 with `echo` (tests/prompt_logprobs.rs).
        let unless = if route == "/v1/completions" {
            " (0 only with `echo: true`)"
        } else {
            ""
        };
        assert_eq!(
            v["error"]["message"],
            format!("`{field}` must be at least 1{unless}"),
            "{route}"
        );
        let mut long = body;
        long[field] = json!(n_ctx_slot);
        let (s, v) = post(&c, url, long).await;
        assert_eq!(s, 400, "{route} {v}");
        assert_envelope(&v, "context_length_exceeded");
        assert_eq!(v["error"]["param"], field, "{route}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(&format!("`{field}` is {n_ctx_slot}")), "{msg}");
        let other = if field == "max_new_tokens" {
            "max_tokens"
        } else {
            "max_new_tokens"
        };
        assert!(!msg.contains(other), "{route}: {msg}");
        // A value of the wrong type (a negative budget) names the field too,
        // although the body flattens its shared fields.
        let mut negative = body_with(route, &chat);
        negative[field] = json!(-1);
        let (s, v) = post(&c, format!("{base}{route}"), negative).await;
        assert_eq!(s, 422, "{route} {v}");
        assert_eq!(v["error"]["param"], field, "{route} {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with(&format!("field `{field}`: invalid value")),
            "{msg}"
        );
        // A field the server does not implement is refused, never ignored.
        let mut unknown = body_with(route, &chat);
        unknown["echo_all_the_things"] = json!(true);
        let (s, v) = post(&c, format!("{base}{route}"), unknown).await;
        assert_eq!(s, 400, "{route} {v}");
        assert_envelope(&v, "unsupported_field");
        assert_eq!(v["error"]["param"], "echo_all_the_things", "{route}");
        assert_eq!(
            v["error"]["message"],
            "`echo_all_the_things` is not supported by this server"
        );
    }
    for (route, body) in [
        ("/tokenize", json!({"content": "x", "frobnicate": 1})),
        ("/detokenize", json!({"tokens": [1], "frobnicate": 1})),
    ] {
        let (s, v) = post(&c, format!("{base}{route}"), body).await;
        assert_eq!(
            (s, &v["error"]["param"]),
            (400, &json!("frobnicate")),
            "{route} {v}"
        );
    }
    // Every shared sampling field is accepted on every route (one struct).
    for route in ["/generate", "/v1/completions", "/v1/chat/completions"] {
        let mut body = body_with(route, &chat);
        for (k, v) in [
            ("temperature", json!(0)),
            ("top_k", json!(1)),
            ("top_p", json!(0.5)),
            ("min_p", json!(0.1)),
            ("repetition_penalty", json!(1.1)),
            ("frequency_penalty", json!(0.1)),
            ("presence_penalty", json!(0.1)),
            ("seed", json!(3)),
            ("ignore_eos", json!(true)),
            ("stop", json!(["\n\n"])),
            ("stream", json!(false)),
        ] {
            body[k] = v;
        }
        let (s, v) = post(&c, format!("{base}{route}"), body).await;
        assert_eq!(s, 200, "{route} {v}");
    }
    // OpenAI's temperature bound is 2; /generate accepts up to 100.
    let (s, v) = post(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": "x", "temperature": 3}),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["param"]),
        (422, &json!("temperature")),
        "{v}"
    );
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "x", "temperature": 3, "max_new_tokens": 2}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&c, format!("{base}/v1/completions"), json!({"prompt": []})).await;
    assert_eq!((s, &v["error"]["param"]), (422, &json!("prompt")), "{v}");
    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": chat, "n": 2}),
    )
    .await;
    assert_eq!((s, &v["error"]["param"]), (422, &json!("n")), "{v}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_enforced() {
    let model = test_model();
    let mut opts = test_options();
    opts.api_key = Some("s3cret".into());
    let server = start(opts, model).await;
    let c = client();
    let url = format!("{}/generate", server.url());
    let body = json!({"prompt": "hi", "max_new_tokens": 2});
    let r = c.post(&url).json(&body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert_envelope(&r.json().await.expect("json"), "missing_api_key");
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert_envelope(&r.json().await.expect("json"), "invalid_api_key");
    let r = c
        .post(&url)
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .post(&url)
        .header("x-api-key", "s3cret")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .get(format!("{}/health", server.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200, "/health stays open");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_info_and_health_move() {
    let model = test_model();
    let server = start(test_options(), model.clone()).await;
    let c = client();
    let base = server.url();
    let r = c
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status().as_u16(), 200);
    let before = metric(&c, &base, "airavata_generated_tokens_total").await;
    let (s, _) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "नमस्ते", "max_new_tokens": 8, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, 200);
    let after = metric(&c, &base, "airavata_generated_tokens_total").await;
    assert!(after > before);
    assert!(metric(&c, &base, "airavata_prompt_tokens_total").await > 0.0);
    assert!(metric(&c, &base, "airavata_time_to_first_token_seconds_count").await >= 1.0);
    assert!(metric(&c, &base, "airavata_request_duration_seconds_count").await >= 1.0);
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        text.contains("airavata_requests_total{route=\"/generate\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("airavata_kv_cache_usage_ratio"));
    assert!(text.contains("airavata_inter_token_latency_seconds_bucket"));
    assert!(text.contains("airavata_queue_time_seconds_sum"));
    // The step profile: one mixed step (the prompt) and 7 decode-only steps of
    // one token each, in one micro-batch each; every phase took some time.
    // A step is counted before its tokens go out, so the answer implies it.
    assert_eq!(metric(&c, &base, &steps("decode")).await, 7.0);
    assert_eq!(metric(&c, &base, &steps("mixed")).await, 1.0);
    assert_eq!(
        metric(&c, &base, "airavata_engine_micro_batches_total").await,
        8.0
    );
    let prompt = metric(&c, &base, "airavata_prompt_tokens_total").await;
    assert_eq!(
        metric(&c, &base, "airavata_engine_step_tokens_total").await,
        prompt + 7.0
    );
    // llama.cpp builds a graph for the prompt and for the first one-token
    // step; the six one-token steps after it reuse that graph.
    assert_eq!(
        metric(&c, &base, "airavata_engine_graphs_reused_total").await,
        6.0
    );
    for phase in ["plan", "decode", "sync", "sample", "emit"] {
        let name = format!("airavata_engine_step_seconds_total{{phase=\"{phase}\"}}");
        assert!(metric(&c, &base, &name).await > 0.0, "{phase}");
    }
    // The request's end makes the CPU engine wait (in vain, up to 5 ms) for a
    // successor; the wait is counted when it ends, after the answer went out.
    let linger = "airavata_engine_step_seconds_total{phase=\"linger\"}";
    let t0 = Instant::now();
    while metric(&c, &base, linger).await == 0.0 {
        assert!(t0.elapsed() < Duration::from_secs(2), "no linger counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metric(&c, &base, linger).await >= 0.004);
    let v = info(&c, &base).await;
    assert_eq!(v["status"], "ready");
    // The CPU default.
    assert_eq!(v["model"]["linger_ms"], 5, "{v}");
    assert_eq!(v["slots"], 4);
    assert_eq!(v["active"], 0);
    assert_eq!(v["waiting"], 0);
    assert!(v["version"]
        .as_str()
        .unwrap_or_default()
        .contains("llama.cpp b"));
    assert_eq!(v["model_path"], model.display().to_string());
    assert!(v["model"]["file_type"].is_string());
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_loaded() {
    let model = test_model();
    let mut opts = test_options();
    // The engine waits before loading, so the loading window is certain to
    // be seen (not a race with a fast load).
    opts.load_delay_ms = Some(400);
    let server = airavata::server::bind(opts, model).await.expect("bind");
    let c = client();
    let mut saw = Vec::new();
    let t0 = std::time::Instant::now();
    loop {
        let r = c
            .get(format!("{}/health", server.url()))
            .send()
            .await
            .expect("health");
        let s = r.status().as_u16();
        if s == 503 {
            assert!(
                r.headers().contains_key("retry-after"),
                "503 without Retry-After"
            );
            assert_envelope(&r.json().await.expect("json"), "model_loading");
        }
        saw.push(s);
        if s == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the model did not load within 30 s: {saw:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        saw.first(),
        Some(&503),
        "the first answer, while loading: {saw:?}"
    );
    assert!(
        saw[..saw.len() - 1].iter().all(|s| *s == 503),
        "only 503 before the 200: {saw:?}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_routes_stream_and_match() {
    let model = test_model();
    let server = start(test_options(), model).await;
    let c = client();
    let base = server.url();
    let (s, v) = post(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().expect("text").to_string();
    assert_eq!(v["usage"]["completion_tokens"], 30);
    let events = stream_body(
        &c,
        format!("{base}/v1/completions"),
        json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let mut streamed = String::new();
    let mut usage = None;
    for (_, data) in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(data).expect("chunk JSON");
        if let Some(ch) = v["choices"].as_array().and_then(|a| a.first()) {
            streamed.push_str(ch["text"].as_str().unwrap_or_default());
        } else {
            usage = Some(v["usage"].clone());
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(usage.expect("usage chunk")["completion_tokens"], 30);

    let chat = json!({"messages": [{"role": "system", "content": "संक्षेप में उत्तर दें।"},
                                    {"role": "user", "content": "भारत की राजधानी क्या है?"}],
                      "max_tokens": 24, "temperature": 0});
    let (s, v) = post(&c, format!("{base}/v1/chat/completions"), chat.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    let mut body = chat;
    body["stream"] = json!(true);
    let events = stream_body(&c, format!("{base}/v1/chat/completions"), body).await;
    let mut streamed = String::new();
    let mut finish = None;
    for (_, data) in events.iter().filter(|e| e.1 != "[DONE]") {
        let v: Value = serde_json::from_str(data).expect("chunk");
        assert_eq!(v["object"], "chat.completion.chunk");
        let ch = &v["choices"][0];
        streamed.push_str(ch["delta"]["content"].as_str().unwrap_or_default());
        if !ch["finish_reason"].is_null() {
            finish = Some(ch["finish_reason"].clone());
        }
    }
    assert_eq!(streamed, answer);
    assert!(finish.is_some());
    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [], "max_tokens": 3}),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(v["error"]["param"], "messages");
    let v: Value = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("m")
        .json()
        .await
        .expect("j");
    assert_eq!(v["object"], "list");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_round_trips_devanagari() {
    let model = test_model();
    let server = start(test_options(), model).await;
    let c = client();
    let base = server.url();
    let text = "नमस्ते दुनिया, hello";
    let (s, v) = post(
        &c,
        format!("{base}/tokenize"),
        json!({"content": text, "add_special": false}),
    )
    .await;
    assert_eq!(s, 200);
    let tokens = v["tokens"].clone();
    assert!(v["count"].as_u64().unwrap_or(0) > 0);
    let (s, v) = post(&c, format!("{base}/detokenize"), json!({"tokens": tokens})).await;
    assert_eq!(s, 200);
    assert_eq!(v["content"].as_str().map(str::trim_start), Some(text));
    let (s, v) = post(
        &c,
        format!("{base}/tokenize"),
        json!({"content": "hi", "with_pieces": true}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["tokens"][0]["piece"].is_string());
    server.shutdown().await.expect("shutdown");
}

/// The names lm-evaluation-harness's remote tokenizer uses (vLLM's): `prompt`
/// and `add_special_tokens` on `/tokenize`, `prompt` from `/detokenize`, and
/// `GET /tokenizer_info`; the ids equal the llama-server-style request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_routes_answer_vllm_names() {
    let model = test_model();
    let server = start(test_options(), model).await;
    let c = client();
    let base = server.url();
    let text = "कहानी: once upon a time";
    let (s, ours) = post(
        &c,
        format!("{base}/tokenize"),
        json!({"content": text, "add_special": false}),
    )
    .await;
    assert_eq!(s, 200, "{ours}");
    let (s, vllm) = post(
        &c,
        format!("{base}/tokenize"),
        json!({"prompt": text, "add_special_tokens": false}),
    )
    .await;
    assert_eq!(s, 200, "{vllm}");
    assert_eq!(vllm["tokens"], ours["tokens"]);
    let (_, with_bos) = post(
        &c,
        format!("{base}/tokenize"),
        json!({"prompt": text, "add_special_tokens": true}),
    )
    .await;
    let n = |v: &Value| v["tokens"].as_array().map(Vec::len).unwrap_or(0);
    // The stories260K test model prepends BOS.
    assert_eq!(n(&with_bos), n(&vllm) + 1, "{with_bos} vs {vllm}");
    let (s, back) = post(
        &c,
        format!("{base}/detokenize"),
        json!({"tokens": vllm["tokens"].clone()}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(back["prompt"].as_str().map(str::trim_start), Some(text));
    assert_eq!(back["prompt"], back["content"]);
    let info: Value = c
        .get(format!("{base}/tokenizer_info"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(info["bos_token"], "<s>", "{info}");
    assert_eq!(info["eos_token"], "</s>", "{info}");
    assert_eq!(info["add_bos_token"], true, "{info}");
    assert!(
        info["chat_template"]
            .as_str()
            .is_some_and(|t| t.contains("<|assistant|>")),
        "{info}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_output() {
    let model = test_model();
    let server = start(test_options(), model).await;
    let c = client();
    let url = format!("{}/generate", server.url());
    let (_, full) = post(
        &c,
        url.clone(),
        json!({"prompt": "", "raw": true, "max_new_tokens": 40}),
    )
    .await;
    let full = full["generated_text"].as_str().expect("text").to_string();
    // A stop string taken from the middle of the greedy output must cut it there.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "{full:?}");
    let stop: String = chars[8..11].iter().collect();
    let cut_at = full.find(&stop).expect("stop occurs");
    for stream in [false, true] {
        let body = json!({"prompt": "", "raw": true, "max_new_tokens": 40,
                          "stop": [stop.clone(), "never-seen"], "stream": stream});
        let r = c.post(url.clone()).json(&body).send().await.expect("send");
        let raw = r.bytes().await.expect("body");
        let v: Value = if stream {
            let events = sse_events(&raw);
            serde_json::from_str(&events.last().expect("events").1).expect("json")
        } else {
            serde_json::from_slice(&raw).expect("json")
        };
        assert_eq!(v["generated_text"], &full[..cut_at], "stream={stream}");
        assert_eq!(v["finish_reason"], "stop");
    }
    server.shutdown().await.expect("shutdown");
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Sends a short greedy chat-wrapped /generate; returns (cached prompt tokens, text).
async fn ask_cached(c: &reqwest::Client, base: &str, prompt: &str) -> (usize, String) {
    let (s, v) = post(
        c,
        format!("{base}/generate"),
        json!({"prompt": prompt, "max_new_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens");
    let text = v["generated_text"].as_str().expect("text").to_string();
    (usize::try_from(cached).expect("small"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_reuses_the_longest_prefix() {
    let model = test_model();
    let c = client();
    let server = start(test_options(), model.clone()).await;
    let engine = server.engine();
    assert!(engine.info().expect("info").prompt_cache);
    let hello = engine
        .tokenize_prompt(&Prompt::User("hello there".into()))
        .expect("tokens");
    let namaste = engine
        .tokenize_prompt(&Prompt::User("नमस्ते दुनिया".into()))
        .expect("tokens");
    let shared = common_prefix(hello.ids(), namaste.ids());
    assert!(shared >= 2, "chat preamble {shared}");
    let base = server.url();
    // Nothing cached yet.
    let (cached, first) = ask_cached(&c, &base, "hello there").await;
    assert_eq!(cached, 0);
    // The same prompt again: all but the last prompt token is reused, and the
    // greedy answer is unchanged.
    let (cached, again) = ask_cached(&c, &base, "hello there").await;
    assert_eq!(cached, hello.len() - 1);
    assert_eq!(again, first);
    // A prompt sharing only the chat preamble (`<s><|user|>\n`) goes to the
    // lowest free slot (slot 0, which held "hello there") and reuses just that.
    let (cached, _) = ask_cached(&c, &base, "नमस्ते दुनिया").await;
    assert_eq!(cached, shared);
    // So "hello there" is back to the preamble, with the same greedy answer.
    let (cached, third) = ask_cached(&c, &base, "hello there").await;
    assert_eq!(cached, shared);
    assert_eq!(third, first);
    let reused = hello.len() - 1 + 2 * shared;
    assert_eq!(
        metric(&c, &base, "airavata_cached_prompt_tokens_total").await,
        reused as f64
    );
    // Idle: no cells used by requests; slot 0 keeps "hello there" + 5 fed tokens.
    assert_eq!(metric(&c, &base, "airavata_kv_cache_tokens").await, 0.0);
    assert_eq!(
        metric(&c, &base, "airavata_kv_cache_cached_tokens").await,
        (hello.len() + 5) as f64
    );
    server.shutdown().await.expect("shutdown");

    // Turned off, nothing is reused.
    let off = ServeOptions {
        no_prompt_cache: true,
        ..test_options()
    };
    let server = start(off, model).await;
    let base = server.url();
    assert!(!server.engine().info().expect("info").prompt_cache);
    for _ in 0..2 {
        assert_eq!(ask_cached(&c, &base, "hello there").await.0, 0);
    }
    assert_eq!(
        metric(&c, &base, "airavata_kv_cache_cached_tokens").await,
        0.0
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stories260k_greedy_reproduces_reference() {
    let test = "stories260k_greedy_reproduces_reference";
    let Some(model) = common::asset(test, "stories260k-gguf/stories260K.gguf") else {
        return;
    };
    let Some(expected) = common::asset(test, "stories260k-llama2c/expected_greedy_200.txt") else {
        return;
    };
    let expected = std::fs::read_to_string(expected).expect("expected_greedy_200.txt");
    let server = start(test_options(), model).await;
    let (s, v) = post(
        &client(),
        format!("{}/generate", server.url()),
        json!({"prompt": "", "raw": true, "max_new_tokens": 100, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let got = v["generated_text"].as_str().expect("text");
    assert!(got.len() > 100);
    assert!(
        expected.starts_with(got),
        "got {got:?}\nexpected {expected:?}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_fallback_devanagari_is_held_back_until_complete() {
    use airavata::engine::utf8::Utf8Accumulator;
    let server = start(test_options(), test_model()).await;
    let engine = server.engine();
    // Conjuncts and signs the synthetic vocabulary lacks go through byte fallback.
    let text = "ज्ञ ॐ क्षत्रिय ऋषि";
    let tokens = engine.tokenize(text, false).expect("tokenize");
    let pieces = engine.token_bytes(&tokens).expect("bytes");
    assert!(
        pieces.iter().any(|p| std::str::from_utf8(p).is_err()),
        "expected byte-fallback pieces that split code points"
    );
    let mut acc = Utf8Accumulator::new();
    let mut out = String::new();
    for p in &pieces {
        let chunk = acc.push(p);
        assert!(
            !chunk.contains('\u{FFFD}'),
            "broken code point emitted: {chunk:?}"
        );
        out.push_str(&chunk);
    }
    out.push_str(&acc.finish());
    assert_eq!(out.trim_start(), text);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_in_flight_requests() {
    let mut opts = test_options();
    opts.step_delay_ms = Some(5);
    let server = start(opts, test_model()).await;
    let c = client();
    let url = format!("{}/generate", server.url());
    let req = tokio::spawn({
        let c = c.clone();
        async move {
            post(
                &c,
                url,
                json!({"prompt": "Once", "raw": true, "max_new_tokens": 60}),
            )
            .await
        }
    });
    let t0 = Instant::now();
    while server.engine().stats().running() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.shutdown().await.expect("shutdown");
    let (s, v) = req.await.expect("request task");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().map(|n| n > 0),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504() {
    let mut opts = test_options();
    opts.step_delay_ms = Some(20);
    opts.request_timeout = 1;
    let server = start(opts, test_model()).await;
    let c = client();
    let (s, v) = post(
        &c,
        format!("{}/generate", server.url()),
        json!({"prompt": "Once", "raw": true, "max_new_tokens": 400}),
    )
    .await;
    assert_eq!(s, 504, "{v}");
    assert_envelope(&v, "request_timeout");
    assert_eq!(server.engine().stats().running(), 0);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origin_is_applied() {
    let mut opts = test_options();
    opts.cors_origin = vec!["https://example.org".into()];
    let server = start(opts, test_model()).await;
    let c = client();
    let r = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/generate", server.url()),
        )
        .header("origin", "https://example.org")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://example.org")
    );
    let r = c
        .get(format!("{}/health", server.url()))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("get");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fails_when_the_model_does_not_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("not-a-model.gguf");
    std::fs::write(&bogus, b"GGUF but not really").expect("write");
    let mut opts = test_options();
    opts.port = 0;
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        airavata::server::serve(opts, bogus, std::future::pending()),
    )
    .await
    .expect("serve returns instead of hanging");
    assert!(
        matches!(res, Err(airavata::server::ServerError::Engine(_))),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_client_disconnect_cancels_too() {
    let mut opts = test_options();
    opts.step_delay_ms = Some(20);
    let server = start(opts, test_model()).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let r = impatient
        .post(format!("{}/generate", server.url()))
        .json(&json!({"prompt": "x", "raw": true, "max_new_tokens": 400}))
        .send()
        .await;
    assert!(r.is_err(), "the request should have timed out client-side");
    let t0 = Instant::now();
    while server.engine().stats().running() != 0 {
        assert!(t0.elapsed() < Duration::from_secs(2), "slot not freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(
            &client(),
            &server.url(),
            "airavata_generations_cancelled_total"
        )
        .await,
        1.0
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_our_server_reports_the_engine_profile() {
    use airavata::bench::{render_markdown, run, BenchArgs};
    let server = start(test_options(), test_model()).await;
    let args = BenchArgs {
        url: server.url(),
        concurrency: vec![1, 4],
        requests: Some(4),
        warmup: 1,
        prompt_tokens: Some(16),
        max_tokens: Some(12),
        unique_prompts: true,
        ..BenchArgs::default()
    };
    let report = run(args).await.expect("bench runs");
    for level in &report.levels {
        assert_eq!(level.ok, 4, "c={}", level.concurrency);
        // ignore_eos: every request yields exactly max_tokens.
        assert_eq!(level.output_tokens, Some(48));
        let server_ttft = level.server_ttft_ms.as_ref().expect("our timings");
        assert_eq!(server_ttft.count, 4);
        assert!(server_ttft.min > 0.0);
        let e = level
            .engine
            .as_ref()
            .expect("our server exports the step profile");
        // 4 requests × 12 tokens: the first token of each comes from a prompt
        // step, the other 11 from decode steps (shared across requests when
        // they overlap), so there are at least 12 and at most 48 steps.
        assert!((12..=48).contains(&e.steps), "steps {}", e.steps);
        assert!(e.mixed_fraction > 0.0 && e.mixed_fraction <= 1.0);
        assert!(e.micro_batches_per_step >= 1.0);
        assert!(e.total_ms_per_step > 0.0);
        assert!(e.phase_ms("decode") > 0.0);
    }
    // Serial requests never share a step: 4 × 12 steps exactly.
    assert_eq!(report.levels[0].engine.as_ref().map(|e| e.steps), Some(48));
    let md = render_markdown(&report);
    assert!(md.contains("Engine steps"), "{md}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_unified_runs_each_step_in_one_pass() {
    let model = test_model();
    let c = client();
    let greedy = json!({"prompt": "Tell me a story", "max_new_tokens": 24, "temperature": 0});
    let server = start(test_options(), model.clone()).await;
    let (s, v) = post(&c, format!("{}/generate", server.url()), greedy.clone()).await;
    assert_eq!(s, 200, "{v}");
    let per_slot = v["generated_text"].clone();
    assert!(!server.engine().info().expect("info").kv_unified);
    server.shutdown().await.expect("shutdown");

    let opts = ServeOptions {
        kv_unified: true,
        ..test_options()
    };
    let server = start(opts, model).await;
    let base = server.url();
    assert!(server.engine().info().expect("info").kv_unified);
    // One sequence alone computes the same thing either way.
    let (s, v) = post(&c, format!("{base}/generate"), greedy).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["generated_text"], per_slot);
    // Concurrent requests with different prompts: steps mix prompt chunks
    // and decode tokens, and the profile counts one evaluation per step.
    let futs = ["नमस्ते", "Once upon a time", "भारत", "Lily"].map(|p| {
        let (c, url) = (c.clone(), format!("{base}/generate"));
        async move {
            post(
                &c,
                url,
                json!({"prompt": p, "max_new_tokens": 16, "ignore_eos": true}),
            )
            .await
        }
    });
    for (s, v) in futures::future::join_all(futs).await {
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 16);
    }
    let total =
        metric(&c, &base, &steps("decode")).await + metric(&c, &base, &steps("mixed")).await;
    let micro = metric(&c, &base, "airavata_engine_micro_batches_total").await;
    assert_eq!(micro, total);
    assert!(total >= 24.0 + 16.0);
    assert!(metric(&c, &base, &steps("mixed")).await >= 2.0);
    server.shutdown().await.expect("shutdown");
}
