//! A seeded fuzzer of LSP streams against the real binary with the fixture model: valid and
//! malformed messages at random — edits with emoji, CRLF and lone CR at random positions,
//! completions, code actions, commands with bad arguments, cancellations, garbage bodies, deep
//! JSON nesting, huge strings — checking every few hundred messages that the server's copy of each
//! document equals a plain model of it, that every request got exactly one answer, and that the
//! process is alive. A cancel storm follows: 1000 completions, most cancelled, all answered.
//!
//! `CODELLAMA_FUZZ_MESSAGES=N` runs longer (default 1500), `CODELLAMA_FUZZ_SEED=S` another seed.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use codellama_lsp::fixtures::SplitMix64;
use serde_json::{Value, json};
use support::LspClient;

/// Documents whose text is checked against the plain model (valid edits only).
const CHECKED: [&str; 3] = [
    "file:///fuzz/a.py",
    "file:///fuzz/b.rs",
    "file:///fuzz/c.js",
];
/// A document that also gets edits at invalid positions: only the server's liveness is checked.
const CHAOS: &str = "file:///fuzz/chaos.py";

const PIECES: [&str; 14] = [
    "a", "def ", "x = 1", " ", "\t", "\n", "\r\n", "\r", "é", "😀", "中", "(", "}", "    ",
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random text from pieces that stress position handling.
fn text(rng: &mut SplitMix64, max_pieces: u64) -> String {
    (0..rng.below(max_pieces + 1))
        .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
        .collect()
}

/// Line starts of `text` (byte offsets), with `\r\n`, `\n` and lone `\r` as line breaks.
fn line_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                starts.push(i + 2);
                i += 2;
            }
            b'\r' | b'\n' => {
                starts.push(i + 1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    starts
}

/// A random valid position: a character boundary, never between `\r` and `\n`. Returns the byte
/// offset and the LSP position (UTF-16 columns).
fn position(rng: &mut SplitMix64, text: &str) -> (usize, Value) {
    let candidates: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .filter(|&i| {
            !(i > 0 && text.as_bytes()[i - 1] == b'\r' && text.as_bytes().get(i) == Some(&b'\n'))
        })
        .collect();
    let offset = candidates[rng.below(candidates.len() as u64) as usize];
    let starts = line_starts(text);
    let line = starts.partition_point(|&s| s <= offset) - 1;
    let character: usize = text[starts[line]..offset].encode_utf16().count();
    (offset, json!({"line": line, "character": character}))
}

struct Fuzzer {
    client: LspClient,
    rng: SplitMix64,
    docs: HashMap<&'static str, (String, i32)>,
    /// Request ids sent and not yet answered.
    pending: HashMap<i64, &'static str>,
    answered: HashMap<i64, usize>,
    sent_requests: usize,
}

impl Fuzzer {
    fn request(&mut self, method: &'static str, params: Value) -> i64 {
        let id = self.client.request(method, params);
        self.pending.insert(id, method);
        self.sent_requests += 1;
        id
    }

    /// Reads messages until every request sent so far is answered; fails on a second answer.
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "unanswered: {:?}",
                self.pending.iter().take(5).collect::<Vec<_>>()
            );
            let message = self.client.next_message();
            let (Some(id), None) = (message.get("id"), message.get("method")) else {
                continue;
            };
            let Some(id) = id.as_i64() else {
                continue; // an answer to a garbage frame (id null)
            };
            let count = self.answered.entry(id).or_default();
            *count += 1;
            assert_eq!(*count, 1, "request {id} answered twice: {message}");
            self.pending.remove(&id);
        }
        // The backlog only holds notifications by now; keep memory flat on long runs.
        self.client.backlog.clear();
    }

    fn edit(&mut self, uri: &'static str) {
        let (current, version) = self.docs.get(uri).cloned().unwrap_or_default();
        let (mut a, start) = position(&mut self.rng, &current);
        let (mut b, end) = position(&mut self.rng, &current);
        let (mut start, mut end) = (start, end);
        if b < a {
            std::mem::swap(&mut a, &mut b);
            std::mem::swap(&mut start, &mut end);
        }
        let inserted = text(&mut self.rng, 6);
        let mut next = current;
        next.replace_range(a..b, &inserted);
        let version = version + 1;
        self.client.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version},
                   "contentChanges": [{"range": {"start": start, "end": end}, "text": inserted}]}),
        );
        self.docs.insert(uri, (next, version));
    }

    fn random_position(&mut self) -> Value {
        json!({"line": self.rng.below(40), "character": self.rng.below(120)})
    }

    fn step(&mut self) {
        let uri = CHECKED[self.rng.below(CHECKED.len() as u64) as usize];
        match self.rng.below(20) {
            0..=6 => self.edit(uri),
            7 => {
                // A whole-document replacement.
                let fresh = text(&mut self.rng, 30);
                let version = self.docs.get(uri).map_or(0, |d| d.1) + 1;
                self.client.notify(
                    "textDocument/didChange",
                    json!({"textDocument": {"uri": uri, "version": version},
                           "contentChanges": [{"text": fresh}]}),
                );
                self.docs.insert(uri, (fresh, version));
            }
            8 => {
                // Edits anywhere, valid or not, on the chaos document.
                let (start, end) = (self.random_position(), self.random_position());
                let inserted = text(&mut self.rng, 4);
                self.client.notify(
                    "textDocument/didChange",
                    json!({"textDocument": {"uri": CHAOS, "version": self.rng.below(1000)},
                           "contentChanges": [{"range": {"start": start, "end": end}, "text": inserted}]}),
                );
            }
            9..=11 => {
                let position = if self.rng.below(4) == 0 {
                    self.random_position()
                } else {
                    let current = self.docs[uri].0.clone();
                    position(&mut self.rng, &current).1
                };
                let method = if self.rng.below(2) == 0 {
                    "textDocument/inlineCompletion"
                } else {
                    "textDocument/completion"
                };
                let trigger = 1 + self.rng.below(2);
                let id = self.request(
                    method,
                    json!({"textDocument": {"uri": uri}, "position": position,
                           "context": {"triggerKind": trigger}}),
                );
                if self.rng.below(3) == 0 {
                    self.client.notify("$/cancelRequest", json!({"id": id}));
                }
            }
            12 => {
                let (start, end) = (self.random_position(), self.random_position());
                self.request(
                    "textDocument/codeAction",
                    json!({"textDocument": {"uri": uri}, "range": {"start": start, "end": end},
                           "context": {"diagnostics": []}}),
                );
            }
            13 => {
                let arguments = match self.rng.below(4) {
                    0 => json!([]),
                    1 => json!([{"uri": 5}]),
                    2 => {
                        json!([{"uri": "file:///fuzz/not-open.py", "position": {"line": 0, "character": 0}}])
                    }
                    _ => json!(["x".repeat(10_000)]),
                };
                let command = [
                    "codellama.generateDocstring",
                    "codellama.editSelection",
                    "codellama.chat",
                    "no.such.command",
                ][self.rng.below(4) as usize];
                self.request(
                    "workspace/executeCommand",
                    json!({"command": command, "arguments": arguments}),
                );
            }
            14 => {
                // Garbage inside a well-formed frame.
                let body: &[u8] = match self.rng.below(4) {
                    0 => b"{not json",
                    1 => b"[]",
                    2 => b"{\"jsonrpc\": \"2.0\", \"id\": {}}",
                    _ => b"\xff\xfe\x00",
                };
                let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
                frame.extend_from_slice(body);
                self.client.send_raw(&frame);
            }
            15 => {
                // Deeply nested parameters.
                let depth = 2000;
                let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
                let body = format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"textDocument/hover\",\"params\":{nested}}}",
                    999_000_000 + self.sent_requests
                );
                let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
                frame.extend_from_slice(body.as_bytes());
                self.client.send_raw(&frame);
            }
            16 => {
                // A huge string where a URI belongs.
                self.request(
                    "codellama/document",
                    json!({"textDocument": {"uri": "x".repeat(200_000)}}),
                );
            }
            17 => {
                let id = self.rng.below(self.sent_requests as u64 + 2) as i64;
                self.client.notify("$/cancelRequest", json!({"id": id}));
            }
            18 => {
                self.request("no/suchMethod", json!({"x": 1}));
            }
            _ => {
                self.client.notify(
                    "workspace/didChangeConfiguration",
                    json!({"settings": {"codellama": {"maxTokens": 1 + self.rng.below(4)}}}),
                );
            }
        }
    }

    fn check_documents(&mut self) {
        self.drain();
        for uri in CHECKED {
            let state = self.client.document(uri);
            let (text, version) = &self.docs[uri];
            assert_eq!(
                state["text"].as_str(),
                Some(text.as_str()),
                "{uri} diverged"
            );
            assert_eq!(
                state["version"].as_i64(),
                Some(i64::from(*version)),
                "{uri}"
            );
        }
    }
}

