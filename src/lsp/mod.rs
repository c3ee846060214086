//! The protocol layer: decodes LSP, routes to the core, encodes results. No feature logic lives
//! here, and no type from here crosses into the core (see `convert`).

mod assist;
mod capabilities;
mod convert;
mod download;
mod hot_reload;
mod log_bridge;
mod server;
mod status;
mod text_sync;
pub mod transport;
mod workspace_watch;

use std::sync::Arc;

use tower_lsp_server::LspService;

pub use capabilities::COMMANDS;
pub use log_bridge::{ClientLogLayer, ClientLogReceiver};
use server::Backend;
pub use transport::Ending;

use crate::session::Session;
use crate::settings::Settings;

/// Serves LSP on stdin/stdout until `exit` or the end of input; returns the process exit code:
/// 0 after `shutdown`, 1 otherwise (as the specification asks).
pub async fn serve_stdio(log: ClientLogReceiver, settings: Settings) -> i32 {
    let session = Arc::new(Session::with_settings(settings));
    let (service, socket) = service(session.clone(), Some(log));
    let stdin = tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin());
    let ending =
        transport::serve(stdin, tokio::io::stdout(), service, socket, session.clone()).await;
    let code = i32::from(!session.shutdown_requested());
    tracing::info!("stopping ({ending:?}), exit code {code}");
    code
}

/// The LSP service: our handlers, custom methods included, over `session`.
fn service(
    session: Arc<Session>,
    log: Option<ClientLogReceiver>,
) -> (LspService<Backend>, tower_lsp_server::ClientSocket) {
    LspService::build(|client| {
        if let Some(log) = log {
            log.forward_to(client.clone());
        }
        Backend::new(client, session)
    })
    .custom_method("textDocument/inlineCompletion", Backend::inline_completion)
    .custom_method("codellama/document", Backend::document_state)
    .custom_method("codellama/prompt", Backend::show_prompt)
    .custom_method("codellama/status", Backend::status)
    .custom_method("codellama/stats", Backend::stats)
    .custom_method("codellama/warmup", Backend::warmup)
    .finish()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn frame(message: Value) -> Vec<u8> {
        transport::encode_frame(&message.to_string())
    }

    /// Reads frames from `input` until the responses to `ids` (in that order) are all there.
    async fn responses(input: &mut (impl AsyncReadExt + Unpin), ids: &[i64]) -> Vec<Value> {
        let mut buffer = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&buffer).into_owned();
            let found: Vec<Value> = ids
                .iter()
                .filter_map(|&id| {
                    text.split("Content-Length").find_map(|part| {
                        let message: Value = serde_json::from_str(&part[part.find('{')?..]).ok()?;
                        (message["id"] == id && message.get("method").is_none()).then_some(message)
                    })
                })
                .collect();
            if found.len() == ids.len() {
                return found;
            }
            let mut chunk = [0; 4096];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(20), input.read(&mut chunk))
                    .await
                    .unwrap_or_else(|_| panic!("no answer to all of {ids:?}; got {text}"))
                    .unwrap();
            assert!(read > 0, "the server closed before answering {ids:?}");
            buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// A completion request followed at once by an edit: its handler runs after the edit was
    /// applied (both frames arrive together and the transport applies text sync before handlers
    /// get to run), and used to convert its position against the newer text. It must see that
    /// its document changed since it was sent, and answer nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_completion_request_does_not_read_text_sent_after_it() {
        let session = Arc::new(Session::new());
        let (service, socket) = service(session.clone(), None);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(server);
        let reader = tokio::io::BufReader::new(read);
        let served = tokio::spawn(transport::serve(reader, write, service, socket, session));
        let uri = "file:///tmp/a.py";
        let initialize = frame(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"capabilities": {}, "initializationOptions": {"model": "/nonexistent.gguf"}}}));
        client.write_all(&initialize).await.unwrap();
        responses(&mut client, &[1]).await;
        let mut burst = frame(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        burst.extend(frame(
            json!({"jsonrpc": "2.0", "method": "textDocument/didOpen",
            "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
            "text": "def f():\n    return 1\n"}}}),
        ));
        burst.extend(frame(json!({"jsonrpc": "2.0", "id": 2,
            "method": "textDocument/inlineCompletion", "params": {
            "textDocument": {"uri": uri}, "position": {"line": 1, "character": 4},
            "context": {"triggerKind": 1}}})));
        burst.extend(frame(
            json!({"jsonrpc": "2.0", "method": "textDocument/didChange",
            "params": {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
            {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
             "text": "import os\n"}]}}),
        ));
        burst.extend(frame(
            json!({"jsonrpc": "2.0", "id": 3, "method": "codellama/stats",
            "params": null}),
        ));
        client.write_all(&burst).await.unwrap();
        let answers = responses(&mut client, &[2, 3]).await;
        assert_eq!(answers[0]["result"], json!([]), "{answers:?}");
        let stats = &answers[1]["result"];
        assert_eq!(stats["completions"]["stale"], 1, "{stats}");
        assert_eq!(stats["completions"]["requests"], 1, "{stats}");
        served.abort();
    }
}
