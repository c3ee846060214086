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

/// Open documents the server keeps at most: a client that never closes what it opens cannot
/// grow the server without bound.
pub const MAX_OPEN_DOCUMENTS: usize = 5000;
/// The largest document the server keeps (its text is held in memory and scanned for prompts).
pub const MAX_DOCUMENT_BYTES: usize = 256 << 20;
/// Reasons remembered for documents the server refused to keep (for the errors that follow).
const MAX_REFUSALS: usize = 1024;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("document {0} is not open (send textDocument/didOpen first)")]
    NotOpen(String),
    #[error(
        "document {uri} is not tracked: {limit} documents are open already; close some to get completions here"
    )]
    TooManyOpen { uri: String, limit: usize },
    #[error(
        "document {uri} is not tracked: it is {} MB, over the {} MB limit",
        bytes >> 20,
        limit >> 20
    )]
    TooLarge {
        uri: String,
        bytes: usize,
        limit: usize,
    },
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
    /// Why documents the client opened are not kept (too many, too large), until closed.
    refused: HashMap<String, SessionError>,
}

impl State {
    /// Why `uri` is not open: refused (and why), or never opened.
    fn not_open(&self, uri: &str) -> SessionError {
        self.refused
            .get(uri)
            .cloned()
            .unwrap_or_else(|| SessionError::NotOpen(uri.to_owned()))
    }

    fn refuse(&mut self, uri: String, error: SessionError) {
        if self.refused.len() >= MAX_REFUSALS {
            self.refused.clear(); // the reasons are a courtesy; memory stays bounded
        }
        self.refused.insert(uri, error);
    }
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
    /// Asks for inline completions again on `codellama/suggestionReady`
    /// (`experimental.codellamaSuggestionRefresh`): typing can then be answered with a
    /// suggestion's first words, and the whole of it shown when ready.
    pub suggestion_refresh: bool,
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

    /// Opens (or reopens, replacing the old text) a document, unless it is over the limits (the
    /// error says which; requests for it then get that error too).
    pub fn open(&self, uri: String, document: Document) -> Result<(), SessionError> {
        self.open_within(uri, document, MAX_OPEN_DOCUMENTS, MAX_DOCUMENT_BYTES)
    }

    fn open_within(
        &self,
        uri: String,
        document: Document,
        max_open: usize,
        max_bytes: usize,
    ) -> Result<(), SessionError> {
        let mut state = self.lock();
        let bytes = document.rope().len_bytes();
        let refusal = if bytes > max_bytes {
            Some(SessionError::TooLarge {
                uri: uri.clone(),
                bytes,
                limit: max_bytes,
            })
        } else if state.documents.len() >= max_open && !state.documents.contains_key(&uri) {
            Some(SessionError::TooManyOpen {
                uri: uri.clone(),
                limit: max_open,
            })
        } else {
            None
        };
        match refusal {
            Some(error) => {
                state.documents.remove(&uri);
                state.refuse(uri, error.clone());
                Err(error)
            }
            None => {
                state.refused.remove(&uri);
                state.documents.insert(uri, document);
                Ok(())
            }
        }
    }

    /// Applies content changes to an open document in the negotiated encoding. A document that
    /// grows over the size limit is dropped (with an error saying so), never truncated.
    pub fn change(
        &self,
        uri: &str,
        changes: &[TextChange],
        version: i32,
    ) -> Result<(), SessionError> {
        self.change_within(uri, changes, version, MAX_DOCUMENT_BYTES)
    }

    fn change_within(
        &self,
        uri: &str,
        changes: &[TextChange],
        version: i32,
        max_bytes: usize,
    ) -> Result<(), SessionError> {
        let mut state = self.lock();
        let encoding = state.encoding;
        let Some(document) = state.documents.get_mut(uri) else {
            return Err(state.not_open(uri));
        };
        document.apply_changes(changes, version, encoding);
        let bytes = document.rope().len_bytes();
        if bytes > max_bytes {
            state.documents.remove(uri);
            let error = SessionError::TooLarge {
                uri: uri.to_owned(),
                bytes,
                limit: max_bytes,
            };
            state.refuse(uri.to_owned(), error.clone());
            return Err(error);
        }
        Ok(())
    }

    pub fn close(&self, uri: &str) -> Result<(), SessionError> {
        let mut state = self.lock();
        if state.refused.remove(uri).is_some() {
            return Ok(());
        }
        state
            .documents
            .remove(uri)
            .map(drop)
            .ok_or_else(|| SessionError::NotOpen(uri.to_owned()))
    }

    /// A snapshot of an open document: cloning a rope is O(1) and shares its chunks, so handlers
    /// can work on it without holding the lock while later edits arrive.
    pub fn snapshot(&self, uri: &str) -> Result<Document, SessionError> {
        let state = self.lock();
        match state.documents.get(uri) {
            Some(document) => Ok(document.clone()),
            None => Err(state.not_open(uri)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Document {
        Document::new(text, 1, "python")
    }

    #[test]
    fn documents_over_the_count_limit_are_refused_with_a_reason_until_closed() {
        let session = Session::new();
        session.open_within("a".into(), doc("x"), 2, 100).unwrap();
        session.open_within("b".into(), doc("y"), 2, 100).unwrap();
        // Reopening an open document is not a new one.
        session.open_within("a".into(), doc("x2"), 2, 100).unwrap();
        let refused = session
            .open_within("c".into(), doc("z"), 2, 100)
            .unwrap_err();
        assert!(
            refused.to_string().contains("2 documents are open"),
            "{refused}"
        );
        assert_eq!(session.snapshot("c").unwrap_err(), refused);
        assert_eq!(session.close("c"), Ok(()));
        assert!(matches!(
            session.snapshot("c"),
            Err(SessionError::NotOpen(_))
        ));
        session.close("a").unwrap();
        session.open_within("c".into(), doc("z"), 2, 100).unwrap();
        assert_eq!(session.open_document_count(), 2);
    }

    #[test]
    fn a_document_that_grows_over_the_size_limit_is_dropped_not_truncated() {
        let session = Session::new();
        assert!(matches!(
            session.open_within("big".into(), doc(&"x".repeat(11)), 10, 10),
            Err(SessionError::TooLarge { bytes: 11, .. })
        ));
        session
            .open_within("a".into(), doc("12345"), 10, 10)
            .unwrap();
        let grow = TextChange {
            range: None,
            text: "123456789012".into(),
        };
        let error = session.change_within("a", &[grow], 2, 10).unwrap_err();
        assert!(matches!(error, SessionError::TooLarge { bytes: 12, .. }));
        assert_eq!(session.snapshot("a").unwrap_err(), error);
        assert_eq!(session.open_document_count(), 0);
    }
}
