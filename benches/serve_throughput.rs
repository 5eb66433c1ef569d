//! Aggregate generation throughput of the HTTP server at 1, 4 and 8
//! concurrent requests (CPU), plus the effect of the prompt cache on requests
//! that share a long prefix (a document, a system prompt, earlier turns).
//!
//! Not a timed test: it prints a table.
//!
//! ```text
//! cargo bench --bench serve_throughput                     # synthetic tiny model (no assets)
//! cargo bench --bench serve_throughput -- --medium         # synthetic ~50M-param 4-bit model
//! cargo bench --bench serve_throughput -- --model x.gguf   # any GGUF
//! cargo bench --bench serve_throughput -- --url http://host:8000   # a running server
//! ```
//! Other flags: `--tokens N` (new tokens per request, default 128),
//! `--rounds N` (requests per client, default 3), `--threads N`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airavata::server::{bind, RunningServer, ServeOptions};
use serde_json::{json, Value};

struct Args {
    model: Option<PathBuf>,
    url: Option<String>,
    medium: bool,
    tokens: u32,
    rounds: usize,
    threads: Option<u32>,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: std::env::var_os("AIRAVATA_BENCH_MODEL").map(PathBuf::from),
        url: std::env::var("AIRAVATA_BENCH_URL").ok(),
        medium: false,
        tokens: 128,
        rounds: 3,
        threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => a.model = it.next().map(PathBuf::from),
            "--url" => a.url = it.next(),
            "--medium" => a.medium = true,
            "--tokens" => a.tokens = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.tokens),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.rounds),
            "--threads" => a.threads = it.next().and_then(|v| v.parse().ok()),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    a
}

fn synth_model(medium: bool) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(if medium {
        "airavata-bench-medium"
    } else {
        "airavata-bench-tiny"
    });
    std::fs::create_dir_all(&dir).expect("bench dir");
    if !medium {
        return airavata::synth::tiny_test_gguf(&dir).expect("synth tiny model");
    }
    let hf = dir.join("hf");
    if !hf.join("config.json").is_file() {
        let config = json!({
            "_name_or_path": "airavata-medium-random",
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "hidden_size": 768,
            "intermediate_size": 2048,
            "num_attention_heads": 12,
            "num_hidden_layers": 6,
            "num_key_value_heads": 12,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "bfloat16",
            "vocab_size": 4096
        });
        airavata::synth::write_checkpoint(
            &hf,
            &airavata::synth::SynthOptions {
                config,
                shards: 1,
                seed: 11,
                std: 0.05,
                ..Default::default()
            },
        )
        .expect("synth checkpoint");
    }
    // The deployment scheme first; older converters may not quantize it yet.
    use airavata::convert::Scheme;
    let mut last = None;
    // F32 before F16: without F16C (the default x86-64 build) ggml converts
    // every F16 weight per token, which makes F16 compute-bound at batch 1.
    for scheme in [Scheme::Nf4, Scheme::Q4_0, Scheme::F32] {
        match airavata::synth::tiny_test_gguf_with(&dir, scheme) {
            Ok(p) => return p,
            Err(e) => {
                eprintln!("note: {scheme:?} conversion failed ({e}); trying the next scheme");
                last = Some(e);
            }
        }
    }
    panic!("cannot build the medium model: {last:?}")
}

async fn start(model: PathBuf, threads: Option<u32>, prompt_cache: bool) -> RunningServer {
    let opts = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        parallel: 8,
        ctx_size: Some(8 * 512),
        batch_size: 512,
        threads,
        max_queue: 64,
        no_prompt_cache: !prompt_cache,
        ..ServeOptions::default()
    };
    let server = bind(opts, model).await.expect("bind");
    server.wait_ready().await.expect("model load");
    server
}

