//! A second real architecture: google/gemma-3-270m (base) as Q4_K_M, fetched
//! by `scripts/fetch-gemma3.sh` into the git-ignored `vendor/models/gemma3/`
//! (Gemma Terms of Use: never committed). Loaded by the server on the CPU, a
//! raw Hindi prompt streams valid UTF-8 Devanagari.

mod common;

use common::server::{client, sse_events, start, test_options};
use std::path::PathBuf;

/// The GGUF, or None after printing `skipped` (absent outside CI; in CI,
/// where `.ci/run` fetches it, absence fails the test).
fn gemma3(test: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vendor/models/gemma3/gemma-3-270m-q4_k_m.gguf");
    if p.is_file() {
        return Some(p);
    }
    assert!(
        !common::in_ci(),
        "{} is missing in CI (scripts/fetch-gemma3.sh)",
        p.display()
    );
    eprintln!(
        "skipped {test}: {} absent (run scripts/fetch-gemma3.sh)",
        p.display()
    );
    None
}

fn is_devanagari(c: char) -> bool {
    ('\u{0900}'..='\u{097F}').contains(&c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_hindi_generation_streams_valid_devanagari() {
    let Some(model) = gemma3("raw_hindi_generation_streams_valid_devanagari") else {
        return;
    };
    let server = start(test_options(), model).await;
    let base = server.url();
    let c = client();

    let info = common::server::info(&c, &base).await;
    let arch = info.to_string();
    assert!(
        arch.contains("gemma3"),
        "/info does not name gemma3: {info}"
    );

    let prompt = "भारत दक्षिण एशिया में स्थित एक विशाल देश है। भारत की राजधानी";
    let res = c
        .post(format!("{base}/generate"))
        .json(&serde_json::json!({
            "prompt": prompt,
            "raw": true,
            "max_new_tokens": 40,
            "stream": true,
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let body = res.bytes().await.expect("body");
    // The whole stream is UTF-8 (sse_events asserts it) ...
    let events = sse_events(&body);
    let mut streamed = String::new();
    let mut done = None;
    for (event, data) in &events {
        assert_eq!(event, &None, "error event: {data}");
        let v: serde_json::Value = serde_json::from_str(data).expect("event JSON");
        let delta = v["text"].as_str().expect("text");
        // ... and no delta carries a replacement character (a split code point).
        assert!(!delta.contains('\u{FFFD}'), "broken UTF-8 in {delta:?}");
        streamed.push_str(delta);
        if v["done"] == true {
            done = Some(v);
        }
    }
    println!("gemma-3-270m: {prompt}|{streamed}");
    let done = done.expect("final event");
    assert_eq!(done["generated_text"].as_str(), Some(streamed.as_str()));
    assert_eq!(done["usage"]["completion_tokens"], 40, "{done}");
    let deva = streamed.chars().filter(|&c| is_devanagari(c)).count();
    let letters = streamed.chars().filter(|c| c.is_alphabetic()).count();
    assert!(
        deva >= 10 && deva * 2 >= letters,
        "expected a Devanagari continuation, got {streamed:?}"
    );
    server.shutdown().await.expect("shutdown");
}
