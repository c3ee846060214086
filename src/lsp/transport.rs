//! LSP over a byte stream: `Content-Length` framing, JSON-RPC classification, and the read loop
//! that feeds tower-lsp-server's `LspService`.
//!
//! tower-lsp-server ships its own `Server` loop, but two of its properties break our invariants:
//! its reader stops for good at the first malformed frame (tokio-util's `FramedRead` yields `None`
//! after a decode error), and it polls handlers concurrently, so a `didChange` queued behind slow
//! requests could be applied after a later request has read the document. This loop answers
//! malformed input with a JSON-RPC error and keeps reading, and applies text synchronisation
//! notifications right here, in arrival order, before the next message is even read.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tower::Service;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Id, Request, Response};
use tower_lsp_server::{ClientSocket, LspService};

use super::server::Backend;
use super::text_sync;
use crate::session::Session;
use crate::settings::SettingsLayer;

/// Longest header line we accept; real headers are a few dozen bytes.
const MAX_HEADER_LINE: u64 = 8 * 1024;
/// Largest message body we accept: room for a 50 MB document escaped as JSON, several times over.
pub const MAX_BODY_BYTES: usize = 512 * 1024 * 1024;

const CANCEL_PROGRESS: &str = "window/workDoneProgress/cancel";
const DID_CHANGE_CONFIGURATION: &str = "workspace/didChangeConfiguration";

/// `window/workDoneProgress/cancel`: stops the work behind the token, if it is still running.
fn cancel_progress(session: &Session, params: Option<&Value>) {
    let token = params.and_then(|params| params.get("token"));
    let token = match token {
        Some(Value::String(token)) => token.clone(),
        Some(Value::Number(token)) => token.to_string(),
        _ => {
            tracing::warn!("{CANCEL_PROGRESS} without a token; ignored");
            return;
        }
    };
    if !session.cancel(&token) {
        tracing::debug!("{CANCEL_PROGRESS} for {token}, which has already ended");
    }
}

/// The member of a request's parameters that carries the version its document had when the
/// request was read (see [`pin_document_version`]).
pub const WIRE_VERSION: &str = "codellama/wireVersion";

/// Records in a completion request the version of its document as it stood when the request was
/// read: the text that preceded it on the wire. Its handler may run after later edits were
/// applied; it then knows the answer would be for text the editor no longer shows.
fn pin_document_version(session: &Session, request: Request) -> Request {
    if request.method() != "textDocument/inlineCompletion" {
        return request;
    }
    let (method, id, params) = request.into_parts();
    let mut params = params.unwrap_or_default();
    let uri = params
        .pointer("/textDocument/uri")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let version = uri.and_then(|uri| session.snapshot(&uri).ok().map(|d| d.version()));
    if let (Some(version), Value::Object(members)) = (version, &mut params) {
        members.insert(WIRE_VERSION.into(), version.into());
    }
    let builder = Request::build(method).params(params);
    match id {
        Some(id) => builder.id(id).finish(),
        None => builder.finish(),
    }
}

/// Why the read loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client sent `exit`.
    Exit,
    /// The input closed (the editor went away) or failed.
    EndOfInput,
}

/// One message as read from the wire, before JSON parsing.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Body(Vec<u8>),
    /// A frame we could not read; the reader has already skipped past it.
    Malformed(String),
}

/// Reads `Content-Length`-framed messages, resynchronising after anything malformed.
pub struct FrameReader<R> {
    input: R,
}

impl<R: AsyncBufRead + Unpin> FrameReader<R> {
    pub fn new(input: R) -> Self {
        Self { input }
    }