async fn one(c: &reqwest::Client, base: &str, prompt: &str, tokens: u32) -> (u64, f64) {
    let v: Value = c
        .post(format!("{base}/generate"))
        .json(&json!({"prompt": prompt, "raw": true, "max_new_tokens": tokens, "temperature": 0}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    let ttft = v["timings"]["time_to_first_token_ms"]
        .as_f64()
        .unwrap_or(0.0);
    (n, ttft)
}

async fn counters(c: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = match c.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        get("airavata_generated_tokens_total"),
        get("airavata_decode_steps_total"),
    )
}

async fn throughput(
    c: &reqwest::Client,
    base: &str,
    clients: usize,
    rounds: usize,
    tokens: u32,
) -> (f64, f64, u64) {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let c = c.clone();
            let base = base.to_string();
            tokio::spawn(async move {
                let mut n = 0;
                let mut ttft = 0.0;
                for r in 0..rounds {
                    let prompt = format!("Once upon a time {i} {r}");
                    let (k, t) = one(&c, &base, &prompt, tokens).await;
                    n += k;
                    ttft += t;
                }
                (n, ttft)
            })
        })
        .collect();
    let mut total = 0;
    let mut ttft = 0.0;
    for t in tasks {
        let (n, tt) = t.await.expect("client task");
        total += n;
        ttft += tt;
    }
    let secs = t0.elapsed().as_secs_f64();
    (total as f64 / secs, ttft / (clients * rounds) as f64, total)
}

async fn prompt_cache_effect(model: PathBuf, threads: Option<u32>) {
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    // A shared context of a few hundred tokens (fits a 512-token slot even
    // where the vocabulary spells Devanagari in bytes), then a new question.
    let context = "भारत एक विशाल देश है जहाँ अनेक भाषाएँ बोली जाती हैं। ".repeat(3);
    println!(
        "\nprompt cache (sequential chat-wrapped /generate sharing a long prefix, 4 new tokens):"
    );
    for cache in [false, true] {
        let server = start(model.clone(), threads, cache).await;
        let base = server.url();
        let mut prompt_ms = Vec::new();
        let (mut cached, mut prompt_tokens) = (0, 0);
        for i in 0..24 {
            let v: Value = c
                .post(format!("{base}/generate"))
                .json(&json!({"prompt": format!("{context}\nप्रश्न {i}: यह क्या है?"), "max_new_tokens": 4}))
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            if let Some(e) = v.get("error") {
                panic!("request failed: {e}");
            }
            if i >= 4 {
                prompt_ms.push(v["timings"]["prompt_ms"].as_f64().unwrap_or(0.0));
            }
            cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        }
        prompt_ms.sort_by(f64::total_cmp);
        println!(
            "  prompt cache {:<3}  cached {:>3} of {:>3} prompt tokens  median prompt time {:.3} ms",
            if cache { "on" } else { "off" },
            cached,
            prompt_tokens,
            prompt_ms[prompt_ms.len() / 2]
        );
        server.shutdown().await.expect("shutdown");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    let mut local = None;
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| synth_model(args.medium));
    let base = match &args.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let s = start(model.clone(), args.threads, true).await;
            let u = s.url();
            local = Some(s);
            u
        }
    };
    let info: Value = c
        .get(format!("{base}/info"))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("info json");
    println!(
        "server {base}: {} ({}), {} slots, {} threads, {}",
        info["model"]["description"].as_str().unwrap_or("?"),
        info["model_path"].as_str().unwrap_or("?"),
        info["slots"],
        info["model"]["threads"],
        info["version"].as_str().unwrap_or("?"),
    );
    println!(
        "{} new tokens per request (greedy), {} requests per client\n",
        args.tokens, args.rounds
    );
    // Warm-up.
    let _ = one(&c, &base, "warm up", 16).await;
    println!(
        "{:>8} {:>14} {:>12} {:>14}",
        "clients", "aggregate t/s", "tokens", "mean TTFT ms"
    );
    let mut single = 0.0;
    for clients in [1usize, 4, 8] {
        let (tok0, steps0) = counters(&c, &base).await;
        let (tps, ttft, n) = throughput(&c, &base, clients, args.rounds, args.tokens).await;
        let (tok1, steps1) = counters(&c, &base).await;
        // Prompt-only steps count too, so this slightly understates occupancy.
        let per_step = (tok1 - tok0) / (steps1 - steps0).max(1.0);
        if clients == 1 {
            single = tps;
        }
        println!(
            "{clients:>8} {tps:>14.1} {n:>12} {ttft:>14.2} {per_step:>16.2}   ({:.2}x single-stream)",
            tps / single.max(f64::MIN_POSITIVE)
        );
    }
    if let Some(s) = local {
        s.shutdown().await.expect("shutdown");
        prompt_cache_effect(model, args.threads).await;
    }
}
