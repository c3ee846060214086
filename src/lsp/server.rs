//! The LSP request handlers: thin functions from a request to a result.
//!
//! Text synchronisation is not here: the transport applies it in arrival order (see
//! `transport.rs`). Everything else is routed by tower-lsp-server, which also answers requests
//! before `initialize`, unknown methods and `$/cancelRequest` (cancelling drops the handler's
//! future, which drops its engine job handle, which stops generation within a token).

use std::sync::Arc;

use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::ls_types::{
    CodeAction, CodeActionParams, CodeActionResponse, CompletionItem, CompletionItemKind,
    CompletionList, CompletionParams, CompletionResponse, CompletionTextEdit,
    DidChangeConfigurationParams, ExecuteCommandParams, InitializeParams, InitializeResult,
    InitializedParams, InlineCompletionItem, InlineCompletionParams, InlineCompletionResponse,
    InlineCompletionTriggerKind, LSPAny, MessageType, Position, ProgressToken, ServerInfo,
    TextDocumentIdentifier, TextEdit, Uri, VersionedTextDocumentIdentifier,
};
use tower_lsp_server::{Client, LanguageServer};

use super::{capabilities, convert};
use crate::assist::ChatSessions;
use crate::completion::{Completer, CompletionRequest, Outcome};
use crate::document::Document;
use crate::model_host::{ModelHost, ModelState};
use crate::session::Session;
use crate::settings::{Settings, SettingsLayer};

pub struct Backend {
    pub(super) client: Client,
    pub(super) session: Arc<Session>,
    pub(super) host: Arc<ModelHost>,
    completer: Arc<Completer>,
    pub(super) chats: ChatSessions,
    /// The workspace folders, from `initialize`.
    roots: std::sync::Mutex<Vec<std::path::PathBuf>>,
    /// Watches the workspace for changed files (completion context).
    workspace_watcher: Arc<std::sync::Mutex<Option<notify::RecommendedWatcher>>>,
    /// Watches the loaded model's file for replacement (hot reload).
    pub(super) model_watcher: std::sync::Mutex<Option<notify::RecommendedWatcher>>,
    /// A problem found during `initialize`, shown once the client can display messages.
    startup_warning: std::sync::Mutex<Option<String>>,
    /// The model download in progress, if any (for `codellama/status`).
    pub(super) download: super::status::DownloadSender,
    /// Limits messages about a failing remote backend.
    backend_trouble: crate::remote::OncePer,
    /// Counts edits and completion requests: a warm-up waits for a pause in them.
    activity: Arc<std::sync::atomic::AtomicU64>,
}

/// How long the user must stop typing before the server prefills the prompt at the last edit.
const TYPING_PAUSE: std::time::Duration = std::time::Duration::from_millis(400);

/// `codellama/suggestionReady` (server → client): a suggestion answered with its first words is
/// now whole. A client that still shows that document version with the cursor at `position`
/// asks for the inline completion again (and gets all of it at once, from the server's cache).
pub enum SuggestionReady {}

impl tower_lsp_server::ls_types::notification::Notification for SuggestionReady {
    type Params = SuggestionReadyParams;
    const METHOD: &'static str = "codellama/suggestionReady";
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuggestionReadyParams {
    pub text_document: VersionedTextDocumentIdentifier,
    pub position: Position,
}

/// A suggestion at a cursor, in the negotiated encoding.
struct Placed {
    text: String,
    at: Position,
    /// The identifier characters just before the cursor, and where they start: completion
    /// items replace them, so clients that filter by the typed word keep the item.
    word: String,
    word_start: Position,
}

impl Backend {
    pub fn new(client: Client, session: Arc<Session>) -> Self {
        Self {
            client,
            session,
            host: Arc::new(ModelHost::new()),
            completer: Arc::new(Completer::new()),
            chats: ChatSessions::new(),
            model_watcher: std::sync::Mutex::default(),
            roots: std::sync::Mutex::default(),
            workspace_watcher: Arc::default(),
            startup_warning: std::sync::Mutex::default(),
            download: tokio::sync::watch::Sender::new(None),
            backend_trouble: crate::remote::OncePer::new(std::time::Duration::from_secs(60)),
            activity: Arc::default(),
        }
    }

