//! `textDocument/didOpen`, `didChange` and `didClose`, applied by the transport in arrival order.
//!
//! These never go through tower-lsp-server's concurrent handler pool: ordering is the whole point.

use tower_lsp_server::jsonrpc::Request;
use tower_lsp_server::ls_types::{
    DidChangeTextDocumentParams, DidCloseTextDocumentParams, DidOpenTextDocumentParams,
};

use super::convert;
use crate::document::{Document, TextChange};
use crate::session::Session;

const DID_OPEN: &str = "textDocument/didOpen";
const DID_CHANGE: &str = "textDocument/didChange";
const DID_CLOSE: &str = "textDocument/didClose";

pub fn is_text_sync(method: &str) -> bool {
    matches!(method, DID_OPEN | DID_CHANGE | DID_CLOSE)
}

/// What a text synchronisation notification did, for work that follows edits (warm-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Synced {
    Opened(String),
    Changed(String),
    Closed(String),
}

/// Applies one text synchronisation notification. Problems (bad parameters, an unknown document)
/// are logged: a notification has no response to carry them.
pub fn apply(session: &Session, request: Request) -> Option<Synced> {
    if !session.is_initialized() {
        tracing::warn!("ignored {} before initialize", request.method());
        return None;
    }
    let method = request.method().to_owned();
    let (_, _, params) = request.into_parts();
    let params = params.unwrap_or_default();
    // A bug here must not take the server down; the session lock survives a panic (see Session).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        apply_params(session, &method, params)
    }));
    match outcome {
        Ok(Ok(synced)) => Some(synced),
        Ok(Err(problem)) => {
            tracing::warn!("{method}: {problem}");
            None
        }
        Err(_) => {
            tracing::error!("{method}: internal error while applying the change");
            None
        }
    }
}

fn apply_params(
    session: &Session,
    method: &str,
    params: serde_json::Value,
) -> Result<Synced, String> {
    let invalid = |error: serde_json::Error| format!("invalid parameters: {error}");
    match method {
        DID_OPEN => {
            let params: DidOpenTextDocumentParams =
                serde_json::from_value(params).map_err(invalid)?;
            let item = params.text_document;
            let document = Document::new(&item.text, item.version, item.language_id);
            let uri = item.uri.as_str().to_owned();
            session
                .open(uri.clone(), document)
                .map_err(|error| error.to_string())?;
            Ok(Synced::Opened(uri))
        }
        DID_CHANGE => {
            let params: DidChangeTextDocumentParams =
                serde_json::from_value(params).map_err(invalid)?;
            let changes: Vec<TextChange> = params
                .content_changes
                .into_iter()
                .map(convert::text_change)
                .collect();
            let document = params.text_document;
            session
                .change(document.uri.as_str(), &changes, document.version)
                .map_err(|error| error.to_string())?;
            Ok(Synced::Changed(document.uri.as_str().to_owned()))
        }
        DID_CLOSE => {
            let params: DidCloseTextDocumentParams =
                serde_json::from_value(params).map_err(invalid)?;
            let uri = params.text_document.uri.as_str().to_owned();
            session.close(&uri).map_err(|error| error.to_string())?;
            Ok(Synced::Closed(uri))
        }
        _ => Err(format!("{method} is not text synchronisation")),
    }
}