    /// The next frame, or `None` at the end of input (including input that ends mid-frame).
    pub async fn next_frame(&mut self) -> std::io::Result<Option<Frame>> {
        let mut content_length: Option<Result<usize, String>> = None;
        let mut saw_header = false;
        loop {
            let Some(line) = self.read_header_line().await? else {
                return Ok(None);
            };
            let line = match line {
                Ok(line) => line,
                Err(problem) => {
                    content_length = Some(Err(problem));
                    saw_header = true;
                    continue;
                }
            };
            if line.is_empty() {
                if saw_header {
                    break;
                }
                continue; // stray blank lines between messages are harmless
            }
            saw_header = true;
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                content_length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| format!("invalid Content-Length {:?}", value.trim())),
                );
            }
        }
        let length = match content_length {
            None => {
                return Ok(Some(Frame::Malformed(
                    "missing Content-Length header".into(),
                )));
            }
            Some(Err(problem)) => return Ok(Some(Frame::Malformed(problem))),
            Some(Ok(length)) => length,
        };
        if length > MAX_BODY_BYTES {
            let skipped = tokio::io::copy(
                &mut (&mut self.input).take(length as u64),
                &mut tokio::io::sink(),
            )
            .await?;
            if skipped < length as u64 {
                return Ok(None);
            }
            return Ok(Some(Frame::Malformed(format!(
                "message of {length} bytes is larger than the {MAX_BODY_BYTES}-byte limit"
            ))));
        }
        let mut body = vec![0; length];
        match self.input.read_exact(&mut body).await {
            Ok(_) => Ok(Some(Frame::Body(body))),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One header line without its terminator; `Err` for an overlong or non-UTF-8 line (which is
    /// consumed); `None` at the end of input.
    async fn read_header_line(&mut self) -> std::io::Result<Option<Result<String, String>>> {
        let mut line = Vec::new();
        let read = (&mut self.input)
            .take(MAX_HEADER_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            if read as u64 == MAX_HEADER_LINE {
                let mut rest = Vec::new();
                self.input.read_until(b'\n', &mut rest).await?;
                return Ok(Some(Err("header line too long".into())));
            }
            return Ok(None); // input ended inside a header
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        Ok(Some(
            String::from_utf8(line).map_err(|_| "header is not valid UTF-8".to_owned()),
        ))
    }
}

/// A decoded incoming message.
#[derive(Debug)]
pub enum Incoming {
    /// A request or notification from the client.
    Request(Request),
    /// The client's answer to one of our requests.
    Response(Response),
    /// Something we must answer with this error response.
    Invalid(Response),
}

/// Classifies a frame body as JSON-RPC 2.0: parse errors and invalid requests become error
/// responses (with the request's id when it has a usable one).
pub fn classify(body: &[u8]) -> Incoming {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            return Incoming::Invalid(error_response(
                Id::Null,
                ErrorCode::ParseError,
                format!("invalid JSON: {error}"),
            ));
        }
    };
    let Value::Object(object) = &value else {
        return Incoming::Invalid(error_response(
            Id::Null,
            ErrorCode::InvalidRequest,
            "expected a JSON-RPC object (batches are not part of LSP)",
        ));
    };
    let id = object
        .get("id")
        .and_then(|id| serde_json::from_value::<Id>(id.clone()).ok())
        .unwrap_or(Id::Null);
    if object.contains_key("method") {
        return match serde_json::from_value::<Request>(value) {
            Ok(request) => Incoming::Request(request),
            Err(error) => Incoming::Invalid(error_response(
                id,
                ErrorCode::InvalidRequest,
                format!("invalid JSON-RPC request: {error}"),
            )),
        };
    }
    if (object.contains_key("result") || object.contains_key("error"))
        && let Ok(response) = serde_json::from_value::<Response>(value)
    {
        return Incoming::Response(response);
    }
    Incoming::Invalid(error_response(
        id,
        ErrorCode::InvalidRequest,
        "a JSON-RPC message needs a \"method\" (request) or a \"result\"/\"error\" (response)",
    ))
}

fn error_response(id: Id, code: ErrorCode, message: impl Into<String>) -> Response {
    Response::from_error(
        id,
        Error {
            code,
            message: message.into().into(),
            data: None,
        },
    )
}

/// Serialises a message with its `Content-Length` header.
pub fn encode_frame(json: &str) -> Vec<u8> {
    let mut frame = format!("Content-Length: {}\r\n\r\n", json.len()).into_bytes();
    frame.extend_from_slice(json.as_bytes());
    frame
}

/// Queues a message for the writer. Serialising our own protocol types cannot fail; if it ever
/// did, dropping the message and logging is all that is left to do.
fn send<T: serde::Serialize>(out: &mpsc::UnboundedSender<String>, message: &T) {
    match serde_json::to_string(message) {
        Ok(json) => {
            let _ = out.send(json);
        }
        Err(error) => tracing::error!("could not serialise an outgoing message: {error}"),
    }
}

