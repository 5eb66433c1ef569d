//! Several engines in one server, on the CPU (`--devices cpu,cpu`): routing
//! by prefix cache and by load, admission at the server level, a failed
//! engine left out and reported, per-engine metrics with their totals; and
//! the engine options that came with them (decode-step padding, KV types).

mod common;

use std::time::{Duration, Instant};

use airavata::engine::{BackendGreedy, FillGaps, KvType, Placement, Prompt};
use airavata::router::Engines;
use airavata::server::{bind_engines, ServeOptions};
use serde_json::{json, Value};

use common::server::{client, metric_value, metrics, start, test_model, test_options, wait_info};

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("send");
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json body");
    (status, v)
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.get(url).send().await.expect("send");
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("json body");
    (status, v)
}

/// The text of a `/v1/completions` answer.
fn completion_text(v: &Value) -> String {
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn two_cpu_engines() -> ServeOptions {
    ServeOptions {
        devices: "cpu,cpu".parse().expect("devices"),
        threads: Some(1),
        ..test_options()
    }
}

/// Waits until engine `i` (per `/info`) has `active` running requests.
async fn wait_active(c: &reqwest::Client, base: &str, i: usize, active: u64) {
    let pointer = format!("/engines/{i}/active");
    wait_info(c, base, &pointer, active.into(), Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cpu_engines_route_by_load_then_by_prefix() {
    let mut opts = two_cpu_engines();
    opts.step_delay_ms = Some(5);
    let server = start(opts, test_model()).await;
    let c = client();
    let base = server.url();

    let (s, health) = get(&c, format!("{base}/health")).await;
    assert_eq!(s, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["engines"].as_array().map(Vec::len), Some(2));
    let (_, info) = get(&c, format!("{base}/info")).await;
    assert_eq!(info["engines"][0]["device"], "CPU");
    assert_eq!(info["engines"][1]["device"], "CPU");
    assert_eq!(info["slots"], 8, "4 slots per engine: {info}");

    // Least loaded: A holds engine 0, so P goes to engine 1.
    let long = json!({"prompt": "Once", "raw": true, "max_new_tokens": 120, "ignore_eos": true});
    let a = tokio::spawn({
        let (c, url) = (c.clone(), format!("{base}/generate"));
        async move { post(&c, url, long).await }
    });
    wait_active(&c, &base, 0, 1).await;
    let p = "Lily had a red ball and a blue kite";
    let ask = json!({"prompt": p, "max_new_tokens": 12});
    let (s, first) = post(&c, format!("{base}/generate"), ask.clone()).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(a.await.expect("a").0, 200);
    let (_, info) = get(&c, format!("{base}/info")).await;
    assert_eq!(info["engines"][0]["routed"], 1, "{info}");
    assert_eq!(info["engines"][1]["routed"], 1, "{info}");

    // Both idle: least-loaded would pick engine 0, but engine 1's prompt
    // cache holds all of P but its last token, so P goes back to engine 1.
    let prompt_len = server
        .engines()
        .tokenize_prompt(&Prompt::User(p.into()))
        .expect("tokens")
        .len();
    let (s, again) = post(&c, format!("{base}/generate"), ask.clone()).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_len - 1
    );
    assert_eq!(again["generated_text"], first["generated_text"]);
    let (_, info) = get(&c, format!("{base}/info")).await;
    assert_eq!(info["engines"][1]["routed"], 2, "{info}");
    assert_eq!(info["engines"][1]["routed_by_prefix"], 1, "{info}");
    assert_eq!(info["engines"][0]["routed_by_prefix"], 0, "{info}");

    // A prompt no cache holds half of goes to the least loaded: engine 0.
    let (s, _) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "भारत की राजधानी क्या है और वहाँ कितने लोग रहते हैं?", "max_new_tokens": 4}),
    )
    .await;
    assert_eq!(s, 200);
    let text = metrics(&c, &base).await;
    assert_eq!(
        metric_value(
            &text,
            "airavata_router_requests_total{engine=\"1\",route=\"prefix\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "airavata_router_requests_total{engine=\"0\",route=\"least_loaded\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &text,
            "airavata_router_requests_total{engine=\"1\",route=\"least_loaded\"}"
        ),
        1.0
    );

    // Per-engine series and their totals.
    for name in [
        "airavata_generated_tokens_total",
        "airavata_prompt_tokens_total",
        "airavata_decode_steps_total",
        "airavata_generations_finished_total",
        "airavata_time_to_first_token_seconds_count",
        "airavata_engine_step_tokens_total",
    ] {
        let e0 = metric_value(&text, &format!("{name}{{engine=\"0\"}}"));
        let e1 = metric_value(&text, &format!("{name}{{engine=\"1\"}}"));
        assert!(e0 > 0.0 && e1 > 0.0, "{name}: {e0} {e1}");
        assert_eq!(metric_value(&text, name), e0 + e1, "{name}");
    }
    assert_eq!(
        metric_value(&text, "airavata_generations_finished_total"),
        4.0
    );
    assert_eq!(
        metric_value(
            &text,
            "airavata_engine_steps_total{engine=\"1\",kind=\"decode\"}"
        ) + metric_value(
            &text,
            "airavata_engine_steps_total{engine=\"0\",kind=\"decode\"}"
        ),
        metric_value(&text, "airavata_engine_steps_total{kind=\"decode\"}")
    );
    assert_eq!(metric_value(&text, "airavata_engines"), 2.0);
    assert_eq!(metric_value(&text, "airavata_model_loaded"), 1.0);
    assert_eq!(
        metric_value(&text, "airavata_model_loaded{engine=\"1\"}"),
        1.0
    );
    assert_eq!(metric_value(&text, "airavata_requests_running"), 0.0);
    assert_eq!(
        metric_value(&text, "airavata_requests_waiting{engine=\"0\"}"),
        0.0
    );
    assert_eq!(metric_value(&text, "airavata_kv_cache_usage_ratio"), 0.0);
    server.shutdown().await.expect("shutdown");
}

