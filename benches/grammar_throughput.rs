//! What one grammar-constrained stream costs 16 unconstrained ones (CPU).
//!
//! Three runs, repeated and interleaved (the machine may be shared):
//! * `alone`   — 16 unconstrained streams;
//! * `grammar` — the same 16 plus one stream that loops JSON-schema requests;
//! * `free`    — the same 16 plus one unconstrained stream (what a 17th
//!   sequence costs without a grammar: more work per decode step).
//!
//! For each it prints the 16 streams' aggregate tokens/s and the engine's
//! time in the `sample` phase per step (from `/metrics`). Not a timed test.
//!
//! ```text
//! AIRAVATA_ASSETS=... cargo bench --bench grammar_throughput             # stories260K (vocab 512)
//! cargo bench --bench grammar_throughput -- --airavata-vocab             # random tiny model, Airavata's 48065-token vocab
//! cargo bench --bench grammar_throughput -- --model x.gguf
//! ```
//! Other flags: `--tokens N` (per unconstrained request, default 64),
//! `--rounds N` (requests per unconstrained client, default 4), `--reps N`
//! (default 3), `--threads N`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airavata::server::{bind, RunningServer, ServeOptions};
use serde_json::{json, Value};

const STREAMS: usize = 16;

struct Args {
    model: Option<PathBuf>,
    airavata_vocab: bool,
    tokens: u32,
    rounds: usize,
    reps: usize,
    threads: Option<u32>,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: None,
        airavata_vocab: false,
        tokens: 64,
        rounds: 4,
        reps: 3,
        threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |d| it.next().and_then(|v| v.parse().ok()).unwrap_or(d);
        match arg.as_str() {
            "--model" => a.model = it.next().map(PathBuf::from),
            "--airavata-vocab" => a.airavata_vocab = true,
            "--tokens" => a.tokens = num(a.tokens as usize) as u32,
            "--rounds" => a.rounds = num(a.rounds),
            "--reps" => a.reps = num(a.reps),
            "--threads" => a.threads = Some(num(2) as u32),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    a
}

/// A random 2-layer model with Airavata's vocabulary size (48065), so the
/// grammar works over a vocabulary of the real size.
fn airavata_vocab_model() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airavata-bench-48k-vocab");
    let hf = dir.join("hf");
    if !hf.join("config.json").is_file() {
        let mut config = airavata::synth::tiny_config();
        config["vocab_size"] = json!(48065);
        config["_name_or_path"] = json!("airavata-48k-vocab-random");
        airavata::synth::write_checkpoint(
            &hf,
            &airavata::synth::SynthOptions {
                config,
                shards: 1,
                seed: 5,
                std: 0.08,
                ..Default::default()
            },
        )
        .expect("synth checkpoint");
    }
    airavata::synth::tiny_test_gguf_with(&dir, airavata::convert::Scheme::F32)
        .expect("convert the 48k-vocab model")
}

fn stories() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("AIRAVATA_ASSETS")?)
        .join("stories260k-gguf/stories260K.gguf");
    p.is_file().then_some(p)
}

async fn start(model: PathBuf, threads: Option<u32>) -> RunningServer {
    let opts = ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        parallel: STREAMS as u32 + 1,
        ctx_size: Some((STREAMS as u32 + 1) * 512),
        batch_size: 512,
        threads,
        max_queue: 64,
        // Every request is new: no prompt cache effects between the runs.
        no_prompt_cache: true,
        ..ServeOptions::default()
    };
    let server = bind(opts, model).await.expect("bind");
    server.wait_ready().await.expect("model load");
    server
}

fn schema() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "toy", "schema": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "price": {"type": "integer", "minimum": 0, "maximum": 9999},
            "kind": {"enum": ["ball", "doll", "car", "kite"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4}
        },
        "required": ["name", "price", "kind", "tags"],
        "additionalProperties": false
    }}})
}

