//! Models by name: local GGUF files and hub specs (`owner/repo:file.gguf`), the Hugging Face
//! cache they are downloaded into, and the checks that a download is the file that was published.

mod hub;
mod spec;

use std::path::PathBuf;
use std::sync::Arc;

pub use hub::{CachedModel, DownloadProgress, Store, StoreError, published_sha256, sha256_file};
pub use spec::{DEFAULT_MODEL, HubFile, ModelSpec};

/// The local file for `spec`: a path as it is, a hub file from the cache or downloaded.
pub async fn resolve(
    spec: &ModelSpec,
    store: &Store,
    progress: Arc<dyn DownloadProgress>,
) -> Result<PathBuf, StoreError> {
    match spec {
        ModelSpec::Path(path) => Ok(path.clone()),
        ModelSpec::Hub(hub) => store.fetch(hub, progress).await,
    }
}