    /// Tells the client of every suggestion that grew whole after its first words were shown,
    /// while its document is still at the version it was computed for.
    fn announce_grown_suggestions(&self) {
        let mut grown = self.completer.listen_for_grown();
        let (client, session) = (self.client.clone(), self.session.clone());
        tokio::spawn(async move {
            while let Some(suggestion) = grown.recv().await {
                let Ok(document) = session.snapshot(&suggestion.uri) else {
                    continue;
                };
                if document.version() != suggestion.version {
                    continue; // typed on since: the request for the new text is under way
                }
                let Ok(uri) = suggestion.uri.parse::<Uri>() else {
                    continue;
                };
                let at = document.position_of(suggestion.cursor, session.encoding());
                let params = SuggestionReadyParams {
                    text_document: VersionedTextDocumentIdentifier::new(uri, suggestion.version),
                    position: convert::to_lsp_position(at),
                };
                client.send_notification::<SuggestionReady>(params).await;
            }
        });
    }

    /// The open document behind `uri`, or an `InvalidParams` error saying it is not open.
    pub(super) fn document(&self, uri: &Uri) -> Result<Document> {
        self.session
            .snapshot(uri.as_str())
            .map_err(|error| invalid_params(error.to_string()))
    }

    /// What the completer needs for a cursor at `position` in `uri`: a snapshot of the document,
    /// the cursor as a char index, and the other open documents (workspace context).
    fn completion_request(
        &self,
        uri: &Uri,
        position: Position,
        automatic: bool,
    ) -> Result<CompletionRequest> {
        let document = self.document(uri)?;
        let cursor = document.char_index(convert::position(position), self.session.encoding());
        Ok(CompletionRequest {
            uri: uri.as_str().to_owned(),
            document,
            cursor,
            automatic,
            others: self.session.other_documents(uri.as_str()),
            sent_version: None,
            refreshes: self.session.client_support().suggestion_refresh,
        })
    }

    /// Runs the completer for `uri` at `position`; `None` when there is nothing to show.
    /// `wire_version` is the document's version when the request was read: if it changed since,
    /// the answer would be for text the editor no longer has, so there is none.
    async fn suggest(
        &self,
        uri: &Uri,
        position: Position,
        automatic: bool,
        wire_version: Option<i32>,
    ) -> Result<Option<Placed>> {
        self.note_activity();
        let mut request = self.completion_request(uri, position, automatic)?;
        request.sent_version = wire_version;
        let encoding = self.session.encoding();
        let at = convert::to_lsp_position(request.document.position_of(request.cursor, encoding));
        let rope = request.document.rope();
        let mut start = request.cursor;
        while start > 0 && is_word_char(rope.char(start - 1)) {
            start -= 1;
        }
        let word: String = rope.slice(start..request.cursor).into();
        let word_start = convert::to_lsp_position(request.document.position_of(start, encoding));
        let settings = self.session.settings();
        match self
            .completer
            .complete(request, &settings, &self.host)
            .await
        {
            Ok((Outcome::Suggestion(text), _)) => Ok(Some(Placed {
                text,
                at,
                word,
                word_start,
            })),
            Ok((Outcome::Nothing | Outcome::Superseded, _)) => Ok(None),
            Ok((Outcome::BackendFailed(problem), _)) => {
                self.backend_failed(&problem).await;
                Ok(None)
            }
            Err(message) => {
                tracing::warn!("completion failed: {message}");
                Err(Error {
                    code: ErrorCode::InternalError,
                    message: message.into(),
                    data: None,
                })
            }
        }
    }

    /// Tells the user that the remote backend failed: every time in the log, at most once a
    /// minute on screen (a dead server would otherwise pop up a message per keystroke).
    async fn backend_failed(&self, problem: &str) {
        tracing::warn!("completion: {problem}");
        if self.backend_trouble.allow(std::time::Instant::now()) {
            self.client
                .show_message(
                    MessageType::WARNING,
                    format!("codellama-lsp: no completion: {problem}"),
                )
                .await;
        }
    }