async fn post(c: &reqwest::Client, base: &str, body: &Value) -> Value {
    c.post(format!("{base}/generate"))
        .json(body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

async fn metric(c: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = match c.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[derive(Clone, Copy, PartialEq)]
enum Extra {
    None,
    Grammar,
    Free,
}

impl Extra {
    fn name(self) -> &'static str {
        match self {
            Extra::None => "alone",
            Extra::Grammar => "grammar",
            Extra::Free => "free",
        }
    }
}

struct Run {
    tps: f64,
    extra_tokens: u64,
    extra_requests: u64,
    sample_ms_per_step: f64,
}

async fn run(c: &reqwest::Client, base: &str, args: &Args, extra: Extra, rep: usize) -> Run {
    let sample = "airavata_engine_step_seconds_total{phase=\"sample\"}";
    let (s0, steps0) = (
        metric(c, base, sample).await,
        metric(c, base, "airavata_engine_steps_total{kind=\"decode\"}").await
            + metric(c, base, "airavata_engine_steps_total{kind=\"mixed\"}").await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let extra_tokens = Arc::new(AtomicU64::new(0));
    let extra_requests = Arc::new(AtomicU64::new(0));
    let side = (extra != Extra::None).then(|| {
        let (c, base) = (c.clone(), base.to_string());
        let (stop, tokens, requests) = (stop.clone(), extra_tokens.clone(), extra_requests.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut body = json!({"prompt": format!("Toy {i}:"), "raw": true,
                                      "temperature": 0.8, "seed": i, "max_new_tokens": 200});
                if extra == Extra::Grammar {
                    body["response_format"] = schema();
                } else {
                    body["max_new_tokens"] = json!(64);
                    body["ignore_eos"] = json!(true);
                }
                let v = post(&c, &base, &body).await;
                if let Some(e) = v.get("error") {
                    panic!("side request failed: {e}");
                }
                tokens.fetch_add(
                    v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                    Ordering::Relaxed,
                );
                requests.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    });
    // Let the side stream start before timing.
    tokio::time::sleep(Duration::from_millis(if side.is_some() { 200 } else { 0 })).await;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (c, base, tokens, rounds) = (c.clone(), base.to_string(), args.tokens, args.rounds);
            tokio::spawn(async move {
                let mut n = 0;
                for r in 0..rounds {
                    let body = json!({"prompt": format!("Once upon a time {rep} {i} {r}"), "raw": true,
                                      "temperature": 0.8, "seed": r, "max_new_tokens": tokens, "ignore_eos": true});
                    let v = post(&c, &base, &body).await;
                    n += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client");
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = side {
        s.await.expect("side stream");
    }
    let (s1, steps1) = (
        metric(c, base, sample).await,
        metric(c, base, "airavata_engine_steps_total{kind=\"decode\"}").await
            + metric(c, base, "airavata_engine_steps_total{kind=\"mixed\"}").await,
    );
    Run {
        tps: total as f64 / secs,
        extra_tokens: extra_tokens.load(Ordering::Relaxed),
        extra_requests: extra_requests.load(Ordering::Relaxed),
        sample_ms_per_step: (s1 - s0) * 1e3 / (steps1 - steps0).max(1.0),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let model = match (&args.model, args.airavata_vocab) {
        (Some(m), _) => m.clone(),
        (None, true) => airavata_vocab_model(),
        (None, false) => match stories() {
            Some(p) => p,
            None => {
                eprintln!("skipped: stories260K not found under $AIRAVATA_ASSETS (or pass --model / --airavata-vocab)");
                return;
            }
        },
    };
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    let server = start(model.clone(), args.threads).await;
    let base = server.url();
    let info = server.engine().info().cloned().expect("info");
    println!(
        "model {} (vocab {}), {} slots, {} threads; {STREAMS} unconstrained streams x {} requests x {} tokens (temperature 0.8, ignore_eos)",
        model.display(),
        info.n_vocab,
        info.slots,
        info.threads,
        args.rounds,
        args.tokens
    );
    // Warm-up.
    let _ = run(
        &c,
        &base,
        &Args {
            rounds: 1,
            ..parse_args()
        },
        Extra::Grammar,
        99,
    )
    .await;
    let mut results: Vec<(Extra, Vec<f64>, Vec<f64>)> = [Extra::None, Extra::Grammar, Extra::Free]
        .into_iter()
        .map(|e| (e, Vec::new(), Vec::new()))
        .collect();
    for rep in 0..args.reps {
        for (extra, tps, sample) in results.iter_mut() {
            let r = run(&c, &base, &args, *extra, rep).await;
            println!(
                "rep {rep} {:<8} {:>9.1} tok/s (16 streams)  sample {:.3} ms/step  side stream: {} requests, {} tokens",
                extra.name(),
                r.tps,
                r.sample_ms_per_step,
                r.extra_requests,
                r.extra_tokens
            );
            tps.push(r.tps);
            sample.push(r.sample_ms_per_step);
        }
    }
    let alone = median(&mut results[0].1.clone());
    println!(
        "\nmedian of {} reps (16 unconstrained streams' aggregate tokens/s):",
        args.reps
    );
    for (extra, tps, sample) in results.iter_mut() {
        let m = median(tps);
        println!(
            "  {:<8} {:>9.1} tok/s  {:+6.1}% vs alone   sample phase {:.3} ms/step",
            extra.name(),
            m,
            (m / alone - 1.0) * 100.0,
            median(sample)
        );
    }
    server.shutdown().await.expect("shutdown");
}
