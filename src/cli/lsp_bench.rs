//! `bench --lsp`: editor latency over real LSP. Each scenario starts this binary as
//! `serve --stdio --model FILE` and plays a scripted typing session the way an editor sends it:
//! per keystroke an incremental `didChange`, then `textDocument/inlineCompletion` (automatic
//! trigger), and `$/cancelRequest` for the previous request when its answer has not come before
//! the next keystroke, as VS Code does. A reader thread timestamps every answer as it arrives and
//! answers the server's own requests (`workspace/applyEdit`, `window/workDoneProgress/create`)
//! at once, so the server never waits on the benchmark.
//!
//! The document is `bench/inventory.py` (a 335-line Python module, compiled in); the session
//! types new functions on an empty line in its middle, keystrokes 80–200 ms apart (seeded), with
//! 1–2 s pauses at some line starts; Enter and the editor's auto-indent are one change.
//!
//! Scenarios, each in a fresh server process:
//! - `cold-open`: `didOpen`, `codellama/warmup` at the cursor, the warm-up wait, then typing;
//!   reports the first keystroke whose suggestion was non-empty and shown (answered before the
//!   next keystroke), and its time from `didOpen`.
//! - `idle`: the same, but an explicit (invoked) completion at the cursor is answered before the
//!   wait: steady-state typing (for a large model, a `--warmup-ms` long enough to prefill the
//!   file).
//! - `assist`: `idle` while a docstring command (`workspace/executeCommand
//!   codellama.generateDocstring`) runs in a second open document, started again as soon as it
//!   ends. Its edits are acknowledged as applied but not made, so the document stays as it was.
//! - `many-docs`: `idle` with 20 other Python modules opened first.
//!
//! Latency is from `didChange` to the answer, over the requests answered with a result (requests
//! cancelled by the client and answered `RequestCancelled` are counted apart). A deadline
//! violation is any answer later than `deadlineMs` plus one decode step after its request. The
//! server's `codellama/stats` before and after typing give the deltas (prompt tokens reused,
//! generated tokens wasted, speculative hits); a server without it reports them as n/a.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use serde_json::{Map, Value, json};

use crate::fixtures::SplitMix64;
use crate::model::{DeviceSpec, KvType};

/// The document typed into.
const DOCUMENT: &str = include_str!("../../bench/inventory.py");
const DOCUMENT_NAME: &str = "bench/inventory.py";
const URI: &str = "file:///bench/inventory.py";
const ASSIST_URI: &str = "file:///bench/geometry.py";
const OTHER_DOCUMENTS: usize = 20;
/// The server's notice that a suggestion answered with its first words is whole: the session
/// asks again, as the editor clients do.
const SUGGESTION_READY: &str = "codellama/suggestionReady";
/// What the session types, in order; repeated with numbered names when more keystrokes are asked.
const SNIPPETS: [&str; 3] = [
    "def summarize_by_category(inventory: Inventory) -> dict[str, int]:\n    counts: dict[str, int] = defaultdict(int)\n    for item in inventory:\n        counts[item.category] += item.quantity\n    return dict(counts)\n",
    "def most_valuable(inventory: Inventory, limit: int = 5) -> list[Item]:\n    ranked = sorted(inventory, key=lambda item: item.value(), reverse=True)\n    return ranked[:limit]\n",
    "def low_stock_labels(inventory: Inventory) -> list[str]:\n    labels = []\n    for item in items_to_reorder(inventory):\n        where = item.location.label() if item.location else \"unplaced\"\n        labels.append(f\"{item.sku} at {where}: {item.quantity} left\")\n    return labels\n",
];
/// `codellama/stats` fields (all integers), as paths into its answer.
const STATS_FIELDS: [&str; 16] = [
    "openDocuments",
    "trackedDocuments",
    "engineKeys",
    "completions.requests",
    "completions.model",
    "completions.typedAhead",
    "completions.cache",
    "completions.speculativeHits",
    "completions.empty",
    "completions.superseded",
    "completions.cancelled",
    "promptTokens",
    "reusedTokens",
    "generatedTokens",
    "wastedTokens",
    "warmups",
];
const REQUEST_CANCELLED: i64 = -32800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Open, warm-up notification, wait, type: when does the first suggestion come?
    ColdOpen,
    /// Typing in a warm server with nothing else to do.
    Idle,
    /// Typing while a docstring job runs in another document.
    Assist,
    /// Typing with 20 other documents open.
    ManyDocs,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::ColdOpen,
        Scenario::Idle,
        Scenario::Assist,
        Scenario::ManyDocs,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::ColdOpen => "cold-open",
            Scenario::Idle => "idle",
            Scenario::Assist => "assist",
            Scenario::ManyDocs => "many-docs",
        }
    }
}

