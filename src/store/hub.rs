//! Downloads from a Hugging Face hub into the standard cache, with progress, resumption and
//! checksum verification, and without any network access for files already there.
//!
//! The layout is hf-hub's (and Python's huggingface_hub's): `$HF_HOME/hub/models--owner--name/`
//! with `blobs/<etag>`, `snapshots/<commit>/<file>` and `refs/<revision>`. For files stored with
//! Git LFS, as GGUF models are, the etag is the file's SHA-256, which is what we verify.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hf_hub::api::tokio::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha2::{Digest, Sha256};

use super::spec::HubFile;

/// Where downloads go and where they come from, as the Hugging Face tools configure it.
#[derive(Clone, Debug)]
pub struct Store {
    /// The `hub` folder of the cache.
    pub cache_dir: PathBuf,
    pub endpoint: String,
    token: Option<String>,
    /// `HF_HUB_OFFLINE`: never touch the network.
    pub offline: bool,
}

/// Download progress, in bytes.
pub trait DownloadProgress: Send + Sync + 'static {
    fn started(&self, file: &str, total: u64);
    fn advanced(&self, done: u64, total: u64);
    /// The download is complete and its checksum is being verified.
    fn verifying(&self) {}
}

impl DownloadProgress for () {
    fn started(&self, _: &str, _: u64) {}
    fn advanced(&self, _: u64, _: u64) {}
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{file} is not in the model cache ({cache}) and HF_HUB_OFFLINE is set. Download it on a connected machine with `codellama-lsp models pull {file}`, or copy the .gguf file here and pass --model /path/to/file.gguf"
    )]
    Offline { file: String, cache: String },
    #[error(
        "cannot reach {endpoint} to download {file} ({cause}). If this machine is offline, download `{file}` on a connected machine and pass --model /path/to/file.gguf"
    )]
    Unreachable {
        file: String,
        endpoint: String,
        cause: String,
    },
    #[error(
        "the connection broke while downloading {file} ({cause}); what arrived is kept: run it again to resume"
    )]
    Interrupted { file: String, cause: String },
    #[error(
        "{file} was not found on {endpoint}: check the repository and file name (the repository's \"Files\" page lists them)"
    )]
    NotFound { file: String, endpoint: String },
    #[error(
        "{file} needs a Hugging Face access token: accept the model's terms on its page, then set HF_TOKEN (or run `huggingface-cli login`)"
    )]
    Unauthorized { file: String },
    #[error(
        "not enough disk space in {cache} for {file}: free some space, or point HF_HOME at a larger disk"
    )]
    DiskFull { file: String, cache: String },
    #[error(
        "the download of {file} does not match its published checksum (expected sha256 {expected}, got {actual}); the file was deleted. Try again; if it keeps failing, the server at {endpoint} is serving a damaged file"
    )]
    Corrupt {
        file: String,
        expected: String,
        actual: String,
        endpoint: String,
    },
    #[error("downloading {file} failed: {cause}")]
    Failed { file: String, cause: String },
}