/// `--routing least-loaded`: the same sequence as above, but the repeated
/// prompt goes to the least loaded engine (0), whose cache does not hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_routing_never_follows_the_cache() {
    let mut opts = two_cpu_engines();
    opts.routing = airavata::router::Routing::LeastLoaded;
    // The long request below must still run when P is routed: without a delay the tiny model generates its
    // 120 tokens in ~20 ms, and a P routed after it finished goes to idle engine 0 (CI saw it once: P then
    // reused the 2 tokens the long prompt shares with P's template).
    opts.step_delay_ms = Some(10);
    let server = start(opts, test_model()).await;
    let c = client();
    let base = server.url();
    let p = "Lily had a red ball and a blue kite";
    let ask = json!({"prompt": p, "max_new_tokens": 12});
    // Idle engines: the first request goes to engine 0 and leaves its prompt
    // in engine 0's cache; so does every later one (ties: the lowest index).
    for _ in 0..2 {
        let (s, v) = post(&c, format!("{base}/generate"), ask.clone()).await;
        assert_eq!(s, 200, "{v}");
    }
    // Engine 0 busy with a long request: P goes to engine 1, which never saw it.
    let long = json!({"prompt": "Once", "raw": true, "max_new_tokens": 120, "ignore_eos": true});
    let a = tokio::spawn({
        let (c, url) = (c.clone(), format!("{base}/generate"));
        async move { post(&c, url, long).await }
    });
    wait_active(&c, &base, 0, 1).await;
    let (s, v) = post(&c, format!("{base}/generate"), ask.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{v}"
    );
    assert_eq!(a.await.expect("a").0, 200);
    let (_, info) = get(&c, format!("{base}/info")).await;
    assert_eq!(info["engines"][0]["routed"], 3, "{info}");
    assert_eq!(info["engines"][1]["routed"], 1, "{info}");
    let text = metrics(&c, &base).await;
    for e in ["0", "1"] {
        assert_eq!(
            metric_value(
                &text,
                &format!("airavata_router_requests_total{{engine=\"{e}\",route=\"prefix\"}}")
            ),
            0.0
        );
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_is_bounded_over_all_engines() {
    let mut opts = two_cpu_engines();
    opts.parallel = 1;
    opts.max_queue = 1;
    opts.step_delay_ms = Some(5);
    let server = start(opts, test_model()).await;
    let c = client();
    let base = server.url();
    let long = json!({"prompt": "Once", "raw": true, "max_new_tokens": 150, "ignore_eos": true});
    // Room for 2 slots + 1 queued: the first two run, one on each engine.
    let mut held = Vec::new();
    for i in 0..2 {
        held.push(tokio::spawn({
            let (c, url, b) = (c.clone(), format!("{base}/generate"), long.clone());
            async move { post(&c, url, b).await }
        }));
        wait_active(&c, &base, i, 1).await;
    }
    held.push(tokio::spawn({
        let (c, url, b) = (c.clone(), format!("{base}/generate"), long.clone());
        async move { post(&c, url, b).await }
    }));
    let t0 = Instant::now();
    loop {
        let (_, v) = get(&c, format!("{base}/info")).await;
        if v["waiting"] == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, v) = post(&c, format!("{base}/generate"), long.clone()).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "queue_full");
    let text = metrics(&c, &base).await;
    assert_eq!(metric_value(&text, "airavata_requests_rejected_total"), 1.0);
    assert_eq!(metric_value(&text, "airavata_requests_running"), 2.0);
    assert_eq!(metric_value(&text, "airavata_requests_waiting"), 1.0);
    // vLLM's names (scraped by inference gateways) carry the same values.
    assert_eq!(metric_value(&text, "vllm:num_requests_running"), 2.0);
    assert_eq!(metric_value(&text, "vllm:num_requests_waiting"), 1.0);
    assert_eq!(
        metric_value(&text, "vllm:kv_cache_usage_perc"),
        metric_value(&text, "airavata_kv_cache_usage_ratio")
    );
    assert!(metric_value(&text, "vllm:kv_cache_usage_perc") > 0.0);
    assert_eq!(
        metric_value(&text, "airavata_requests_running{engine=\"0\"}")
            + metric_value(&text, "airavata_requests_running{engine=\"1\"}"),
        2.0
    );
    for h in held {
        assert_eq!(h.await.expect("request").0, 200);
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_engine_is_reported_and_left_out() {
    let model = test_model();
    let opts = two_cpu_engines();
    // Engine 1 asks for a ggml device that does not exist: its load fails.
    let configs = vec![
        opts.engine_config_on(&model, Placement::Cpu),
        opts.engine_config_on(&model, Placement::Gpu(999)),
    ];
    let engines = Engines::spawn(configs, opts.max_queue, opts.routing).expect("spawn");
    let server = bind_engines(opts, model, engines).await.expect("bind");
    tokio::time::timeout(Duration::from_secs(60), server.wait_ready())
        .await
        .expect("load timed out")
        .expect("one engine loads");
    let c = client();
    let base = server.url();
    let (s, health) = get(&c, format!("{base}/health")).await;
    assert_eq!(s, 200, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["engines"][0]["state"], "ready");
    assert_eq!(health["engines"][1]["state"], "failed");
    assert!(
        health["engines"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("device")),
        "{health}"
    );
    let (s, _) = get(&c, format!("{base}/livez")).await;
    assert_eq!(s, 200);
    // Every request is served, all by engine 0.
    for i in 0..4 {
        let (s, v) = post(
            &c,
            format!("{base}/generate"),
            json!({"prompt": format!("story {i}"), "max_new_tokens": 4}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, info) = get(&c, format!("{base}/info")).await;
    assert_eq!(info["engines"][0]["routed"], 4, "{info}");
    assert_eq!(info["engines"][1]["routed"], 0, "{info}");
    assert!(info["engines"][1]["status"]
        .as_str()
        .is_some_and(|s| s.starts_with("failed")));
    assert_eq!(info["slots"], 4, "only the serving engine's slots: {info}");
    let text = metrics(&c, &base).await;
    assert_eq!(
        metric_value(&text, "airavata_model_loaded{engine=\"0\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&text, "airavata_model_loaded{engine=\"1\"}"),
        0.0
    );
    assert_eq!(metric_value(&text, "airavata_model_loaded"), 0.0);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_every_engine_and_liveness_does_not() {
    let server = airavata::server::bind(two_cpu_engines(), test_model())
        .await
        .expect("bind");
    let c = client();
    let base = server.url();
    let mut saw_loading = false;
    loop {
        let (live, _) = get(&c, format!("{base}/livez")).await;
        assert_eq!(live, 200);
        let r = c
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("health");
        let s = r.status().as_u16();
        let v: Value = r.json().await.expect("json");
        if s == 200 {
            assert_eq!(v["status"], "ok", "{v}");
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert_eq!(v["error"]["code"], "model_loading", "{v}");
        assert_eq!(v["engines"].as_array().map(Vec::len), Some(2), "{v}");
        saw_loading = true;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = saw_loading; // loading may be too quick to observe; 503 is checked when seen
    assert!(server.engines().all().iter().all(|e| e.is_ready()));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_do_not_exist_are_refused() {
    let opts = ServeOptions {
        devices: "0".parse().expect("devices"),
        ..test_options()
    };
    let err = airavata::server::bind(opts, test_model())
        .await
        .err()
        .expect("no GPU 0 on this machine");
    assert!(err.to_string().contains("GPU 0 does not exist"), "{err}");
}

/// Prompts for the tests that compare answers across servers (Devanagari included).
const SHORT_PROMPTS: [&str; 3] = [
    "Tell me story number 1.",
    "कहानी संख्या 2 सुनाइए।",
    "Lily had 3 red balls",
];
/// A prompt that starts a long story.
const LONG_PROMPT: &str = "Once upon a time there was";

/// Decode-step padding adds dummy tokens on free slots; it must not change
/// what the real sequences compute nor what free slots keep as prompt cache.
/// A long request holds slot 0 while three prompts take slots 1-3; then the
/// long prompt alone again (slot 0, by its cache) runs padded steps whose
/// dummies sit on slots 1-3, on top of the three prompts' caches; then each
/// prompt again must reuse all but its last token. With padding both runs of
/// a prompt have 4-row decode steps, so their answers are equal exactly.
/// Across the two servers (padded or not, so different batch shapes) greedy
/// output on CPU may differ in a rare near-tie (llama.cpp's CPU kernels are
/// not fully batch-invariant, see `concurrent_greedy_requests_match_serial_results`),
/// so at most one answer of the eight may differ there.
///
/// A third server fills gaps only (`--fill-gaps on`, no padding): when each
/// prompt runs again alone in its slot, the free slots below it carry
/// dummies (slot 1: one, slot 2: two), for the same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_padding_keeps_outputs_and_prompt_caches() {
    let model = test_model();
    let c = client();
    let prompts = SHORT_PROMPTS;
    let long = LONG_PROMPT;
    let mut answers: Vec<Vec<String>> = Vec::new();
    let mut padded_seen = Vec::new();
    for (pad, fill_gaps) in [(0u32, FillGaps::Off), (4, FillGaps::Off), (0, FillGaps::On)] {
        let opts = ServeOptions {
            decode_pad: Some(pad),
            fill_gaps,
            ..test_options()
        };
        let server = start(opts, model.clone()).await;
        let base = server.url();
        assert_eq!(
            server.engine().info().expect("info").decode_pad,
            pad,
            "decode pad in effect"
        );
        assert_eq!(
            server.engine().info().expect("info").fill_gaps,
            fill_gaps == FillGaps::On,
            "gap filling in effect"
        );
        let body = |p: &str, n: u32| json!({"prompt": p, "max_new_tokens": n, "ignore_eos": true});
        let held = tokio::spawn({
            let (c, url, b) = (c.clone(), format!("{base}/generate"), body(long, 160));
            async move { post(&c, url, b).await }
        });
        wait_active(&c, &base, 0, 1).await;
        let futs = prompts.iter().map(|p| {
            let (c, url, b) = (c.clone(), format!("{base}/generate"), body(p, 40));
            async move { post(&c, url, b).await }
        });
        let mut out = Vec::new();
        for (s, v) in futures::future::join_all(futs).await {
            assert_eq!(s, 200, "{v}");
            out.push(v["generated_text"].as_str().unwrap_or_default().to_string());
        }
        let (s, v) = held.await.expect("long request");
        assert_eq!(s, 200, "{v}");
        out.push(v["generated_text"].as_str().unwrap_or_default().to_string());
        // The long prompt alone, twice, from its cache in slot 0.
        for _ in 0..2 {
            let (s, v) = post(&c, format!("{base}/generate"), body(long, 40)).await;
            assert_eq!(s, 200, "{v}");
            assert!(v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(0));
        }
        // Each prompt again, from its own slot's cache.
        for (i, p) in prompts.iter().enumerate() {
            let n = server
                .engine()
                .tokenize_prompt(&Prompt::User((*p).into()))
                .expect("tokens")
                .len();
            let (s, v) = post(&c, format!("{base}/generate"), body(p, 40)).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(
                v["usage"]["prompt_tokens_details"]["cached_tokens"],
                n - 1,
                "pad {pad}: prompt {i} cache: {v}"
            );
            if pad > 0 {
                assert_eq!(
                    v["generated_text"], out[i],
                    "pad {pad}: prompt {i} from its cache"
                );
            }
            out.push(v["generated_text"].as_str().unwrap_or_default().to_string());
        }
        let text = metrics(&c, &base).await;
        padded_seen.push(metric_value(&text, "airavata_engine_padded_tokens_total"));
        answers.push(out);
        server.shutdown().await.expect("shutdown");
    }
    assert_eq!(padded_seen[0], 0.0, "no padding when off");
    // At least the solo steps of the five solo requests carry 3 dummies each.
    assert!(
        padded_seen[1] >= 5.0 * 39.0 * 3.0,
        "padded {}",
        padded_seen[1]
    );
    // Prompts 1 and 2 alone in slots 1 and 2: 40 steps with one and two
    // dummies below them.
    assert!(padded_seen[2] >= 40.0 * 3.0, "gap fill {}", padded_seen[2]);
    for other in &answers[1..] {
        let differing = answers[0].iter().zip(other).filter(|(a, b)| a != b).count();
        assert!(
            differing <= 1,
            "{differing} of {} answers changed with dummies:\n{:?}\n{:?}",
            answers[0].len(),
            answers[0],
            other
        );
    }
}

/// A step draws its host-sampled rows in parallel, each with its own slot's
/// sampler and logits row. Sampling with `top_k` 1 always draws the most
/// likely token, so four such requests side by side (next to two freely
/// sampled ones) must give the greedy answers of their prompts alone: a row
/// given to the wrong slot's sampler would change them all. llama.cpp's CPU
/// kernels are not batch-invariant, so a near-tie may flip one answer of
/// four. One of them also asks for log-probabilities, computed in the same
/// parallel pass: each drawn token's is the best of its top two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_host_draws_keep_each_slot_on_its_own_row() {
    let opts = ServeOptions {
        parallel: 6,
        ..test_options()
    };
    let server = start(opts, test_model()).await;
    let url = format!("{}/v1/completions", server.url());
    let c = client();
    let prompts = [
        SHORT_PROMPTS[0],
        SHORT_PROMPTS[1],
        SHORT_PROMPTS[2],
        LONG_PROMPT,
    ];
    let body = |p: &str| json!({"prompt": p, "max_tokens": 24, "ignore_eos": true});
    let mut greedy = Vec::new();
    for p in prompts {
        let mut b = body(p);
        b["temperature"] = json!(0.0);
        let (s, v) = post(&c, url.clone(), b).await;
        assert_eq!(s, 200, "{v}");
        greedy.push(completion_text(&v));
    }
    let mut bodies: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut b = body(p);
            b["temperature"] = json!(0.9);
            b["top_k"] = json!(1);
            b["seed"] = json!(i);
            b
        })
        .collect();
    bodies[2]["logprobs"] = json!(2);
    for seed in [5, 6] {
        let mut b = body(LONG_PROMPT);
        b["temperature"] = json!(0.9);
        b["seed"] = json!(seed);
        bodies.push(b);
    }
    let futs = bodies.into_iter().map(|b| {
        let (c, url) = (c.clone(), url.clone());
        async move { post(&c, url, b).await }
    });
    let together: Vec<Value> = futures::future::join_all(futs)
        .await
        .into_iter()
        .map(|(s, v)| {
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["usage"]["completion_tokens"], 24, "{v}");
            v
        })
        .collect();
    let differing = greedy
        .iter()
        .zip(&together)
        .filter(|(g, v)| **g != completion_text(v))
        .count();
    assert!(
        differing <= 1,
        "{differing} of 4 changed:\n{greedy:?}\n{together:?}"
    );
    let lp = &together[2]["choices"][0]["logprobs"];
    let token_lps = lp["token_logprobs"].as_array().expect("token_logprobs");
    let tops = lp["top_logprobs"].as_array().expect("top_logprobs");
    assert_eq!(token_lps.len(), 24, "{lp}");
    assert_eq!(tops.len(), 24, "{lp}");
    for (x, top) in token_lps.iter().zip(tops) {
        let x = x.as_f64().expect("logprob");
        let best = top
            .as_object()
            .expect("top map")
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!((x - best).abs() < 1e-9 && x < 0.0, "{x} vs {top}");
    }
    server.shutdown().await.expect("shutdown");
}

/// Gap dummies only take room the plan left in the batch. A long request
/// holds slot 0, a short one slot 1, and a long prompt is prefilled in slot 2
/// in chunks that fill the batch (16 tokens with slot 0's decode token). When
/// the short request ends, slot 1 is a gap between fed slots: with no room
/// left, its dummy would overflow the batch and fail every running request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_dummies_never_overflow_a_full_batch() {
    let mut opts = ServeOptions {
        fill_gaps: FillGaps::On,
        batch_size: 16,
        ..test_options()
    };
    opts.step_delay_ms = Some(20);
    let server = start(opts, test_model()).await;
    let base = server.url();
    let c = client();
    let body = |p: &str, n: u32| json!({"prompt": p, "max_new_tokens": n, "ignore_eos": true});
    let send = |b: Value| {
        let (c, url) = (c.clone(), format!("{base}/generate"));
        tokio::spawn(async move { post(&c, url, b).await })
    };
    let held = send(body(LONG_PROMPT, 60));
    wait_active(&c, &base, 0, 1).await;
    let short = send(body(SHORT_PROMPTS[1], 3));
    wait_active(&c, &base, 0, 2).await;
    let long_prompt = "Lily had a red ball and a blue kite. ".repeat(16);
    let n_long = server
        .engine()
        .tokenize_prompt(&Prompt::User(long_prompt.clone()))
        .expect("tokens")
        .len();
    assert!(
        n_long > 8 * 16,
        "the prompt takes several full chunks: {n_long}"
    );
    let (s, v) = post(&c, format!("{base}/generate"), body(&long_prompt, 4)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
    for (what, task, n) in [("short", short, 3), ("held", held, 60)] {
        let (s, v) = task.await.expect(what);
        assert_eq!(s, 200, "{what}: {v}");
        assert_eq!(v["usage"]["completion_tokens"], n, "{what}: {v}");
    }
    let text = metrics(&c, &base).await;
    assert_eq!(
        metric_value(&text, "airavata_generations_failed_total"),
        0.0
    );
    // Once the prompt is in, slot 1 is a gap between slots 0 and 2 and its
    // decode steps do carry a dummy.
    assert!(metric_value(&text, "airavata_engine_padded_tokens_total") >= 1.0);
    server.shutdown().await.expect("shutdown");
}

/// `--backend-greedy on` on the CPU: greedy tokens come from the `argmax`
/// at the end of the step's graph, and answers equal the host's picks (one
/// request at a time: the same batch shapes on both servers, so exactly;
/// four at once: at most one of four may differ, as llama.cpp's CPU kernels
/// are not batch-invariant). A sampled request and a greedy one asking for
/// log-probabilities need the logits on the host: their slots' samplers are
/// detached, they still work, and the slots attach again for the next
/// greedy requests. Those run from the slots' prompt caches (the last prompt
/// token evaluated alone), so they are compared with the host server's own
/// runs from its caches, exactly. The counter shows which tokens the backend
/// picked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_greedy_picks_match_host_picks() {
    let model = test_model();
    let c = client();
    let [a, b, c3] = SHORT_PROMPTS;
    let prompts = [a, b, c3, LONG_PROMPT];
    let body =
        |p: &str| json!({"prompt": p, "max_tokens": 40, "temperature": 0, "ignore_eos": true});
    let mut runs: Vec<(Vec<String>, Vec<String>, Vec<String>)> = Vec::new();
    for mode in [BackendGreedy::Off, BackendGreedy::On] {
        let opts = ServeOptions {
            backend_greedy: mode,
            ..test_options()
        };
        let server = start(opts, model.clone()).await;
        let base = server.url();
        let url = format!("{base}/v1/completions");
        let on = mode == BackendGreedy::On;
        assert_eq!(server.engine().info().expect("info").backend_greedy, on);
        let mut serial = Vec::new();
        for p in &prompts {
            let (s, v) = post(&c, url.clone(), body(p)).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["usage"]["completion_tokens"], 40, "{v}");
            serial.push(completion_text(&v));
        }
        let futs = prompts.iter().map(|p| {
            let (c, url, b) = (c.clone(), url.clone(), body(p));
            async move { post(&c, url, b).await }
        });
        let mut concurrent = Vec::new();
        for (s, v) in futures::future::join_all(futs).await {
            assert_eq!(s, 200, "{v}");
            concurrent.push(completion_text(&v));
        }
        // Requests that need the logits on the host.
        let sampled = json!({"prompt": prompts[0], "max_tokens": 20, "temperature": 0.9,
            "seed": 7, "ignore_eos": true});
        let (s, v) = post(&c, url.clone(), sampled).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 20, "{v}");
        let mut with_logprobs = body(prompts[2]);
        with_logprobs["logprobs"] = json!(2);
        let (s, v) = post(&c, url.clone(), with_logprobs).await;
        assert_eq!(s, 200, "{v}");
        let mut again = vec![completion_text(&v)];
        let lps = v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .expect("token_logprobs");
        assert_eq!(lps.len(), 40, "{v}");
        assert!(
            lps.iter().all(|x| x.as_f64().is_some_and(|l| l <= 0.0)),
            "{v}"
        );
        // The same slots again, greedy: attached again.
        for p in &prompts {
            let (s, v) = post(&c, url.clone(), body(p)).await;
            assert_eq!(s, 200, "{v}");
            again.push(completion_text(&v));
        }
        let m = metrics(&c, &base).await;
        let generated = metric_value(&m, "airavata_generated_tokens_total");
        let backend = metric_value(&m, "airavata_backend_greedy_tokens_total");
        assert_eq!(generated, (4.0 * 3.0 + 1.0) * 40.0 + 20.0, "{mode:?}");
        // Everything but the sampled request and the one with log-probabilities.
        let expected = if on { generated - 20.0 - 40.0 } else { 0.0 };
        assert_eq!(backend, expected, "{mode:?}: backend picks");
        // A first attach, the two detaches, the re-attaches.
        let switches = metric_value(&m, "airavata_backend_greedy_switches_total");
        if on {
            assert!(switches >= 3.0, "switches {switches}");
        } else {
            assert_eq!(switches, 0.0);
        }
        runs.push((serial, concurrent, again));
        server.shutdown().await.expect("shutdown");
    }
    let (host, device) = (&runs[0], &runs[1]);
    assert_eq!(host.0, device.0, "one at a time");
    assert_eq!(
        host.2, device.2,
        "with log-probabilities, then after the detaching requests"
    );
    let differing = host.1.iter().zip(&device.1).filter(|(a, b)| a != b).count();
    assert!(
        differing <= 1,
        "{differing} of 4 differ:\n{:?}\n{:?}",
        host.1,
        device.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantized_kv_cache_loads_and_generates() {
    let model = test_model();
    let c = client();
    let opts = ServeOptions {
        cache_type_k: KvType::Q8_0,
        cache_type_v: KvType::Q8_0,
        flash_attn: airavata::engine::FlashAttn::Auto,
        ..test_options()
    };
    let server = start(opts, model.clone()).await;
    let base = server.url();
    let (s, v) = post(
        &c,
        format!("{base}/generate"),
        json!({"prompt": "Once upon a time", "max_new_tokens": 16, "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let (_, info) = get(&c, format!("{base}/info")).await;
    assert_eq!(info["model"]["cache_type_k"], "q8_0", "{info}");
    assert_eq!(info["model"]["cache_type_v"], "q8_0", "{info}");
    // A quantized V cache needs flash attention: `auto` turned it on.
    assert_eq!(info["model"]["flash_attn"], "on", "{info}");
    server.shutdown().await.expect("shutdown");

    // K alone may be quantized without flash attention.
    let opts = ServeOptions {
        cache_type_k: KvType::Q4_0,
        ..test_options()
    };
    let server = start(opts, model.clone()).await;
    let (s, v) = post(
        &c,
        format!("{}/generate", server.url()),
        json!({"prompt": "Once upon a time", "max_new_tokens": 8}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    server.shutdown().await.expect("shutdown");

    // Asked off explicitly, a quantized V cache is refused with a clear error.
    let opts = ServeOptions {
        cache_type_v: KvType::Q8_0,
        flash_attn: airavata::engine::FlashAttn::Off,
        ..test_options()
    };
    let res = tokio::time::timeout(
        Duration::from_secs(60),
        airavata::server::serve(opts, model, std::future::pending()),
    )
    .await
    .expect("serve returns");
    let err = res.expect_err("refused");
    assert!(
        err.to_string()
            .contains("--cache-type-v q8_0 needs flash attention"),
        "{err}"
    );
}

/// Concurrent requests that share a long prefix evaluate it once: a request
/// that has not started its prompt copies the prefix's KV from the slot that
/// holds it (here a running request, whose generated tokens must not come
/// along), per-slot KV streams (a whole stream is
/// copied, then trimmed) and a unified cache (cells shared) alike. Each
/// answer must match the same prompt on a server without prompt caching (at
/// most one of three may differ: different batch shapes, see
/// `decode_padding_keeps_outputs_and_prompt_caches`; a wrong copy changes
/// them all), and usage and `/metrics` count the copied tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_copy_a_shared_prefix_from_another_slot() {
    let model = test_model();
    let c = client();
    let shared = "Once upon a time, there was a little girl named Lily. She loved to play \
                  outside in the park with her big red ball and her friend Tom.";
    let suffixes = [" One day", " लिली ने कहा", " The sun was"];
    let body = |p: &str, n: u32| json!({"prompt": p, "max_new_tokens": n, "ignore_eos": true});
    let mut expected = Vec::new();
    {
        let opts = ServeOptions {
            no_prompt_cache: true,
            ..test_options()
        };
        let server = start(opts, model.clone()).await;
        let base = server.url();
        for s in suffixes {
            let (st, v) = post(
                &c,
                format!("{base}/generate"),
                body(&format!("{shared}{s}"), 24),
            )
            .await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(
                v["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
                "{v}"
            );
            expected.push(v["generated_text"].as_str().unwrap_or_default().to_string());
        }
        server.shutdown().await.expect("shutdown");
    }
    for kv_unified in [false, true] {
        let mut opts = ServeOptions {
            kv_unified,
            ..test_options()
        };
        opts.step_delay_ms = Some(5);
        let server = start(opts, model.clone()).await;
        let base = server.url();
        let engine = server.engine();
        let shared_tokens = engine
            .tokenize_prompt(&Prompt::User(shared.into()))
            .expect("tokens");
        // The holder: the shared text alone, running while the others come.
        let held = tokio::spawn({
            let (c, url, b) = (c.clone(), format!("{base}/generate"), body(shared, 120));
            async move { post(&c, url, b).await }
        });
        let t0 = Instant::now();
        // Its KV then also holds generated tokens, which a copy must leave out.
        while metric_value(&metrics(&c, &base).await, "airavata_generated_tokens_total") < 40.0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "holder never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut minimum = 0;
        let futs = suffixes.iter().map(|s| {
            let prompt = format!("{shared}{s}");
            let tokens = engine
                .tokenize_prompt(&Prompt::User(prompt.clone()))
                .expect("tokens");
            let common = tokens
                .ids()
                .iter()
                .zip(shared_tokens.ids())
                .take_while(|(a, b)| a == b)
                .count();
            minimum += common;
            let (c, url, b) = (c.clone(), format!("{base}/generate"), body(&prompt, 24));
            async move { (common, post(&c, url, b).await) }
        });
        let results = futures::future::join_all(futs).await;
        let mut differing = 0;
        for ((common, (st, v)), want) in results.iter().zip(&expected) {
            assert_eq!(*st, 200, "{v}");
            let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0) as usize;
            assert!(
                cached >= *common && *common > 16,
                "unified {kv_unified}: {cached} cached, {common} shared with the holder: {v}"
            );
            differing += usize::from(v["generated_text"] != want.as_str());
        }
        assert!(
            differing <= 1,
            "unified {kv_unified}: {differing} of 3 answers differ from uncached ones: {results:?} vs {expected:?}"
        );
        let (st, v) = held.await.expect("holder");
        assert_eq!(st, 200, "{v}");
        let text = metrics(&c, &base).await;
        assert!(
            metric_value(&text, "airavata_shared_prompt_tokens_total") >= minimum as f64,
            "unified {kv_unified}: shared {} < {minimum}",
            metric_value(&text, "airavata_shared_prompt_tokens_total")
        );
        server.shutdown().await.expect("shutdown");
    }
}
