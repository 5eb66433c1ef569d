//! Chat on a real model in its own format: SmolLM2-135M-Instruct carries a
//! ChatML `tokenizer.chat_template`, and every chat path (`/v1/chat/completions`,
//! non-raw `/generate`, `/tokenize` with `chat`) renders it, instead of
//! Airavata's `<|user|>` format.

mod common;

use serde_json::{json, Value};

use common::server::{client, start, test_options};

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// The prompt token ids llama.cpp gives `text` with special tokens parsed (as
/// llama-server tokenizes a rendered chat), no BOS added (SmolLM2 adds none).
fn llama_tokens(model: &std::path::Path, text: &str) -> Vec<i32> {
    let m = common::vocab_only_model(model);
    m.vocab()
        .tokenize(text.as_bytes(), false, true)
        .into_iter()
        .map(|t| t.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_chats_in_its_own_template() {
    let Some((q4, _)) = common::smollm2("smollm2_chats_in_its_own_template") else {
        return;
    };
    let server = start(test_options(), q4.clone()).await;
    let c = client();
    let base = server.url();
    let question = "Name three colors.";
    let rendered = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    );
    let want = llama_tokens(&q4, &rendered);
    // <|im_start|> and <|im_end|> are single special tokens, not text.
    let im_start = llama_tokens(&q4, "<|im_start|>");
    assert_eq!(im_start.len(), 1, "{im_start:?}");
    assert_eq!(want[0], im_start[0]);

    let (s, v) = post(
        &c,
        format!("{base}/tokenize"),
        json!({"content": question, "chat": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let got: Vec<i32> = serde_json::from_value(v["tokens"].clone()).expect("ids");
    assert_eq!(got, want, "the prompt tokens of a one-message chat");

    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 60}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], want.len(), "{v}");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    // It answers and ends its turn (<|im_end|>), instead of running to the
    // token limit in a format it was not trained on.
    eprintln!("SmolLM2 answers {question:?} with {answer:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{answer}");
    assert!(
        !answer.contains("<|im_end|>") && !answer.contains("<|im_start|>"),
        "{answer}"
    );
    let colors = [
        "red", "blue", "green", "yellow", "orange", "purple", "black", "white",
    ];
    let named = colors
        .iter()
        .filter(|c| answer.to_lowercase().contains(*c))
        .count();
    assert!(named >= 3, "fewer than three colours in {answer:?}");

    // Non-raw /generate is the same one-message chat.
    let (s, g) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": question, "max_new_tokens": 60}),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["generated_text"], answer.as_str());

    // Content as text parts and the developer role are accepted.
    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ], "temperature": 0, "max_tokens": 8}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // A message field nobody reads is refused, not ignored.
    let (s, v) = post(
        &c,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": question, "audio": {}}]}),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (400, &json!("unsupported_field")),
        "{v}"
    );
    assert_eq!(v["error"]["param"], "audio");
    server.shutdown().await.expect("shutdown");
}

/// A conversation the template refuses (its `raise_exception`) is a 400 that
/// names the template's own message, not a 500 or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_exception_is_a_400_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let template = dir.path().join("strict.jinja");
    std::fs::write(
        &template,
        "{% for m in messages %}{% if m['role'] == 'system' %}\
         {{ raise_exception('System messages are not supported here') }}{% endif %}\
         {{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}assistant:",
    )
    .expect("write template");
    let mut opts = test_options();
    opts.chat_template = Some(template.display().to_string());
    let server = start(opts, common::server::test_model()).await;
    let c = client();
    let (s, v) = post(
        &c,
        format!("{}/v1/chat/completions", server.url()),
        json!({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "chat_template_error");
    assert_eq!(v["error"]["param"], "messages");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("raised an exception: System messages are not supported here"),
        "{msg}"
    );
    // Without the system turn the same template renders and the model answers.
    let (s, v) = post(
        &c,
        format!("{}/v1/chat/completions", server.url()),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    server.shutdown().await.expect("shutdown");
}

/// `tool_choice: auto`: the grammar lets the model answer in text or call;
/// either way the answer is well formed (a call has arguments that follow the
/// schema, text has no call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tool_choice_answers_in_text_or_a_valid_call() {
    let Some((q4, _)) = common::smollm2("auto_tool_choice_answers_in_text_or_a_valid_call") else {
        return;
    };
    let server = start(test_options(), q4).await;
    let c = client();
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}}]);
    for (question, choice) in [
        ("What is the weather in Pune?", json!("auto")),
        ("Say hello.", json!("auto")),
        (
            "What is the weather in Pune?",
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ),
    ] {
        let (s, v) = post(
            &c,
            format!("{}/v1/chat/completions", server.url()),
            json!({"messages": [{"role": "user", "content": question}], "tools": tools,
                   "tool_choice": choice, "temperature": 0, "max_tokens": 150}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let msg = &v["choices"][0]["message"];
        match msg["tool_calls"].as_array() {
            Some(calls) => {
                assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
                assert_eq!(calls[0]["function"]["name"], "get_weather");
                let args: Value = serde_json::from_str(
                    calls[0]["function"]["arguments"]
                        .as_str()
                        .expect("arguments"),
                )
                .expect("JSON arguments");
                assert!(args["city"].is_string(), "{args}");
                assert!(msg["content"].is_null(), "{v}");
            }
            None => {
                assert!(
                    choice == json!("auto"),
                    "a named function must be called: {v}"
                );
                let text = msg["content"].as_str().expect("text");
                assert!(!text.starts_with('{'), "{text}");
            }
        }
    }
    let (s, v) = post(
        &c,
        format!("{}/v1/chat/completions", server.url()),
        json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools,
               "tool_choice": "required", "grammar": "root ::= \"x\""}),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["param"]),
        (422, &json!("tool_choice")),
        "{v}"
    );
    server.shutdown().await.expect("shutdown");
}