    /// `textDocument/inlineCompletion` (LSP 3.18), routed as a custom method because
    /// tower-lsp-server's trait predates it.
    pub async fn inline_completion(
        &self,
        params: Pinned<InlineCompletionParams>,
    ) -> Result<Option<InlineCompletionResponse>> {
        let (params, wire_version) = (params.params, params.wire_version);
        let position = params.text_document_position;
        let automatic = params.context.trigger_kind == InlineCompletionTriggerKind::AUTOMATIC;
        let items = self
            .suggest(
                &position.text_document.uri,
                position.position,
                automatic,
                wire_version,
            )
            .await?
            .map(|placed| InlineCompletionItem {
                insert_text: placed.text,
                filter_text: None,
                range: Some(tower_lsp_server::ls_types::Range::new(placed.at, placed.at)),
                command: None,
                insert_text_format: None,
            })
            .into_iter()
            .collect();
        Ok(Some(InlineCompletionResponse::Array(items)))
    }

    /// `codellama/document`: the server's copy of an open document, for clients and tests to
    /// check that it matches the editor's (a diverged copy means every suggestion is wrong).
    pub async fn document_state(&self, params: DocumentStateParams) -> Result<DocumentState> {
        let document = self.document(&params.text_document.uri)?;
        Ok(DocumentState {
            version: document.version(),
            language_id: document.language_id().to_owned(),
            text: document.text(),
        })
    }

    /// Loads the configured model if it changed, reporting progress and the outcome.
    async fn load_configured_model(&self, settings: Settings) {
        let file = match settings.backend.remote() {
            None => self.model_file(settings.model.as_deref()).await,
            Some(server) => self.vocabulary_file(&settings, server).await,
        };
        let Some(path) = file else {
            return;
        };
        let model = path.display().to_string();
        let progress = if self.session.client_support().work_done_progress {
            let token = ProgressToken::String(format!("codellama/load/{model}"));
            match self.client.create_work_done_progress(token.clone()).await {
                Ok(()) => Some(
                    self.client
                        .progress(token, "codellama-lsp")
                        .with_message(format!("loading {model}"))
                        .begin()
                        .await,
                ),
                Err(_) => None,
            }
        } else {
            None
        };
        let outcome = self
            .host
            .load(
                path.clone(),
                settings.device,
                settings.kv_type,
                settings.context_tokens,
                &settings.backend,
            )
            .await;
        if matches!(outcome, Some(Ok(_))) {
            self.watch_model_file(&path);
        }
        if let Some(progress) = progress {
            progress.finish().await;
        }
        match outcome {
            None => {}
            Some(Ok(name)) => {
                let note = match self.host.state() {
                    ModelState::Ready(ready) => {
                        let problems: Vec<String> = ready
                            .template
                            .as_ref()
                            .err()
                            .into_iter()
                            .chain(&ready.warning)
                            .cloned()
                            .collect();
                        (!problems.is_empty()).then(|| problems.join("; "))
                    }
                    _ => None,
                };
                let (kind, message) = match note {
                    Some(problem) => (
                        MessageType::WARNING,
                        format!("codellama-lsp: loaded {name}, but {problem}"),
                    ),
                    None => (MessageType::INFO, format!("codellama-lsp: {name} is ready")),
                };
                tracing::info!("{message}");
                // Clients that show `codellama/status` already say "ready"; problems still pop up.
                let shown_in_status = self.session.client_support().status_notifications;
                if kind != MessageType::INFO || !shown_in_status {
                    self.client.show_message(kind, message).await;
                }
            }
            Some(Err(error)) => {
                tracing::error!("loading the model failed: {error}");
                self.client
                    .show_message(
                        MessageType::ERROR,
                        format!("codellama-lsp: could not load the model: {error}"),
                    )
                    .await;
            }
        }
    }

    fn apply_settings(&self, value: &serde_json::Value) -> std::result::Result<Settings, String> {
        let layer = SettingsLayer::from_json(value)?;
        self.session.apply_settings(&layer)
    }
}

/// A request's parameters with the version its document had when the request was read (the
/// transport adds it: see `transport::pin_document_version`).
#[derive(Debug, serde::Deserialize)]
pub struct Pinned<P> {
    #[serde(flatten)]
    params: P,
    #[serde(rename = "codellama/wireVersion")]
    wire_version: Option<i32>,
}

/// `codellama/warmup` `{textDocument, position}`: where the cursor is (on focus, after opening a
/// file), so the server can prefill that prompt before the first keystroke.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmupParams {
    text_document: TextDocumentIdentifier,
    position: Position,
}

