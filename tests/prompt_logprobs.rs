//! `/v1/completions` for evaluation harnesses (lm-evaluation-harness's
//! `local-completions` sends `echo: true, logprobs: 1, max_tokens: 0 or 1,
//! temperature: 0` with token-id prompts and sums
//! `choices[i].logprobs.token_logprobs[ctxlen:]`): the prompt's tokens and
//! the log-probabilities the model gives them, `max_tokens: 0`, lists of
//! prompts and token-id prompts.
//!
//! The prompt's log-probabilities are checked three ways: against the ones
//! the server reported when it generated the same tokens, against llama.cpp's
//! logits for the whole sequence scored by `airavata eval`'s own per-token
//! scoring (`eval::score_exact`), and for prompts longer than a batch (read
//! in chunks).

mod common;

use std::num::NonZeroU32;
use std::path::Path;

use airavata::engine::{GenerateRequest, Prompt, TokenLogprob};
use airavata::server::RunningServer;
use futures::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Value};

use common::server::{client, sse_events, start, test_model, test_options};

/// Largest difference allowed between the server's and llama.cpp's own
/// computation of the same log-probability in the same batch shape (the
/// whole sequence in one batch; one token at a time): only the KV layout
/// (slots) differs. Measured: below 2e-7.
const SAME_SHAPE: f64 = 1e-4;

/// Largest difference allowed between a prompt token's log-probability
/// (the whole sequence in one batch) and the one reported when the same
/// token was generated (one token per `decode`): llama.cpp's CPU kernels
/// take other paths for a batch than for one row. Measured up to 4.3e-3 on
/// SmolLM2 F16 and 9e-4 on the random-weight test model; on SmolLM2
/// Q4_1 llama.cpp's own batched and one-at-a-time evaluations differ by up
/// to 0.19 nats, so that model is checked against llama.cpp in both shapes
/// but not across them.
const ACROSS_SHAPES: f64 = 1e-2;

async fn post(c: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

fn completions(server: &RunningServer) -> String {
    format!("{}/v1/completions", server.url())
}

/// `logprobs.token_logprobs` of a choice (`None` for `null`).
fn token_logprobs(choice: &Value) -> Vec<Option<f64>> {
    choice["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no token_logprobs in {choice}"))
        .iter()
        .map(Value::as_f64)
        .collect()
}

/// The token ids the engine runs for a text prompt (BOS included when the
/// model adds one).
fn ids(server: &RunningServer, text: &str) -> Vec<i32> {
    server
        .engine()
        .tokenize_prompt(&Prompt::Raw(text.into()))
        .expect("tokenize")
        .ids()
        .to_vec()
}

/// `n` greedy tokens after `prompt` with their log-probabilities, as the
/// engine generated them (token by token, reading the row it sampled from).
async fn generate(server: &RunningServer, prompt: &[i32], n: u32) -> Vec<TokenLogprob> {
    let engine = server.engine();
    let tokens = engine
        .tokenize_prompt(&Prompt::Tokens(prompt.to_vec()))
        .expect("tokens");
    let mut req = GenerateRequest::greedy(tokens, NonZeroU32::new(n).expect("n > 0"));
    req.logprobs = Some(1);
    req.sampling.ignore_eos = true;
    let (_, lps, c) = engine
        .generate(req)
        .expect("admit")
        .collect_with_logprobs()
        .await
        .expect("generate");
    assert_eq!(c.usage.completion_tokens, n);
    assert_eq!(lps.len(), n as usize, "every generated token is listed");
    lps
}

/// A context holding `n` tokens in one batch, configured as the test server
/// (F16 KV cache, no flash attention, 2 threads).
fn context_for(model: &LlamaModel, n: u32) -> LlamaContext<'_> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n.max(64)))
        .with_n_batch(n)
        .with_n_ubatch(n)
        .with_n_threads(2)
        .with_n_threads_batch(2)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED);
    model
        .new_context(common::backend(), params)
        .expect("context")
}

