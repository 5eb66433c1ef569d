//! The hub download path against a local stand-in for huggingface.co
//! (hf-hub honours HF_ENDPOINT): listing, ranged downloads, an interrupted
//! transfer that resumes, a rerun served from the cache, and the CLI.

use airavata::synth::{self, SynthOptions};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const REPO: &str = "ai4bharat-test/tiny-airavata";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct Hub {
    files: BTreeMap<String, Vec<u8>>,
    /// (path, range header) of every request
    log: Mutex<Vec<(String, String)>>,
    /// Files whose first full transfer is cut off halfway.
    cut_once: Mutex<Vec<String>>,
}

async fn handle(State(hub): State<Arc<Hub>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    hub.log.lock().unwrap().push((path.clone(), range.clone()));
    if path == format!("/api/models/{REPO}/revision/main") {
        let siblings: Vec<_> = hub
            .files
            .keys()
            .map(|f| serde_json::json!({"rfilename": f}))
            .chain([serde_json::json!({"rfilename": "README.md"})])
            .collect();
        return axum::Json(serde_json::json!({"sha": COMMIT, "siblings": siblings}))
            .into_response();
    }
    let prefix = format!("/{REPO}/resolve/main/");
    let Some(file) = path.strip_prefix(&prefix) else {
        return (StatusCode::NOT_FOUND, "no such repo").into_response();
    };
    let Some(data) = hub.files.get(file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let size = data.len();
    let (start, end) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            let s: usize = a.parse().unwrap_or(0);
            let e: usize = b.parse().unwrap_or(size - 1);
            (s, e.min(size - 1))
        })
        .unwrap_or((0, size - 1));
    let mut headers = HeaderMap::new();
    headers.insert("x-repo-commit", COMMIT.parse().unwrap());
    headers.insert(header::ETAG, format!("\"etag-{file}\"").parse().unwrap());
    headers.insert(
        header::CONTENT_RANGE,
        format!("bytes {start}-{end}/{size}").parse().unwrap(),
    );
    let body = data[start..=end].to_vec();
    let cut = {
        let mut c = hub.cut_once.lock().unwrap();
        let hit = start == 0 && end + 1 == size && size > 1 && c.iter().any(|f| f == file);
        c.retain(|f| !(hit && f == file));
        hit
    };
    if cut {
        // Promise the whole body, deliver half, then break the connection.
        let half = body[..body.len() / 2].to_vec();
        let stream = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(half),
            Err(std::io::Error::other("connection reset")),
        ]);
        headers.insert(header::CONTENT_LENGTH, body.len().into());
        return (
            StatusCode::PARTIAL_CONTENT,
            headers,
            Body::from_stream(stream),
        )
            .into_response();
    }
    (StatusCode::PARTIAL_CONTENT, headers, body).into_response()
}

fn checkpoint_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let hf = dir.join("src");
    synth::write_checkpoint(
        &hf,
        &SynthOptions {
            config: synth::tiny_config(),
            shards: 2,
            seed: 11,
            std: 0.05,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::read_dir(&hf)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn start_hub(hub: Arc<Hub>) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(handle).with_state(hub);
    rt.spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rt)
}

fn file_requests(hub: &Hub, file: &str) -> Vec<String> {
    hub.log
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.ends_with(&format!("/resolve/main/{file}")))
        .map(|(_, r)| r.clone())
        .collect()
}

#[test]
fn download_resumes_and_rerun_uses_cache_and_cli_converts() {
    let tmp = tempfile::tempdir().unwrap();
    let files = checkpoint_files(tmp.path());
    let shard = "model-00001-of-00002.safetensors".to_string();
    let shard_size = files[&shard].len();
    let hub = Arc::new(Hub {
        files: files.clone(),
        cut_once: Mutex::new(vec![shard.clone()]),
        ..Default::default()
    });
    let (endpoint, _rt) = start_hub(hub.clone());
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
    let ranges = file_requests(&hub, &shard);
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
    let new: Vec<_> = hub.log.lock().unwrap()[before..].to_vec();
    assert!(
        new.iter().all(|(p, _)| p.starts_with("/api/")),
        "rerun downloaded: {new:?}"
    );

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
