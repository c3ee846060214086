//! End-to-end: the real binary over stdio, spoken to as an editor would.

mod support;

use serde_json::{Value, json};
use support::{LspClient, error_code};

const URI: &str = "file:///work/demo.rs";

#[test]
fn initialize_advertises_every_capability_and_defaults_to_utf16() {
    let (client, result) = LspClient::initialized(json!({}));
    let caps = &result["capabilities"];
    assert_eq!(caps["positionEncoding"], "utf-16");
    assert_eq!(caps["textDocumentSync"]["openClose"], true);
    assert_eq!(caps["textDocumentSync"]["change"], 2, "incremental sync");
    assert_eq!(caps["inlineCompletionProvider"], true);
    assert!(caps["completionProvider"].is_object());
    assert_eq!(caps["codeActionProvider"]["resolveProvider"], true);
    assert_eq!(
        caps["executeCommandProvider"]["commands"],
        json!([
            "codellama.generateDocstring",
            "codellama.editSelection",
            "codellama.chat"
        ])
    );
    assert_eq!(result["serverInfo"]["name"], "codellama-lsp");
    assert!(client.shutdown().success());
}

#[test]
fn utf8_is_negotiated_when_the_client_offers_it() {
    let (client, result) =
        LspClient::initialized(json!({"general": {"positionEncodings": ["utf-16", "utf-8"]}}));
    assert_eq!(result["capabilities"]["positionEncoding"], "utf-8");
    assert!(client.shutdown().success());
}

#[test]
fn requests_before_initialize_are_refused_with_server_not_initialized() {
    let mut client = LspClient::spawn(&["serve", "--stdio"]);
    let response = client.call(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": URI}, "position": {"line": 0, "character": 0},
               "context": {"triggerKind": 1}}),
    );
    assert_eq!(error_code(&response), Some(-32002));
    client.initialize(json!({}));
    assert!(client.shutdown().success());
}

fn change(version: i32, range: Value, text: &str) -> Value {
    json!({
        "textDocument": {"uri": URI, "version": version},
        "contentChanges": [{"range": range, "text": text}]
    })
}

fn range(l1: u32, c1: u32, l2: u32, c2: u32) -> Value {
    json!({"start": {"line": l1, "character": c1}, "end": {"line": l2, "character": c2}})
}

#[test]
fn edits_with_emoji_and_crlf_land_exactly_in_utf16() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.open(URI, "rust", "let face = \"😀\";\r\nlet x = 1;\r\n");
    // Column 14 in UTF-16 is right after the emoji (which counts 2).
    client.notify(
        "textDocument/didChange",
        change(2, range(0, 14, 0, 14), "👍"),
    );
    // Replace "1" on the second line, and clamp an edit past the line's end before its CRLF.
    client.notify("textDocument/didChange", change(3, range(1, 8, 1, 9), "42"));
    client.notify(
        "textDocument/didChange",
        change(4, range(1, 99, 1, 99), " // end"),
    );
    let state = client.document(URI);
    assert_eq!(
        state["text"],
        "let face = \"😀👍\";\r\nlet x = 42; // end\r\n"
    );
    assert_eq!(state["version"], 4);
    assert_eq!(state["languageId"], "rust");
    assert!(client.shutdown().success());
}

#[test]
fn edits_with_emoji_land_exactly_in_utf8() {
    let (mut client, _) =
        LspClient::initialized(json!({"general": {"positionEncodings": ["utf-8"]}}));
    client.open(URI, "python", "s = '😀'\rprint(s)\n");
    // Byte 9 is right after the four-byte emoji; the lone CR ends line 0.
    client.notify("textDocument/didChange", change(2, range(0, 9, 0, 9), "é"));
    client.notify(
        "textDocument/didChange",
        change(3, range(1, 6, 1, 7), "s * 2"),
    );
    assert_eq!(client.document(URI)["text"], "s = '😀é'\rprint(s * 2)\n");
    assert!(client.shutdown().success());
}

#[test]
fn full_sync_and_close() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.open(URI, "rust", "old");
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"text": "new"}]}),
    );
    assert_eq!(client.document(URI)["text"], "new");
    client.notify(
        "textDocument/didClose",
        json!({"textDocument": {"uri": URI}}),
    );
    let response = client.call("codellama/document", json!({"textDocument": {"uri": URI}}));
    assert_eq!(error_code(&response), Some(-32602), "{response}");
    assert!(client.shutdown().success());
}

