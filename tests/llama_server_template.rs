//! llama-server (llama.cpp b11434, built by `scripts/build-llama-tools.sh`) as
//! the oracle of our chat prompts: on SmolLM2-135M-Instruct (a ChatML
//! `tokenizer.chat_template` in the GGUF), for five conversations (English,
//! Hindi, a system message with a multi-turn history, whitespace and code,
//! a translation request) our server's prompt tokens equal llama-server's
//! (`--jinja`: `POST /apply-template`, then `POST /tokenize` with special
//! tokens added and parsed, as its chat route tokenizes) token for token, and
//! the greedy answers (32 tokens, temperature 0) are equal or leave each
//! other only at a near-tie.
//!
//! Our side: the prompt tokens the engine runs for the chat body
//! ([`Engine::tokenize_prompt`] of the same messages, deserialized from the
//! same JSON), checked over HTTP against `usage.prompt_tokens` of
//! `/v1/chat/completions` and, for a one-message chat, against the ids of
//! `POST /tokenize` with `chat`.
//!
//! Skipped (printing `skipped`) when llama-server is not built, except in CI,
//! where `.ci/run` builds it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airavata::engine::{ChatMessage, Prompt};
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Value};

use common::server::{client, start, test_options};

/// Two candidates closer than this (in log-probability) are a near-tie that
/// kernel rounding may decide either way (as in `tests/server_api.rs`).
const NEAR_TIE: f64 = 0.01;

const MAX_TOKENS: u32 = 32;

