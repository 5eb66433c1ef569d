//! `serve`'s MODEL argument → a GGUF file. A GGUF is used as it is; a
//! checkpoint (a local directory or a hub id) is converted once with the
//! chosen scheme into a cache keyed by what it was converted from:
//!
//! ```text
//! <root>/hub/<owner-name>/<commit>/<scheme>.gguf   a hub checkpoint, by resolved commit
//! <root>/hub/<owner-name>/refs/<revision>          the commit <revision> named when last resolved
//! <root>/local/<path>/<scheme>.gguf                a local checkpoint (reconverted when a file is newer)
//! ```
//!
//! For a hub id the revision (branch, tag or commit) is resolved to a commit
//! on every start, so a new commit on `main` is converted once and served;
//! conversions of commits no revision names any more are removed. When the
//! hub does not answer, the commit the revision named last time is served and
//! [`Served`] says so.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::convert::{self, ConvertError, Scheme, TypePolicy};
use crate::hub::{self, HubError};

/// What `serve` serves when no MODEL is given.
pub const DEFAULT_MODEL: &str = "ai4bharat/Airavata";

/// Errors of the model cache.
#[derive(Debug, thiserror::Error)]
pub enum ModelCacheError {
    /// The hub answered with an error, or a download failed.
    #[error(transparent)]
    Hub(Box<HubError>),
    /// Converting the checkpoint failed.
    #[error(transparent)]
    Convert(Box<ConvertError>),
    /// The cache could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// MODEL is neither a file, a directory nor a hub id.
    #[error("{0}: not a GGUF file, a checkpoint directory or a hub id (owner/name)")]
    NotAModel(String),
    /// The hub is unreachable and nothing usable is cached.
    #[error("{source}; and no {scheme} conversion of {repo}@{revision} is cached")]
    Offline {
        /// The hub id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The conversion scheme asked for.
        scheme: Scheme,
        /// Why the hub did not answer.
        source: Box<HubError>,
    },
}

impl From<HubError> for ModelCacheError {
    fn from(e: HubError) -> Self {
        Self::Hub(Box::new(e))
    }
}

impl From<ConvertError> for ModelCacheError {
    fn from(e: ConvertError) -> Self {
        Self::Convert(Box::new(e))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelCacheError + '_ {
    move |source| ModelCacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The GGUF that will be served, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// MODEL was a GGUF file.
    File(PathBuf),
    /// A local checkpoint directory.
    Local {
        /// The checkpoint.
        dir: PathBuf,
        /// Its conversion.
        gguf: PathBuf,
        /// Converted by this call (else found in the cache).
        converted: bool,
    },
    /// A hub checkpoint.
    Hub {
        /// The hub id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The commit served.
        commit: String,
        /// Its conversion.
        gguf: PathBuf,
        /// Converted by this call (else found in the cache).
        converted: bool,
        /// Why the hub could not be asked (the commit is the one `revision`
        /// named when it last could); `None` when the hub answered.
        offline: Option<String>,
    },
}

impl Served {
    /// The GGUF file.
    pub fn gguf(&self) -> &Path {
        match self {
            Served::File(p) => p,
            Served::Local { gguf, .. } | Served::Hub { gguf, .. } => gguf,
        }
    }
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = |converted: bool| if converted { "converted" } else { "cached" };
        match self {
            Served::File(p) => write!(f, "serving {}", p.display()),
            Served::Local {
                dir,
                gguf,
                converted,
            } => write!(
                f,
                "serving {} ({} {})",
                dir.display(),
                how(*converted),
                gguf.display()
            ),
            Served::Hub {
                repo,
                revision,
                commit,
                gguf,
                converted,
                offline,
            } => match offline {
                None => write!(
                    f,
                    "serving {repo}@{revision} = commit {commit} ({} {})",
                    how(*converted),
                    gguf.display()
                ),
                Some(why) => write!(
                    f,
                    "{why}; serving the cached {repo}@{revision} as of commit {commit}, \
                     which may not be the newest ({})",
                    gguf.display()
                ),
            },
        }
    }
}

/// Converted models under one root directory.
#[derive(Debug, Clone)]
pub struct ModelCache {
    root: PathBuf,
}

/// `s` as one path component.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Whether `s` is a full commit id.
fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Newest modification time of the files in `dir`.
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
}

impl ModelCache {
    /// A cache under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache at `$AIRAVATA_CACHE`, else `$XDG_CACHE_HOME/airavata`, else
    /// `~/.cache/airavata`.
    pub fn from_env() -> Self {
        let root = if let Some(p) = std::env::var_os("AIRAVATA_CACHE") {
            PathBuf::from(p)
        } else if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(p).join("airavata")
        } else {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache").join("airavata"))
                .unwrap_or_else(|| PathBuf::from(".airavata-cache"))
        };
        Self::new(root)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves MODEL to a GGUF, converting a
    /// checkpoint with `scheme` when the cache has no conversion of it.
    /// `progress` draws download and conversion progress bars; `cancel` stops
    /// a conversion cleanly.
    pub fn resolve(
        &self,
        model: &str,
        revision: &str,
        scheme: Scheme,
        progress: bool,
        cancel: &AtomicBool,
    ) -> Result<Served, ModelCacheError> {
        let p = Path::new(model);
        if p.is_file() {
            return Ok(Served::File(p.to_path_buf()));
        }
        if p.is_dir() {
            return self.local(p, scheme, progress, cancel);
        }
        if hub::looks_like_repo_id(model) {
            return self.hub(model, revision, scheme, progress, cancel);
        }
        Err(ModelCacheError::NotAModel(model.to_string()))
    }

