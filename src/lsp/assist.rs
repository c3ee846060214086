//! Code actions and workspace commands: "Generate docstring", chat edits and chat.
//!
//! Listing actions is instant (a parse, no model). Running one streams the answer as
//! `$/progress` reports, can be cancelled with `window/workDoneProgress/cancel` or
//! `$/cancelRequest`, and ends in one versioned `workspace/applyEdit` — or in a message saying why
//! nothing was changed. The flows themselves live in `assist`; this file converts and reports.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_lsp_server::Client;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::ls_types::notification::Progress as ProgressNotification;
use tower_lsp_server::ls_types::request::ApplyWorkspaceEdit;
use tower_lsp_server::ls_types::{
    ApplyWorkspaceEditParams, CodeAction, CodeActionKind, CodeActionOrCommand, CodeActionParams,
    Command, DocumentChanges, ExecuteCommandParams, MessageType, OneOf,
    OptionalVersionedTextDocumentIdentifier, Position, ProgressParams, ProgressParamsValue,
    ProgressToken, Range, TextDocumentEdit, TextEdit, Uri, WorkDoneProgress, WorkDoneProgressBegin,
    WorkDoneProgressEnd, WorkDoneProgressReport, WorkspaceEdit,
};

use super::capabilities::{CHAT, EDIT_SELECTION, GENERATE_DOCSTRING};
use super::convert;
use super::server::{Backend, invalid_params};
use crate::actions::Language;
use crate::assist::{self, AssistError, CodeContext, ModelGenerator, Replacement};
use crate::document::Document;
use crate::session::{CancelFlag, Session};

/// Larger documents get no docstring action: parsing them on every cursor move would cost more
/// than the action is worth.
const MAX_PARSED_BYTES: usize = 4 * 1024 * 1024;

