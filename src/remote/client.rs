//! The IO half of the remote backend: a worker thread with its own async runtime sends each
//! engine job to the server as one streaming HTTP request and turns the answer into the same
//! events a local generation gives.
//!
//! A job ends the moment it is cancelled, superseded or past its deadline: the request is dropped,
//! which closes the connection, and the server stops generating for it. Every failure (no
//! connection, a timeout, an HTTP error, a broken stream) ends the job with an error in words;
//! nothing is retried here, so a dead server costs each request one failed attempt, never a loop.

use std::future::Future;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc as async_mpsc;

use super::config::{RemoteKind, RemoteSpec};
use super::protocol::{self, Ask, Chunk, Event, EventReader, ServerFinish};
use crate::engine::{Job, JobEvent, JobKind, JobResult};
use crate::model::generate::{FinishReason, Generation, OutputText};
use crate::model::tokenizer::{TokenStream, Tokenizer};

/// How often a waiting request looks at its cancel flag and deadline.
const POLL: Duration = Duration::from_millis(10);
/// The most of an error answer we read.
const MAX_ERROR_BODY: usize = 64 << 10;
/// How long a complete answer waits for the server's last event (its statistics).
const STATISTICS_WAIT: Duration = Duration::from_millis(200);
/// The largest non-streamed answer we accept.
const MAX_JSON_ANSWER: usize = 8 << 20;

struct Worker {
    http: reqwest::Client,
    spec: RemoteSpec,
    tokenizer: Tokenizer,
    stop_tokens: Vec<u32>,
    /// The API's model name: configured, or asked of the server (`GET /v1/models`) by the first
    /// request that needs it — the server may not have been up when we connected.
    model_name: std::sync::Mutex<Option<String>>,
}

