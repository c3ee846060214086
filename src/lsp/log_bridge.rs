//! Mirrors our own log events to the editor as `window/logMessage`, next to stderr.
//!
//! The tracing layer is installed at start-up, before any client exists, so it only queues events
//! on a channel; once the server has its `Client`, a task drains the queue into notifications.
//! Only events from this crate are mirrored: the forwarding itself logs through tower-lsp-server,
//! and mirroring that would loop.

use std::fmt::Write as _;

use tokio::sync::mpsc;
use tower_lsp_server::Client;
use tower_lsp_server::ls_types::MessageType;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

type LogLine = (MessageType, String);

/// The tracing layer that queues our log events for the editor.
pub struct ClientLogLayer {
    queue: mpsc::UnboundedSender<LogLine>,
}

/// The receiving end, handed to the server once it has a client.
pub struct ClientLogReceiver {
    queue: mpsc::UnboundedReceiver<LogLine>,
}

impl ClientLogLayer {
    pub fn new() -> (Self, ClientLogReceiver) {
        let (queue, receiver) = mpsc::unbounded_channel();
        (Self { queue }, ClientLogReceiver { queue: receiver })
    }
}

impl ClientLogReceiver {
    /// Spawns the task that sends queued lines to `client` (must run inside the tokio runtime).
    pub fn forward_to(self, client: Client) {
        let mut queue = self.queue;
        tokio::spawn(async move {
            while let Some((kind, line)) = queue.recv().await {
                client.log_message(kind, line).await;
            }
        });
    }
}

impl<S: Subscriber> Layer<S> for ClientLogLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        if !metadata.target().starts_with(env!("CARGO_CRATE_NAME")) {
            return;
        }
        let kind = match *metadata.level() {
            Level::ERROR => MessageType::ERROR,
            Level::WARN => MessageType::WARNING,
            Level::INFO => MessageType::INFO,
            _ => MessageType::LOG,
        };
        let mut text = MessageText(String::new());
        event.record(&mut text);
        let _ = self.queue.send((kind, text.0));
    }
}

/// Collects an event's message and fields as `message key=value …`.
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}