/// The five conversations.
fn conversations() -> Vec<(&'static str, Value)> {
    vec![
        (
            "english",
            json!([{"role": "user", "content": "Name three colors."}]),
        ),
        (
            "hindi",
            json!([{"role": "user", "content": "भारत की राजधानी क्या है? एक वाक्य में उत्तर दीजिए।"}]),
        ),
        (
            "system-multi-turn",
            json!([
                {"role": "system", "content": "You are a concise assistant. Answer in one short sentence."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."},
                {"role": "user", "content": "And of Italy?"},
            ]),
        ),
        (
            "whitespace-code",
            json!([{"role": "user", "content": "  Write a Python function that adds two numbers.\n\n\tKeep it short:\n```python\ndef add(a, b):\n```  "}]),
        ),
        (
            "translate-multi-turn",
            json!([
                {"role": "user", "content": "Translate to Hindi: Good morning."},
                {"role": "assistant", "content": "सुप्रभात।"},
                {"role": "user", "content": "Now translate: How are you?"},
            ]),
        ),
    ]
}

/// llama-server, killed when dropped.
struct LlamaServer {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    async fn start(bin: &Path, model: &Path, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join("llama-server.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .arg("-m")
            .arg(model)
            .args(["--jinja", "-c", "1024", "-np", "1", "-t", "2", "-tb", "2"])
            // As our test server: flash attention off, F16 KV cache (both defaults otherwise).
            .args([
                "-fa",
                "off",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut server = LlamaServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let c = client();
        let t0 = Instant::now();
        loop {
            if let Ok(r) = c.get(format!("{}/health", server.base)).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("llama-server exited ({st}):\n{}", server.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "llama-server not ready in 120 s:\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> Value {
    let r = c.post(&url).json(&body).send().await.expect("send");
    let status = r.status();
    let v: Value = r.json().await.expect("json body");
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a token list: {v}"))
        .iter()
        .map(|t| t.as_i64().unwrap_or_else(|| panic!("not a token id: {t}")))
        .collect()
}

/// A greedy answer: each token's bytes and its candidates'
/// log-probabilities (`None` where llama-server does not list them).
struct Greedy {
    tokens: Vec<Vec<u8>>,
    top: Vec<Option<Vec<f64>>>,
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bytes {v}: {e}"))
}

fn sorted_logprobs(cands: &Value) -> Vec<f64> {
    let mut l: Vec<f64> = cands
        .as_array()
        .unwrap_or_else(|| panic!("no candidates: {cands}"))
        .iter()
        .filter_map(|c| c["logprob"].as_f64())
        .collect();
    l.sort_by(|a, b| b.total_cmp(a));
    l
}

impl Greedy {
    /// Ours: `logprobs.content` of `/v1/chat/completions` lists every token
    /// with its own bytes (the end-of-turn token it stopped at is not listed).
    fn ours(v: &Value) -> Self {
        let content = v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap_or_else(|| panic!("no logprobs.content in {v}"));
        Greedy {
            tokens: content.iter().map(|e| bytes(&e["bytes"])).collect(),
            top: content
                .iter()
                .map(|e| Some(sorted_logprobs(&e["top_logprobs"])))
                .collect(),
        }
    }

    /// llama-server's `POST /completion` with `return_tokens`: `tokens` are
    /// the generated ids (a trailing end-of-turn token is dropped, as ours
    /// does not list it); `completion_probabilities` leave out each token whose
    /// text ended inside a UTF-8 character (llama-server holds such text back
    /// and never lists its candidates), so they are matched to the ids in order.
    fn llama_server(v: &Value, piece: &dyn Fn(i64) -> Vec<u8>, eog: &dyn Fn(i64) -> bool) -> Self {
        let mut ids = ids(&v["tokens"]);
        if ids.last().is_some_and(|&t| eog(t)) {
            ids.pop();
        }
        let probs = v["completion_probabilities"]
            .as_array()
            .unwrap_or_else(|| panic!("no completion_probabilities in {v}"));
        let mut probs = probs.iter().peekable();
        let top = ids
            .iter()
            .map(|&id| {
                probs
                    .next_if(|e| e["id"].as_i64() == Some(id))
                    .map(|e| sorted_logprobs(&e["top_logprobs"]))
            })
            .collect();
        Greedy {
            tokens: ids.iter().map(|&t| piece(t)).collect(),
            top,
        }
    }

    /// How far the best candidate at `k` leads the second (None past the end
    /// or where not listed).
    fn gap(&self, k: usize) -> Option<f64> {
        let l = self.top.get(k)?.as_ref()?;
        Some(match l.as_slice() {
            [a, b, ..] => a - b,
            _ => f64::INFINITY,
        })
    }
}

fn llama_server(test: &str) -> Option<PathBuf> {
    match common::llama_tool("llama-server") {
        Some(p) => Some(p),
        None if common::in_ci() => {
            panic!("llama-server not built (scripts/build-llama-tools.sh runs in .ci/run)")
        }
        None => {
            eprintln!("skipped {test}: llama-server not built (run scripts/build-llama-tools.sh)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_tokens_and_greedy_answers_match_llama_server() {
    const TEST: &str = "prompt_tokens_and_greedy_answers_match_llama_server";
    let Some(bin) = llama_server(TEST) else {
        return;
    };
    let Some((q4, _)) = common::smollm2(TEST) else {
        return;
    };
    let vocab_model = common::vocab_only_model(&q4);
    let eog = |id: i64| vocab_model.vocab().is_eog(LlamaToken(id as i32));
    let piece = |id: i64| {
        let mut buf = Vec::with_capacity(32);
        vocab_model
            .vocab()
            .token_to_piece_into(LlamaToken(id as i32), &mut buf, false, None);
        buf
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let theirs = LlamaServer::start(&bin, &q4, tmp.path()).await;
    let ours = start(test_options(), q4.clone()).await;
    let c = client();
    let mut report = Vec::new();
    for (name, messages) in conversations() {
        // (a) Prompt tokens.
        let rendered = post(
            &c,
            format!("{}/apply-template", theirs.base),
            json!({ "messages": messages }),
        )
        .await;
        let rendered = rendered["prompt"].as_str().expect("prompt").to_string();
        let want = ids(&post(
            &c,
            format!("{}/tokenize", theirs.base),
            json!({"content": rendered, "add_special": true, "parse_special": true}),
        )
        .await["tokens"]);
        let msgs: Vec<ChatMessage> = serde_json::from_value(messages.clone()).expect("messages");
        let engine = ours.engine().clone();
        let got: Vec<i64> = tokio::task::spawn_blocking(move || {
            engine
                .tokenize_prompt(&Prompt::Chat(msgs))
                .expect("tokenize")
                .ids()
                .iter()
                .map(|&t| t as i64)
                .collect()
        })
        .await
        .expect("tokenize task");
        assert_eq!(
            got, want,
            "{name}: our prompt tokens differ from llama-server's for the prompt {rendered:?}"
        );
        if let [m] = messages.as_array().expect("messages").as_slice() {
            let v = post(
                &c,
                format!("{}/tokenize", ours.url()),
                json!({"content": m["content"], "chat": true}),
            )
            .await;
            assert_eq!(ids(&v["tokens"]), want, "{name}: our /tokenize with chat");
        }

        // (b) Greedy answers: the chat routes' texts, and per token (the
        // chat route of llama-server lists no candidates for tokens that end
        // inside a UTF-8 character) its /completion on the same prompt tokens.
        let body = json!({"messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS,
                          "logprobs": true, "top_logprobs": 5});
        let mut their_body = body.clone();
        their_body["cache_prompt"] = json!(false);
        let tv = post(
            &c,
            format!("{}/v1/chat/completions", theirs.base),
            their_body,
        )
        .await;
        let ov = post(&c, format!("{}/v1/chat/completions", ours.url()), body).await;
        // Both chat routes ran the prompt they render and tokenize.
        assert_eq!(tv["usage"]["prompt_tokens"], want.len(), "{name}: {tv}");
        assert_eq!(ov["usage"]["prompt_tokens"], want.len(), "{name}: {ov}");
        let tc = post(
            &c,
            format!("{}/completion", theirs.base),
            json!({"prompt": want, "n_predict": MAX_TOKENS, "temperature": 0, "n_probs": 5,
                   "return_tokens": true, "cache_prompt": false}),
        )
        .await;
        let (t, o) = (Greedy::llama_server(&tc, &piece, &eog), Greedy::ours(&ov));
        let text = |v: &Value| {
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let finish = |v: &Value| v["choices"][0]["finish_reason"].clone();
        let (our_text, their_text) = (text(&ov), text(&tv));
        let first_diff =
            (0..t.tokens.len().max(o.tokens.len())).find(|&k| t.tokens.get(k) != o.tokens.get(k));
        let outcome = match first_diff {
            None => {
                assert_eq!(finish(&ov), finish(&tv), "{name}");
                // An answer cut inside a character: llama-server drops the
                // partial character, we end the text with U+FFFD.
                let cut = std::str::from_utf8(&o.tokens.concat()).is_err();
                let their_lossy = their_text.clone() + if cut { "\u{FFFD}" } else { "" };
                assert_eq!(
                    our_text, their_lossy,
                    "{name}: equal tokens, different chat text"
                );
                if cut {
                    "equal (cut inside a character)"
                } else {
                    "equal"
                }
                .to_string()
            }
            Some(k) => {
                // Where one answer ended (its end-of-turn token is not listed),
                // the other's candidates at that position tell the margin.
                let gaps = [t.gap(k), o.gap(k)];
                let near_tie = gaps.iter().flatten().count() > 0
                    && gaps.iter().flatten().all(|&g| g < NEAR_TIE);
                assert!(
                    near_tie,
                    "{name}: our greedy answer leaves llama-server's at token {k} where no two \
                     candidates are within {NEAR_TIE} nats (top-2 gaps {gaps:?}):\n\
                     ours:         {our_text:?}\nllama-server: {their_text:?}"
                );
                format!("near-tie at token {k} (top-2 gaps {gaps:?})")
            }
        };
        // How close the answers' closest calls were (0.01 nats is a near-tie).
        let min_gap = (0..o.tokens.len())
            .filter_map(|k| o.gap(k))
            .fold(f64::INFINITY, f64::min);
        let line = format!(
            "{name}: {} prompt tokens equal; answer {outcome}: {} tokens ({}) vs llama-server {} \
             ({}), smallest top-2 gap {min_gap:.4} nats; ours {our_text:?}",
            want.len(),
            o.tokens.len(),
            finish(&ov),
            t.tokens.len(),
            finish(&tv),
        );
        eprintln!("{line}");
        report.push(line);
    }
    assert_eq!(report.len(), 5);
    if let Ok(path) = std::env::var("LLAMA_SERVER_TEMPLATE_REPORT") {
        std::fs::write(&path, report.join("\n") + "\n").expect("write the report");
    }
    ours.shutdown().await.expect("shutdown");
}
