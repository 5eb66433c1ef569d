//! The model cache follows the hub (a local stand-in, via HF_ENDPOINT): a hub
//! id is converted once per commit, a new commit on `main` is converted once
//! more (and the superseded conversion removed), and without the hub the
//! cached commit is served with a notice; `serve` says so, prints one line
//! for the loaded engine and its URL, and none of llama.cpp's loading dump.

#[path = "common/hub.rs"]
mod hub;

use airavata::convert::Scheme;
use airavata::model_cache::{ModelCache, ModelCacheError, Served};
use hub::{Hub, REPO};
use std::io::{BufRead, BufReader};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn resolve(cache: &ModelCache, scheme: Scheme) -> Result<Served, ModelCacheError> {
    cache.resolve(REPO, "main", scheme, false, &AtomicBool::new(false))
}

fn hub_parts(s: &Served) -> (String, bool, Option<String>) {
    match s {
        Served::Hub {
            commit,
            converted,
            offline,
            ..
        } => (commit.clone(), *converted, offline.clone()),
        other => panic!("not served from the hub: {other:?}"),
    }
}

#[test]
fn new_commit_reconverts_once_and_offline_serves_the_cached_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Arc::new(Hub::default());
    hub.push(COMMIT_A, hub::checkpoint_files(tmp.path(), 11));
    let (endpoint, _rt) = hub::start(hub.clone());
    // The only test in this binary: the environment is ours.
    std::env::set_var("HF_ENDPOINT", &endpoint);
    std::env::set_var("HF_HOME", tmp.path().join("hf-home"));
    let cache = ModelCache::new(tmp.path().join("cache"));

    let first = resolve(&cache, Scheme::F16).unwrap();
    assert_eq!(hub_parts(&first), (COMMIT_A.to_string(), true, None));
    let gguf_a = first.gguf().to_path_buf();
    assert!(gguf_a.is_file());
    assert!(first.to_string().contains(COMMIT_A), "{first}");

    // Same commit: served from the cache, nothing transferred.
    let before = hub.log.lock().unwrap().len();
    let again = resolve(&cache, Scheme::F16).unwrap();
    assert_eq!(hub_parts(&again), (COMMIT_A.to_string(), false, None));
    assert_eq!(again.gguf(), gguf_a);
    assert_eq!(hub.transfers_since(before), Vec::<String>::new());

    // A new commit on main: one re-conversion, the old one removed.
    hub.push(COMMIT_B, hub::checkpoint_files(tmp.path(), 12));
    let moved = resolve(&cache, Scheme::F16).unwrap();
    assert_eq!(hub_parts(&moved), (COMMIT_B.to_string(), true, None));
    let gguf_b = moved.gguf().to_path_buf();
    assert_ne!(gguf_b, gguf_a);
    assert!(gguf_b.is_file());
    assert!(!gguf_a.exists(), "the superseded conversion is removed");
    let a = airavata::gguf::GgufFile::open(&gguf_b).unwrap();
    assert!(!a.tensors.is_empty());
    let before = hub.log.lock().unwrap().len();
    let settled = resolve(&cache, Scheme::F16).unwrap();
    assert_eq!(hub_parts(&settled), (COMMIT_B.to_string(), false, None));
    assert_eq!(hub.transfers_since(before), Vec::<String>::new());

    // Offline: the commit main named last time, with a notice.
    let offline_endpoint = hub::unreachable_endpoint();
    std::env::set_var("HF_ENDPOINT", &offline_endpoint);
    let offline = resolve(&cache, Scheme::F16).unwrap();
    let (commit, converted, why) = hub_parts(&offline);
    assert_eq!((commit.as_str(), converted), (COMMIT_B, false));
    assert!(why.is_some());
    assert_eq!(offline.gguf(), gguf_b);
    let notice = offline.to_string();
    assert!(
        notice.contains("unreachable") && notice.contains(&format!("as of commit {COMMIT_B}")),
        "{notice}"
    );
    // Offline and never converted with this scheme: a clear error.
    let e = resolve(&cache, Scheme::Q8_0).unwrap_err();
    assert!(matches!(e, ModelCacheError::Offline { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{REPO}@main")), "{e}");

    // `serve` offline: the notice, one line for the engine, the URL, and
    // none of llama.cpp's model-loading dump.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_airavata"))
        .args(["serve", REPO, "--scheme", "f16", "--host", "127.0.0.1"])
        .args(["--port", "0", "--parallel", "1", "--ctx-size", "256"])
        .env("AIRAVATA_CACHE", cache.root())
        .env("HF_ENDPOINT", &offline_endpoint)
        .env("HF_HOME", tmp.path().join("hf-home"))
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("model ready")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("model ready"), "{text}");
    let has = |s: &str| lines.iter().filter(|l| l.contains(s)).count();
    assert_eq!(has(&format!("as of commit {COMMIT_B}")), 1, "{text}");
    assert_eq!(has(&format!("loaded {}", gguf_b.display())), 1, "{text}");
    assert_eq!(has("listening on http://127.0.0.1:"), 1, "{text}");
    for dump in ["llama_model_loader", "print_info", "load_tensors"] {
        assert_eq!(has(dump), 0, "{text}");
    }
}
