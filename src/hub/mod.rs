//! Hugging Face Hub downloads (hf-hub's standard cache; `HF_ENDPOINT`,
//! `HF_HOME` and `HF_TOKEN` honoured; interrupted downloads resume).

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No answer from the hub (no network, DNS, connection refused, TLS).
    #[error("the hub is unreachable for {repo}@{revision}: {source}")]
    Unreachable {
        repo: String,
        revision: String,
        #[source]
        source: ApiError,
    },
    #[error("hub request for {repo}@{revision} failed: {source}")]
    Api {
        repo: String,
        revision: String,
        #[source]
        source: hf_hub::api::sync::ApiError,
    },
    #[error("{repo}@{revision}: {file}: download failed: {source}")]
    Download {
        repo: String,
        revision: String,
        file: String,
        #[source]
        source: hf_hub::api::sync::ApiError,
    },
    #[error("{repo}@{revision} has no config.json or no *.safetensors weights (files: {files})")]
    NotACheckpoint {
        repo: String,
        revision: String,
        files: String,
    },
}

/// Files of a checkpoint that conversion uses.
pub fn wanted(file: &str) -> bool {
    matches!(
        file,
        "config.json"
            | "generation_config.json"
            | "tokenizer.model"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "added_tokens.json"
            | "model.safetensors.index.json"
    ) || (file.ends_with(".safetensors") && !file.contains('/'))
}

/// Whether `s` looks like a hub id (`owner/name`) rather than a local path.
pub fn looks_like_repo_id(s: &str) -> bool {
    let p = Path::new(s);
    !p.exists()
        && s.split('/').count() == 2
        && !s.starts_with('.')
        && !s.starts_with('/')
        && s.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The client: `HF_ENDPOINT`, `HF_HOME` and `HF_TOKEN` from the environment,
/// `cache_dir` instead of hf-hub's cache when given.
fn api(cache_dir: Option<&Path>, progress: bool) -> Result<Api, ApiError> {
    let mut b = ApiBuilder::from_env()
        .with_progress(progress)
        .with_retries(3);
    if let Some(dir) = cache_dir {
        b = b.with_cache_dir(dir.to_path_buf());
    }
    if let Ok(tok) = std::env::var("HF_TOKEN") {
        if !tok.is_empty() {
            b = b.with_token(Some(tok));
        }
    }
    b.build()
}

/// Whether `e` means no answer came from the hub (as opposed to an answer
/// that refuses, such as 401 or 404).
fn is_unreachable(e: &ApiError) -> bool {
    match e {
        ApiError::RequestError(e) => matches!(**e, ureq::Error::Transport(_)),
        ApiError::TooManyRetries(e) => is_unreachable(e),
        _ => false,
    }
}

/// The commit `revision` (a branch, tag or commit) of `repo` names on the hub
/// now. [`HubError::Unreachable`] when the hub does not answer.
pub fn resolve_commit(repo: &str, revision: &str) -> Result<String, HubError> {
    let err = |source: ApiError| {
        if is_unreachable(&source) {
            HubError::Unreachable {
                repo: repo.to_string(),
                revision: revision.to_string(),
                source,
            }
        } else {
            HubError::Api {
                repo: repo.to_string(),
                revision: revision.to_string(),
                source,
            }
        }
    };
    let api = api(None, false).map_err(err)?;
    let r = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    Ok(api.repo(r).info().map_err(err)?.sha)
}

/// Download (or find in the cache) the checkpoint files of `repo` at
/// `revision`; returns the snapshot directory holding them. Pass a commit
/// (see [`resolve_commit`]) to get exactly that commit: for a branch name,
/// hf-hub answers from its cache whatever the branch points at now.
pub fn fetch_checkpoint(
    repo: &str,
    revision: &str,
    cache_dir: Option<&Path>,
    progress: bool,
) -> Result<PathBuf, HubError> {
    let api_err = |source| HubError::Api {
        repo: repo.to_string(),
        revision: revision.to_string(),
        source,
    };
    let api = api(cache_dir, progress).map_err(api_err)?;
    let r = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let handle = api.repo(r.clone());
    let info = handle.info().map_err(api_err)?;
    let files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| wanted(f))
        .collect();
    if !files.iter().any(|f| f == "config.json")
        || !files.iter().any(|f| f.ends_with(".safetensors"))
    {
        return Err(HubError::NotACheckpoint {
            repo: repo.to_string(),
            revision: revision.to_string(),
            files: info
                .siblings
                .iter()
                .map(|s| s.rfilename.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut dir = None;
    for f in &files {
        let p = handle.get(f).map_err(|source| HubError::Download {
            repo: repo.to_string(),
            revision: revision.to_string(),
            file: f.clone(),
            source,
        })?;
        dir = p.parent().map(Path::to_path_buf);
    }
    // All files of one revision share the snapshot directory.
    dir.ok_or_else(|| HubError::NotACheckpoint {
        repo: repo.to_string(),
        revision: revision.to_string(),
        files: String::new(),
    })
}
