//! `codellama/status`: the model's state in one small object, for editor status items and health
//! checks. Clients ask for it (request) and are told of every change (notification), so they
//! display the server's view instead of guessing it from message texts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tower_lsp_server::Client;
use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::notification::Notification;

use super::server::Backend;
use crate::document::PositionEncoding;
use crate::model_host::ModelState;

/// A download in progress: what, and how far.
#[derive(Clone, Debug, PartialEq)]
pub struct Download {
    pub what: String,
    pub done: u64,
    pub total: u64,
}

impl Download {
    /// 0–100; 0 while the size is unknown.
    pub fn percent(&self) -> u32 {
        (self.done.saturating_mul(100))
            .checked_div(self.total)
            .unwrap_or(0)
            .min(100) as u32
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Downloading,
    Loading,
    Ready,
    Error,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// The model's name when ready; its file or hub spec before.
    pub model: Option<String>,
    /// One line for people: progress, "… is ready", or what went wrong and what to do.
    pub message: String,
    /// 0–100 while downloading.
    pub percent: Option<u32>,
    /// When ready: whether the model can fill in the middle (inline completions).
    pub infill: Option<bool>,
    pub version: String,
    /// The negotiated position encoding, `utf-8` or `utf-16`.
    pub encoding: String,
}

/// The server → client notification carrying a [`Status`].
pub enum StatusNotification {}

impl Notification for StatusNotification {
    type Params = Status;
    const METHOD: &'static str = "codellama/status";
}

/// The status for a model state, refined by a download in progress.
pub fn status(
    state: &ModelState,
    download: Option<&Download>,
    encoding: PositionEncoding,
) -> Status {
    let base = Status {
        state: State::Starting,
        model: None,
        message: "starting".into(),
        percent: None,
        infill: None,
        version: crate::VERSION.into(),
        encoding: super::convert::encoding_kind(encoding).as_str().to_owned(),
    };
    if let (ModelState::Loading(_), Some(download)) = (state, download) {
        return Status {
            state: State::Downloading,
            model: Some(download.what.clone()),
            message: format!(
                "downloading {}: {:.1} of {:.1} MB",
                download.what,
                download.done as f64 / 1e6,
                download.total as f64 / 1e6
            ),
            percent: Some(download.percent()),
            ..base
        };
    }
    match state {
        ModelState::Unconfigured => base,
        ModelState::Loading(path) => {
            let file = path.file_name().map_or_else(
                || path.display().to_string(),
                |f| f.to_string_lossy().into(),
            );
            Status {
                state: State::Loading,
                message: format!("loading {file}"),
                model: Some(file),
                ..base
            }
        }
        ModelState::Ready(model) => {
            let message = match &model.template {
                Ok(_) => format!("{} is ready", model.name),
                Err(problem) => format!("{} is ready, but {problem}", model.name),
            };
            Status {
                state: State::Ready,
                model: Some(model.name.clone()),
                message,
                infill: Some(model.template.is_ok()),
                ..base
            }
        }
        ModelState::Failed(error) => Status {
            state: State::Error,
            message: error.clone(),
            ..base
        },
    }
}

impl Backend {
    /// `codellama/status`: the state now.
    pub async fn status(&self, _params: Option<serde_json::Value>) -> Result<Status> {
        Ok(self.current_status())
    }

    fn current_status(&self) -> Status {
        status(
            &self.host.state(),
            self.download.borrow().as_ref(),
            self.session.encoding(),
        )
    }

    /// Sends a `codellama/status` notification now and after every change, at most four times
    /// a second (the last change is never lost: the watch channels keep it).
    pub(super) fn publish_status(&self) {
        let mut states = self.host.subscribe();
        let mut downloads = self.download.subscribe();
        let session = self.session.clone();
        let client: Client = self.client.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = status(
                    &states.borrow_and_update(),
                    downloads.borrow_and_update().as_ref(),
                    session.encoding(),
                );
                if last.as_ref() != Some(&now) {
                    client
                        .send_notification::<StatusNotification>(now.clone())
                        .await;
                    last = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                tokio::select! {
                    changed = states.changed() => if changed.is_err() { break },
                    changed = downloads.changed() => if changed.is_err() { break },
                }
            }
        });
    }
}

/// Where a download's progress is published for the status.
pub type DownloadSender = watch::Sender<Option<Download>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn downloads_report_their_percentage_and_loading_names_the_file() {
        let loading = ModelState::Loading(PathBuf::from("/models/code.gguf"));
        let download = Download {
            what: "org/repo:code.gguf".into(),
            done: 1_500_000,
            total: 6_000_000,
        };
        let shown = status(&loading, Some(&download), PositionEncoding::Utf16);
        assert_eq!(shown.state, State::Downloading);
        assert_eq!(shown.percent, Some(25));
        assert_eq!(
            shown.message,
            "downloading org/repo:code.gguf: 1.5 of 6.0 MB"
        );
        assert_eq!(shown.encoding, "utf-16");

        let shown = status(&loading, None, PositionEncoding::Utf8);
        assert_eq!(shown.state, State::Loading);
        assert_eq!(shown.model.as_deref(), Some("code.gguf"));
        assert_eq!(shown.encoding, "utf-8");
    }

    #[test]
    fn an_unknown_size_is_zero_percent_and_failures_say_why() {
        let loading = ModelState::Loading(PathBuf::from("x"));
        let download = Download {
            what: "x".into(),
            done: 10,
            total: 0,
        };
        let shown = status(&loading, Some(&download), PositionEncoding::Utf16);
        assert_eq!(shown.percent, Some(0));
        let failed = ModelState::Failed("no such file: set \"model\"".into());
        let shown = status(&failed, None, PositionEncoding::Utf16);
        assert_eq!(shown.state, State::Error);
        assert_eq!(shown.message, "no such file: set \"model\"");
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["state"], "error");
        assert_eq!(json["percent"], serde_json::Value::Null);
    }

    #[test]
    fn a_download_is_ignored_once_the_model_is_no_longer_loading() {
        let download = Download {
            what: "x".into(),
            done: 1,
            total: 2,
        };
        let shown = status(
            &ModelState::Unconfigured,
            Some(&download),
            PositionEncoding::Utf16,
        );
        assert_eq!(shown.state, State::Starting);
    }
}
