//! Work ahead of the user and state that must not grow, over stdio with the fixture model: the
//! suggestion after an accepted one is computed in idle time, a warm-up (asked for, or after a
//! typing pause) prefills the prompt before the first keystroke, closing documents frees their
//! state, and thousands of documents and requests leave the per-document maps at their bounds.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::LspClient;

const URI: &str = "file:///work/shapes.py";

fn start() -> LspClient {
    LspClient::with_model(
        &support::fixture_model(),
        json!({"maxTokens": 8, "deadlineMs": 20000}),
        json!({}),
    )
}

fn stats(client: &mut LspClient) -> Value {
    let response = client.call("codellama/stats", Value::Null);
    response["result"].clone()
}

/// Polls `codellama/stats` until `ready` holds (or fails after 30 s).
fn wait_for_stats(client: &mut LspClient, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = stats(client);
        if ready(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats never got there: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An invoked (asked for) inline completion at `line:character`.
fn inline_at(client: &mut LspClient, uri: &str, line: u32, character: u32) -> Value {
    inline_completion(client, uri, (line, character), 1)
}

/// An automatic (typing) request at `line:character`.
fn typed_at(client: &mut LspClient, uri: &str, line: u32, character: u32) -> Value {
    inline_completion(client, uri, (line, character), 2)
}

fn inline_completion(client: &mut LspClient, uri: &str, at: (u32, u32), trigger: u32) -> Value {
    let response = client.call(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": uri}, "position": {"line": at.0, "character": at.1},
               "context": {"triggerKind": trigger}}),
    );
    response["result"].clone()
}

fn suggestion(result: &Value) -> Option<String> {
    result[0]["insertText"].as_str().map(str::to_owned)
}

/// A Python module of `classes` small classes.
fn module(classes: usize) -> String {
    let mut text = String::from("import math\n\n");
    for i in 0..classes {
        text.push_str(&format!(
            "class Shape{i}:\n    def __init__(self, width, height):\n        \
             self.width = width\n        self.height = height\n\n    \
             def area(self):\n        return self.width * self.height\n\n\n"
        ));
    }
    text
}

/// The position (UTF-16) just past `inserted` when it is inserted at `line:character`.
fn end_of_insert(line: u32, character: u32, inserted: &str) -> (u32, u32) {
    let lines: Vec<&str> = inserted.split('\n').collect();
    let last = lines.last().map_or(0, |l| l.encode_utf16().count() as u32);
    if lines.len() == 1 {
        (line, character + last)
    } else {
        (line + lines.len() as u32 - 1, last)
    }
}

fn type_text(client: &mut LspClient, uri: &str, version: i32, at: (u32, u32), text: &str) {
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [
            {"range": {"start": {"line": at.0, "character": at.1},
                       "end": {"line": at.0, "character": at.1}}, "text": text}]}),
    );
}

/// After a suggestion is shown, the one that follows it (if the user accepts) is computed in
/// idle time; accepting it then answers from that work, with exactly what a fresh server gives.
#[test]
fn accepting_a_suggestion_finds_the_next_one_computed_ahead() {
    let text = module(6);
    let line = 8; // the blank line after the first class
    let mut client = start();
    client.open(URI, "python", &text);
    let first = inline_at(&mut client, URI, line, 0);
    let Some(shown) = suggestion(&first) else {
        panic!("the fixture model suggested nothing: {first}");
    };
    wait_for_stats(&mut client, |s| s["speculations"] == 1);
    // The user accepts: the editor inserts the suggestion and asks again after it.
    type_text(&mut client, URI, 2, (line, 0), &shown);
    let (end_line, end_character) = end_of_insert(line, 0, &shown);
    let next = inline_at(&mut client, URI, end_line, end_character);
    let after = stats(&mut client);
    assert_eq!(after["completions"]["speculativeHits"], 1, "{after}");
    assert_eq!(after["completions"]["model"], 1, "{after}");

    let accepted = client.document(URI)["text"].as_str().unwrap().to_owned();
    let mut fresh = start();
    fresh.open(URI, "python", &accepted);
    let expected = inline_at(&mut fresh, URI, end_line, end_character);
    assert_eq!(
        next, expected,
        "the speculative answer differs from a fresh one"
    );
    assert!(fresh.shutdown().success());

    // Typing something else instead finds nothing ahead: the model runs again.
    type_text(&mut client, URI, 3, (end_line, end_character), "#");
    inline_at(&mut client, URI, end_line, end_character + 1);
    let last = stats(&mut client);
    assert_eq!(last["completions"]["speculativeHits"], 1, "{last}");
    assert!(client.shutdown().success());
}

