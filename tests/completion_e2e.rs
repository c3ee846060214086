//! End-to-end inline completion over stdio with the project's tiny fixture model: ranges in both
//! encodings, cancellation of a request in flight, a burst of requests while editing.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{LspClient, error_code};

const URI: &str = "file:///work/greet.py";

/// Starts the server with the fixture model and waits until it is loaded.
fn start(options: Value, capabilities: Value) -> LspClient {
    LspClient::with_model(&support::fixture_model(), options, capabilities)
}

fn inline(client: &mut LspClient, line: u32, character: u32, trigger: u32) -> i64 {
    client.request(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": URI}, "position": {"line": line, "character": character},
               "context": {"triggerKind": trigger}}),
    )
}

const TEXT: &str = "def greet(name):\n    face = \"😀\"; print(face + name)\n    return \n";

fn check_item_range(encoding: &str, cursor_character: u32) {
    let caps = json!({"general": {"positionEncodings": [encoding]}});
    let mut client = start(json!({"maxTokens": 8}), caps);
    client.open(URI, "python", TEXT);
    // Line 1 after `print(face + name)`: the emoji before the cursor counts 2 in UTF-16, 4 in UTF-8.
    let id = inline(&mut client, 1, cursor_character, 1);
    let response = client.response(&json!(id));
    let items = response["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"));
    assert_eq!(items.len(), 1, "{response}");
    let item = &items[0];
    assert!(!item["insertText"].as_str().unwrap().trim().is_empty());
    let expected = json!({"line": 1, "character": cursor_character});
    assert_eq!(item["range"]["start"], expected, "{encoding}: {item}");
    assert_eq!(item["range"]["end"], expected);
    assert_eq!(client.document(URI)["text"], TEXT);
    assert!(client.shutdown().success());
}

#[test]
fn the_item_range_is_the_cursor_in_utf16() {
    let column = "    face = \"😀\"; print(face + name)"
        .encode_utf16()
        .count() as u32;
    check_item_range("utf-16", column);
}

#[test]
fn the_item_range_is_the_cursor_in_utf8() {
    let column = "    face = \"😀\"; print(face + name)".len() as u32;
    check_item_range("utf-8", column);
}

#[test]
fn a_request_in_flight_is_cancelled_with_request_cancelled() {
    // A long generation (a random-weight model never says EOT) that the cancel must interrupt.
    let mut client = start(
        json!({"maxTokens": 4000, "contextTokens": 8192, "deadlineMs": 120000}),
        json!({}),
    );
    client.open(URI, "python", TEXT);
    let id = inline(&mut client, 2, 11, 1);
    std::thread::sleep(Duration::from_millis(300));
    let cancelled_at = Instant::now();
    client.notify("$/cancelRequest", json!({"id": id}));
    let response = client.response(&json!(id));
    assert_eq!(error_code(&response), Some(-32800), "{response}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    // The engine is free again: a short request completes.
    client.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"maxTokens": 4}}}),
    );
    let id = inline(&mut client, 2, 11, 1);
    let response = client.response(&json!(id));
    assert!(response["result"].is_array(), "{response}");
    assert!(client.shutdown().success());
}

#[test]
fn fifty_rapid_requests_while_editing_are_all_answered_and_the_text_survives() {
    let mut client = start(json!({"maxTokens": 16}), json!({}));
    client.open(URI, "python", "def f():\n    return ");
    let mut expected = String::from("def f():\n    return ");
    let mut ids = Vec::new();
    for (i, ch) in "compute(1, 2) + compute(3, 4) * total_value_of(x)"
        .chars()
        .take(50)
        .enumerate()
    {
        let column = expected.lines().last().unwrap().encode_utf16().count() as u32;
        client.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": URI, "version": i + 2},
                   "contentChanges": [{"range": {"start": {"line": 1, "character": column},
                                                 "end": {"line": 1, "character": column}},
                                       "text": ch.to_string()}]}),
        );
        expected.push(ch);
        ids.push(inline(&mut client, 1, column + 1, 2));
        if i % 7 == 3 {
            client.notify("$/cancelRequest", json!({"id": ids[i]}));
        }
    }
    for id in ids {
        let response = client.response(&json!(id));
        assert!(
            response["result"].is_array() || error_code(&response) == Some(-32800),
            "request {id}: {response}"
        );
    }
    assert_eq!(client.document(URI)["text"], expected);
    assert!(client.shutdown().success());
}

#[test]
fn completion_gives_the_same_suggestion_as_one_item() {
    let mut client = start(json!({"maxTokens": 8}), json!({}));
    client.open(URI, "python", TEXT);
    let inline_id = inline(&mut client, 2, 11, 1);
    let inline_text = client.response(&json!(inline_id))["result"][0]["insertText"].clone();
    let response = client.call(
        "textDocument/completion",
        json!({"textDocument": {"uri": URI}, "position": {"line": 2, "character": 11}}),
    );
    let list = &response["result"];
    assert_eq!(list["isIncomplete"], true, "{response}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["textEdit"]["newText"], inline_text);
    assert!(client.shutdown().success());
}

#[test]
fn a_missing_model_is_reported_and_requests_answer_empty() {
    let mut client = LspClient::spawn(&[]);
    client.call(
        "initialize",
        json!({"processId": null, "capabilities": {}, "initializationOptions": {"model": "/nowhere/model.gguf"}}),
    );
    client.notify("initialized", json!({}));
    client.open(URI, "python", TEXT);
    let deadline = Instant::now() + support::TIMEOUT;
    let error = loop {
        let messages = client.notifications("window/showMessage");
        if let Some(message) = messages.iter().find(|m| m["params"]["type"] == 1) {
            break message["params"]["message"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline);
        let message = client.next_message();
        client.backlog.push(message);
    };
    assert!(error.contains("/nowhere/model.gguf"), "{error}");
    let id = inline(&mut client, 2, 11, 1);
    assert_eq!(client.response(&json!(id))["result"], json!([]));
    assert!(client.shutdown().success());
}

#[test]
fn invalid_initialization_options_are_reported_and_the_server_still_starts() {
    let mut client = LspClient::spawn(&[]);
    let response = client.call(
        "initialize",
        json!({"processId": null, "capabilities": {}, "initializationOptions": {"maxTokens": 0}}),
    );
    assert!(response.get("result").is_some(), "{response}");
    client.notify("initialized", json!({}));
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let messages = client.notifications("window/showMessage");
        if messages.iter().any(|m| {
            m["params"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("maxTokens")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "{messages:?}");
        let message = client.next_message();
        client.backlog.push(message);
    }
    assert!(client.shutdown().success());
}
