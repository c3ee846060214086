//! Turning the `model` setting into a local file: a path as it is, a hub file from the cache or
//! downloaded with `$/progress` (bytes and percentage) and a message when it starts and fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tower_lsp_server::ls_types::{MessageType, ProgressToken};
use tower_lsp_server::{Bounded, NotCancellable, OngoingProgress};

use super::server::Backend;
use super::status::Download;
use crate::remote::{self, RemoteKind, RemoteSpec};
use crate::settings::Settings;
use crate::store::{DownloadProgress, ModelSpec, Store};

/// Latest byte counts, for the reporting loop.
struct Counts {
    bytes: watch::Sender<(u64, u64)>,
    verifying: AtomicBool,
}

impl DownloadProgress for Counts {
    fn started(&self, _: &str, total: u64) {
        self.bytes.send_replace((0, total));
    }

    fn advanced(&self, done: u64, total: u64) {
        self.bytes.send_replace((done, total));
    }

    fn verifying(&self) {
        self.verifying.store(true, Ordering::SeqCst);
        self.bytes.send_modify(|_| {});
    }
}

impl Backend {
    /// The local file for the configured model (the default model when none is), downloading
    /// it if needed; `None` after telling the user why there is none.
    pub(super) async fn model_file(&self, configured: Option<&str>) -> Option<PathBuf> {
        let spec = match configured {
            Some(text) => match text.parse::<ModelSpec>() {
                Ok(spec) => spec,
                Err(problem) => {
                    self.model_unavailable(problem).await;
                    return None;
                }
            },
            None => ModelSpec::default_model(),
        };
        let hub = match spec {
            ModelSpec::Path(path) => return Some(path),
            ModelSpec::Hub(hub) => hub,
        };
        let store = Store::from_env();
        if let Some(path) = store.cached(&hub) {
            return Some(path);
        }
        let name = hub.to_string();
        // The download first, so the status never says "loading" before "downloading".
        let starting = Download {
            what: name.clone(),
            done: 0,
            total: 0,
        };
        self.download.send_replace(Some(starting));
        self.host.fetching(&name);
        if !store.offline {
            let why = if configured.is_none() {
                " (the default model: set \"model\" to use another)"
            } else {
                ""
            };
            let message = format!(
                "codellama-lsp: downloading {name}{why} into {}",
                store.cache_dir.display()
            );
            tracing::info!("{message}");
            self.client.show_message(MessageType::INFO, message).await;
        }
        let counts = Arc::new(Counts {
            bytes: watch::Sender::new((0, 0)),
            verifying: AtomicBool::new(false),
        });
        let mut updates = counts.bytes.subscribe();
        let progress = self.begin_download_progress(&hub.file).await;
        let fetch = store.fetch(&hub, counts.clone());
        tokio::pin!(fetch);
        let outcome = loop {
            tokio::select! {
                outcome = &mut fetch => break outcome,
                changed = updates.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let (done, total) = *updates.borrow_and_update();
                    let download = Download { what: name.clone(), done, total };
                    let percent = download.percent();
                    self.download.send_replace(Some(download));
                    if let Some(progress) = &progress {
                        let message = if counts.verifying.load(Ordering::SeqCst) {
                            "verifying the checksum".to_owned()
                        } else {
                            format!("{} of {}", megabytes(done), megabytes(total))
                        };
                        progress.report_with_message(message, percent).await;
                    }
                    // Reports at most a few times a second, however fast the bytes come.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        self.download.send_replace(None);
        if let Some(progress) = progress {
            progress.finish().await;
        }
        match outcome {
            Ok(path) => Some(path),
            Err(error) => {
                self.model_unavailable(error.to_string()).await;
                None
            }
        }
    }

    /// With a remote backend: the local GGUF file whose vocabulary the server's model uses — the
    /// `tokenizer` setting, else the `model` setting, else (llama-server) the file the server
    /// says it runs, when this machine can read it. `None` after telling the user what to set.
    pub(super) async fn vocabulary_file(
        &self,
        settings: &Settings,
        server: &RemoteSpec,
    ) -> Option<PathBuf> {
        if let Some(configured) = settings.tokenizer.as_deref().or(settings.model.as_deref()) {
            return self.model_file(Some(configured)).await;
        }
        let told = if server.kind == RemoteKind::LlamaServer {
            match remote::probe(server).await {
                Ok(facts) => match facts.model_path.map(PathBuf::from) {
                    Some(path) if path.is_file() => return Some(path),
                    Some(path) => format!(
                        "the server runs {}, which is not on this machine",
                        path.display()
                    ),
                    None => "the server does not say which model file it runs".into(),
                },
                Err(problem) => {
                    format!("the server {server} cannot be asked which model it runs: {problem}")
                }
            }
        } else {
            format!(
                "{} servers do not share their vocabulary",
                server.kind.name()
            )
        };
        self.model_unavailable(format!(
            "{told}. Prompts are built here, so codellama-lsp needs the model's vocabulary: set \"tokenizer\" to a copy of the GGUF file the server runs (a path or owner/repo:file.gguf; only its vocabulary is read)"
        ))
        .await;
        None
    }

    async fn begin_download_progress(
        &self,
        file: &str,
    ) -> Option<OngoingProgress<Bounded, NotCancellable>> {
        if !self.session.client_support().work_done_progress {
            return None;
        }
        let token = ProgressToken::String(format!("codellama/download/{file}"));
        self.client
            .create_work_done_progress(token.clone())
            .await
            .ok()?;
        Some(
            self.client
                .progress(token, format!("Downloading {file}"))
                .with_percentage(0)
                .begin()
                .await,
        )
    }

    /// Records why there is no model and tells the user.
    async fn model_unavailable(&self, reason: String) {
        tracing::error!("no model: {reason}");
        self.host.fail(reason.clone());
        self.client
            .show_message(MessageType::ERROR, format!("codellama-lsp: {reason}"))
            .await;
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