/// While typing, a client that asks again on `codellama/suggestionReady` is answered with a
/// suggestion's first words at once (`firstAnswerMs`); the rest is generated in the background,
/// the server says when it is whole, and asking again gets exactly what waiting would have
/// given. A client without that capability always waits for the whole suggestion.
#[test]
fn typing_shows_the_first_words_at_once_and_the_whole_suggestion_when_ready() {
    let text = module(6);
    let line = 8; // the blank line after the first class
    let options = json!({"maxTokens": 24, "deadlineMs": 20000, "firstAnswerMs": 1});
    let mut client = LspClient::with_model(
        &support::fixture_model(),
        options.clone(),
        json!({"experimental": {"codellamaSuggestionRefresh": true}}),
    );
    client.open(URI, "python", &text);
    let first = typed_at(&mut client, URI, line, 0);
    let Some(shown) = suggestion(&first) else {
        panic!("the fixture model suggested nothing: {first}");
    };
    let ready = client.wait_for("codellama/suggestionReady");
    assert_eq!(
        ready["params"],
        json!({"textDocument": {"uri": URI, "version": 1},
               "position": {"line": line, "character": 0}})
    );
    let whole = suggestion(&typed_at(&mut client, URI, line, 0)).unwrap_or_default();
    let after = stats(&mut client);
    assert_eq!(after["completions"]["firstWords"], 1, "{after}");
    assert_eq!(after["completions"]["grown"], 1, "{after}");
    assert_eq!(after["completions"]["cache"], 1, "{after}");

    // Without the capability, the same request waits for the whole suggestion.
    let mut plain = LspClient::with_model(&support::fixture_model(), options, json!({}));
    plain.open(URI, "python", &text);
    let expected = suggestion(&typed_at(&mut plain, URI, line, 0)).unwrap_or_default();
    assert_eq!(whole, expected);
    assert!(
        expected.starts_with(&shown) && expected.len() > shown.len(),
        "first words {shown:?}, whole {expected:?}"
    );
    let plain_stats = stats(&mut plain);
    assert_eq!(plain_stats["completions"]["firstWords"], 0, "{plain_stats}");
    assert!(plain.notifications("codellama/suggestionReady").is_empty());
    assert!(plain.shutdown().success());
    assert!(client.shutdown().success());
}

/// `codellama/warmup` (sent by the clients on focus) prefills the prompt at the cursor, so the
/// first request there evaluates only its last token.
#[test]
fn a_warmup_prefills_the_prompt_before_the_first_keystroke() {
    let mut client = start();
    client.open(URI, "python", &module(20));
    client.notify(
        "codellama/warmup",
        json!({"textDocument": {"uri": URI}, "position": {"line": 80, "character": 0}}),
    );
    wait_for_stats(&mut client, |s| s["warmupsFinished"] == 1);
    inline_at(&mut client, URI, 80, 0);
    let stats = stats(&mut client);
    let prompt = stats["promptTokens"].as_u64().unwrap();
    assert!(prompt > 500, "{stats}");
    assert_eq!(
        stats["reusedTokens"].as_u64().unwrap(),
        prompt - 1,
        "{stats}"
    );
    assert!(client.shutdown().success());
}

