//! What we tell the client at `initialize`, and the position encoding we agree on.

use tower_lsp_server::ls_types::{
    ClientCapabilities, CodeActionKind, CodeActionOptions, CodeActionProviderCapability,
    CompletionOptions, ExecuteCommandOptions, OneOf, PositionEncodingKind, ServerCapabilities,
    TextDocumentSyncCapability, TextDocumentSyncKind, TextDocumentSyncOptions,
    WorkDoneProgressOptions,
};

use super::convert;
use crate::document::PositionEncoding;
use crate::session::ClientSupport;

/// Workspace commands this server executes (`workspace/executeCommand`).
pub const GENERATE_DOCSTRING: &str = "codellama.generateDocstring";
pub const EDIT_SELECTION: &str = "codellama.editSelection";
pub const CHAT: &str = "codellama.chat";
pub const COMMANDS: [&str; 3] = [GENERATE_DOCSTRING, EDIT_SELECTION, CHAT];

/// The client abilities our answers depend on.
pub fn client_support(client: &ClientCapabilities) -> ClientSupport {
    let work_done_progress = client
        .window
        .as_ref()
        .and_then(|window| window.work_done_progress)
        .unwrap_or(false);
    let versioned_edits = client
        .workspace
        .as_ref()
        .and_then(|workspace| workspace.workspace_edit.as_ref())
        .and_then(|edit| edit.document_changes)
        .unwrap_or(false);
    let code_action_literals = client
        .text_document
        .as_ref()
        .and_then(|text| text.code_action.as_ref())
        .is_some_and(|action| action.code_action_literal_support.is_some());
    let experimental = |name: &str| {
        client
            .experimental
            .as_ref()
            .and_then(|experimental| experimental.get(name))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    ClientSupport {
        status_notifications: experimental("codellamaStatus"),
        suggestion_refresh: experimental("codellamaSuggestionRefresh"),
        work_done_progress,
        versioned_edits,
        code_action_literals,
    }
}

/// UTF-8 when the client offers it (no conversion cost on our side), else the LSP default UTF-16.
pub fn negotiate_encoding(client: &ClientCapabilities) -> PositionEncoding {
    let offered = client
        .general
        .as_ref()
        .and_then(|general| general.position_encodings.as_deref())
        .unwrap_or_default();
    if offered.contains(&PositionEncodingKind::UTF8) {
        PositionEncoding::Utf8
    } else {
        PositionEncoding::Utf16
    }
}

pub fn server_capabilities(encoding: PositionEncoding) -> ServerCapabilities {
    let work_done = WorkDoneProgressOptions {
        work_done_progress: Some(true),
    };
    ServerCapabilities {
        position_encoding: Some(convert::encoding_kind(encoding)),
        text_document_sync: Some(TextDocumentSyncCapability::Options(
            TextDocumentSyncOptions {
                open_close: Some(true),
                change: Some(TextDocumentSyncKind::INCREMENTAL),
                ..TextDocumentSyncOptions::default()
            },
        )),
        inline_completion_provider: Some(OneOf::Left(true)),
        completion_provider: Some(CompletionOptions {
            resolve_provider: Some(false),
            ..CompletionOptions::default()
        }),
        code_action_provider: Some(CodeActionProviderCapability::Options(CodeActionOptions {
            code_action_kinds: Some(vec![
                CodeActionKind::REFACTOR_REWRITE,
                CodeActionKind::EMPTY,
            ]),
            resolve_provider: Some(true),
            work_done_progress_options: work_done,
        })),
        execute_command_provider: Some(ExecuteCommandOptions {
            commands: COMMANDS.iter().map(|name| (*name).to_owned()).collect(),
            work_done_progress_options: work_done,
        }),
        ..ServerCapabilities::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_lsp_server::ls_types::GeneralClientCapabilities;

    fn offering(encodings: Option<Vec<PositionEncodingKind>>) -> ClientCapabilities {
        ClientCapabilities {
            general: Some(GeneralClientCapabilities {
                position_encodings: encodings,
                ..GeneralClientCapabilities::default()
            }),
            ..ClientCapabilities::default()
        }
    }

    #[test]
    fn utf8_is_chosen_only_when_offered() {
        use PositionEncodingKind as K;
        let utf8_second = offering(Some(vec![K::UTF16, K::UTF8]));
        assert_eq!(negotiate_encoding(&utf8_second), PositionEncoding::Utf8);
        let utf32_only = offering(Some(vec![K::UTF32]));
        assert_eq!(negotiate_encoding(&utf32_only), PositionEncoding::Utf16);
        assert_eq!(negotiate_encoding(&offering(None)), PositionEncoding::Utf16);
        let nothing = ClientCapabilities::default();
        assert_eq!(negotiate_encoding(&nothing), PositionEncoding::Utf16);
    }
}
