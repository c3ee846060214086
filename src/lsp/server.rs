//! The LSP request handlers: thin functions from a request to a result.
//!
//! Text synchronisation is not here: the transport applies it in arrival order (see
//! `transport.rs`). Everything else is routed by tower-lsp-server, which also answers requests
//! before `initialize`, unknown methods and `$/cancelRequest`.

use std::sync::Arc;

use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::ls_types::{
    CodeAction, CodeActionParams, CodeActionResponse, CompletionList, CompletionParams,
    CompletionResponse, ExecuteCommandParams, InitializeParams, InitializeResult,
    InitializedParams, InlineCompletionParams, InlineCompletionResponse, LSPAny, ServerInfo,
    TextDocumentIdentifier, Uri,
};
use tower_lsp_server::{Client, LanguageServer};

use super::capabilities;
use crate::document::Document;
use crate::session::Session;

pub struct Backend {
    #[allow(dead_code)] // used by the features that report progress and apply edits
    client: Client,
    session: Arc<Session>,
}

impl Backend {
    pub fn new(client: Client, session: Arc<Session>) -> Self {
        Self { client, session }
    }

    /// The open document behind `uri`, or an `InvalidParams` error saying it is not open.
    fn document(&self, uri: &Uri) -> Result<Document> {
        self.session
            .snapshot(uri.as_str())
            .map_err(|error| invalid_params(error.to_string()))
    }

    /// `textDocument/inlineCompletion` (LSP 3.18), routed as a custom method because
    /// tower-lsp-server's trait predates it.
    pub async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> Result<Option<InlineCompletionResponse>> {
        let _document = self.document(&params.text_document_position.text_document.uri)?;
        // No model is wired in yet: an empty, well-formed answer.
        Ok(Some(InlineCompletionResponse::Array(Vec::new())))
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

pub fn invalid_params(message: impl Into<String>) -> Error {
    Error {
        code: ErrorCode::InvalidParams,
        message: message.into().into(),
        data: None,
    }
}

/// An error for a feature this build does not provide yet, saying so instead of failing silently.
fn not_available(feature: &str) -> Error {
    Error {
        code: ErrorCode::InvalidRequest,
        message: format!(
            "{feature} is not available in codellama-lsp {} yet",
            crate::VERSION
        )
        .into(),
        data: None,
    }
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let encoding = capabilities::negotiate_encoding(&params.capabilities);
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
    }

    async fn shutdown(&self) -> Result<()> {
        // The transport has already recorded it (in arrival order, see transport.rs).
        Ok(())
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let _document = self.document(&params.text_document_position.text_document.uri)?;
        Ok(Some(CompletionResponse::List(CompletionList {
            is_incomplete: true,
            items: Vec::new(),
        })))
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        let _document = self.document(&params.text_document.uri)?;
        Ok(Some(Vec::new()))
    }

    async fn code_action_resolve(&self, _: CodeAction) -> Result<CodeAction> {
        Err(not_available("resolving code actions"))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LSPAny>> {
        if capabilities::COMMANDS.contains(&params.command.as_str()) {
            Err(not_available(&format!("the command {}", params.command)))
        } else {
            Err(invalid_params(format!(
                "unknown command {:?}; this server provides {}",
                params.command,
                capabilities::COMMANDS.join(", ")
            )))
        }
    }
}