impl Store {
    /// The configuration the Hugging Face tools use: `HF_HOME` (else `~/.cache/huggingface`),
    /// `HF_ENDPOINT`, `HF_TOKEN` (else the cached login token), `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let cache = Cache::from_env();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|token| !token.trim().is_empty())
            .or_else(|| cache.token());
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|value| {
            matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Self {
            cache_dir: cache.path().clone(),
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.trim().is_empty())
                .map_or_else(
                    || "https://huggingface.co".to_owned(),
                    |e| e.trim_end_matches('/').to_owned(),
                ),
            token,
            offline,
        }
    }

    fn repo(hub: &HubFile) -> Repo {
        Repo::with_revision(hub.repo.clone(), RepoType::Model, hub.revision.clone())
    }

    /// The cached copy of `hub`, without any network access.
    pub fn cached(&self, hub: &HubFile) -> Option<PathBuf> {
        Cache::new(self.cache_dir.clone())
            .repo(Self::repo(hub))
            .get(&hub.file)
            .filter(|path| path.is_file())
    }

    /// The local path of `hub`: the cached copy, else a verified download.
    pub async fn fetch(
        &self,
        hub: &HubFile,
        progress: Arc<dyn DownloadProgress>,
    ) -> Result<PathBuf, StoreError> {
        if let Some(path) = self.cached(hub) {
            return Ok(path);
        }
        let name = hub.to_string();
        if self.offline {
            return Err(StoreError::Offline {
                file: name,
                cache: self.cache_dir.display().to_string(),
            });
        }
        let api = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_max_files(4)
            .build()
            .map_err(|error| self.failure(hub, error))?;
        let adapter = Adapter {
            shared: Arc::new(Shared {
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
                progress: progress.clone(),
            }),
        };
        let path = api
            .repo(Self::repo(hub))
            .download_with_progress(&hub.file, adapter)
            .await
            .map_err(|error| self.failure(hub, error))?;
        progress.verifying();
        let to_check = path.clone();
        let verified = tokio::task::spawn_blocking(move || verify(&to_check))
            .await
            .unwrap_or_else(|_| Err("the checksum thread crashed".into()));
        match verified {
            Ok(()) => Ok(path),
            Err(Mismatch::Digest { expected, actual }) => {
                remove_download(&path);
                Err(StoreError::Corrupt {
                    file: name,
                    expected,
                    actual,
                    endpoint: self.endpoint.clone(),
                })
            }
            Err(Mismatch::Io(cause)) => {
                remove_download(&path);
                Err(StoreError::Failed { file: name, cause })
            }
        }
    }

    /// Our words for what hf-hub reports.
    fn failure(&self, hub: &HubFile, error: ApiError) -> StoreError {
        let file = hub.to_string();
        let cache = self.cache_dir.display().to_string();
        let io_error = |error: &std::io::Error| match error.kind() {
            std::io::ErrorKind::StorageFull => StoreError::DiskFull {
                file: file.clone(),
                cache: cache.clone(),
            },
            _ => StoreError::Failed {
                file: file.clone(),
                cause: error.to_string(),
            },
        };
        let error = match error {
            ApiError::TooManyRetries(inner) => *inner,
            other => other,
        };
        match &error {
            ApiError::RequestError(request) => match request.status().map(|s| s.as_u16()) {
                Some(404) => StoreError::NotFound {
                    file,
                    endpoint: self.endpoint.clone(),
                },
                Some(401 | 403) => StoreError::Unauthorized { file },
                Some(status) => StoreError::Failed {
                    file,
                    cause: format!("the server answered HTTP {status}"),
                },
                None if request.is_body() || request.is_decode() => StoreError::Interrupted {
                    file,
                    cause: describe_request_error(request),
                },
                None => StoreError::Unreachable {
                    file,
                    endpoint: self.endpoint.clone(),
                    cause: describe_request_error(request),
                },
            },
            ApiError::IoError(io) => io_error(io),
            ApiError::MissingHeader(header) | ApiError::InvalidHeader(header) => {
                StoreError::Failed {
                    file,
                    cause: format!(
                        "the server's answer has no valid {header} header (is {} a Hugging Face hub?)",
                        self.endpoint
                    ),
                }
            }
            ApiError::LockAcquisition(lock) => StoreError::Failed {
                file,
                cause: format!(
                    "another download of the same file is running (it holds {})",
                    lock.display()
                ),
            },
            other => StoreError::Failed {
                file,
                cause: other.to_string(),
            },
        }
    }
}

/// The innermost cause of a request error, which is where "connection refused" is.
fn describe_request_error(error: &dyn std::error::Error) -> String {
    let mut cause = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    cause
}

enum Mismatch {
    Digest { expected: String, actual: String },
    Io(String),
}

impl From<&str> for Mismatch {
    fn from(cause: &str) -> Self {
        Self::Io(cause.to_owned())
    }
}