#[test]
fn edits_are_applied_in_order_while_requests_are_in_flight() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.open(URI, "rust", "");
    let mut expected = String::new();
    let mut ids = Vec::new();
    for (i, ch) in "fn main() { println!(\"hé😀\"); }\n"
        .chars()
        .cycle()
        .take(300)
        .enumerate()
    {
        let column = expected.encode_utf16().count() as u32;
        let line_start = expected.rfind('\n').map_or(0, |i| i + 1);
        let line = expected.matches('\n').count() as u32;
        let column = column - expected[..line_start].encode_utf16().count() as u32;
        let params = change(
            i as i32 + 2,
            range(line, column, line, column),
            &ch.to_string(),
        );
        client.notify("textDocument/didChange", params);
        expected.push(ch);
        ids.push(client.request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": URI}, "position": {"line": line, "character": column},
                   "context": {"triggerKind": 2}}),
        ));
    }
    for id in ids {
        let response = client.response(&json!(id));
        assert_eq!(response["result"], json!([]), "{response}");
    }
    assert_eq!(client.document(URI)["text"], expected);
    assert!(client.shutdown().success());
}

#[test]
fn inline_completion_answers_an_empty_list_and_rejects_unknown_documents() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.open(URI, "rust", "fn main() {\n    \n}\n");
    let params = |uri: &str| {
        json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4},
               "context": {"triggerKind": 1}})
    };
    let response = client.call("textDocument/inlineCompletion", params(URI));
    assert_eq!(response["result"], json!([]));
    let response = client.call(
        "textDocument/inlineCompletion",
        params("file:///nowhere.rs"),
    );
    assert_eq!(error_code(&response), Some(-32602));
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not open")
    );
    let response = client.call(
        "textDocument/completion",
        json!({"textDocument": {"uri": URI}, "position": {"line": 1, "character": 4}}),
    );
    assert_eq!(response["result"]["isIncomplete"], true);
    assert!(client.shutdown().success());
}

#[test]
fn commands_with_bad_arguments_answer_with_a_clear_error() {
    let (mut client, _) = LspClient::initialized(json!({}));
    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "codellama.chat", "arguments": []}),
    );
    assert_eq!(error_code(&response), Some(-32602), "{response}");
    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "rm -rf", "arguments": []}),
    );
    assert_eq!(error_code(&response), Some(-32602), "{response}");
    // An action that is not ours (no data, no command) comes back as it was.
    let response = client.call("codeAction/resolve", json!({"title": "Generate docstring"}));
    assert_eq!(
        response["result"],
        json!({"title": "Generate docstring"}),
        "{response}"
    );
    let response = client.call(
        "textDocument/hover",
        json!({"textDocument": {"uri": URI}, "position": {"line": 0, "character": 0}}),
    );
    assert_eq!(error_code(&response), Some(-32601), "{response}");
    let response = client.call("made/up", json!({}));
    assert_eq!(error_code(&response), Some(-32601), "{response}");
    assert!(client.shutdown().success());
}

#[test]
fn cancellation_yields_one_answer_per_request_and_the_server_stays_up() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.open(URI, "rust", "fn main() {}\n");
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = client.request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": URI}, "position": {"line": 0, "character": 3},
                   "context": {"triggerKind": 2}}),
        );
        client.notify("$/cancelRequest", json!({"id": id}));
        ids.push(id);
    }
    client.notify("$/cancelRequest", json!({"id": 9999}));
    for id in ids {
        let response = client.response(&json!(id));
        // Either it finished before the cancel arrived, or it was cancelled.
        assert!(
            response.get("result").is_some() || error_code(&response) == Some(-32800),
            "{response}"
        );
    }
    assert!(
        client
            .backlog
            .iter()
            .all(|m| m.get("id") != Some(&json!(9999)))
    );
    assert_eq!(client.document(URI)["text"], "fn main() {}\n");
    assert!(client.shutdown().success());
}

