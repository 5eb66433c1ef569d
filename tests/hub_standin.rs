//! The hub download path against a local stand-in for huggingface.co
//! (hf-hub honours HF_ENDPOINT): listing, ranged downloads, an interrupted
//! transfer that resumes, a rerun served from the cache, and the CLI.

#[path = "common/hub.rs"]
mod hub;

use hub::{Hub, REPO};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn download_resumes_and_rerun_uses_cache_and_cli_converts() {
    let tmp = tempfile::tempdir().unwrap();
    let files = hub::checkpoint_files(tmp.path(), 11);
    let shard = "model-00001-of-00002.safetensors".to_string();
    let shard_size = files[&shard].len();
    let hub = Arc::new(Hub {
        cut_once: Mutex::new(vec![shard.clone()]),
        ..Default::default()
    });
    hub.push(COMMIT, files.clone());
    let (endpoint, _rt) = hub::start(hub.clone());
    std::env::set_var("HF_ENDPOINT", &endpoint);
    let cache = tmp.path().join("cache");

    let dir: PathBuf = airavata::hub::fetch_checkpoint(REPO, "main", Some(&cache), false).unwrap();
    for (name, data) in &files {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), data, "{name}");
    }
    assert!(
        !dir.join("README.md").exists(),
        "only checkpoint files are fetched"
    );
    // The cut transfer was resumed from where it stopped, not restarted.
    let ranges = hub.file_requests(&shard);
    let resumed: Vec<usize> = ranges
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .filter(|&s| s > 0)
        .collect();
    assert_eq!(resumed.len(), 1, "requests: {ranges:?}");
    assert!(
        resumed[0] >= shard_size / 4 && resumed[0] < shard_size,
        "resumed at {}",
        resumed[0]
    );

    // A rerun finds everything in the cache: no file is transferred again.
    let before = hub.log.lock().unwrap().len();
    let dir2 = airavata::hub::fetch_checkpoint(REPO, "main", Some(&cache), false).unwrap();
    assert_eq!(dir2, dir);
    let new = hub.transfers_since(before);
    assert!(new.is_empty(), "rerun downloaded: {new:?}");

    // The CLI path: a hub id converts in one step (HF_HOME points at the cache).
    let out = tmp.path().join("hub.gguf");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_airavata"))
        .args(["convert", REPO, "--scheme", "f16", "-q", "-o"])
        .arg(&out)
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_HOME", tmp.path().join("hf-home"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let g = airavata::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("general.name"), Some("airavata-tiny-random"));

    // An unknown repo is a clear error.
    let e = airavata::hub::fetch_checkpoint("nobody/nothing", "main", Some(&cache), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nobody/nothing@main"), "{e}");
}
