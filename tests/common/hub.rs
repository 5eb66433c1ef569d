//! A local stand-in for huggingface.co (hf-hub honours HF_ENDPOINT): one
//! repo whose `main` can move to new commits, ranged downloads, and
//! transfers that break halfway once.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const REPO: &str = "ai4bharat-test/tiny-airavata";

/// The files of one commit.
pub type Files = BTreeMap<String, Vec<u8>>;

#[derive(Default)]
pub struct Hub {
    /// Commit id → files, and the commit `main` names.
    pub commits: Mutex<(BTreeMap<String, Files>, String)>,
    /// (path, range header) of every request
    pub log: Mutex<Vec<(String, String)>>,
    /// Files whose first full transfer is cut off halfway.
    pub cut_once: Mutex<Vec<String>>,
}

impl Hub {
    /// Makes `commit` (with `files`) the head of `main`.
    pub fn push(&self, commit: &str, files: Files) {
        let mut c = self.commits.lock().unwrap();
        c.0.insert(commit.to_string(), files);
        c.1 = commit.to_string();
    }

    /// The files `rev` (`main` or a commit) names, and its commit.
    fn resolve(&self, rev: &str) -> Option<(String, Files)> {
        let c = self.commits.lock().unwrap();
        let commit = if rev == "main" {
            c.1.clone()
        } else {
            rev.to_string()
        };
        c.0.get(&commit).map(|f| (commit, f.clone()))
    }

    /// The range headers of the requests for `file`.
    pub fn file_requests(&self, file: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.contains("/resolve/") && p.ends_with(&format!("/{file}")))
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Requests other than API calls (file transfers) since log entry `from`.
    pub fn transfers_since(&self, from: usize) -> Vec<String> {
        self.log.lock().unwrap()[from..]
            .iter()
            .filter(|(p, _)| !p.starts_with("/api/"))
            .map(|(p, _)| p.clone())
            .collect()
    }
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
    if let Some(rev) = path.strip_prefix(&format!("/api/models/{REPO}/revision/")) {
        let Some((commit, files)) = hub.resolve(rev) else {
            return (StatusCode::NOT_FOUND, "no such revision").into_response();
        };
        let siblings: Vec<_> = files
            .keys()
            .map(|f| serde_json::json!({"rfilename": f}))
            .chain([serde_json::json!({"rfilename": "README.md"})])
            .collect();
        return axum::Json(serde_json::json!({"sha": commit, "siblings": siblings}))
            .into_response();
    }
    let Some(rest) = path.strip_prefix(&format!("/{REPO}/resolve/")) else {
        return (StatusCode::NOT_FOUND, "no such repo").into_response();
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let Some((commit, files)) = hub.resolve(rev) else {
        return (StatusCode::NOT_FOUND, "no such revision").into_response();
    };
    let Some(data) = files.get(file) else {
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
    headers.insert("x-repo-commit", commit.parse().unwrap());
    headers.insert(
        header::ETAG,
        format!("\"etag-{commit}-{file}\"").parse().unwrap(),
    );
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

/// Serves `hub` on a free local port; returns its URL (for HF_ENDPOINT) and
/// the runtime that keeps it alive.
pub fn start(hub: Arc<Hub>) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(handle).with_state(hub);
    rt.spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rt)
}

/// A local URL where nothing listens (connections are refused).
pub fn unreachable_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// The files of a tiny random checkpoint (2 shards) written under `dir/src-<seed>`.
pub fn checkpoint_files(dir: &std::path::Path, seed: u64) -> Files {
    use airavata::synth::{self, SynthOptions};
    let hf = dir.join(format!("src-{seed}"));
    synth::write_checkpoint(
        &hf,
        &SynthOptions {
            config: synth::tiny_config(),
            shards: 2,
            seed,
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