/// Checks a downloaded file against its blob name, when that is a SHA-256 (Git LFS files).
fn verify(path: &Path) -> Result<(), Mismatch> {
    let blob = std::fs::canonicalize(path).map_err(|e| Mismatch::Io(e.to_string()))?;
    let Some(expected) = published_sha256(&blob) else {
        return Ok(()); // not an LFS object: no digest to check against
    };
    let actual = sha256_file(&blob).map_err(|e| Mismatch::Io(e.to_string()))?;
    if actual == expected {
        Ok(())
    } else {
        Err(Mismatch::Digest { expected, actual })
    }
}

/// The SHA-256 a cached file was published with: Git LFS files live in the cache's `blobs/`
/// under their digest, which the snapshot entry links to. `None` for other files.
pub fn published_sha256(path: &Path) -> Option<String> {
    let blob = std::fs::canonicalize(path).ok()?;
    let name = blob.file_name()?.to_str()?.to_ascii_lowercase();
    (name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit())).then_some(name)
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Removes a bad download: the blob, the snapshot entry that points at it, and the folders and
/// refs that only existed for it.
fn remove_download(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(pointer);
    // snapshots/<commit>/<file…> → remove emptied folders up to `snapshots`.
    let mut folder = pointer.parent();
    while let Some(dir) = folder {
        if dir.file_name().is_some_and(|name| name == "snapshots") {
            if std::fs::remove_dir(dir).is_ok()
                && let Some(repo) = dir.parent()
            {
                // No snapshot is left: the refs point at nothing.
                let _ = std::fs::remove_dir_all(repo.join("refs"));
            }
            break;
        }
        if std::fs::remove_dir(dir).is_err() {
            break; // not empty: other files of this snapshot stay
        }
        folder = dir.parent();
    }
}

/// hf-hub's progress callbacks, from parallel chunk downloads, summed into one count.
#[derive(Clone)]
struct Adapter {
    shared: Arc<Shared>,
}

struct Shared {
    done: AtomicU64,
    total: AtomicU64,
    progress: Arc<dyn DownloadProgress>,
}

impl hf_hub::api::tokio::Progress for Adapter {
    async fn init(&mut self, size: usize, filename: &str) {
        self.shared.total.store(size as u64, Ordering::SeqCst);
        self.shared.progress.started(filename, size as u64);
    }

    async fn update(&mut self, size: usize) {
        let done = self.shared.done.fetch_add(size as u64, Ordering::SeqCst) + size as u64;
        let total = self.shared.total.load(Ordering::SeqCst);
        self.shared.progress.advanced(done.min(total), total);
    }

    async fn finish(&mut self) {}
}

/// A GGUF file found in the cache.
#[derive(Clone, Debug)]
pub struct CachedModel {
    /// `owner/repo:file` (at the revision the cache's `main` ref points to, when it does).
    pub spec: String,
    pub path: PathBuf,
    pub size: u64,
}

impl Store {
    /// Every `.gguf` file in the cache's model snapshots.
    pub fn list(&self) -> Vec<CachedModel> {
        let mut found = Vec::new();
        let Ok(repos) = std::fs::read_dir(&self.cache_dir) else {
            return found;
        };
        for repo in repos.flatten() {
            let folder = repo.file_name().to_string_lossy().into_owned();
            let Some(name) = folder.strip_prefix("models--") else {
                continue;
            };
            let repo_id = name.replacen("--", "/", 1);
            let Ok(snapshots) = std::fs::read_dir(repo.path().join("snapshots")) else {
                continue;
            };
            for snapshot in snapshots.flatten() {
                collect_gguf(&snapshot.path(), &snapshot.path(), &repo_id, &mut found);
            }
        }
        found.sort_by(|a, b| a.spec.cmp(&b.spec));
        found.dedup_by(|a, b| a.spec == b.spec);
        found
    }
}

fn collect_gguf(root: &Path, dir: &Path, repo: &str, found: &mut Vec<CachedModel>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_gguf(root, &path, repo, found);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            && let Ok(metadata) = std::fs::metadata(&path)
        {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            found.push(CachedModel {
                spec: format!("{repo}:{}", relative.to_string_lossy().replace('\\', "/")),
                path: path.clone(),
                size: metadata.len(),
            });
        }
    }
}