/// Each token's log-probability after the tokens before it (`None` for the
/// first), from llama.cpp's logits for the whole sequence in one batch
/// (F16 KV cache and no flash attention, as the test server), scored by
/// `airavata eval`'s per-token scoring: `-nll_model` of `score_exact`.
fn reference_logprobs(model_path: &Path, tokens: &[i32]) -> Vec<Option<f64>> {
    let model = common::load_model(model_path);
    let n = tokens.len();
    let mut ctx = context_for(&model, u32::try_from(n).expect("short"));
    let mut batch = LlamaBatch::new(n, 1);
    for (i, &t) in tokens.iter().enumerate() {
        let pos = i32::try_from(i).expect("pos");
        batch.add(LlamaToken(t), pos, &[0], true).expect("add");
    }
    ctx.decode(&mut batch).expect("decode");
    let mut out = vec![None];
    for (i, &token) in tokens.iter().enumerate().skip(1) {
        let row = ctx.get_logits_ith(i32::try_from(i - 1).expect("row"));
        let target = usize::try_from(token).expect("id");
        out.push(Some(
            -airavata::eval::score_exact(row, row, target).nll_model,
        ));
    }
    out
}

/// What llama.cpp gives the generated tokens `gen` decoded one at a time
/// after `prompt` (as the engine generates): each token's log-probability
/// from the row it was sampled from, scored as [`reference_logprobs`].
fn sequential_logprobs(model_path: &Path, prompt: &[i32], gen: &[i32]) -> Vec<Option<f64>> {
    let model = common::load_model(model_path);
    let mut ctx = context_for(
        &model,
        u32::try_from(prompt.len() + gen.len()).expect("short"),
    );
    let mut batch = LlamaBatch::new(prompt.len(), 1);
    for (i, &t) in prompt.iter().enumerate() {
        let pos = i32::try_from(i).expect("pos");
        batch
            .add(LlamaToken(t), pos, &[0], i + 1 == prompt.len())
            .expect("add");
    }
    ctx.decode(&mut batch).expect("decode");
    let mut row_at = batch.n_tokens() - 1;
    let mut out = Vec::with_capacity(gen.len());
    for (k, &g) in gen.iter().enumerate() {
        let row = ctx.get_logits_ith(row_at);
        let target = usize::try_from(g).expect("id");
        out.push(Some(
            -airavata::eval::score_exact(row, row, target).nll_model,
        ));
        batch.clear();
        let pos = i32::try_from(prompt.len() + k).expect("pos");
        batch.add(LlamaToken(g), pos, &[0], true).expect("add");
        ctx.decode(&mut batch).expect("decode");
        row_at = 0;
    }
    out
}

/// Asserts that two lists of log-probabilities agree within `tol` (and
/// are `null` at the same places); returns the largest difference.
fn assert_close(got: &[Option<f64>], want: &[Option<f64>], tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                let d = (g - w).abs();
                worst = worst.max(d);
                assert!(d <= tol, "{what}: position {i}: {g} vs {w}");
            }
            _ => panic!("{what}: position {i}: {g:?} vs {w:?}"),
        }
    }
    worst
}

/// The lm-evaluation-harness check on a greedy continuation: at each of
/// its positions the top alternative is the token itself, with exactly the
/// token's log-probability (`token_logprobs[i] == max(top_logprobs[i].values())`,
/// how `parse_logprobs` decides `is_greedy`), unless the two best
/// candidates were nearly tied when it was generated (the prefill's kernels
/// may then rank them the other way).
fn assert_greedy(choice: &Value, from: usize, generated: &[TokenLogprob]) {
    let lps = token_logprobs(choice);
    let tops = choice["logprobs"]["top_logprobs"]
        .as_array()
        .expect("top_logprobs");
    for (k, g) in generated.iter().enumerate() {
        let i = from + k;
        let top = tops[i].as_object().expect("a map after the first entry");
        assert_eq!(top.len(), 1, "logprobs: 1 gives one alternative: {top:?}");
        let best = top
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::MIN, f64::max);
        let lp = lps[i].expect("a number");
        let tie = g.top.len() > 1 && g.top[0].logprob - g.top[1].logprob < 0.01;
        assert!(lp == best || tie, "position {i}: {lp} vs top {best}");
    }
}