    fn local(
        &self,
        dir: &Path,
        scheme: Scheme,
        progress: bool,
        cancel: &AtomicBool,
    ) -> Result<Served, ModelCacheError> {
        let dir = dir.canonicalize().map_err(io_err(dir))?;
        let gguf = self
            .root
            .join("local")
            .join(sanitize(&dir.to_string_lossy()))
            .join(format!("{scheme}.gguf"));
        let fresh = match (
            std::fs::metadata(&gguf).and_then(|m| m.modified()).ok(),
            newest_mtime(&dir),
        ) {
            (Some(c), Some(d)) => c >= d,
            _ => false,
        };
        if !fresh {
            convert_into(&dir, &gguf, scheme, progress, cancel)?;
        }
        Ok(Served::Local {
            dir,
            gguf,
            converted: !fresh,
        })
    }

    fn hub(
        &self,
        repo: &str,
        revision: &str,
        scheme: Scheme,
        progress: bool,
        cancel: &AtomicBool,
    ) -> Result<Served, ModelCacheError> {
        let repo_dir = self.root.join("hub").join(sanitize(repo));
        let gguf_of = |commit: &str| repo_dir.join(commit).join(format!("{scheme}.gguf"));
        let ref_file = repo_dir.join("refs").join(sanitize(revision));
        let commit = match hub::resolve_commit(repo, revision) {
            Ok(commit) if is_commit(&commit) => commit,
            Ok(other) => {
                return Err(ModelCacheError::Io {
                    path: ref_file,
                    source: std::io::Error::other(format!(
                        "the hub named {other:?} as the commit of {repo}@{revision}"
                    )),
                })
            }
            Err(source @ HubError::Unreachable { .. }) => {
                let last = std::fs::read_to_string(&ref_file)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| is_commit(s))
                    .or_else(|| is_commit(revision).then(|| revision.to_ascii_lowercase()));
                return match last.filter(|c| gguf_of(c).is_file()) {
                    Some(commit) => Ok(Served::Hub {
                        repo: repo.to_string(),
                        revision: revision.to_string(),
                        gguf: gguf_of(&commit),
                        commit,
                        converted: false,
                        offline: Some(source.to_string()),
                    }),
                    None => Err(ModelCacheError::Offline {
                        repo: repo.to_string(),
                        revision: revision.to_string(),
                        scheme,
                        source: Box::new(source),
                    }),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let gguf = gguf_of(&commit);
        let converted = !gguf.is_file();
        if converted {
            tracing::info!(
                "fetching {repo}@{revision} (commit {commit}) from the Hugging Face Hub"
            );
            let dir = hub::fetch_checkpoint(repo, &commit, None, progress)?;
            convert_into(&dir, &gguf, scheme, progress, cancel)?;
        }
        write_ref(&ref_file, &commit)?;
        self.prune(&repo_dir);
        Ok(Served::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
            commit,
            gguf,
            converted,
            offline: None,
        })
    }

    /// Removes the conversions of commits that no ref names any more (an
    /// older `main`). Failures only cost disk space, so they are logged.
    fn prune(&self, repo_dir: &Path) {
        let named: Vec<String> = std::fs::read_dir(repo_dir.join("refs"))
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map(|s| s.trim().to_string())
            .collect();
        let Ok(entries) = std::fs::read_dir(repo_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_commit(&name) && !named.contains(&name) {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => tracing::info!("removed the conversion of superseded commit {name}"),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot remove {}", e.path().display())
                    }
                }
            }
        }
    }
}

/// Records that `revision` names `commit` (written whole or not at all).
fn write_ref(ref_file: &Path, commit: &str) -> Result<(), ModelCacheError> {
    let dir = ref_file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    std::fs::write(tmp.path(), commit).map_err(io_err(tmp.path()))?;
    tmp.persist(ref_file)
        .map_err(|e| io_err(ref_file)(e.error))?;
    Ok(())
}

/// Converts the checkpoint `dir` into `gguf` with the default policy of `scheme`.
fn convert_into(
    dir: &Path,
    gguf: &Path,
    scheme: Scheme,
    progress: bool,
    cancel: &AtomicBool,
) -> Result<(), ModelCacheError> {
    if let Some(parent) = gguf.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    tracing::info!(
        "converting {} → {} (scheme {scheme}, once)",
        dir.display(),
        gguf.display()
    );
    let opts = convert::ConvertOptions {
        input: dir.to_path_buf(),
        output: gguf.to_path_buf(),
        policy: TypePolicy {
            scheme,
            ..Default::default()
        },
        quantizer: None,
        calibrate: convert::Calibrate::auto(None),
        overwrite: true,
        progress,
    };
    if progress {
        convert::convert(&opts, &convert::Bar::default(), cancel)?;
    } else {
        convert::convert(&opts, &convert::Silent, cancel)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_and_path_components() {
        assert!(is_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit("main"));
        assert!(!is_commit("0123456789abcdef0123456789abcdef0123456g"));
        assert_eq!(sanitize("ai4bharat/Airavata"), "ai4bharat-Airavata");
    }

    #[test]
    fn a_gguf_file_is_served_as_it_is() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("m.gguf");
        std::fs::write(&f, b"GGUF").expect("write");
        let cache = ModelCache::new(tmp.path().join("cache"));
        let s = cache
            .resolve(
                &f.to_string_lossy(),
                "main",
                Scheme::default(),
                false,
                &AtomicBool::new(false),
            )
            .expect("resolve");
        assert_eq!(s, Served::File(f.clone()));
        assert_eq!(s.gguf(), f);
        assert!(!tmp.path().join("cache").exists());
    }
}
