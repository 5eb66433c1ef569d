//! When a request's answer goes out and how the engine waits for the next
//! requests, on the GPU path: a test hook (`defer_emits`) makes the CPU
//! engine send text as a GPU engine does (a step's tokens after the next
//! step's `decode`), and a pause after every step (`step_delay_ms`) makes
//! steps long enough for clients to act within one. The tests count steps
//! (`airavata_decode_steps_total`, recorded before a step's answers go out)
//! rather than time them: which step a request joined is the relation that
//! matters, and it does not move with the machine's load.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::server::{client, info, metric, start, test_model, test_options, wait_info};

/// Decode steps the engine has recorded so far.
async fn steps(c: &reqwest::Client, base: &str) -> u64 {
    metric(c, base, "airavata_decode_steps_total").await as u64
}

/// Sends a request and, once its answer is in, reads the step counter.
async fn generate_then_steps(c: &reqwest::Client, base: &str, max_new_tokens: u32) -> u64 {
    generate(c, base, max_new_tokens).await;
    steps(c, base).await
}

async fn generate(c: &reqwest::Client, base: &str, max_new_tokens: u32) -> Value {
    let r = c
        .post(format!("{base}/generate"))
        .json(&json!({
            "prompt": "Once", "raw": true, "max_new_tokens": max_new_tokens, "ignore_eos": true
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json body")
}

/// A GPU engine sends a step's text while the next step computes, but a
/// request that took its last token answers at the end of that step, before
/// the next one is launched: its slot is free for that step, and a successor
/// sent on the answer joins it (with a linger) instead of the step after.
/// B keeps the engine busy; R ends at step 3, its successor R' runs steps 4
/// and 5: R' ends two steps after R (three if R's answer had waited for step
/// 4's launch, as R' would then join step 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_frees_its_slot_before_the_next_step() {
    let step = Duration::from_millis(400);
    let mut opts = test_options();
    opts.defer_emits = true;
    opts.step_delay_ms = Some(step.as_millis() as u64);
    opts.linger_ms = Some(3000);
    let server = start(opts, test_model()).await;
    let base = server.url();
    let c = client();
    let v = info(&c, &base).await;
    assert_eq!(v["model"]["linger_ms"], 3000, "{v}");
    let b = tokio::spawn({
        let (c, base) = (c.clone(), base.clone());
        async move { generate(&c, &base, 6).await }
    });
    wait_active(&c, &base, 1).await;
    // R arrives during B's first step and joins the second.
    let r = generate(&c, &base, 2).await;
    let r_end = steps(&c, &base).await;
    let r2 = generate(&c, &base, 2).await;
    let r2_end = steps(&c, &base).await;
    let b = b.await.expect("B");
    for (v, n) in [(&r, 2), (&r2, 2), (&b, 6)] {
        assert_eq!(v["usage"]["completion_tokens"], n, "{v}");
    }
    assert_eq!(
        r2_end - r_end,
        2,
        "the successor ended {} steps after R: it did not join the step after R's last",
        r2_end - r_end
    );
    server.shutdown().await.expect("shutdown");
}

async fn wait_active(c: &reqwest::Client, base: &str, n: u64) {
    wait_info(c, base, "/active", n.into(), Duration::from_secs(10)).await;
}

/// Three requests end in one step and their clients send the next ones, one
/// of them 400 ms (more than a step) later: with a linger, the engine waits
/// for all three and starts them in one step (they end in the same step);
/// without, the first two start a step before the third (which ends later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successors_of_a_step_start_together_when_the_engine_lingers() {
    let (a, b) = successor_ends(3000).await;
    assert_eq!(
        a, b,
        "with a linger the successors ended at steps {a} and {b}"
    );
    let (a, b) = successor_ends(0).await;
    assert!(
        b > a,
        "without a linger the late successor ended at step {b}, the other at {a}"
    );
}

/// The steps at which the two successors ended (see above).
async fn successor_ends(linger_ms: u64) -> (u64, u64) {
    let step = Duration::from_millis(300);
    let mut opts = test_options();
    opts.parallel = 3;
    opts.defer_emits = true;
    opts.step_delay_ms = Some(step.as_millis() as u64);
    opts.linger_ms = Some(linger_ms);
    let server = start(opts, test_model()).await;
    let base = server.url();
    let c = client();
    // R0 starts alone; R1 and R2 arrive during its first step, so all three
    // end in the same step (R0 at its 3rd token, the others at their 2nd).
    let r0 = tokio::spawn({
        let (c, base) = (c.clone(), base.clone());
        async move {
            generate(&c, &base, 3).await;
            generate(&c, &base, 2).await;
        }
    });
    wait_active(&c, &base, 1).await;
    let successor = |delay: Duration| {
        let (c, base) = (c.clone(), base.clone());
        tokio::spawn(async move {
            generate(&c, &base, 2).await;
            tokio::time::sleep(delay).await;
            generate_then_steps(&c, &base, 2).await
        })
    };
    let r1 = successor(Duration::ZERO);
    let r2 = successor(Duration::from_millis(400));
    let (a, b) = (r1.await.expect("R1"), r2.await.expect("R2"));
    r0.await.expect("R0");
    server.shutdown().await.expect("shutdown");
    (a, b)
}