/// Quick instructions offered for a selection, beside "Edit with instruction…".
const QUICK_EDITS: [(&str, &str); 2] = [
    (
        "Add type annotations",
        "Add type annotations to every parameter, return value and variable where the language allows them. Change nothing else.",
    ),
    (
        "Simplify this code",
        "Simplify this code without changing its behaviour: remove duplication and needless steps, keep the names.",
    ),
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocstringArgs {
    uri: Uri,
    position: Position,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditArgs {
    uri: Uri,
    range: Range,
    instruction: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatArgs {
    #[serde(default)]
    session_id: Option<String>,
    message: String,
    uri: Option<Uri>,
    range: Option<Range>,
    /// Also show the answer with `window/showMessage` (for clients without a chat view).
    #[serde(default)]
    show: bool,
}

/// The server → client notification streaming a chat answer.
enum ChatStream {}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatStreamParams {
    session_id: String,
    text: String,
    done: bool,
}

impl tower_lsp_server::ls_types::notification::Notification for ChatStream {
    type Params = ChatStreamParams;
    const METHOD: &'static str = "codellama/chatStream";
}

impl Backend {
    /// `textDocument/codeAction`: what can be done at the cursor or selection, without the model.
    pub(super) async fn list_code_actions(
        &self,
        params: CodeActionParams,
    ) -> Result<Vec<CodeActionOrCommand>> {
        let uri = params.text_document.uri;
        let document = self.document(&uri)?;
        let wanted = |kind: &CodeActionKind| {
            params.context.only.as_ref().is_none_or(|only| {
                only.iter().any(|prefix| {
                    kind.as_str() == prefix.as_str()
                        || kind.as_str().starts_with(&format!("{}.", prefix.as_str()))
                })
            })
        };
        let language = Language::detect(document.language_id(), uri.as_str());
        let mut actions: Vec<(String, CodeActionKind, Command)> = Vec::new();

        let start = byte_offset(&document, params.range.start, self);
        if let Some(language) = language
            && wanted(&CodeActionKind::REFACTOR_REWRITE)
            && document.rope().len_bytes() <= MAX_PARSED_BYTES
        {
            let source = document.text();
            let target = tokio::task::spawn_blocking(move || {
                assist::docstring_target(language, &source, start).ok()
            })
            .await
            .ok()
            .flatten();
            if let Some(target) = target {
                let title = format!("Generate docstring for `{}`", target.name);
                let position = params.range.start;
                let command = command(
                    &title,
                    GENERATE_DOCSTRING,
                    json!({ "uri": uri, "position": position }),
                );
                actions.push((title, CodeActionKind::REFACTOR_REWRITE, command));
            }
        }

        let selected = params.range.start != params.range.end;
        if selected && wanted(&CodeActionKind::REFACTOR_REWRITE) {
            let range = params.range;
            let title = "Edit with instruction…".to_owned();
            let edit = command(
                &title,
                EDIT_SELECTION,
                json!({ "uri": uri, "range": range }),
            );
            actions.push((title, CodeActionKind::REFACTOR_REWRITE, edit));
            for (title, instruction) in QUICK_EDITS {
                let typed = matches!(
                    language,
                    Some(Language::Python | Language::TypeScript | Language::Tsx)
                        | Some(Language::JavaScript | Language::Lua)
                );
                if title.starts_with("Add type") && !typed {
                    continue;
                }
                let arguments = json!({ "uri": uri, "range": range, "instruction": instruction });
                let edit = command(title, EDIT_SELECTION, arguments);
                actions.push((title.to_owned(), CodeActionKind::REFACTOR_REWRITE, edit));
            }
        }
        if selected && params.context.only.is_none() {
            let title = "Explain this code".to_owned();
            let arguments = json!({
                // One conversation per explained range: explanations of other code do not
                // crowd its history.
                "sessionId": format!(
                    "explain:{}:{}-{}",
                    uri.as_str(),
                    params.range.start.line,
                    params.range.end.line
                ),
                "message": "Explain what this code does, briefly.",
                "uri": uri,
                "range": params.range,
                "show": true,
            });
            actions.push((
                title.clone(),
                CodeActionKind::EMPTY,
                command(&title, CHAT, arguments),
            ));
        }

        let literals = self.session.client_support().code_action_literals;
        Ok(actions
            .into_iter()
            .map(|(title, kind, command)| {
                if literals {
                    CodeActionOrCommand::CodeAction(CodeAction {
                        title,
                        kind: Some(kind),
                        data: command.arguments.as_ref().and_then(|a| a.first().cloned()),
                        command: Some(command),
                        ..CodeAction::default()
                    })
                } else {
                    CodeActionOrCommand::Command(command)
                }
            })
            .collect())
    }

    /// `codeAction/resolve`: our actions carry their command from the start; an action that
    /// lost it (a client that strips fields) gets it back from `data`.
    pub(super) async fn resolve_code_action(&self, mut action: CodeAction) -> Result<CodeAction> {
        if action.command.is_none()
            && let Some(data) = action.data.clone()
        {
            let name = if data.get("position").is_some() {
                GENERATE_DOCSTRING
            } else if data.get("message").is_some() {
                CHAT
            } else {
                EDIT_SELECTION
            };
            action.command = Some(command(&action.title, name, data));
        }
        Ok(action)
    }

    /// `workspace/executeCommand` for our commands.
    pub(super) async fn run_command(&self, params: ExecuteCommandParams) -> Result<Option<Value>> {
        let argument = params.arguments.into_iter().next().unwrap_or(Value::Null);
        let token = params.work_done_progress_params.work_done_token;
        let outcome = match params.command.as_str() {
            GENERATE_DOCSTRING => self.generate_docstring(parse(argument)?, token).await,
            EDIT_SELECTION => self.edit_selection(parse(argument)?, token).await,
            CHAT => self.chat(parse(argument)?, token).await,
            other => {
                return Err(invalid_params(format!(
                    "unknown command {other:?}; this server provides {}",
                    super::COMMANDS.join(", ")
                )));
            }
        };
        match outcome {
            Ok(value) => Ok(Some(value)),
            Err(error) => Err(self.report_failure(&params.command, error).await),
        }
    }

    async fn generate_docstring(
        &self,
        args: DocstringArgs,
        token: Option<ProgressToken>,
    ) -> std::result::Result<Value, AssistError> {
        let document = self.open_document(&args.uri)?;
        let language =
            Language::detect(document.language_id(), args.uri.as_str()).ok_or_else(|| {
                AssistError::NothingToDo(format!(
                    "docstrings are not supported for {:?} files",
                    document.language_id()
                ))
            })?;
        let offset = byte_offset(&document, args.position, self);
        let source = document.text();
        let generator = self.generator();
        let (mut on_text, pieces) = text_channel();
        let work = assist::docstring(&generator, language, &source, offset, &mut on_text);
        let docstring = self
            .streamed(
                "Generating docstring",
                token,
                work,
                pieces,
                Some((&args.uri, &document)),
                None,
            )
            .await?;
        let edit = self.text_edit(&document, &docstring.edit);
        let label = format!("Docstring for `{}`", docstring.name);
        self.apply(&args.uri, &document, vec![edit], &label).await?;
        Ok(json!({
            "applied": true,
            "kind": docstring.kind,
            "name": docstring.name,
            "text": docstring.edit.text,
        }))
    }

    async fn edit_selection(
        &self,
        args: EditArgs,
        token: Option<ProgressToken>,
    ) -> std::result::Result<Value, AssistError> {
        let instruction = args.instruction.unwrap_or_default();
        if instruction.trim().is_empty() {
            return Err(AssistError::BadRequest(
                "codellama.editSelection needs an \"instruction\" (the editor asks the user for it; the VS Code and Neovim clients do)".into(),
            ));
        }
        let document = self.open_document(&args.uri)?;
        let language = Language::detect(document.language_id(), args.uri.as_str());
        let start = byte_offset(&document, args.range.start, self);
        let end = byte_offset(&document, args.range.end, self);
        let source = document.text();
        let file_name = file_name(&args.uri);
        let generator = self.generator();
        let (mut on_text, pieces) = text_channel();
        let work = assist::edit_selection(
            &generator,
            language,
            &file_name,
            &source,
            start.min(end)..end.max(start),
            &instruction,
            &mut on_text,
        );
        let (replacements, new_text) = self
            .streamed(
                "Rewriting the selection",
                token,
                work,
                pieces,
                Some((&args.uri, &document)),
                None,
            )
            .await?;
        let edits: Vec<TextEdit> = replacements
            .iter()
            .map(|replacement| self.text_edit(&document, replacement))
            .collect();
        let count = edits.len();
        if count > 0 {
            let label = format!("Edit: {}", first_words(&instruction));
            self.apply(&args.uri, &document, edits, &label).await?;
        }
        Ok(json!({ "applied": count > 0, "edits": count, "text": new_text }))
    }

    async fn chat(
        &self,
        args: ChatArgs,
        token: Option<ProgressToken>,
    ) -> std::result::Result<Value, AssistError> {
        let session_id = args.session_id.unwrap_or_else(|| "default".to_owned());
        let code = match (&args.uri, args.range) {
            (Some(uri), range) => {
                let document = self.open_document(uri)?;
                let text = match range {
                    Some(range) => {
                        let start = byte_offset(&document, range.start, self);
                        let end = byte_offset(&document, range.end, self);
                        let text = document.text();
                        text[start.min(end)..end.max(start)].to_owned()
                    }
                    None => document.text(),
                };
                let language = Language::detect(document.language_id(), uri.as_str());
                Some((language, file_name(uri), text))
            }
            (None, _) => None,
        };
        let context = code
            .as_ref()
            .map(|(language, file_name, code)| CodeContext {
                language: *language,
                file_name,
                code,
            });
        let generator = self.generator();
        let (mut on_text, pieces) = text_channel();
        let work = assist::chat(
            &generator,
            &self.chats,
            &session_id,
            &args.message,
            context,
            &mut on_text,
        );
        let answer = self
            .streamed("Thinking", token, work, pieces, None, Some(&session_id))
            .await?;
        self.send_chat_stream(&session_id, &answer, true).await;
        if args.show {
            self.client.show_message(MessageType::INFO, &answer).await;
        }
        Ok(json!({ "sessionId": session_id, "answer": answer }))
    }

    fn generator(&self) -> ModelGenerator {
        let settings = self.session.settings();
        ModelGenerator::new(
            self.host.clone(),
            settings.temperature,
            settings.context_tokens,
        )
    }

    fn open_document(&self, uri: &Uri) -> std::result::Result<Document, AssistError> {
        self.session
            .snapshot(uri.as_str())
            .map_err(|error| AssistError::BadRequest(error.to_string()))
    }

    fn text_edit(&self, document: &Document, replacement: &Replacement) -> TextEdit {
        let encoding = self.session.encoding();
        let rope = document.rope();
        let at = |byte: usize| {
            let char_index = rope.byte_to_char(byte.min(rope.len_bytes()));
            convert::to_lsp_position(document.position_of(char_index, encoding))
        };
        TextEdit::new(
            Range::new(at(replacement.range.start), at(replacement.range.end)),
            replacement.text.clone(),
        )
    }

    /// Runs `work` while reporting its streamed text as progress; a cancel from the client ends
    /// it, and so does an edit of the document it is `for` (its answer could not be applied).
    async fn streamed<T>(
        &self,
        title: &str,
        token: Option<ProgressToken>,
        work: impl Future<Output = std::result::Result<T, AssistError>>,
        mut pieces: mpsc::UnboundedReceiver<String>,
        for_document: Option<(&Uri, &Document)>,
        chat_session: Option<&str>,
    ) -> std::result::Result<T, AssistError> {
        let is_stale = || {
            for_document.is_some_and(|(uri, made_for)| {
                self.session
                    .snapshot(uri.as_str())
                    .map_or(true, |current| current.version() != made_for.version())
            })
        };
        let mut stale_check = tokio::time::interval(Duration::from_millis(100));
        let mut progress = ProgressReporter::begin(self, title, token).await;
        let cancel = progress
            .as_ref()
            .map_or_else(|| Arc::new(CancelFlag::default()), |p| p.cancel.clone());
        tokio::pin!(work);
        let mut streamed = String::new();
        let mut last_chat_update: Option<Instant> = None;
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                Some(piece) = pieces.recv() => {
                    streamed.push_str(&piece);
                    if let Some(progress) = progress.as_mut() {
                        progress.report(&streamed).await;
                    }
                    let due = last_chat_update
                        .is_none_or(|last| last.elapsed() >= ProgressReporter::REPORT_EVERY);
                    if let Some(session_id) = chat_session.filter(|_| due) {
                        last_chat_update = Some(Instant::now());
                        self.send_chat_stream(session_id, &streamed, false).await;
                    }
                }
                () = cancel.cancelled() => break Err(AssistError::Cancelled),
                _ = stale_check.tick() => {
                    if is_stale() {
                        break Err(AssistError::Stale);
                    }
                }
            }
        };
        if let Some(progress) = progress {
            let message = match &result {
                Ok(_) => "done".to_owned(),
                Err(error) => error.to_string(),
            };
            progress.end(message).await;
        }
        result
    }

    /// `codellama/chatStream`: a chat answer so far (the whole text), for clients' chat views.
    async fn send_chat_stream(&self, session_id: &str, text: &str, done: bool) {
        self.client
            .send_notification::<ChatStream>(ChatStreamParams {
                session_id: session_id.to_owned(),
                text: text.to_owned(),
                done,
            })
            .await;
    }

    /// Sends the edit to the client, versioned when it can check versions, and only if the
    /// document is still the one the answer was made for.
    async fn apply(
        &self,
        uri: &Uri,
        made_for: &Document,
        edits: Vec<TextEdit>,
        label: &str,
    ) -> std::result::Result<(), AssistError> {
        let current = self.open_document(uri).map_err(|_| AssistError::Stale)?;
        if current.version() != made_for.version() || current.rope() != made_for.rope() {
            return Err(AssistError::Stale);
        }
        let versioned = self.session.client_support().versioned_edits;
        let edit = workspace_edit(uri, made_for.version(), edits, versioned);
        let params = ApplyWorkspaceEditParams {
            edit,
            label: Some(label.to_owned()),
        };
        match self.client.send_request::<ApplyWorkspaceEdit>(params).await {
            Ok(response) if response.applied => Ok(()),
            Ok(response) => Err(AssistError::BadRequest(format!(
                "the editor did not apply the edit{}",
                response
                    .failure_reason
                    .map(|reason| format!(": {reason}"))
                    .unwrap_or_default()
            ))),
            Err(error) => Err(AssistError::BadRequest(format!(
                "the editor could not apply the edit: {}",
                error.message
            ))),
        }
    }

    /// Tells the user why nothing happened (except for their own cancel) and builds the reply.
    async fn report_failure(&self, command: &str, error: AssistError) -> Error {
        let code = match error {
            AssistError::Cancelled => ErrorCode::RequestCancelled,
            AssistError::Stale => ErrorCode::ContentModified,
            AssistError::BadRequest(_) => ErrorCode::InvalidParams,
            _ => ErrorCode::ServerError(-32803), // RequestFailed
        };
        let message = format!("codellama-lsp: {error}");
        if error != AssistError::Cancelled {
            let kind = match error {
                AssistError::NothingToDo(_) => MessageType::INFO,
                AssistError::Stale => MessageType::WARNING,
                _ => MessageType::ERROR,
            };
            tracing::warn!("{command}: {error}");
            self.client.show_message(kind, &message).await;
        }
        Error {
            code,
            message: message.into(),
            data: None,
        }
    }
}

/// One document's edits as a workspace edit: versioned (`documentChanges`, which the client
/// rejects if the document moved on) when it supports that, else plain `changes`.
fn workspace_edit(uri: &Uri, version: i32, edits: Vec<TextEdit>, versioned: bool) -> WorkspaceEdit {
    if versioned {
        WorkspaceEdit {
            document_changes: Some(DocumentChanges::Edits(vec![TextDocumentEdit {
                text_document: OptionalVersionedTextDocumentIdentifier {
                    uri: uri.clone(),
                    version: Some(version),
                },
                edits: edits.into_iter().map(OneOf::Left).collect(),
            }])),
            ..WorkspaceEdit::default()
        }
    } else {
        WorkspaceEdit {
            changes: Some(HashMap::from([(uri.clone(), edits)])),
            ..WorkspaceEdit::default()
        }
    }
}

/// Where an assist flow streams its text (the sink), and where `streamed` reads it.
fn text_channel() -> (impl FnMut(&str) + Send, mpsc::UnboundedReceiver<String>) {
    let (sender, pieces) = mpsc::unbounded_channel();
    let sink = move |piece: &str| {
        let _ = sender.send(piece.to_owned());
    };
    (sink, pieces)
}

fn parse<T: serde::de::DeserializeOwned>(argument: Value) -> Result<T> {
    serde_json::from_value(argument)
        .map_err(|error| invalid_params(format!("bad command arguments: {error}")))
}

fn command(title: &str, name: &str, argument: Value) -> Command {
    Command::new(title.to_owned(), name.to_owned(), Some(vec![argument]))
}

/// The byte offset of an LSP position (clamped into the document).
fn byte_offset(document: &Document, position: Position, backend: &Backend) -> usize {
    let char_index = document.char_index(convert::position(position), backend.session.encoding());
    document.rope().char_to_byte(char_index)
}

fn file_name(uri: &Uri) -> String {
    let path = uri.as_str();
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

fn first_words(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(8).collect();
    words.join(" ")
}

/// One `$/progress` stream, ended on drop if it was not ended explicitly (a cancelled request
/// drops its future, and the client must not be left with a spinner).
struct ProgressReporter {
    client: Client,
    session: Arc<Session>,
    token: ProgressToken,
    key: String,
    cancel: Arc<CancelFlag>,
    last_report: Option<Instant>,
    ended: bool,
}

impl ProgressReporter {
    /// Reports at most this often: a token at a time would flood slow clients.
    const REPORT_EVERY: Duration = Duration::from_millis(100);

    async fn begin(backend: &Backend, title: &str, given: Option<ProgressToken>) -> Option<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let token = match given {
            Some(token) => token,
            None if backend.session.client_support().work_done_progress => {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let token = ProgressToken::String(format!("codellama/assist/{n}"));
                backend
                    .client
                    .create_work_done_progress(token.clone())
                    .await
                    .ok()?;
                token
            }
            None => return None,
        };
        let key = match &token {
            ProgressToken::String(text) => text.clone(),
            ProgressToken::Number(number) => number.to_string(),
        };
        let cancel = backend.session.cancellable(&key);
        let reporter = Self {
            client: backend.client.clone(),
            session: backend.session.clone(),
            token,
            key,
            cancel,
            last_report: None,
            ended: false,
        };
        reporter
            .send(WorkDoneProgress::Begin(WorkDoneProgressBegin {
                title: format!("codellama: {title}"),
                cancellable: Some(true),
                message: None,
                percentage: None,
            }))
            .await;
        Some(reporter)
    }

    async fn report(&mut self, streamed: &str) {
        if self
            .last_report
            .is_some_and(|last| last.elapsed() < Self::REPORT_EVERY)
        {
            return;
        }
        self.last_report = Some(Instant::now());
        let flat = streamed.split_whitespace().collect::<Vec<_>>().join(" ");
        let tail: String = {
            let chars: Vec<char> = flat.chars().collect();
            let from = chars.len().saturating_sub(100);
            let tail: String = chars[from..].iter().collect();
            if from > 0 { format!("…{tail}") } else { tail }
        };
        self.send(WorkDoneProgress::Report(WorkDoneProgressReport {
            cancellable: Some(true),
            message: Some(tail),
            percentage: None,
        }))
        .await;
    }

    async fn end(mut self, message: String) {
        self.ended = true;
        self.send(WorkDoneProgress::End(WorkDoneProgressEnd {
            message: Some(message),
        }))
        .await;
    }

    async fn send(&self, value: WorkDoneProgress) {
        self.client
            .send_notification::<ProgressNotification>(ProgressParams {
                token: self.token.clone(),
                value: ProgressParamsValue::WorkDone(value),
            })
            .await;
    }
}

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.session.forget_cancellable(&self.key);
        if !self.ended {
            let client = self.client.clone();
            let params = ProgressParams {
                token: self.token.clone(),
                value: ProgressParamsValue::WorkDone(WorkDoneProgress::End(WorkDoneProgressEnd {
                    message: Some("cancelled".into()),
                })),
            };
            tokio::spawn(async move {
                client
                    .send_notification::<ProgressNotification>(params)
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn edits_are_versioned_when_the_client_can_check_versions() {
        let uri = Uri::from_str("file:///a.py").unwrap();
        let edit = TextEdit::new(
            Range::new(Position::new(1, 0), Position::new(1, 0)),
            "x".into(),
        );
        let versioned =
            serde_json::to_value(workspace_edit(&uri, 7, vec![edit.clone()], true)).unwrap();
        assert_eq!(
            versioned,
            json!({"documentChanges": [{"textDocument": {"uri": "file:///a.py", "version": 7},
                   "edits": [{"range": {"start": {"line": 1, "character": 0},
                                        "end": {"line": 1, "character": 0}}, "newText": "x"}]}]})
        );
        let plain = serde_json::to_value(workspace_edit(&uri, 7, vec![edit], false)).unwrap();
        assert_eq!(plain["changes"]["file:///a.py"][0]["newText"], "x");
        assert!(plain.get("documentChanges").is_none());
    }
}