/// Runs the server until `exit` or the end of input, then flushes what is queued for output.
pub async fn serve<R, W>(
    input: R,
    output: W,
    mut service: LspService<Backend>,
    socket: ClientSocket,
    session: Arc<Session>,
) -> Ending
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, mut outbox) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut output = output;
        while let Some(json) = outbox.recv().await {
            let written = output.write_all(&encode_frame(&json)).await;
            if written.and(output.flush().await).is_err() {
                break; // the editor closed our stdout: nothing more can be said
            }
        }
    });

    let (mut server_requests, mut client_responses) = socket.split();
    let forward_out = out.clone();
    let forwarder = tokio::spawn(async move {
        while let Some(request) = server_requests.next().await {
            send(&forward_out, &request);
        }
    });

    let mut reader = FrameReader::new(input);
    let ending = loop {
        let body = match reader.next_frame().await {
            Ok(Some(Frame::Body(body))) => body,
            Ok(Some(Frame::Malformed(problem))) => {
                tracing::warn!("malformed message from the client: {problem}");
                send(
                    &out,
                    &error_response(Id::Null, ErrorCode::ParseError, problem),
                );
                continue;
            }
            Ok(None) => break Ending::EndOfInput,
            Err(error) => {
                tracing::error!("reading from the client failed: {error}");
                break Ending::EndOfInput;
            }
        };
        let request = match classify(&body) {
            Incoming::Request(request) => request,
            Incoming::Response(response) => {
                if client_responses.send(response).await.is_err() {
                    tracing::warn!("dropped a client response: the server is shutting down");
                }
                continue;
            }
            Incoming::Invalid(response) => {
                send(&out, &response);
                continue;
            }
        };
        if text_sync::is_text_sync(request.method()) {
            if let Some(synced) = text_sync::apply(&session, request) {
                service.inner().after_text_sync(synced);
            }
            continue;
        }
        let request = pin_document_version(&session, request);
        if request.method() == CANCEL_PROGRESS {
            // tower-lsp-server has no route for it; the work it cancels is registered here.
            cancel_progress(&session, request.params());
            continue;
        }
        if request.method() == DID_CHANGE_CONFIGURATION {
            // Settings take effect in arrival order, like text: a request sent after a change
            // must see it. The handler applies the same layer again (a no-op by then) to report
            // a bad one and to reload the model.
            let settings = request.params().and_then(|params| params.get("settings"));
            if let Some(layer) = settings.and_then(|s| SettingsLayer::from_json(s).ok()) {
                let _ = session.apply_settings(&layer);
            }
        }
        if futures::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .is_err()
        {
            break Ending::Exit;
        }
        // Lifecycle flags are set here, in arrival order, like text sync: an `exit` sent right
        // behind `shutdown` must see it even if the shutdown handler has not run yet.
        if request.method() == "shutdown" && session.is_initialized() {
            session.request_shutdown();
        }
        let is_exit = request.method() == "exit";
        let id = request.id().cloned();
        let handler = AssertUnwindSafe(service.call(request)).catch_unwind();
        let out = out.clone();
        tokio::spawn(async move {
            match handler.await {
                Ok(Ok(Some(response))) => send(&out, &response),
                Ok(Ok(None) | Err(_)) => {}
                Err(_panic) => {
                    tracing::error!("a request handler panicked; answering with an internal error");
                    if let Some(id) = id {
                        let message = "internal error in codellama-lsp (see its log); the server is still running";
                        send(&out, &error_response(id, ErrorCode::InternalError, message));
                    }
                }
            }
        });
        if is_exit {
            break Ending::Exit;
        }
    };

    // Let queued answers reach the client, but never hang on a handler that is still running.
    forwarder.abort();
    drop(out);
    let _ = tokio::time::timeout(Duration::from_millis(500), writer).await;
    ending
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8]) -> Vec<Frame> {
        let mut reader = FrameReader::new(input);
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame().await.unwrap() {
            frames.push(frame);
        }
        frames
    }

    #[tokio::test]
    async fn reads_frames_and_resynchronises_after_garbage() {
        let input = b"Content-Length: 2\r\n\r\n{}garbage line\r\n\r\n\
            content-length: 3\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n[1]\
            Content-Length: x\r\n\r\nContent-Length: 1\n\n7";
        assert_eq!(
            frames(input).await,
            vec![
                Frame::Body(b"{}".to_vec()),
                Frame::Malformed("missing Content-Length header".into()),
                Frame::Body(b"[1]".to_vec()),
                Frame::Malformed("invalid Content-Length \"x\"".into()),
                Frame::Body(b"7".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn input_ending_mid_frame_is_the_end() {
        assert!(frames(b"Content-Length: 10\r\n\r\n{\"a\"").await.is_empty());
        assert!(frames(b"Content-Len").await.is_empty());
    }

    #[tokio::test]
    async fn overlong_header_lines_and_bodies_are_skipped() {
        let mut input = vec![b'x'; 20_000];
        input.extend_from_slice(b"\r\n\r\nContent-Length: 2\r\n\r\n{}");
        let found = frames(&input).await;
        assert_eq!(found[0], Frame::Malformed("header line too long".into()));
        assert_eq!(found[1], Frame::Body(b"{}".to_vec()));
    }

    #[test]
    fn classify_answers_bad_json_and_bad_shapes() {
        let code = |body: &str| match classify(body.as_bytes()) {
            Incoming::Invalid(response) => {
                let value = serde_json::to_value(&response).unwrap();
                (
                    value["id"].clone(),
                    value["error"]["code"].as_i64().unwrap(),
                )
            }
            other => panic!("expected an error for {body}: {other:?}"),
        };
        assert_eq!(code("{not json"), (Value::Null, -32700));
        assert_eq!(code("[1,2]"), (Value::Null, -32600));
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":4}"#), (4.into(), -32600));
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":"a","method":"x"}"#),
            ("a".into(), -32600)
        );
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#),
            Incoming::Request(_)
        ));
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":1,"result":null}"#),
            Incoming::Response(_)
        ));
    }
}
