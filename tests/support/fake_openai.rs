//! A scripted OpenAI-style completion server on 127.0.0.1 with vLLM's API shape: `GET /v1/models`
//! and streaming `POST /v1/completions` (server-sent events, a usage chunk, `[DONE]`). It
//! records every request and can misbehave on purpose: an HTTP error, a slow answer, a body that
//! is not JSON, a stream cut short.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

pub const MODEL_ID: &str = "fake-coder";

#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Streams these pieces of text, then `finish_reason` "stop".
    Answer(Vec<String>),
    /// Answers with this status and body.
    Status(u16, String),
    /// Waits this long before answering the pieces.
    Slow(Duration, Vec<String>),
    /// Sends an event that is not JSON.
    Malformed,
    /// Sends one piece, then closes the connection without finishing.
    Truncated,
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

pub struct FakeOpenAi {
    pub url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Slow answers whose client hung up before the answer was sent.
    pub abandoned: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeOpenAi {
    pub fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let behaviour = Arc::new(Mutex::new(behaviour));
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let abandoned: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (script, log, hung_up) = (behaviour.clone(), requests.clone(), abandoned.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (script, log, hung_up) = (script.clone(), log.clone(), hung_up.clone());
                thread::spawn(move || {
                    let _ = handle(stream, &script, &log, &hung_up);
                });
            }
        });
        Self {
            url,
            behaviour,
            requests,
            abandoned,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// The completion requests received so far.
    pub fn completions(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == "/v1/completions")
            .cloned()
            .collect()
    }
}

fn handle(
    stream: TcpStream,
    script: &Mutex<Behaviour>,
    log: &Mutex<Vec<Recorded>>,
    abandoned: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once(':') {
            headers.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(key, _)| key == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    log.lock().unwrap().push(Recorded {
        method,
        path: path.clone(),
        headers,
        body,
    });
    let mut stream = stream;
    match path.as_str() {
        "/v1/models" => {
            let models = json!({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "max_model_len": 4096}]});
            respond(&mut stream, 200, "application/json", &models.to_string())
        }
        "/v1/completions" => {
            let behaviour = script.lock().unwrap().clone();
            complete(&mut stream, behaviour, abandoned)
        }
        _ => respond(
            &mut stream,
            404,
            "application/json",
            r#"{"error":{"message":"not found"}}"#,
        ),
    }
}

fn respond(stream: &mut TcpStream, status: u16, kind: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn event(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(stream, "data: {data}\n\n")?;
    stream.flush()
}

fn piece(text: &str, finish: Option<&str>) -> String {
    json!({"id": "cmpl-1", "object": "text_completion", "model": MODEL_ID,
           "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish, "stop_reason": null}]})
    .to_string()
}

/// Waits `delay` unless the client hangs up first (then counted in `abandoned`); true if it did.
fn hung_up_during(
    stream: &TcpStream,
    delay: Duration,
    abandoned: &std::sync::atomic::AtomicUsize,
) -> bool {
    let end = std::time::Instant::now() + delay;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut byte = [0u8; 1];
    while std::time::Instant::now() < end {
        if let Ok(0) = stream.peek(&mut byte) {
            abandoned.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return true;
        }
    }
    false
}

fn complete(
    stream: &mut TcpStream,
    behaviour: Behaviour,
    abandoned: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    let pieces = match behaviour {
        Behaviour::Status(status, body) => {
            return respond(stream, status, "application/json", &body);
        }
        Behaviour::Answer(pieces) => pieces,
        Behaviour::Slow(delay, pieces) => {
            if hung_up_during(stream, delay, abandoned) {
                return Ok(());
            }
            pieces
        }
        Behaviour::Malformed => {
            start_stream(stream)?;
            return event(stream, "{\"choices\": [{\"text\": \"unfinished");
        }
        Behaviour::Truncated => {
            start_stream(stream)?;
            // One piece, then the connection closes: no finish reason, no [DONE].
            return event(stream, &piece("def", None));
        }
    };
    start_stream(stream)?;
    for text in &pieces {
        event(stream, &piece(text, None))?;
        thread::sleep(Duration::from_millis(5));
    }
    event(stream, &piece("", Some("stop")))?;
    event(
        stream,
        &json!({"id": "cmpl-1", "object": "text_completion", "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": pieces.len(), "total_tokens": 10 + pieces.len()}})
        .to_string(),
    )?;
    event(stream, "[DONE]")
}

fn start_stream(stream: &mut TcpStream) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n"
    )
}