#[test]
fn a_random_stream_of_valid_and_malformed_messages_never_loses_text_or_an_answer() {
    let seed = env_number("CODELLAMA_FUZZ_SEED", 0xF022);
    let messages = env_number("CODELLAMA_FUZZ_MESSAGES", 1500);
    let client = LspClient::with_model(
        &support::fixture_model(),
        json!({"maxTokens": 2, "deadlineMs": 2000, "workspaceContext": false}),
        json!({}),
    );
    let mut fuzzer = Fuzzer {
        client,
        rng: SplitMix64::new(seed),
        docs: HashMap::new(),
        pending: HashMap::new(),
        answered: HashMap::new(),
        sent_requests: 0,
    };
    for (uri, language) in CHECKED.iter().zip(["python", "rust", "javascript"]) {
        let start = text(&mut fuzzer.rng, 20);
        fuzzer.client.open(uri, language, &start);
        fuzzer.docs.insert(uri, (start, 1));
    }
    fuzzer.client.open(CHAOS, "python", "x = 1\r\ny = 😀\rz\n");
    let started = Instant::now();
    for n in 1..=messages {
        fuzzer.step();
        if n % 300 == 0 {
            fuzzer.check_documents();
        }
    }
    fuzzer.check_documents();
    eprintln!(
        "fuzz: seed {seed:#x}, {messages} messages, {} requests, all answered once, documents equal, in {:.1} s",
        fuzzer.sent_requests,
        started.elapsed().as_secs_f64()
    );
    fuzzer.client.assert_clean_stdout();
    assert_eq!(fuzzer.client.shutdown().code(), Some(0));
}

#[test]
fn a_cancel_storm_is_answered_request_by_request() {
    let mut client = LspClient::with_model(
        &support::fixture_model(),
        json!({"maxTokens": 2, "deadlineMs": 5000}),
        json!({}),
    );
    client.open("file:///storm.py", "python", "def add(a, b):\n    \n");
    let mut ids = Vec::new();
    for i in 0..1000 {
        let id = client.request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": "file:///storm.py"}, "position": {"line": 1, "character": 4},
                   "context": {"triggerKind": 1}}),
        );
        if i % 10 != 9 {
            client.notify("$/cancelRequest", json!({"id": id}));
        }
        ids.push(id);
    }
    let mut answers: HashMap<i64, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while answers.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "{} of 1000 answered",
            answers.len()
        );
        let message = client.next_message();
        if let (Some(id), None) = (
            message.get("id").and_then(Value::as_i64),
            message.get("method"),
        ) {
            *answers.entry(id).or_default() += 1;
        }
    }
    assert!(answers.values().all(|&n| n == 1), "an answer came twice");
    eprintln!("cancel storm: 1000 requests, 900 cancelled, all answered once");
    client.assert_clean_stdout();
    assert_eq!(client.shutdown().code(), Some(0));
}