/// Generates greedily from `prompt`, then asks for the prompt and the
/// generated tokens back as an lm-evaluation-harness request; checks the
/// shape, every position against llama.cpp's evaluation of the whole
/// sequence, the generation against llama.cpp's one token at a time, and
/// (`across`) the generated part against what generation reported. Returns
/// the largest differences (echo vs llama.cpp, echo vs generation).
async fn check_echo_scores(
    server: &RunningServer,
    model_path: &Path,
    prompt: &[i32],
    n: u32,
    max_tokens: u32,
    across: bool,
) -> (f64, Option<f64>) {
    let c = client();
    let generated = generate(server, prompt, n).await;
    let mut all = prompt.to_vec();
    all.extend(generated.iter().map(|g| g.token));
    let (s, v) = post(
        &c,
        &completions(server),
        json!({"prompt": all, "echo": true, "logprobs": 1, "max_tokens": max_tokens,
               "temperature": 0, "seed": 1234, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1);
    let choice = &choices[0];
    assert_eq!(choice["index"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], all.len());
    assert_eq!(v["usage"]["completion_tokens"], max_tokens);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "the prompt is evaluated whole, not taken from the prompt cache"
    );
    if max_tokens == 0 {
        assert_eq!(choice["finish_reason"], "length");
    }
    let lps = token_logprobs(choice);
    assert_eq!(lps.len(), all.len() + max_tokens as usize, "{choice}");
    assert_eq!(lps[0], None, "nothing precedes the first prompt token");
    assert_eq!(choice["logprobs"]["top_logprobs"][0], Value::Null);
    assert!(
        lps[1..].iter().all(|l| l.is_some_and(|l| l <= 0.0)),
        "{lps:?}"
    );
    // The echoed text is the prompt's pieces.
    let bytes = server.engine().token_bytes(&all).expect("pieces").concat();
    let text = choice["text"].as_str().expect("text");
    assert!(
        text.starts_with(String::from_utf8_lossy(&bytes).as_ref()),
        "{text:?}"
    );
    // The generation is llama.cpp's one token at a time; the generated part
    // of the echo is what generation reported, within the kernels' rounding.
    let p = prompt.len();
    let from_generation: Vec<Option<f64>> = generated.iter().map(|g| Some(g.logprob)).collect();
    let gen_ids: Vec<i32> = generated.iter().map(|g| g.token).collect();
    assert_close(
        &from_generation,
        &sequential_logprobs(model_path, prompt, &gen_ids),
        SAME_SHAPE,
        "generation vs llama.cpp one token at a time",
    );
    let worst_gen = across.then(|| {
        assert_close(
            &lps[p..all.len()],
            &from_generation,
            ACROSS_SHAPES,
            "echo vs generation",
        )
    });
    if across {
        assert_greedy(choice, p, &generated);
    }
    // Every position: llama.cpp's logits for the whole sequence, scored by
    // `airavata eval`; the continuation's sum as lm-evaluation-harness takes it.
    let reference = reference_logprobs(model_path, &all);
    let worst_ref = assert_close(
        &lps[..all.len()],
        &reference,
        SAME_SHAPE,
        "echo vs llama.cpp + eval",
    );
    let sum = |l: &[Option<f64>]| l.iter().flatten().sum::<f64>();
    let (got, want) = (sum(&lps[p..all.len()]), sum(&reference[p..]));
    assert!(
        (got - want).abs() <= SAME_SHAPE * f64::from(n),
        "continuation log-likelihood {got} vs {want}"
    );
    (worst_ref, worst_gen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_logprobs_are_the_models_own() {
    let model = test_model();
    let server = start(test_options(), model.clone()).await;
    for (text, max_tokens) in [("Once upon a time", 0), ("नमस्ते, आप कैसे हैं?", 1)]
    {
        let prompt = ids(&server, text);
        let (r, g) = check_echo_scores(&server, &model, &prompt, 12, max_tokens, true).await;
        eprintln!(
            "{text:?}: largest difference {r:.2e} against llama.cpp, {g:?} against generation"
        );
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_echo_scores_what_it_generated() {
    let Some((q4, f16)) = common::smollm2("smollm2_echo_scores_what_it_generated") else {
        return;
    };
    // Q4_1: llama.cpp's batched and one-at-a-time evaluations differ too
    // much to compare across them (see [`ACROSS_SHAPES`]).
    for (model, across) in [(f16, true), (q4, false)] {
        let server = start(test_options(), model.clone()).await;
        for text in ["The capital of France is", "भारत की राजधानी"] {
            let prompt = ids(&server, text);
            let (r, g) = check_echo_scores(&server, &model, &prompt, 16, 0, across).await;
            eprintln!(
                "SmolLM2 {} {text:?}: largest difference {r:.2e} against llama.cpp, {g:?} against generation",
                model.display()
            );
        }
        server.shutdown().await.expect("shutdown");
    }
}

/// A prompt longer than a batch is prefilled in chunks: every chunk's rows
/// are read (two such prompts at once, in two slots), and asking again is
/// not answered from the prompt cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_are_read_in_every_chunk() {
    let model = test_model();
    let mut opts = test_options();
    opts.batch_size = 64;
    let server = start(opts, model.clone()).await;
    let c = client();
    let a = ids(
        &server,
        &"Lily had a red ball. She played with it in the park. ".repeat(8),
    );
    let b = ids(&server, &"राम ने एक कहानी सुनाई। ".repeat(12));
    assert!(
        a.len() > 3 * 64 && b.len() > 3 * 64,
        "{} {}",
        a.len(),
        b.len()
    );
    assert!(a.len() < 500 && b.len() < 500, "fits a 512-cell slot");
    let body = json!({"prompt": [a, b], "echo": true, "logprobs": 0, "max_tokens": 0});
    let (s, first) = post(&c, &completions(&server), body.clone()).await;
    assert_eq!(s, 200, "{first}");
    for (i, tokens) in [&a, &b].into_iter().enumerate() {
        let choice = &first["choices"][i];
        assert_eq!(choice["index"], i);
        let lps = token_logprobs(choice);
        let reference = reference_logprobs(&model, tokens);
        let worst = assert_close(&lps, &reference, SAME_SHAPE, "chunked prompt");
        eprintln!(
            "prompt {i} ({} tokens): largest difference {worst:.2e}",
            tokens.len()
        );
        // `logprobs: 0`: no alternatives, but a map at every position after the first.
        assert_eq!(choice["logprobs"]["top_logprobs"][1], json!({}));
    }
    let (s, again) = post(&c, &completions(&server), body).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        again["usage"]["prompt_tokens"],
        a.len() + b.len(),
        "usage sums the choices"
    );
    for i in 0..2 {
        assert_close(
            &token_logprobs(&again["choices"][i]),
            &token_logprobs(&first["choices"][i]),
            SAME_SHAPE,
            "asked again",
        );
    }
    server.shutdown().await.expect("shutdown");
}

/// One slot and no prompt cache: every answer is computed the same way
/// (batched greedy answers may take the other side of a near-tie, see
/// `server_api.rs`), so a list's answers equal the single requests'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_lists_answer_in_order() {
    let mut opts = test_options();
    opts.parallel = 1;
    opts.no_prompt_cache = true;
    let server = start(opts, test_model()).await;
    let c = client();
    let url = completions(&server);
    let texts = ["Once upon a time", "नमस्ते", "The cat sat"];
    let mut single = Vec::new();
    for t in texts {
        let (s, v) = post(
            &c,
            &url,
            json!({"prompt": t, "max_tokens": 8, "temperature": 0}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        single.push(v["choices"][0]["text"].as_str().expect("text").to_string());
    }
    let texts_of = |v: &Value| -> Vec<String> {
        let choices = v["choices"].as_array().expect("choices");
        for (i, ch) in choices.iter().enumerate() {
            assert_eq!(ch["index"], i, "{v}");
        }
        choices
            .iter()
            .map(|ch| ch["text"].as_str().expect("text").to_string())
            .collect()
    };
    // A list of strings: one choice each, in order.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": texts, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(texts_of(&v), single);
    let prompt_tokens: Vec<Vec<i32>> = texts.iter().map(|t| ids(&server, t)).collect();
    let total: usize = prompt_tokens.iter().map(Vec::len).sum();
    assert_eq!(v["usage"]["prompt_tokens"], total);
    assert_eq!(v["usage"]["completion_tokens"], 3 * 8);
    // The same prompts as token-id lists, and one as a flat list of ids.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": prompt_tokens, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(texts_of(&v), single);
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": prompt_tokens[1], "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(texts_of(&v), [single[1].clone()]);
    // `n` choices per prompt: index = prompt × n + j.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": &texts[..2], "n": 2, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        texts_of(&v),
        [&single[0], &single[0], &single[1], &single[1]].map(String::as_str)
    );
    // `echo` with a list: each choice starts with its own prompt.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": texts, "echo": true, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let want: Vec<String> = texts
        .iter()
        .zip(&single)
        .map(|(p, a)| format!("{p}{a}"))
        .collect();
    assert_eq!(texts_of(&v), want);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_completions_requests_are_refused() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let url = completions(&server);
    let n_vocab = server.engine().info().expect("info").n_vocab;
    let refused = |v: &Value, code: &str, param: &str| {
        assert_eq!(v["error"]["code"], code, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    };
    for bad in [i64::from(n_vocab), -1, 5_000_000_000] {
        for prompt in [json!([1, bad]), json!([[1, 2], [1, bad]])] {
            let (s, v) = post(&c, &url, json!({"prompt": prompt, "max_tokens": 1})).await;
            assert_eq!(s, 400, "{v}");
            refused(&v, "invalid_token_id", "prompt");
            assert_eq!(
                v["error"]["message"],
                format!("`prompt` holds token id {bad}, outside the vocabulary (0..{n_vocab})")
            );
        }
    }
    // A budget of 0 needs `echo`.
    let (s, v) = post(&c, &url, json!({"prompt": "x", "max_tokens": 0})).await;
    assert_eq!(s, 422, "{v}");
    refused(&v, "invalid_value", "max_tokens");
    assert_eq!(
        v["error"]["message"],
        "`max_tokens` must be at least 1 (0 only with `echo: true`)"
    );
    let (s, v) = post(&c, &url, json!({"prompt": [], "max_tokens": 1})).await;
    assert_eq!(s, 422, "{v}");
    refused(&v, "invalid_value", "prompt");
    let (s, v) = post(&c, &url, json!({"prompt": [[]], "max_tokens": 1})).await;
    assert_eq!(s, 422, "an empty token list: {v}");
    refused(&v, "invalid_value", "prompt");
    // A stream answers one choice.
    for body in [
        json!({"prompt": ["a", "b"], "stream": true}),
        json!({"prompt": "a", "n": 2, "stream": true}),
    ] {
        let (s, v) = post(&c, &url, body).await;
        assert_eq!(s, 400, "{v}");
        refused(&v, "unsupported_stream", "stream");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("asks for 2"), "{msg}");
    }
    for (body, param) in [
        (json!({"prompt": "a", "logprobs": 6}), "logprobs"),
        (json!({"prompt": "a", "n": 0}), "n"),
        (json!({"prompt": "a", "n": 129}), "n"),
        (json!({"prompt": vec!["a"; 65], "n": 2}), "prompt"),
    ] {
        let (s, v) = post(&c, &url, body).await;
        assert_eq!(s, 422, "{v}");
        refused(&v, "invalid_value", param);
    }
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": "a", "logprobs": 5, "max_tokens": 1}),
    )
    .await;
    assert_eq!(s, 200, "logprobs up to 5: {v}");
    // `echo` belongs to completions only.
    let (s, v) = post(
        &c,
        &format!("{}/v1/chat/completions", server.url()),
        json!({"messages": [{"role": "user", "content": "a"}], "echo": true}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    refused(&v, "unsupported_field", "echo");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_the_prompt_text_and_streams() {
    let server = start(test_options(), test_model()).await;
    let c = client();
    let url = completions(&server);
    let prompt = "नमस्ते, आप कैसे हैं? ॐ 🙏 क्ष";
    let n_prompt = ids(&server, prompt).len();
    // The prompt only: its text byte for byte, each token listed.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": prompt, "echo": true, "logprobs": 2, "max_tokens": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let ch = &v["choices"][0];
    assert_eq!(
        ch["text"].as_str().map(str::as_bytes),
        Some(prompt.as_bytes())
    );
    assert_eq!(ch["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], n_prompt);
    let lps = token_logprobs(ch);
    assert_eq!(lps.len(), n_prompt);
    assert_eq!(lps[0], None);
    let offsets: Vec<u64> = ch["logprobs"]["text_offset"]
        .as_array()
        .expect("text_offset")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(offsets.len(), n_prompt);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert!(offsets
        .last()
        .is_some_and(|&o| (o as usize) < prompt.chars().count()));
    for top in &ch["logprobs"]["top_logprobs"].as_array().expect("top")[1..] {
        let vals: Vec<f64> = top
            .as_object()
            .expect("map")
            .values()
            .filter_map(Value::as_f64)
            .collect();
        assert!(!vals.is_empty() && vals.len() <= 2, "{top}");
        assert!(
            vals.windows(2).all(|w| w[0] >= w[1]),
            "most likely first: {top}"
        );
    }
    // Without `logprobs`: the text alone.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": prompt, "echo": true, "max_tokens": 0}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], prompt);
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    // With a completion: the prompt, then what the same request without
    // `echo` answers, and the generated entries after the prompt's.
    let gen = json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 1, "ignore_eos": true});
    let (s, plain) = post(&c, &url, gen.clone()).await;
    assert_eq!(s, 200, "{plain}");
    let mut echo_body = gen.clone();
    echo_body["echo"] = json!(true);
    let (s, echoed) = post(&c, &url, echo_body.clone()).await;
    assert_eq!(s, 200, "{echoed}");
    let answer = plain["choices"][0]["text"].as_str().expect("text");
    assert_eq!(echoed["choices"][0]["text"], format!("{prompt}{answer}"));
    let all = token_logprobs(&echoed["choices"][0]);
    assert_eq!(all.len(), n_prompt + 6);
    assert_close(
        &all[n_prompt..],
        &token_logprobs(&plain["choices"][0]),
        SAME_SHAPE,
        "generated part",
    );
    let tokens = |v: &Value| v["choices"][0]["logprobs"]["tokens"].clone();
    assert_eq!(
        tokens(&echoed).as_array().map(|t| t[n_prompt..].to_vec()),
        tokens(&plain).as_array().cloned()
    );
    // Streamed: the prompt's chunk first (with its entries), then the rest.
    echo_body["stream"] = json!(true);
    let r = c.post(&url).json(&echo_body).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let mut raw = Vec::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        raw.extend_from_slice(&chunk.expect("chunk"));
    }
    let events = sse_events(&raw);
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["text"], prompt);
    assert_eq!(token_logprobs(first).len(), n_prompt);
    assert_eq!(token_logprobs(first)[0], None);
    let mut text = String::new();
    let mut streamed_offsets = Vec::new();
    for ch in &chunks {
        let Some(choice) = ch["choices"].as_array().and_then(|a| a.first()) else {
            continue;
        };
        text.push_str(choice["text"].as_str().unwrap_or_default());
        if let Some(o) = choice["logprobs"]["text_offset"].as_array() {
            streamed_offsets.extend(o.iter().cloned());
        }
    }
    assert_eq!(
        text,
        echoed["choices"][0]["text"].as_str().unwrap_or_default()
    );
    assert_eq!(
        Value::Array(streamed_offsets),
        echoed["choices"][0]["logprobs"]["text_offset"]
    );
    server.shutdown().await.expect("shutdown");
}