/// After a pause in typing (no request came), the prompt at the last edit is prefilled.
#[test]
fn a_typing_pause_warms_the_prompt_at_the_last_edit() {
    let mut client = start();
    client.open(URI, "python", &module(20));
    type_text(&mut client, URI, 2, (80, 0), "    def ");
    wait_for_stats(&mut client, |s| s["warmupsFinished"] == 1);
    inline_at(&mut client, URI, 80, 8);
    let stats = stats(&mut client);
    let prompt = stats["promptTokens"].as_u64().unwrap();
    assert_eq!(
        stats["reusedTokens"].as_u64().unwrap(),
        prompt - 1,
        "{stats}"
    );
    assert!(client.shutdown().success());
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opening and closing many documents and answering many completion requests leaves the
/// per-document state at its bounds (one entry per open document at most) and memory flat.
/// `CODELLAMA_CHURN_SCALE` multiplies the counts (default: 10 000 documents, 100 000 requests).
#[test]
fn churn_of_documents_and_requests_leaves_state_bounded() {
    let scale: f64 = std::env::var("CODELLAMA_CHURN_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let documents = (10_000.0 * scale) as usize;
    let requests = (100_000.0 * scale) as usize;
    let mut client = start();
    let small = "def f(x):\n    return x\n\n";
    let request_batch = |client: &mut LspClient, uri: &str, count: usize| {
        let ids: Vec<i64> = (0..count)
            .map(|_| {
                client.request(
                    "textDocument/inlineCompletion",
                    json!({"textDocument": {"uri": uri},
                           "position": {"line": 2, "character": 0},
                           "context": {"triggerKind": 1}}),
                )
            })
            .collect();
        for id in ids {
            let response = client.response(&json!(id));
            assert!(response.get("result").is_some(), "{response}");
        }
    };
    // Warm everything up once, then measure.
    client.open("file:///work/keep.py", "python", small);
    request_batch(&mut client, "file:///work/keep.py", 10);
    let before = rss_kib(client.pid());
    let started = Instant::now();
    let per_document = (requests / 2 / documents.max(1)).max(1);
    for i in 0..documents {
        let uri = format!("file:///work/churn/doc{i}.py");
        client.open(&uri, "python", small);
        request_batch(&mut client, &uri, per_document);
        client.notify(
            "textDocument/didClose",
            json!({"textDocument": {"uri": uri}}),
        );
    }
    let mut done = documents * per_document;
    while done < requests {
        let batch = (requests - done).min(500);
        request_batch(&mut client, "file:///work/keep.py", batch);
        done += batch;
    }
    let stats = stats(&mut client);
    let after = rss_kib(client.pid());
    eprintln!(
        "{documents} documents opened and closed, {done} requests in {:.1} s; RSS {before:?} KiB -> {after:?} KiB; {stats}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stats["openDocuments"], 1, "{stats}");
    assert!(stats["trackedDocuments"].as_u64().unwrap() <= 1, "{stats}");
    assert!(stats["engineKeys"].as_u64().unwrap() <= 1, "{stats}");
    assert_eq!(
        stats["completions"]["requests"].as_u64().unwrap() as usize,
        done + 10,
        "{stats}"
    );
    if let (Some(before), Some(after)) = (before, after) {
        assert!(
            after < before + 64 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
    }
    assert!(client.shutdown().success());
}

/// A completion queued behind another document's long one answers (empty) one decode step
/// after its own deadline (as measured on an earlier completion) instead of waiting for the
/// engine.
#[test]
fn a_completion_stuck_behind_other_work_gives_up_after_its_deadline() {
    let mut client = LspClient::with_model(
        &support::fixture_model(),
        json!({"maxTokens": 8, "deadlineMs": 60000}),
        json!({}),
    );
    let other = "file:///work/other.py";
    client.open(URI, "python", &module(3));
    client.open(other, "python", &module(3));
    // An ordinary completion first: the completer learns how long a decode step takes.
    inline_at(&mut client, URI, 8, 0);
    client.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"maxTokens": 3000}}}),
    );
    let long = client.request(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": other}, "position": {"line": 8, "character": 0},
               "context": {"triggerKind": 2}}),
    );
    std::thread::sleep(Duration::from_millis(300));
    client.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"deadlineMs": 200, "maxTokens": 3000}}}),
    );
    let started = Instant::now();
    let quick = inline_at(&mut client, URI, 17, 0);
    let waited = started.elapsed();
    let stats = stats(&mut client);
    assert_eq!(stats["completions"]["late"], 1, "{stats}");
    assert_eq!(quick, json!([]));
    // 200 ms, one decode step of the fixture (a few ms) and 20 ms of slack; the fixed 500 ms
    // grace it replaced would take 700 ms.
    assert!(waited < Duration::from_millis(600), "{waited:?}");
    assert!(client.response(&json!(long)).get("result").is_some());
    assert!(client.shutdown().success());
}
