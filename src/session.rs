//! The server's state between messages: open documents, the negotiated encoding and the lifecycle.
//!
//! Plain Rust values only (documents are keyed by their URI string); the protocol layer converts.
//! The lock is only ever held for short, synchronous work and never across an `.await`, so the
//! text-sync path (which runs on the reader, in arrival order) cannot be stalled by a slow request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::document::{Document, PositionEncoding, TextChange};
use crate::settings::{Settings, SettingsLayer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("document {0} is not open (send textDocument/didOpen first)")]
    NotOpen(String),
}

#[derive(Default)]
struct State {
    encoding: PositionEncoding,
    documents: HashMap<String, Document>,
    initialized: bool,
    shutdown_requested: bool,
    settings: Settings,
    client: ClientSupport,
    /// Work in progress that the client may cancel, by progress token.
    cancellable: HashMap<String, Arc<CancelFlag>>,
}

/// What the client said it can do, where our answers depend on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientSupport {
    /// `window/workDoneProgress/create` and `$/progress`.
    pub work_done_progress: bool,
    /// Versioned `documentChanges` in workspace edits (else only unversioned `changes`).
    pub versioned_edits: bool,
    /// `CodeAction` literals in `textDocument/codeAction` answers (else only `Command`s).
    pub code_action_literals: bool,
    /// Shows `codellama/status` itself (`experimental.codellamaStatus`): "ready" needs no
    /// pop-up on every start.
    pub status_notifications: bool,
}

/// Set once, by a cancel from the client; waited on by the work it cancels.
#[derive(Default)]
pub struct CancelFlag {
    cancelled: AtomicBool,
    notify: Notify,
}

impl CancelFlag {
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once `cancel` has been called (at once if it already was).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Shared by the protocol handlers and the transport; cheap to lock, never held across awaits.
#[derive(Default)]
pub struct Session {
    state: Mutex<State>,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// A session whose settings start from `settings` (the defaults plus command-line flags).
    pub fn with_settings(settings: Settings) -> Self {
        let session = Self::default();
        session.lock().settings = settings;
        session
    }

    pub fn settings(&self) -> Settings {
        self.lock().settings.clone()
    }

    /// Applies a layer of settings from the editor; on error nothing changes.
    pub fn apply_settings(&self, layer: &SettingsLayer) -> Result<Settings, String> {
        let mut state = self.lock();
        state.settings.apply(layer)?;
        Ok(state.settings.clone())
    }

    pub fn set_client_support(&self, support: ClientSupport) {
        self.lock().client = support;
    }

    pub fn client_support(&self) -> ClientSupport {
        self.lock().client
    }

    /// Registers work the client can cancel with `window/workDoneProgress/cancel` on `token`.
    pub fn cancellable(&self, token: &str) -> Arc<CancelFlag> {
        let flag = Arc::new(CancelFlag::default());
        self.lock()
            .cancellable
            .insert(token.to_owned(), flag.clone());
        flag
    }

    pub fn forget_cancellable(&self, token: &str) {
        self.lock().cancellable.remove(token);
    }

    /// Cancels the work behind `token`; false when there is none (it already ended).
    pub fn cancel(&self, token: &str) -> bool {
        let flag = self.lock().cancellable.get(token).cloned();
        flag.map(|flag| flag.cancel()).is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a document half-edited (edits are applied
        // by ropey in one call), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the outcome of `initialize`.
    pub fn initialize(&self, encoding: PositionEncoding) {
        let mut state = self.lock();
        state.encoding = encoding;
        state.initialized = true;
    }

    pub fn is_initialized(&self) -> bool {
        self.lock().initialized
    }

    pub fn encoding(&self) -> PositionEncoding {
        self.lock().encoding
    }

    pub fn request_shutdown(&self) {
        self.lock().shutdown_requested = true;
    }

    pub fn shutdown_requested(&self) -> bool {
        self.lock().shutdown_requested
    }

    /// Opens (or reopens, replacing the old text) a document.
    pub fn open(&self, uri: String, document: Document) {
        self.lock().documents.insert(uri, document);
    }

    /// Applies content changes to an open document in the negotiated encoding.
    pub fn change(
        &self,
        uri: &str,
        changes: &[TextChange],
        version: i32,
    ) -> Result<(), SessionError> {
        let mut state = self.lock();
        let encoding = state.encoding;
        let document = state
            .documents
            .get_mut(uri)
            .ok_or_else(|| SessionError::NotOpen(uri.to_owned()))?;
        document.apply_changes(changes, version, encoding);
        Ok(())
    }

    pub fn close(&self, uri: &str) -> Result<(), SessionError> {
        self.lock()
            .documents
            .remove(uri)
            .map(drop)
            .ok_or_else(|| SessionError::NotOpen(uri.to_owned()))
    }

    /// A snapshot of an open document: cloning a rope is O(1) and shares its chunks, so handlers
    /// can work on it without holding the lock while later edits arrive.
    pub fn snapshot(&self, uri: &str) -> Result<Document, SessionError> {
        self.lock()
            .documents
            .get(uri)
            .cloned()
            .ok_or_else(|| SessionError::NotOpen(uri.to_owned()))
    }

    /// Snapshots of every open document except `uri` (cheap: ropes share their chunks).
    pub fn other_documents(&self, uri: &str) -> Vec<(String, Document)> {
        self.lock()
            .documents
            .iter()
            .filter(|(key, _)| key.as_str() != uri)
            .map(|(key, document)| (key.clone(), document.clone()))
            .collect()
    }

    pub fn open_document_count(&self) -> usize {
        self.lock().documents.len()
    }
}
