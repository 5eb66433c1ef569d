//! Every way a request ends goes through the engine's one `end_request`:
//! finished (length, stop string), cancelled (stream dropped) and timed out
//! (deadline) each count once in the engine's counters, free the slot, and
//! keep the slot's KV as prompt cache.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use airavata::engine::{
    Engine, EngineConfig, EngineError, EngineStats, Event, FinishReason, GenerateRequest, Prompt,
};

fn counts(s: &EngineStats) -> [u64; 4] {
    [&s.finished, &s.cancelled, &s.timed_out, &s.failed].map(|c| c.load(Ordering::Relaxed))
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A validated greedy request (the server's validation stage tokenizes first).
fn request(engine: &Engine, prompt: &str, max_new_tokens: u32) -> GenerateRequest {
    let tokens = engine
        .tokenize_prompt(&Prompt::Raw(prompt.into()))
        .expect("tokenize");
    GenerateRequest::greedy(tokens, NonZeroU32::new(max_new_tokens).expect("non-zero"))
}

fn long(engine: &Engine, prompt: &str) -> GenerateRequest {
    let mut r = request(engine, prompt, 400);
    r.sampling.ignore_eos = true;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_counts_once_and_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = airavata::synth::tiny_test_gguf(dir.path()).unwrap();
    let mut config = EngineConfig::new(gguf);
    config.parallel = 2;
    config.ctx_size = Some(2048);
    config.threads = Some(2);
    config.step_delay = Some(Duration::from_millis(5));
    let engine = Engine::start(config).await.unwrap();
    let stats = engine.stats();

    // Finished by length: the answer, counted once, the slot free, its KV kept.
    let mut req = request(&engine, "Once upon a time", 8);
    req.sampling.ignore_eos = true;
    let (full, done) = engine.generate(req).unwrap().collect().await.unwrap();
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.usage.completion_tokens, 8);
    assert_eq!(counts(stats), [1, 0, 0, 0]);
    assert_eq!(stats.running(), 0);
    assert_eq!(stats.end_to_end.snapshot().count, 1);
    let kept = stats.kv_cached_cells.load(Ordering::Relaxed);
    assert!(kept >= 8, "KV kept as prompt cache: {kept}");

    // Finished by a stop string: the text before it, nothing after.
    let stop: String = full.chars().skip(1).take(2).collect();
    if !stop.trim().is_empty() {
        let mut req = request(&engine, "Once upon a time", 8);
        req.sampling.ignore_eos = true;
        req.stop = vec![stop.clone()];
        let (text, done) = engine.generate(req).unwrap().collect().await.unwrap();
        assert_eq!(done.finish_reason, FinishReason::Stop);
        let at = full.find(&stop).unwrap();
        assert_eq!(text, full[..at]);
        assert_eq!(counts(stats), [2, 0, 0, 0]);
    }
    let finished = counts(stats)[0];

    // Cancelled: the stream dropped after its first text.
    let mut s = engine.generate(long(&engine, "The king said")).unwrap();
    loop {
        match s.next_event().await {
            Some(Event::Text(t)) if !t.is_empty() => break,
            Some(Event::Text(_)) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
    drop(s);
    until("the cancellation", || counts(stats)[1] == 1).await;
    until("the slot to be freed", || stats.running() == 0).await;
    assert_eq!(counts(stats), [finished, 1, 0, 0]);

    // Timed out: the error names the limit; counted once.
    let mut req = long(&engine, "In a village");
    req.timeout = Some(Duration::from_millis(200));
    let err = engine.generate(req).unwrap().collect().await.unwrap_err();
    assert_eq!(err, EngineError::Timeout(Duration::from_millis(200)));
    assert_eq!(counts(stats), [finished, 1, 1, 0]);
    assert_eq!(stats.running(), 0);
    assert_eq!(engine.waiting(), 0);
    assert!(stats.kv_cached_cells.load(Ordering::Relaxed) > 0);
    engine.shutdown().await;
}
