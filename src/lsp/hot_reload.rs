//! Hot reload: when the model file is replaced on disk, the new file is loaded in the background
//! while the old model keeps serving, and the server switches between requests. A new file that
//! does not load leaves the old model serving, and the user is told why.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tower_lsp_server::Client;
use tower_lsp_server::ls_types::MessageType;

use super::server::Backend;
use crate::model_host::ModelHost;

/// Changes closer together than this are one replacement (a copy writes in many steps).
const QUIET: Duration = Duration::from_millis(800);

impl Backend {
    /// Watches `path` (the model just loaded), replacing any earlier watch.
    pub(super) fn watch_model_file(&self, path: &Path) {
        let mut slot = self.model_watcher.lock().unwrap_or_else(|p| p.into_inner());
        *slot = None; // the old watcher's channel closes, and its task ends
        match start(path, self.host.clone(), self.client.clone()) {
            Ok(watcher) => *slot = Some(watcher),
            Err(error) => tracing::warn!(
                "cannot watch {} for changes ({error}); replacing it will need a restart",
                path.display()
            ),
        }
    }
}

fn start(
    path: &Path,
    host: Arc<ModelHost>,
    client: Client,
) -> notify::Result<notify::RecommendedWatcher> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let folder = std::fs::canonicalize(folder)?;
    let file_name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let target = folder.join(&file_name);
    let (changes, mut changed) = mpsc::unbounded_channel::<()>();
    let watched = target.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if !matches!(event.kind, EventKind::Access(_)) && event.paths.iter().any(|p| p == &watched)
        {
            let _ = changes.send(());
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    tracing::debug!("watching {} for replacement", target.display());
    tokio::spawn(async move {
        while changed.recv().await.is_some() {
            // Wait until the writes stop.
            while let Ok(Some(())) = tokio::time::timeout(QUIET, changed.recv()).await {}
            if !target.exists() {
                continue; // removed, maybe about to be renamed into place: wait for that
            }
            reload(&host, &client, &target).await;
        }
    });
    Ok(watcher)
}

async fn reload(host: &ModelHost, client: &Client, path: &Path) {
    tracing::info!("{} changed on disk; loading it again", path.display());
    let (kind, message) = match host.reload().await {
        Ok(name) => (
            MessageType::INFO,
            format!(
                "codellama-lsp: {} changed; now serving {name}",
                path.display()
            ),
        ),
        Err(error) => (
            MessageType::WARNING,
            format!(
                "codellama-lsp: {} changed but cannot be loaded ({error}); still serving the previous model",
                path.display()
            ),
        ),
    };
    tracing::info!("{message}");
    client.show_message(kind, message).await;
}