/// What `bench --lsp` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: PathBuf,
    pub device: DeviceSpec,
    pub kv_type: KvType,
    pub scenarios: Vec<Scenario>,
    pub keystrokes: usize,
    pub seed: u64,
    pub max_tokens: usize,
    pub deadline_ms: u64,
    /// The `firstAnswerMs` setting; `None` leaves the server's default.
    pub first_answer_ms: Option<u64>,
    pub warmup_ms: u64,
    /// `None`: measured by running the model in this process first.
    pub decode_step_ms: Option<f64>,
    /// Where the servers' stderr goes (appended); `None` discards it.
    pub server_log: Option<PathBuf>,
}

pub fn run(options: &Options, json_output: bool) -> Result<()> {
    if options.keystrokes == 0 {
        bail!("--keystrokes must be at least 1");
    }
    let (decode_step_ms, measured) = match options.decode_step_ms {
        Some(ms) => (ms, false),
        None => (
            measure_decode_step(&options.model, options.device, options.kv_type)?,
            true,
        ),
    };
    let mut scenarios = Vec::new();
    for &scenario in &options.scenarios {
        if !json_output {
            eprintln!("bench --lsp: {} …", scenario.name());
        }
        let report = run_scenario(scenario, options, decode_step_ms)
            .with_context(|| format!("scenario {}", scenario.name()))?;
        scenarios.push(report);
    }
    let report = json!({
        "model": options.model,
        "device": options.device.to_string(),
        "document": DOCUMENT_NAME,
        "document_lines": DOCUMENT.lines().count(),
        "keystrokes": options.keystrokes,
        "seed": options.seed,
        "max_tokens": options.max_tokens,
        "deadline_ms": options.deadline_ms,
        "first_answer_ms": options.first_answer_ms,
        "warmup_ms": options.warmup_ms,
        "decode_step_ms": decode_step_ms,
        "decode_step_measured": measured,
        "scenarios": scenarios,
    });
    if json_output {
        println!("{report}");
    } else {
        print!("{}", markdown(&report));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the typing session
// ---------------------------------------------------------------------------------------------

/// One change the editor sends: `text` inserted at the cursor after waiting `gap`.
#[derive(Debug, Clone, PartialEq)]
struct Keystroke {
    text: String,
    gap: Duration,
}

/// The empty line in the middle of the document where typing starts (between two top-level
/// definitions), as (line, character).
fn typing_position(text: &str) -> (u32, u32) {
    let lines: Vec<&str> = text.lines().collect();
    let middle = lines.len() / 2;
    let candidates = (1..lines.len().saturating_sub(1)).filter(|&i| {
        lines[i].is_empty() && lines[i - 1].is_empty() && lines[i + 1].starts_with("def ")
    });
    let line = candidates
        .min_by_key(|&i| i.abs_diff(middle))
        .unwrap_or(middle);
    (line as u32, 0)
}

/// `count` keystrokes: the snippets (renamed on each round after the first), Enter plus the next
/// line's indentation as one change, 80–200 ms apart, and a 1–2 s pause before 40% of the lines.
fn typing_plan(count: usize, seed: u64) -> Vec<Keystroke> {
    let mut rng = SplitMix64::new(seed);
    let mut text = String::new();
    let mut round = 0;
    while text.len() < count * 2 + 16 {
        for snippet in SNIPPETS {
            let snippet = if round == 0 {
                snippet.to_owned()
            } else {
                let name_end = snippet.find('(').unwrap_or(4);
                format!("{}_{round}{}", &snippet[..name_end], &snippet[name_end..])
            };
            text.push_str(&snippet);
            text.push_str("\n\n");
        }
        round += 1;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut plan = Vec::with_capacity(count);
    let mut i = 0;
    let mut after_newline = false;
    while plan.len() < count && i < chars.len() {
        let mut typed = chars[i].to_string();
        i += 1;
        if typed == "\n" {
            while i < chars.len() && chars[i] == ' ' {
                typed.push(' ');
                i += 1;
            }
        }
        let gap = if plan.is_empty() {
            0
        } else if after_newline && rng.below(100) < 40 {
            1000 + rng.below(1001)
        } else {
            80 + rng.below(121)
        };
        after_newline = typed.starts_with('\n');
        plan.push(Keystroke {
            text: typed,
            gap: Duration::from_millis(gap),
        });
    }
    plan
}

/// The cursor after inserting `text` at `(line, character)` (ASCII text: UTF-16 = chars).
fn advance((line, character): (u32, u32), text: &str) -> (u32, u32) {
    match text.rfind('\n') {
        Some(last) => (
            line + text.matches('\n').count() as u32,
            (text.len() - last - 1) as u32,
        ),
        None => (line, character + text.chars().count() as u32),
    }
}

/// A Python module for the docstring job: functions without docstrings, and the (line,
/// character) inside each body.
fn assist_document() -> (String, Vec<(u32, u32)>) {
    let mut text = String::from("import math\n\n\n");
    let mut positions = Vec::new();
    for (i, shape) in ["circle", "square", "triangle", "hexagon", "ellipse", "ring"]
        .iter()
        .enumerate()
    {
        let line = text.lines().count() as u32;
        text.push_str(&format!(
            "def {shape}_area(size: float, scale: float = 1.0) -> float:\n    \
             base = size * scale\n    \
             if base <= 0:\n        \
             raise ValueError(\"{shape} needs a positive size\")\n    \
             return math.pi * base ** 2 / {}\n\n\n",
            i + 2
        ));
        positions.push((line + 1, 4));
    }
    (text, positions)
}

/// The `many-docs` documents: Python modules of about 60 lines, each different.
fn other_document(index: usize) -> String {
    const NOUNS: [&str; 10] = [
        "order", "invoice", "customer", "supplier", "shipment", "payment", "product", "account",
        "report", "ticket",
    ];
    let noun = NOUNS[index % NOUNS.len()];
    let class = format!("{}{}", noun[..1].to_uppercase(), &noun[1..]);
    let mut text = format!(
        "\"\"\"{class} records, module {index}.\"\"\"\n\nfrom dataclasses import dataclass\nfrom decimal import Decimal\n\n\n"
    );
    text.push_str(&format!(
        "@dataclass\nclass {class}{index}:\n    id: int\n    name: str\n    amount: Decimal\n    open: bool = True\n\n    \
         def close(self) -> None:\n        self.open = False\n\n\n"
    ));
    for j in 0..8 {
        text.push_str(&format!(
            "def {noun}_total_{j}(records: list[{class}{index}]) -> Decimal:\n    \
             total = Decimal(\"0\")\n    \
             for record in records:\n        \
             if record.open and record.amount > {j}:\n            \
             total += record.amount\n    \
             return total\n\n\n"
        ));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// the server process
// ---------------------------------------------------------------------------------------------

/// A response from the server and when it arrived.
type Arrival = (Value, Instant);

struct Server {
    child: Child,
    writer: Arc<Mutex<ChildStdin>>,
    incoming: Receiver<Arrival>,
    answers: HashMap<i64, Arrival>,
    /// `codellama/suggestionReady` notices not handled yet.
    ready: Vec<Value>,
    next_id: i64,
}

impl Server {
    fn spawn(options: &Options) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this program's own binary")?;
        let stderr = match &options.server_log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--stdio")
            .arg("--model")
            .arg(&options.model)
            .arg("--device")
            .arg(options.device.to_string())
            .arg("--kv-type")
            .arg(options.kv_type.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting the server")?;
        let stdin = child.stdin.take().context("the server's stdin")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let writer = Arc::new(Mutex::new(stdin));
        let (sender, incoming) = mpsc::channel();
        let reply_writer = writer.clone();
        std::thread::spawn(move || read_messages(stdout, &reply_writer, &sender));
        Ok(Self {
            child,
            writer,
            incoming,
            answers: HashMap::new(),
            ready: Vec::new(),
            next_id: 1,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one message; returns when it was written.
    fn send(&self, message: &Value) -> Result<Instant> {
        write_frame(&self.writer, message).context("writing to the server (did it exit?)")
    }

    fn notify(&self, method: &str, params: Value) -> Result<Instant> {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }

    fn request(&mut self, method: &str, params: Value) -> Result<(i64, Instant)> {
        let id = self.next_id;
        self.next_id += 1;
        let at =
            self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        Ok((id, at))
    }

    /// Waits until `until` or the next response, whichever is first, and files it.
    fn pump_once(&mut self, until: Instant) -> Result<()> {
        let wait = until.saturating_duration_since(Instant::now());
        match self.incoming.recv_timeout(wait) {
            Ok((message, at)) => {
                if let Some(id) = message.get("id").and_then(Value::as_i64) {
                    self.answers.insert(id, (message, at));
                } else if message["method"] == SUGGESTION_READY {
                    self.ready.push(message["params"].clone());
                }
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Err(RecvTimeoutError::Disconnected) => {
                bail!("the server closed its output (rerun with --server-log FILE to see why)")
            }
        }
    }

    fn pump_until(&mut self, until: Instant) -> Result<()> {
        while Instant::now() < until {
            self.pump_once(until)?;
        }
        Ok(())
    }

    /// The response to `id`, waiting at most `timeout`.
    fn wait(&mut self, id: i64, timeout: Duration) -> Result<Option<Arrival>> {
        let until = Instant::now() + timeout;
        while !self.answers.contains_key(&id) && Instant::now() < until {
            self.pump_once(until)?;
        }
        Ok(self.answers.remove(&id))
    }

    /// A request and its response (with `result` or `error`).
    fn call(&mut self, method: &str, params: Value, timeout: Duration) -> Result<Value> {
        let (id, _) = self.request(method, params)?;
        match self.wait(id, timeout)? {
            Some((message, _)) => Ok(message),
            None => bail!("no answer to {method} in {timeout:?}"),
        }
    }

    fn initialize(&mut self, options: &Options) -> Result<()> {
        let capabilities = json!({
            "general": {"positionEncodings": ["utf-16"]},
            "window": {"workDoneProgress": true},
            "workspace": {"applyEdit": true, "workspaceEdit": {"documentChanges": true}},
            "experimental": {"codellamaSuggestionRefresh": true},
            "textDocument": {
                "inlineCompletion": {},
                "synchronization": {"didSave": true},
                "codeAction": {"codeActionLiteralSupport": {"codeActionKind": {"valueSet": ["refactor.rewrite"]}}}
            }
        });
        let mut settings =
            json!({"maxTokens": options.max_tokens, "deadlineMs": options.deadline_ms});
        if let Some(first) = options.first_answer_ms {
            settings["firstAnswerMs"] = json!(first);
        }
        let init = json!({
            "processId": std::process::id(),
            "rootUri": null,
            "capabilities": capabilities,
            "initializationOptions": settings,
        });
        let response = self.call("initialize", init, Duration::from_secs(60))?;
        if response.get("result").is_none() {
            bail!("initialize failed: {response}");
        }
        self.notify("initialized", json!({}))?;
        Ok(())
    }

    /// Polls `codellama/status` until the model is ready.
    fn wait_ready(&mut self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(900);
        loop {
            let status = self.call("codellama/status", Value::Null, Duration::from_secs(60))?;
            match status["result"]["state"].as_str() {
                Some("ready") => return Ok(()),
                Some("error") => bail!(
                    "the model did not load: {}",
                    status["result"]["message"]
                        .as_str()
                        .unwrap_or("(no message)")
                ),
                _ if Instant::now() > until => bail!("the model was not ready after 900 s"),
                _ => self.pump_until(Instant::now() + Duration::from_millis(100))?,
            }
        }
    }

    /// `codellama/stats`, or `None` when the server does not answer it.
    fn stats(&mut self) -> Result<Option<Value>> {
        let response = self.call("codellama/stats", Value::Null, Duration::from_secs(30))?;
        Ok(response.get("result").filter(|r| r.is_object()).cloned())
    }

    fn open(&self, uri: &str, text: &str) -> Result<Instant> {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}),
        )
    }

    fn rss(&self) -> Value {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid())) else {
            return json!({"rss_kib": null, "peak_kib": null});
        };
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        };
        json!({"rss_kib": field("VmRSS:"), "peak_kib": field("VmHWM:")})
    }

    fn shutdown(mut self) {
        let _ = self.call("shutdown", Value::Null, Duration::from_secs(10));
        let _ = self.notify("exit", Value::Null);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn write_frame(writer: &Mutex<ChildStdin>, message: &Value) -> Result<Instant> {
    let body = serde_json::to_vec(message)?;
    let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    frame.extend_from_slice(&body);
    let mut stdin = writer
        .lock()
        .map_err(|_| anyhow!("the writer lock is poisoned"))?;
    stdin.write_all(&frame)?;
    stdin.flush()?;
    Ok(Instant::now())
}

/// The reader thread: responses and `codellama/suggestionReady` go to `sender` with their
/// arrival time; the server's requests are answered at once (applied edits, created progress);
/// other notifications are dropped.
fn read_messages(stdout: impl Read, writer: &Mutex<ChildStdin>, sender: &mpsc::Sender<Arrival>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut length = None;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let Some(length) = length else { return };
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let Ok(message) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        match (
            message.get("method").and_then(Value::as_str),
            message.get("id"),
        ) {
            (Some(method), Some(id)) => {
                let result = match method {
                    "workspace/applyEdit" => json!({"applied": true}),
                    _ => Value::Null,
                };
                let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
                if write_frame(writer, &reply).is_err() {
                    return;
                }
            }
            (Some(method), None) if method != SUGGESTION_READY => {}
            _ => {
                if sender.send((message, at)).is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// a scenario
// ---------------------------------------------------------------------------------------------

/// One inline-completion request of the session.
struct Sent {
    id: i64,
    /// When its `didChange` was written.
    changed: Instant,
    /// When the next keystroke's `didChange` was written (the suggestion was visible until then).
    superseded: Option<Instant>,
    cancelled: bool,
}

/// An inline-completion request asked again after `codellama/suggestionReady`.
struct Refresh {
    id: i64,
    /// The keystroke (index into the session's requests) whose suggestion grew.
    keystroke: usize,
    cancelled: bool,
}

/// Asks again for every suggestion the server says is whole, if it is for the text and cursor
/// the editor has now (as the clients do).
fn ask_again(
    server: &mut Server,
    refreshes: &mut Vec<Refresh>,
    version: i32,
    cursor: (u32, u32),
    keystrokes: usize,
) -> Result<()> {
    let here = json!({"line": cursor.0, "character": cursor.1});
    for notice in std::mem::take(&mut server.ready) {
        if keystrokes > 0
            && notice["textDocument"]["uri"] == URI
            && notice["textDocument"]["version"] == version
            && notice["position"] == here
        {
            let (id, _) = inline_request(server, cursor, 1)?;
            refreshes.push(Refresh {
                id,
                keystroke: keystrokes - 1,
                cancelled: false,
            });
        }
    }
    Ok(())
}

/// Keeps a docstring command running in the assist document.
struct AssistJob {
    positions: Vec<(u32, u32)>,
    next: usize,
    pending: Option<i64>,
    /// After a failure, wait a little before the next command.
    not_before: Instant,
    sent: usize,
    done: usize,
    failed: usize,
}

impl AssistJob {
    fn service(&mut self, server: &mut Server, keep_going: bool) -> Result<()> {
        if let Some(id) = self.pending {
            let Some((answer, _)) = server.answers.remove(&id) else {
                return Ok(());
            };
            self.pending = None;
            if answer.get("result").is_some() {
                self.done += 1;
            } else {
                self.failed += 1;
                self.not_before = Instant::now() + Duration::from_millis(200);
            }
        }
        if keep_going && Instant::now() >= self.not_before {
            let (line, character) = self.positions[self.next % self.positions.len()];
            self.next += 1;
            let (id, _) = server.request(
                "workspace/executeCommand",
                json!({"command": "codellama.generateDocstring", "arguments": [
                    {"uri": ASSIST_URI, "position": {"line": line, "character": character}}
                ]}),
            )?;
            self.pending = Some(id);
            self.sent += 1;
        }
        Ok(())
    }
}

fn inline_request(
    server: &mut Server,
    (line, character): (u32, u32),
    trigger: u32,
) -> Result<(i64, Instant)> {
    server.request(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": URI}, "position": {"line": line, "character": character},
               "context": {"triggerKind": trigger}}),
    )
}

/// Whether an inline-completion answer holds a non-empty suggestion.
fn non_empty(answer: &Value) -> bool {
    let result = &answer["result"];
    let items = result.as_array().or_else(|| result["items"].as_array());
    items.is_some_and(|items| {
        items.iter().any(|item| {
            let text = &item["insertText"];
            text.as_str()
                .or_else(|| text["value"].as_str())
                .is_some_and(|t| !t.is_empty())
        })
    })
}

fn run_scenario(scenario: Scenario, options: &Options, decode_step_ms: f64) -> Result<Value> {
    let started = Instant::now();
    let mut server = Server::spawn(options)?;
    server.initialize(options)?;
    server.wait_ready()?;
    let rss_loaded = server.rss();

    if scenario == Scenario::ManyDocs {
        for index in 0..OTHER_DOCUMENTS {
            server.open(
                &format!("file:///bench/module_{index}.py"),
                &other_document(index),
            )?;
        }
    }
    let mut assist = None;
    if scenario == Scenario::Assist {
        let (text, positions) = assist_document();
        server.open(ASSIST_URI, &text)?;
        assist = Some(AssistJob {
            positions,
            next: 0,
            pending: None,
            not_before: Instant::now(),
            sent: 0,
            done: 0,
            failed: 0,
        });
    }
    let mut cursor = typing_position(DOCUMENT);
    let opened = server.open(URI, DOCUMENT)?;
    server.notify(
        "codellama/warmup",
        json!({"textDocument": {"uri": URI}, "position": {"line": cursor.0, "character": cursor.1}}),
    )?;
    let mut primed = Value::Null;
    if scenario != Scenario::ColdOpen {
        // Steady state: an explicit completion at the cursor is answered before the wait (a
        // deadline that cuts its prefill leaves the rest to the idle time that follows).
        let (id, asked) = inline_request(&mut server, cursor, 1)?;
        let timeout = Duration::from_millis(options.deadline_ms) + Duration::from_secs(120);
        let answer = server.wait(id, timeout)?;
        primed = json!({
            "non_empty": answer.as_ref().is_some_and(|(a, _)| non_empty(a)),
            "ms": answer.as_ref().map(|(_, at)| at.duration_since(asked).as_secs_f64() * 1000.0),
        });
    }
    server.pump_until(Instant::now() + Duration::from_millis(options.warmup_ms))?;

    let rss_before = server.rss();
    let stats_before = server.stats()?;
    let plan = typing_plan(options.keystrokes, options.seed);
    let mut sent: Vec<Sent> = Vec::with_capacity(plan.len());
    let mut refreshes: Vec<Refresh> = Vec::new();
    let mut cancels = 0usize;
    let mut version = 1;
    let mut next_at = Instant::now();
    let typing_started = Instant::now();
    for keystroke in &plan {
        next_at += keystroke.gap;
        while Instant::now() < next_at {
            server.pump_once(next_at)?;
            if let Some(job) = assist.as_mut() {
                job.service(&mut server, true)?;
            }
            ask_again(&mut server, &mut refreshes, version, cursor, sent.len())?;
        }
        if let Some(previous) = sent.last_mut()
            && !server.answers.contains_key(&previous.id)
        {
            server.notify("$/cancelRequest", json!({"id": previous.id}))?;
            previous.cancelled = true;
            cancels += 1;
        }
        if let Some(refresh) = refreshes.last_mut()
            && !refresh.cancelled
            && !server.answers.contains_key(&refresh.id)
        {
            server.notify("$/cancelRequest", json!({"id": refresh.id}))?;
            refresh.cancelled = true;
        }
        version += 1;
        let position = json!({"line": cursor.0, "character": cursor.1});
        let changed = server.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": URI, "version": version},
                   "contentChanges": [{"range": {"start": position, "end": position}, "text": keystroke.text}]}),
        )?;
        if let Some(previous) = sent.last_mut() {
            previous.superseded = Some(changed);
        }
        cursor = advance(cursor, &keystroke.text);
        let (id, _) = inline_request(&mut server, cursor, 2)?;
        sent.push(Sent {
            id,
            changed,
            superseded: None,
            cancelled: false,
        });
        next_at = next_at.max(changed);
    }
    let typing_s = typing_started.elapsed().as_secs_f64();

    // Every request gets an answer, or is counted as unanswered.
    let until =
        Instant::now() + Duration::from_millis(options.deadline_ms) + Duration::from_secs(60);
    let unanswered = |server: &Server, refreshes: &[Refresh]| {
        sent.iter().any(|s| !server.answers.contains_key(&s.id))
            || refreshes
                .iter()
                .any(|r| !server.answers.contains_key(&r.id))
    };
    while Instant::now() < until && unanswered(&server, &refreshes) {
        server.pump_once(until)?;
        if let Some(job) = assist.as_mut() {
            job.service(&mut server, false)?;
        }
        ask_again(&mut server, &mut refreshes, version, cursor, sent.len())?;
    }
    let stats_after = server.stats()?;
    let rss_after = server.rss();

    let limit = options.deadline_ms as f64 + decode_step_ms;
    let mut latencies = Vec::new();
    let (mut answered, mut results, mut cancelled_answers, mut errors) = (0, 0, 0, 0);
    let (mut shown_non_empty, mut non_empty_count, mut late) = (0, 0, 0);
    let mut first_suggestion: Option<(usize, f64)> = None;
    for (index, request) in sent.iter().enumerate() {
        let Some((answer, at)) = server.answers.get(&request.id) else {
            continue;
        };
        answered += 1;
        let ms = at.duration_since(request.changed).as_secs_f64() * 1000.0;
        if ms > limit {
            late += 1;
        }
        if answer.get("result").is_some() {
            results += 1;
            latencies.push(ms);
            if non_empty(answer) {
                non_empty_count += 1;
                let shown = request.superseded.is_none_or(|next| *at <= next);
                if shown {
                    shown_non_empty += 1;
                    if first_suggestion.is_none() {
                        let from_open = at.duration_since(opened).as_secs_f64() * 1000.0;
                        first_suggestion = Some((index + 1, from_open));
                    }
                }
            }
        } else if answer["error"]["code"].as_i64() == Some(REQUEST_CANCELLED) {
            cancelled_answers += 1;
        } else {
            errors += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    // Whole suggestions shown after their first words: didChange → the answer asked again.
    let mut whole = Vec::new();
    for refresh in &refreshes {
        let request = &sent[refresh.keystroke];
        if let Some((answer, at)) = server.answers.get(&refresh.id)
            && non_empty(answer)
            && request.superseded.is_none_or(|next| *at <= next)
        {
            whole.push(at.duration_since(request.changed).as_secs_f64() * 1000.0);
        }
    }
    whole.sort_by(f64::total_cmp);
    let delta = stats_delta(stats_before.as_ref(), stats_after.as_ref());
    let field = |name: &str| {
        delta
            .as_ref()
            .and_then(|d| d.get(name))
            .and_then(Value::as_i64)
    };
    let reused_share = match (field("reusedTokens"), field("promptTokens")) {
        (Some(reused), Some(prompt)) if prompt > 0 => Some(reused as f64 / prompt as f64),
        _ => None,
    };
    let mut report = json!({
        "scenario": scenario.name(),
        "keystrokes": plan.len(),
        "typing_s": typing_s,
        "requests": sent.len(),
        "answered": answered,
        "unanswered": sent.len() - answered,
        "results": results,
        "cancelled_answers": cancelled_answers,
        "errors": errors,
        "non_empty": non_empty_count,
        "non_empty_shown": shown_non_empty,
        "cancelled": cancels,
        "deadline_violations": late,
        "latency_ms": if latencies.is_empty() { Value::Null } else { json!({
            "p50": percentile(&latencies, 0.50),
            "p95": percentile(&latencies, 0.95),
            "max": latencies[latencies.len() - 1],
        })},
        "reused_share": reused_share,
        "grown": {
            "asked_again": refreshes.len(),
            "shown": whole.len(),
            "p50_ms": (!whole.is_empty()).then(|| percentile(&whole, 0.50)),
            "max_ms": whole.last(),
        },
        "wasted_tokens": field("wastedTokens"),
        "speculative_hits": field("completions.speculativeHits"),
        "stats_delta": delta,
        "stats_after": stats_after,
        "rss": {"loaded": rss_loaded, "before": rss_before, "after": rss_after},
        "primed": primed,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    if scenario == Scenario::ColdOpen {
        report["first_suggestion"] = json!({
            "keystroke": first_suggestion.map(|(k, _)| k),
            "ms_from_open": first_suggestion.map(|(_, ms)| ms),
        });
    }
    if let Some(job) = &assist {
        report["assist"] = json!({"commands_sent": job.sent, "commands_done": job.done,
                                  "commands_failed": job.failed});
    }
    if scenario == Scenario::ManyDocs {
        report["other_documents"] = json!(OTHER_DOCUMENTS);
    }
    server.shutdown();
    Ok(report)
}

/// `after − before` for every integer stats field (dotted names): the documented ones, null when
/// missing, and any other the server reports; `None` without both answers.
fn stats_delta(before: Option<&Value>, after: Option<&Value>) -> Option<Value> {
    let (before, after) = (before?, after?);
    let mut names: Vec<String> = STATS_FIELDS.iter().map(|&name| name.to_owned()).collect();
    let mut extra = Vec::new();
    flatten_names(after, "", &mut extra);
    for name in extra {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut delta = Map::new();
    for name in names {
        let get = |stats: &Value| {
            name.split('.')
                .try_fold(stats, |value, key| value.get(key))
                .and_then(Value::as_i64)
        };
        let value = match (get(before), get(after)) {
            (Some(b), Some(a)) => json!(a - b),
            _ => Value::Null,
        };
        delta.insert(name, value);
    }
    Some(Value::Object(delta))
}

/// The dotted names of the integer fields of `value`.
fn flatten_names(value: &Value, prefix: &str, names: &mut Vec<String>) {
    if let Some(object) = value.as_object() {
        for (key, field) in object {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if field.is_i64() || field.is_u64() {
                names.push(name);
            } else {
                flatten_names(field, &name, names);
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// One decode step of the model at a short context, measured in this process (the median of 8
/// after a 256-token prefill); the model is dropped before any server starts.
fn measure_decode_step(path: &Path, device: DeviceSpec, kv_type: KvType) -> Result<f64> {
    use crate::model::LoadedModel;
    use crate::model::sampling::argmax;
    let device = device.open()?;
    let mut model = LoadedModel::load(path, &device, Some(512))?;
    model.llama.set_kv_type(kv_type);
    let llama = &model.llama;
    let mut cache = llama.new_cache()?;
    let mut prompt = model.tokenizer.encode(DOCUMENT, true);
    prompt.truncate(256);
    let mut logits = None;
    for chunk in prompt.chunks(crate::model::generate::PREFILL_CHUNK) {
        logits = Some(llama.forward(chunk, &mut cache, false)?);
    }
    let mut steps = Vec::new();
    for step in 0..9 {
        let row: Vec<f32> = match &logits {
            Some(logits) => logits.squeeze(0)?.to_vec1()?,
            None => bail!("the document encodes to no tokens"),
        };
        let started = Instant::now();
        logits = Some(llama.forward(&[argmax(&row)], &mut cache, false)?);
        if step > 0 {
            steps.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    steps.sort_by(f64::total_cmp);
    Ok(percentile(&steps, 0.5))
}

// ---------------------------------------------------------------------------------------------
// output
// ---------------------------------------------------------------------------------------------

fn markdown(report: &Value) -> String {
    let mut out = format!(
        "model {} on {}; {} keystrokes (seed {}) in {} ({} lines); maxTokens {}, deadlineMs {}, decode step {:.1} ms{}\n\n",
        report["model"].as_str().unwrap_or_default(),
        report["device"].as_str().unwrap_or_default(),
        report["keystrokes"],
        report["seed"],
        report["document"].as_str().unwrap_or_default(),
        report["document_lines"],
        report["max_tokens"],
        report["deadline_ms"],
        report["decode_step_ms"].as_f64().unwrap_or_default(),
        if report["decode_step_measured"] == true {
            " (measured)"
        } else {
            ""
        },
    );
    out.push_str("| scenario | p50 ms | p95 ms | max ms | non-empty | whole after first words (p50 ms) | cancelled | late | unanswered | reused % | wasted tokens | speculative hits | RSS MiB before→after (peak) | first suggestion |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    let ms = |value: &Value| {
        value
            .as_f64()
            .map_or("n/a".to_owned(), |v| format!("{v:.1}"))
    };
    let count = |value: &Value| value.as_i64().map_or("n/a".to_owned(), |v| v.to_string());
    let mib = |value: &Value| {
        value.as_u64().map_or("n/a".to_owned(), |kib| {
            format!("{:.0}", kib as f64 / 1024.0)
        })
    };
    for s in report["scenarios"].as_array().into_iter().flatten() {
        let first = match s.get("first_suggestion") {
            Some(first) => match first["keystroke"].as_u64() {
                Some(k) => format!(
                    "keystroke {k}, {:.0} ms after didOpen",
                    first["ms_from_open"].as_f64().unwrap_or_default()
                ),
                None => "none".to_owned(),
            },
            None => "".to_owned(),
        };
        let rss = &s["rss"];
        let grown = &s["grown"];
        let whole = match grown["shown"].as_u64() {
            Some(0) | None => count(&grown["shown"]),
            Some(shown) => format!("{shown} ({})", ms(&grown["p50_ms"])),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {}→{} ({}) | {} |\n",
            s["scenario"].as_str().unwrap_or_default(),
            ms(&s["latency_ms"]["p50"]),
            ms(&s["latency_ms"]["p95"]),
            ms(&s["latency_ms"]["max"]),
            count(&s["non_empty"]),
            count(&s["results"]),
            whole,
            count(&s["cancelled"]),
            count(&s["deadline_violations"]),
            count(&s["unanswered"]),
            s["reused_share"]
                .as_f64()
                .map_or("n/a".to_owned(), |share| format!("{:.1}", share * 100.0)),
            count(&s["wasted_tokens"]),
            count(&s["speculative_hits"]),
            mib(&rss["before"]["rss_kib"]),
            mib(&rss["after"]["rss_kib"]),
            mib(&rss["after"]["peak_kib"]),
            first,
        ));
    }
    for s in report["scenarios"].as_array().into_iter().flatten() {
        if let Some(assist) = s.get("assist") {
            out.push_str(&format!(
                "\nassist: {} docstring commands sent, {} done, {} failed while typing\n",
                assist["commands_sent"], assist["commands_done"], assist["commands_failed"]
            ));
        }
    }
    out.push_str(
        "\nlatency: didChange → answer, over requests answered with a result; non-empty: of those; \
         whole after first words: suggestions answered with their first words whose whole was \
         shown when asked again on codellama/suggestionReady (didChange → that answer); \
         cancelled: $/cancelRequest sent; late: answers after deadlineMs + one decode step\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_types_new_lines_in_the_middle_at_human_pace() {
        let (line, character) = typing_position(DOCUMENT);
        let lines: Vec<&str> = DOCUMENT.lines().collect();
        assert_eq!(character, 0);
        assert!(lines[line as usize].is_empty());
        assert!(lines[line as usize + 1].starts_with("def "));
        let middle = lines.len() as u32 / 2;
        assert!(
            line.abs_diff(middle) < lines.len() as u32 / 5,
            "{line} vs {middle}"
        );

        let plan = typing_plan(200, 7);
        assert_eq!(plan.len(), 200);
        assert_eq!(plan, typing_plan(200, 7), "seeded");
        assert_ne!(plan, typing_plan(200, 8));
        let typed: String = plan.iter().map(|k| k.text.as_str()).collect();
        assert!(
            typed.starts_with("def summarize_by_category(inventory"),
            "{typed}"
        );
        assert!(
            typed.contains("\n    counts"),
            "Enter carries the indentation"
        );
        let gaps: Vec<u64> = plan[1..].iter().map(|k| k.gap.as_millis() as u64).collect();
        assert!(
            gaps.iter()
                .all(|&g| (80..=200).contains(&g) || (1000..=2000).contains(&g))
        );
        let pauses = gaps.iter().filter(|&&g| g >= 1000).count();
        assert!((1..=8).contains(&pauses), "{pauses} pauses");

        // More keystrokes than the snippets: renamed copies.
        let long: String = typing_plan(1200, 1)
            .iter()
            .map(|k| k.text.as_str())
            .collect();
        assert!(long.contains("def summarize_by_category_1("), "{long}");
    }

    #[test]
    fn the_cursor_follows_the_typed_text() {
        assert_eq!(advance((10, 0), "d"), (10, 1));
        assert_eq!(advance((10, 5), "\n    "), (11, 4));
        assert_eq!(advance((3, 2), "\n"), (4, 0));
    }

    #[test]
    fn stats_deltas_are_per_field_and_missing_ones_are_null() {
        let before =
            json!({"promptTokens": 10, "reusedTokens": 5, "completions": {"speculativeHits": 1}});
        let after =
            json!({"promptTokens": 30, "reusedTokens": 20, "completions": {"speculativeHits": 4}});
        let delta = stats_delta(Some(&before), Some(&after)).unwrap();
        assert_eq!(delta["promptTokens"], 20);
        assert_eq!(delta["completions.speculativeHits"], 3);
        assert_eq!(delta["wastedTokens"], Value::Null);
        assert_eq!(
            delta["completions.stale"],
            Value::Null,
            "a field only after"
        );
        assert_eq!(stats_delta(None, Some(&after)), None);
    }

    #[test]
    fn suggestions_are_recognized_in_both_answer_shapes() {
        assert!(non_empty(&json!({"result": [{"insertText": "x"}]})));
        assert!(non_empty(
            &json!({"result": {"items": [{"insertText": {"kind": "snippet", "value": "y"}}]}})
        ));
        assert!(!non_empty(&json!({"result": []})));
        assert!(!non_empty(&json!({"result": null})));
        assert!(!non_empty(&json!({"result": [{"insertText": ""}]})));
    }

    #[test]
    fn the_other_documents_differ_and_the_assist_positions_are_in_bodies() {
        assert_ne!(other_document(0), other_document(1));
        assert!(other_document(3).lines().count() > 50);
        let (text, positions) = assist_document();
        let lines: Vec<&str> = text.lines().collect();
        for (line, _) in positions {
            assert!(
                lines[line as usize - 1].starts_with("def "),
                "{}",
                lines[line as usize - 1]
            );
        }
    }
}