#[test]
fn malformed_input_gets_errors_and_the_server_keeps_serving() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.send_raw(b"Content-Length: 9\r\n\r\n{not json");
    let parse_error = client.response(&Value::Null);
    assert_eq!(error_code(&parse_error), Some(-32700));
    client.send_raw(b"Content-Length: 5\r\n\r\n[1,2]");
    assert_eq!(error_code(&client.response(&Value::Null)), Some(-32600));
    client.send_raw(b"garbage without any header\r\n\r\n");
    assert_eq!(error_code(&client.response(&Value::Null)), Some(-32700));
    client.send(&json!({"jsonrpc": "2.0", "id": 77, "params": {}}));
    assert_eq!(error_code(&client.response(&json!(77))), Some(-32600));
    // Invalid UTF-8 in the body, and wrong parameter types for a known method.
    client.send_raw(b"Content-Length: 3\r\n\r\n\xff\xfe{");
    assert_eq!(error_code(&client.response(&Value::Null)), Some(-32700));
    let response = client.call("textDocument/inlineCompletion", json!({"textDocument": 5}));
    assert_eq!(error_code(&response), Some(-32602), "{response}");
    // A didChange with nonsense and one for an unknown document are logged, not fatal.
    client.notify("textDocument/didChange", json!({"nonsense": true}));
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": "file:///x", "version": 2}, "contentChanges": [{"text": "x"}]}),
    );
    client.open(URI, "rust", "still here");
    assert_eq!(client.document(URI)["text"], "still here");
    assert!(client.shutdown().success());
}

#[test]
fn exit_right_behind_shutdown_exits_with_code_0() {
    // Sent back to back, without waiting for the shutdown response, as some clients do.
    let (mut client, _) = LspClient::initialized(json!({}));
    client.request("shutdown", Value::Null);
    client.notify("exit", Value::Null);
    assert_eq!(client.wait_exit().code(), Some(0));
}

#[test]
fn shutdown_before_initialize_is_refused_and_exit_then_gives_1() {
    let mut client = LspClient::spawn(&[]);
    let response = client.call("shutdown", Value::Null);
    assert_eq!(error_code(&response), Some(-32002));
    client.notify("exit", Value::Null);
    assert_eq!(client.wait_exit().code(), Some(1));
}

#[test]
fn exit_without_shutdown_exits_with_code_1() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.notify("exit", Value::Null);
    assert_eq!(client.wait_exit().code(), Some(1));
}

#[test]
fn end_of_input_exits_without_hanging() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.open(URI, "rust", "fn main() {}");
    client.close_stdin();
    assert_eq!(client.wait_exit().code(), Some(1));
}

#[test]
fn end_of_input_after_shutdown_exits_with_code_0() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.call("shutdown", Value::Null);
    client.close_stdin();
    assert_eq!(client.wait_exit().code(), Some(0));
}

#[test]
fn log_messages_reach_the_editor_and_stderr() {
    let (mut client, _) = LspClient::initialized(json!({}));
    client.notify("textDocument/didChange", json!({"nonsense": true}));
    client.open(URI, "rust", "");
    client.document(URI);
    // The log bridge forwards asynchronously: the message may arrive after the response.
    client.wait_for_matching("window/logMessage", |params| {
        params["message"]
            .as_str()
            .is_some_and(|text| text.contains("invalid parameters"))
    });
    assert!(client.stderr().contains("invalid parameters"));
    assert!(client.shutdown().success());
}

#[test]
fn a_large_document_opens_and_edits_over_stdio() {
    let (mut client, _) = LspClient::initialized(json!({}));
    let line = "    let value = compute(\"ünïcödé 😀\", 42); // a fairly long line of code\n";
    let text = line.repeat(10 * 1024 * 1024 / line.len());
    let lines = text.lines().count() as u32;
    client.open(URI, "rust", &text);
    client.notify(
        "textDocument/didChange",
        change(2, range(lines / 2, 4, lines / 2, 7), "const"),
    );
    client.notify(
        "textDocument/didChange",
        change(3, range(lines, 0, lines, 0), "// end\n"),
    );
    let state = client.document(URI);
    let server_text = state["text"].as_str().unwrap();
    assert_eq!(server_text.len(), text.len() + 2 + 7);
    assert!(server_text.ends_with("// end\n"));
    assert_eq!(
        server_text.lines().nth(lines as usize / 2).unwrap(),
        line.trim_end().replacen("let", "const", 1)
    );
    assert!(client.shutdown().success());
}