/// `codellama/stats`: what the completer did, and the sizes of per-document state.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    open_documents: usize,
    /// Documents the completer holds state for (at most the open ones).
    tracked_documents: usize,
    /// Supersede keys the engine tracks (documents with a job in flight).
    engine_keys: usize,
    #[serde(flatten)]
    completions: crate::completion::CompletionStats,
}

impl Backend {
    /// Something happened that a warm-up must not interrupt (an edit, a request).
    fn note_activity(&self) -> u64 {
        self.activity
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// Called by the transport after each text synchronisation notification, in order.
    pub fn after_text_sync(&self, synced: super::text_sync::Synced) {
        use super::text_sync::Synced;
        match synced {
            Synced::Closed(uri) => self.completer.forget(&uri),
            // Nothing says where the cursor is in a file just opened: clients tell it with
            // `codellama/warmup`.
            Synced::Opened(_) => {}
            Synced::Changed(uri) => {
                let tick = self.note_activity();
                let (activity, session) = (self.activity.clone(), self.session.clone());
                let (completer, host) = (self.completer.clone(), self.host.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(TYPING_PAUSE).await;
                    if activity.load(std::sync::atomic::Ordering::SeqCst) != tick {
                        return; // more typing, or a request that will warm the cache itself
                    }
                    let Ok(document) = session.snapshot(&uri) else {
                        return;
                    };
                    let Some(cursor) = document.edited_at() else {
                        return;
                    };
                    let request = CompletionRequest {
                        others: session.other_documents(&uri),
                        uri,
                        document,
                        cursor,
                        automatic: true,
                        sent_version: None,
                        refreshes: false,
                    };
                    completer.warm_up(request, &session.settings(), &host).await;
                });
            }
        }
    }

    /// `codellama/warmup`: prefill the prompt at the client's cursor in idle time.
    pub async fn warmup(&self, params: WarmupParams) {
        match self.completion_request(&params.text_document.uri, params.position, true) {
            Ok(request) => {
                let settings = self.session.settings();
                self.completer.warm_up(request, &settings, &self.host).await;
            }
            Err(error) => tracing::debug!("codellama/warmup: {}", error.message),
        }
    }

    /// `codellama/stats`.
    pub async fn stats(&self, _params: Option<serde_json::Value>) -> Result<Stats> {
        let engine_keys = match self.host.state() {
            ModelState::Ready(model) => model.engine.tracked_keys(),
            _ => 0,
        };
        Ok(Stats {
            open_documents: self.session.open_document_count(),
            tracked_documents: self.completer.tracked_documents(),
            engine_keys,
            completions: self.completer.stats(),
        })
    }
}

