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
    let (service, socket) = LspService::build(|client| {
        log.forward_to(client.clone());
        Backend::new(client, session.clone())
    })
    .custom_method("textDocument/inlineCompletion", Backend::inline_completion)
    .custom_method("codellama/document", Backend::document_state)
    .custom_method("codellama/prompt", Backend::show_prompt)
    .custom_method("codellama/status", Backend::status)
    .finish();
    let stdin = tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin());
    let ending =
        transport::serve(stdin, tokio::io::stdout(), service, socket, session.clone()).await;
    let code = i32::from(!session.shutdown_requested());
    tracing::info!("stopping ({ending:?}), exit code {code}");
    code
}