impl Worker {
    fn model_name(&self) -> Option<String> {
        self.model_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Starts the worker thread; jobs sent to the returned queue run concurrently (the server
/// schedules them). The thread ends when every sender is dropped.
pub(crate) fn start_worker(
    spec: RemoteSpec,
    tokenizer: Tokenizer,
    stop_tokens: Vec<u32>,
) -> Result<async_mpsc::UnboundedSender<Job>, String> {
    let http = http_client(&spec)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the remote backend's runtime: {error}"))?;
    let (jobs, mut queue) = async_mpsc::unbounded_channel::<Job>();
    let worker = Arc::new(Worker {
        http,
        model_name: std::sync::Mutex::new(spec.model.clone()),
        spec,
        tokenizer,
        stop_tokens,
    });
    thread::Builder::new()
        .name("codellama-remote".into())
        .spawn(move || {
            runtime.block_on(async move {
                while let Some(job) = queue.recv().await {
                    tokio::spawn(run(worker.clone(), job));
                }
            });
        })
        .map_err(|error| format!("cannot start the remote backend's thread: {error}"))?;
    Ok(jobs)
}

fn http_client(spec: &RemoteSpec) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(spec.timeout_ms))
        .user_agent(concat!("codellama-lsp/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| format!("cannot set up the HTTP client: {error}"))
}

async fn run(worker: Arc<Worker>, job: Job) {
    if job.kind == JobKind::Prefetch {
        // The server keeps its own prompt cache; speculative work would only load it.
        return job.drop_unserved();
    }
    if let Some(result) = job.stopped_before_start() {
        job.finish(Ok(result));
        return;
    }
    let outcome = generate(&worker, &job)
        .await
        .map_err(|problem| format!("the backend {} failed: {problem}", worker.spec));
    job.finish(outcome);
}

/// What waiting for the server gave.
enum Wait<T> {
    Ready(T),
    /// The job must stop (cancel, newer request, deadline).
    Stop(FinishReason),
    TimedOut,
}

/// Waits for `future` until the job must stop or the server has been silent for the timeout.
async fn wait<T>(job: &Job, timeout: Duration, future: impl Future<Output = T>) -> Wait<T> {
    let silent_until = tokio::time::Instant::now() + timeout;
    tokio::pin!(future);
    loop {
        if job.stop_cause().is_some() {
            return Wait::Stop(FinishReason::Stopped);
        }
        if job.request.deadline.is_some_and(|d| Instant::now() >= d) {
            return Wait::Stop(FinishReason::Deadline);
        }
        tokio::select! {
            value = &mut future => return Wait::Ready(value),
            _ = tokio::time::sleep_until(silent_until) => return Wait::TimedOut,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn generate(worker: &Worker, job: &Job) -> Result<JobResult, String> {
    let spec = &worker.spec;
    let request = &job.request;
    let timeout = Duration::from_millis(spec.timeout_ms);
    let silent = || {
        format!(
            "no answer within {:.1} s (the backend's timeoutMs)",
            timeout.as_secs_f64()
        )
    };
    let start = Instant::now();
    let mut stop_tokens = worker.stop_tokens.clone();
    stop_tokens.extend(
        request
            .stop_tokens
            .iter()
            .filter(|&&id| !worker.stop_tokens.contains(&id)),
    );
    let mut model_name = worker.model_name();
    if model_name.is_none() && spec.kind != RemoteKind::LlamaServer {
        match wait(job, timeout, probe(spec)).await {
            Wait::Ready(Ok(facts)) => {
                model_name = facts.model_name;
                *worker.model_name.lock().unwrap_or_else(|p| p.into_inner()) = model_name.clone();
            }
            Wait::Ready(Err(problem)) => return Err(problem),
            Wait::Stop(reason) => return Ok(stopped_early(job, reason, start)),
            Wait::TimedOut => {}
        }
        if model_name.is_none() {
            return Err(format!(
                "no model name for the {} API: the server lists none at /v1/models; set the backend's \"model\"",
                spec.kind.name()
            ));
        }
    }
    let prompt_text =
        (!spec.kind.takes_token_ids()).then(|| worker.tokenizer.prompt_text(&request.prompt));
    let body = protocol::request_body(&Ask {
        kind: spec.kind,
        model: model_name.as_deref(),
        request,
        prompt_text: prompt_text.as_deref(),
        stop_tokens: &stop_tokens,
    });
    let mut http = worker
        .http
        .post(spec.endpoint(protocol::completion_path(spec.kind)))
        .json(&body);
    if let Some(key) = spec.api_key()? {
        http = http.bearer_auth(key);
    }

    let mut generation = Generation {
        ids: Vec::new(),
        text: String::new(),
        finish: FinishReason::Stopped,
        prompt_tokens: request.prompt.len(),
        reused_tokens: 0,
        prefill_ms: 0.0,
        decode_ms: 0.0,
    };
    let response = match wait(job, timeout, http.send()).await {
        Wait::Ready(response) => response.map_err(describe_send_error)?,
        Wait::Stop(reason) => return Ok(stopped_early(job, reason, start)),
        Wait::TimedOut => return Err(silent()),
    };
    let status = response.status();
    if !status.is_success() {
        let body = match wait(job, timeout, read_some(response, MAX_ERROR_BODY)).await {
            Wait::Ready(body) => body,
            // Abandoned meanwhile: nobody is waiting for the error any more.
            Wait::Stop(reason) => return Ok(stopped_early(job, reason, start)),
            Wait::TimedOut => String::new(),
        };
        return Err(protocol::http_error(status.as_u16(), &body));
    }
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));

    let mut on_text = |text: &str| {
        let _ = job.events.send(JobEvent::Text(text.to_owned()));
    };
    let mut decoder = worker.tokenizer.stream_decoder();
    let mut output = OutputText::new(&request.stop_strings);
    let mut reader = EventReader::default();
    // A server that ignored `stream: true` sends one JSON answer: gathered, then read as one event.
    let mut whole_json = is_json.then(Vec::new);
    let mut body = response.bytes_stream();
    let mut first_bytes: Option<Instant> = None;
    let mut usage = None;
    let mut server_finish = None;
    // Where the answer ends by our own rules (a stop token or string, maxTokens).
    let mut ours: Option<FinishReason> = None;
    let mut after_ours = 0;
    // Once the answer is complete by our rules, trouble while waiting for the server's last
    // event (its statistics) no longer matters: the answer stands.
    macro_rules! fail {
        ($label:lifetime, $ours:expr, $problem:expr) => {
            match $ours {
                Some(done) => break $label done,
                None => return Err($problem),
            }
        };
    }
    // Silence is measured from the last event with content: keep-alive comments do not count.
    let mut last_progress = Instant::now();
    let finish = 'stream: loop {
        let patience = if ours.is_some() {
            STATISTICS_WAIT
        } else {
            timeout.saturating_sub(last_progress.elapsed())
        };
        let (events, ended) = match wait(job, patience, body.next()).await {
            Wait::Ready(Some(Ok(bytes))) => {
                first_bytes.get_or_insert_with(Instant::now);
                match &mut whole_json {
                    Some(gathered) if gathered.len() + bytes.len() > MAX_JSON_ANSWER => {
                        fail!('stream, ours, "the server's answer is larger than 8 MB".into());
                    }
                    Some(gathered) => {
                        gathered.extend_from_slice(&bytes);
                        (Vec::new(), false)
                    }
                    None => match reader.push(&bytes) {
                        Ok(events) => (events, false),
                        Err(problem) => fail!('stream, ours, problem),
                    },
                }
            }
            Wait::Ready(Some(Err(error))) => fail!(
                'stream,
                ours,
                format!(
                    "the connection broke during the answer: {}",
                    root_cause(&error)
                )
            ),
            Wait::Ready(None) => {
                let events = match whole_json.take() {
                    Some(gathered) => {
                        vec![Event::Data(String::from_utf8_lossy(&gathered).into_owned())]
                    }
                    None => match std::mem::take(&mut reader).finish() {
                        Ok(events) => events,
                        Err(problem) => fail!('stream, ours, problem),
                    },
                };
                (events, true)
            }
            Wait::Stop(reason) => break ours.unwrap_or(reason),
            Wait::TimedOut => fail!('stream, ours, silent()),
        };
        for event in events {
            let chunk: Chunk = match event {
                Event::Data(payload) => match protocol::parse_chunk(spec.kind, &payload) {
                    Ok(chunk) => chunk,
                    Err(problem) => fail!('stream, ours, problem),
                },
                Event::Error(payload) => {
                    let message = serde_json::from_str(&payload)
                        .ok()
                        .and_then(|value| protocol::error_in(&value))
                        .unwrap_or(payload);
                    fail!('stream, ours, message);
                }
            };
            last_progress = Instant::now();
            if chunk.usage.is_some() {
                usage = chunk.usage.clone();
            }
            if ours.is_none() {
                ours = take_text(
                    &chunk,
                    &stop_tokens,
                    request.max_new_tokens,
                    &mut generation.ids,
                    &mut |piece| output.push(piece, &mut on_text),
                    &mut decoder,
                );
            }
            if let Some(finish) = &chunk.finish {
                server_finish = Some(match finish {
                    ServerFinish::EndOfText => FinishReason::EndOfText,
                    ServerFinish::MaxTokens => FinishReason::MaxTokens,
                    ServerFinish::StopString => FinishReason::StopString,
                });
            }
            if chunk.done {
                break 'stream ours.or(server_finish).unwrap_or(FinishReason::EndOfText);
            }
        }
        if ended {
            match ours.or(server_finish) {
                Some(finish) => break finish,
                None => return Err("the server closed the stream before the answer ended".into()),
            }
        }
        if ours.is_some() {
            // The server keeps generating past our stop: its statistics are not waited for.
            after_ours += 1;
            if after_ours > 4 {
                break ours.unwrap_or(FinishReason::EndOfText);
            }
        }
    };
    // Dropping the body closes the connection: the server stops generating for a stopped job.
    drop(body);
    let tail = if finish == FinishReason::StopString {
        String::new()
    } else {
        decoder.finish()
    };
    generation.text = output.finish(&tail, &mut on_text);
    generation.finish = finish;
    let first = first_bytes.unwrap_or_else(Instant::now);
    let usage = usage.unwrap_or_default();
    let counted = usage.prompt_tokens.filter(|&n| n != request.prompt.len());
    // (A text prompt is tokenized again by the server: a different count is expected there.)
    if let Some(evaluated) = counted.filter(|_| spec.kind.takes_token_ids()) {
        tracing::warn!(
            "the server counted {evaluated} prompt tokens for a prompt of {}",
            request.prompt.len()
        );
        generation.prompt_tokens = evaluated;
    }
    generation.reused_tokens = usage.cached_tokens.unwrap_or(0).min(request.prompt.len());
    generation.prefill_ms = usage.prompt_ms.unwrap_or_else(|| millis(first - start));
    generation.decode_ms = usage.decode_ms.unwrap_or_else(|| millis(first.elapsed()));
    let stopped_by = (finish == FinishReason::Stopped)
        .then(|| job.stop_cause())
        .flatten();
    Ok(JobResult {
        generation,
        stopped_by,
    })
}

/// The result of a job that stopped (cancel, newer request, deadline) before any answer came.
fn stopped_early(job: &Job, reason: FinishReason, start: Instant) -> JobResult {
    JobResult {
        generation: Generation {
            ids: Vec::new(),
            text: String::new(),
            finish: reason,
            prompt_tokens: job.request.prompt.len(),
            reused_tokens: 0,
            prefill_ms: millis(start.elapsed()),
            decode_ms: 0.0,
        },
        stopped_by: job.stop_cause(),
    }
}

/// Adds a chunk's text to the answer: its ids decoded here (exactly as a local generation),
/// or its text when the server sends no ids. `push` takes each piece of text and says whether a
/// stop string ended it. Returns why the answer ends, when it does.
fn take_text(
    chunk: &Chunk,
    stop_tokens: &[u32],
    max_tokens: usize,
    ids: &mut Vec<u32>,
    push: &mut dyn FnMut(&str) -> bool,
    decoder: &mut TokenStream<'_>,
) -> Option<FinishReason> {
    let Some(chunk_ids) = chunk.tokens.as_deref().filter(|ids| !ids.is_empty()) else {
        return push(&chunk.text).then_some(FinishReason::StopString);
    };
    for &id in chunk_ids {
        if stop_tokens.contains(&id) {
            return Some(FinishReason::EndOfText);
        }
        ids.push(id);
        if push(&decoder.push(id)) {
            return Some(FinishReason::StopString);
        }
        if ids.len() >= max_tokens {
            return Some(FinishReason::MaxTokens);
        }
    }
    None
}

/// Up to `limit` bytes of a response body, as text.
async fn read_some(response: reqwest::Response, limit: usize) -> String {
    let mut body = response.bytes_stream();
    let mut bytes = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= limit {
            bytes.truncate(limit);
            break;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A failed request in words: whether the server could not be reached at all, or went away.
fn describe_send_error(error: reqwest::Error) -> String {
    // reqwest's messages carry the URL; ours never show credentials, so it is cut.
    let error = error.without_url();
    if error.is_connect() {
        format!(
            "cannot connect ({}); is the server running, and is the url right?",
            root_cause(&error)
        )
    } else if error.is_timeout() {
        "the connection timed out".into()
    } else {
        format!("the request failed: {}", root_cause(&error))
    }
}

/// The innermost cause of an error (reqwest's own message is generic: "error sending request").
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// What a server says about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerFacts {
    /// The context the server gives each request, when it says.
    pub context: Option<usize>,
    /// The model file the server runs (llama-server), when it says.
    pub model_path: Option<String>,
    /// The model's name in the API (`GET /v1/models`), when it says.
    pub model_name: Option<String>,
}

/// Asks the server what it runs: `GET /props` (llama-server) or `GET /v1/models` (vLLM, OpenAI).
/// An error means the server could not be asked (down, wrong url, refused key).
pub async fn probe(spec: &RemoteSpec) -> Result<ServerFacts, String> {
    let http = http_client(spec)?;
    let path = match spec.kind {
        RemoteKind::LlamaServer => "/props",
        RemoteKind::Vllm | RemoteKind::Openai => "/v1/models",
    };
    let mut request = http
        .get(spec.endpoint(path))
        .timeout(Duration::from_millis(spec.timeout_ms));
    if let Some(key) = spec.api_key()? {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(describe_send_error)?;
    let status = response.status();
    let body = read_some(response, 4 << 20).await;
    if !status.is_success() {
        return Err(protocol::http_error(status.as_u16(), &body));
    }
    let value: serde_json::Value = serde_json::from_str(&body)
        .map_err(|error| format!("{path} did not answer JSON: {error}"))?;
    Ok(match spec.kind {
        RemoteKind::LlamaServer => ServerFacts {
            context: value["default_generation_settings"]["n_ctx"]
                .as_u64()
                .or_else(|| value["n_ctx"].as_u64())
                .map(|n| n as usize),
            model_path: value["model_path"].as_str().map(str::to_owned),
            model_name: None,
        },
        RemoteKind::Vllm | RemoteKind::Openai => {
            let first = &value["data"][0];
            ServerFacts {
                context: first["max_model_len"].as_u64().map(|n| n as usize),
                model_path: None,
                model_name: first["id"].as_str().map(str::to_owned),
            }
        }
    })
}

/// Text whose tokens tell vocabularies apart: code, indentation, digits, accents and an emoji.
const VOCABULARY_SAMPLE: &str = "def fib(n: int) -> int:\n    \"\"\"Fibonaccí 123\"\"\"\n\treturn n if n < 2 else fib(n - 1) + fib(n - 2)  # ✓ 🦀\n";

/// Whether the server tokenizes as the local vocabulary does (prompts are built here, so a
/// different vocabulary would send the wrong ids). Asks `/tokenize` (llama-server, vLLM); `None`
/// when they agree or the server cannot say, else a warning that says what to do.
pub async fn vocabulary_mismatch(
    spec: &RemoteSpec,
    facts: &ServerFacts,
    file: &std::path::Path,
    tokenizer: &Tokenizer,
) -> Option<String> {
    let body = match spec.kind {
        RemoteKind::LlamaServer => {
            serde_json::json!({"content": VOCABULARY_SAMPLE, "add_special": false})
        }
        RemoteKind::Vllm => serde_json::json!({
            "model": spec.model, "prompt": VOCABULARY_SAMPLE, "add_special_tokens": false
        }),
        RemoteKind::Openai => return None,
    };
    let http = http_client(spec).ok()?;
    let mut request = http
        .post(spec.endpoint("/tokenize"))
        .timeout(Duration::from_millis(spec.timeout_ms))
        .json(&body);
    if let Ok(Some(key)) = spec.api_key() {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let value: serde_json::Value =
        serde_json::from_str(&read_some(response, 1 << 20).await).ok()?;
    let remote: Vec<u32> = value["tokens"]
        .as_array()?
        .iter()
        .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect::<Option<_>>()?;
    let local = tokenizer.encode(VOCABULARY_SAMPLE, false);
    if remote == local {
        return None;
    }
    let runs = facts
        .model_path
        .as_deref()
        .map_or_else(String::new, |path| format!(" ({path})"));
    Some(format!(
        "the server's model{runs} tokenizes text differently from {}: prompts built here would be wrong; set \"tokenizer\" (or \"model\") to the GGUF file the server runs",
        file.display()
    ))
}