/// `codellama/prompt` `{textDocument, position}`: the completion prompt the model would see
/// there, as text, with the files its workspace context came from ("why this suggestion?").
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptParams {
    text_document: TextDocumentIdentifier,
    position: Position,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptView {
    text: String,
    tokens: usize,
    context_sources: Vec<String>,
}

impl Backend {
    /// Starts watching the workspace folders for the completion context, when enabled (in the
    /// background: walking a large workspace must not delay anything).
    fn watch_workspace(&self) {
        let roots = self.roots.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if roots.is_empty() || !self.session.settings().workspace_context {
            return;
        }
        let (completer, slot) = (self.completer.clone(), self.workspace_watcher.clone());
        tokio::task::spawn_blocking(move || {
            match super::workspace_watch::start(&roots, completer) {
                Ok((watcher, folders)) => {
                    tracing::info!("watching {folders} workspace folders for completion context");
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
                }
                Err(error) => tracing::warn!("cannot watch the workspace ({error})"),
            }
        });
    }

    pub async fn show_prompt(&self, params: PromptParams) -> Result<PromptView> {
        let request = self.completion_request(&params.text_document.uri, params.position, false)?;
        let settings = self.session.settings();
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(settings.deadline_ms);
        let Some(model) = self.host.ready(deadline).await else {
            return Err(Error {
                code: ErrorCode::InvalidRequest,
                message: self.host.unavailable_reason().into(),
                data: None,
            });
        };
        let template = model.completion_template(settings.fim_order);
        let built = self
            .completer
            .build_prompt(&request, &settings, &model.tokenizer, &template)
            .await
            .map_err(|message| Error {
                code: ErrorCode::InternalError,
                message: message.into(),
                data: None,
            })?;
        Ok(PromptView {
            text: model.tokenizer.decode(&built.prompt.ids),
            tokens: built.prompt.ids.len(),
            context_sources: built.context_sources,
        })
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentStateParams {
    text_document: TextDocumentIdentifier,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentState {
    version: i32,
    language_id: String,
    text: String,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

pub fn invalid_params(message: impl Into<String>) -> Error {
    Error {
        code: ErrorCode::InvalidParams,
        message: message.into().into(),
        data: None,
    }
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let encoding = capabilities::negotiate_encoding(&params.capabilities);
        if let Some(options) = &params.initialization_options {
            // Bad options must not stop the editor from starting us: keep the defaults, say why.
            if let Err(problem) = self.apply_settings(options) {
                tracing::warn!("initializationOptions: {problem}");
                *self
                    .startup_warning
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(problem);
            }
        }
        self.session
            .set_client_support(capabilities::client_support(&params.capabilities));
        #[allow(deprecated)] // rootUri: still what many clients send instead of workspaceFolders
        let roots: Vec<std::path::PathBuf> = match &params.workspace_folders {
            Some(folders) if !folders.is_empty() => folders
                .iter()
                .filter_map(|folder| convert::file_path(folder.uri.as_str()))
                .collect(),
            _ => params
                .root_uri
                .iter()
                .filter_map(|uri| convert::file_path(uri.as_str()))
                .collect(),
        };
        *self.roots.lock().unwrap_or_else(|p| p.into_inner()) = roots;
        self.session.initialize(encoding);
        tracing::info!("initialized; positions are counted in {encoding:?}");
        Ok(InitializeResult {
            capabilities: capabilities::server_capabilities(encoding),
            server_info: Some(ServerInfo {
                name: "codellama-lsp".into(),
                version: Some(crate::VERSION.into()),
            }),
            ..InitializeResult::default()
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        tracing::info!("codellama-lsp {} ready", crate::VERSION);
        let warning = self
            .startup_warning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(problem) = warning {
            let message = format!(
                "codellama-lsp: initializationOptions: {problem}; using the defaults for them"
            );
            self.client.show_message(MessageType::ERROR, message).await;
        }
        self.publish_status();
        self.watch_workspace();
        self.announce_grown_suggestions();
        self.load_configured_model(self.session.settings()).await;
    }

    async fn shutdown(&self) -> Result<()> {
        // The transport has already recorded it (in arrival order, see transport.rs).
        Ok(())
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        match self.apply_settings(&params.settings) {
            Ok(settings) => self.load_configured_model(settings).await,
            Err(problem) => {
                tracing::warn!("{problem}");
                self.client
                    .show_message(
                        MessageType::ERROR,
                        format!("codellama-lsp: {problem}; keeping the previous settings"),
                    )
                    .await;
            }
        }
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let position = params.text_document_position;
        let automatic = params.context.is_some_and(|context| {
            context.trigger_kind != tower_lsp_server::ls_types::CompletionTriggerKind::INVOKED
        });
        let placed = self
            .suggest(
                &position.text_document.uri,
                position.position,
                automatic,
                None,
            )
            .await?;
        let items = placed
            .map(|placed| {
                // The typed word goes in front, so editors that filter items by the word
                // before the cursor (Helix, Emacs) keep showing the suggestion mid-word.
                let new_text = format!("{}{}", placed.word, placed.text);
                let label = new_text
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                CompletionItem {
                    filter_text: Some(label.clone()),
                    label,
                    kind: Some(CompletionItemKind::SNIPPET),
                    detail: Some("codellama".into()),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit::new(
                        tower_lsp_server::ls_types::Range::new(placed.word_start, placed.at),
                        new_text,
                    ))),
                    ..CompletionItem::default()
                }
            })
            .into_iter()
            .collect();
        Ok(Some(CompletionResponse::List(CompletionList {
            is_incomplete: true,
            items,
        })))
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        self.list_code_actions(params).await.map(Some)
    }

    async fn code_action_resolve(&self, action: CodeAction) -> Result<CodeAction> {
        self.resolve_code_action(action).await
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LSPAny>> {
        self.run_command(params).await
    }
}
