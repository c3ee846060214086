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

    // Mid-word, the item replaces the typed word and starts with it, so clients that filter by
    // that word (Helix, Emacs) keep it.
    let inline_id = inline(&mut client, 2, 10, 1);
    let inline_text = client.response(&json!(inline_id))["result"][0]["insertText"].clone();
    let response = client.call(
        "textDocument/completion",
        json!({"textDocument": {"uri": URI}, "position": {"line": 2, "character": 10}}),
    );
    let item = &response["result"]["items"][0];
    let new_text = item["textEdit"]["newText"].as_str().unwrap();
    assert_eq!(
        Some(new_text),
        format!("return{}", inline_text.as_str().unwrap())
            .as_str()
            .into()
    );
    assert_eq!(
        item["textEdit"]["range"]["start"],
        json!({"line": 2, "character": 4})
    );
    assert_eq!(
        item["textEdit"]["range"]["end"],
        json!({"line": 2, "character": 10})
    );
    assert!(
        item["filterText"].as_str().unwrap().starts_with("return"),
        "{item}"
    );
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
    // Status items and health checks read the same reason, as data.
    let status = client.call("codellama/status", json!({}))["result"].clone();
    assert_eq!(status["state"], "error", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("/nowhere/model.gguf"),
        "{status}"
    );
    let pushed = client.wait_for_matching("codellama/status", |p| p["state"] == "error");
    assert_eq!(pushed["params"], status);
    assert!(client.shutdown().success());
}

#[test]
fn the_status_names_the_ready_model_and_the_encoding() {
    let mut client = start(
        json!({}),
        json!({"general": {"positionEncodings": ["utf-8"]}}),
    );
    let status = client.call("codellama/status", json!(null))["result"].clone();
    assert_eq!(status["state"], "ready", "{status}");
    assert_eq!(status["infill"], true, "{status}");
    assert_eq!(status["encoding"], "utf-8");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let model = status["model"].as_str().unwrap();
    assert!(!model.is_empty() && status["message"].as_str().unwrap().contains(model));
    // Pushed too, ending in the same state: a client that only listens sees "ready".
    let pushed = client.wait_for_matching("codellama/status", |p| p["state"] == "ready");
    assert_eq!(pushed["params"], status);
    assert!(client.shutdown().success());
}

#[test]
fn clients_that_show_the_status_get_no_ready_pop_up() {
    let mut client = LspClient::spawn(&[]);
    let model = support::fixture_model();
    client.call(
        "initialize",
        json!({"processId": null, "capabilities": {"experimental": {"codellamaStatus": true}},
               "initializationOptions": {"model": model}}),
    );
    client.notify("initialized", json!({}));
    client.wait_for_matching("codellama/status", |p| p["state"] == "ready");
    // A request after "ready" orders the check: any pop-up would have come before its answer.
    client.call("codellama/status", json!({}));
    let messages = client.notifications("window/showMessage");
    assert!(messages.is_empty(), "{messages:?}");
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

const BILLING: &str = "def compute_invoice_total(items, tax_rate):\n    subtotal = sum(item.price * item.quantity for item in items)\n    return subtotal * (1 + tax_rate)\n";
const MAIN: &str = "from billing import compute_invoice_total\n\norder = load_order()\ntotal = compute_invoice_total(order.items, order.tax_rate)\nprint(total)\n";

fn prompt_at(client: &mut LspClient, uri: &str, line: u32, character: u32) -> Value {
    let response = client.call(
        "codellama/prompt",
        json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}),
    );
    response
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("{response}"))
}

#[test]
fn a_symbol_defined_only_in_another_open_file_reaches_the_prompt() {
    let mut client = start(json!({}), json!({}));
    client.open("file:///work/billing.py", "python", BILLING);
    client.open("file:///work/main.py", "python", MAIN);
    let prompt = prompt_at(&mut client, "file:///work/main.py", 4, 0);
    let text = prompt["text"].as_str().unwrap();
    assert!(
        text.contains("# From work/billing.py:\ndef compute_invoice_total(items, tax_rate):"),
        "{text}"
    );
    assert_eq!(prompt["contextSources"], json!(["work/billing.py"]));
    // The same prompt start on the next keystroke (the KV cache keeps it).
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": "file:///work/main.py", "version": 2},
               "contentChanges": [{"range": {"start": {"line": 4, "character": 0}, "end": {"line": 4, "character": 0}}, "text": "p"}]}),
    );
    let again = prompt_at(&mut client, "file:///work/main.py", 4, 1);
    let context_end = text.find("\ndef compute").unwrap() + 200;
    assert_eq!(
        again["text"].as_str().unwrap().get(..context_end),
        text.get(..context_end)
    );

    // Off by a setting.
    client.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"workspaceContext": false}}}),
    );
    let prompt = prompt_at(&mut client, "file:///work/main.py", 4, 0);
    assert!(
        !prompt["text"]
            .as_str()
            .unwrap()
            .contains("From work/billing.py")
    );
    assert_eq!(prompt["contextSources"], json!([]));
    assert!(client.shutdown().success());
}

#[test]
fn files_saved_in_the_workspace_feed_the_context_but_ignored_ones_do_not() {
    let root = support::scratch_dir("workspace");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("build")).unwrap();
    std::fs::write(root.join(".gitignore"), "build/\n").unwrap();
    let root_uri = format!("file://{}", root.display());
    let mut client = LspClient::spawn(&["serve", "--stdio"]);
    let response = client.call(
        "initialize",
        json!({"processId": null, "capabilities": {}, "rootUri": root_uri,
               "initializationOptions": {"model": support::fixture_model(), "device": "cpu"}}),
    );
    assert!(response.get("result").is_some(), "{response}");
    client.notify("initialized", json!({}));
    client.wait_for_matching("window/showMessage", |p| {
        p["message"].as_str().is_some_and(|m| m.contains("ready"))
    });
    let main_uri = format!("{root_uri}/src/main.py");
    client.open(&main_uri, "python", MAIN);
    // The watch starts in the background: write until the change is seen (or time runs out).
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        std::fs::write(
            root.join("build/generated.py"),
            BILLING.replace("compute_", "ignored_"),
        )
        .unwrap();
        std::fs::write(root.join("src/billing.py"), BILLING).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let prompt = prompt_at(&mut client, &main_uri, 4, 0);
        let text = prompt["text"].as_str().unwrap().to_owned();
        if text.contains("From ") {
            assert!(text.contains("def compute_invoice_total"), "{text}");
            assert!(!text.contains("ignored_invoice_total"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saved file never reached the prompt: {text}"
        );
    }
    assert!(client.shutdown().success());
}

/// The prompt must fit the engine that runs it. Raising `contextTokens` reloads the model, and a
/// completion sent right after the change may still run on the old engine; a context beyond the
/// model's training context is clamped by the engine. Either way the prompt used to be built for
/// the setting and fail with "N tokens do not fit in the context of M tokens".
#[test]
fn a_completion_prompt_fits_the_engine_it_runs_on_whatever_the_setting_says() {
    let mut client = start(
        json!({"contextTokens": 256, "maxTokens": 8, "deadlineMs": 60000}),
        json!({}),
    );
    // About 3.6k tokens: far more than the first engine's context.
    let long: String = (0..300)
        .map(|i| format!("value_{i} = compute({i}) + offset_{i}\n"))
        .collect();
    client.open(URI, "python", &long);
    for (round, context) in [4096, 256, 100_000].into_iter().enumerate() {
        client.notify(
            "workspace/didChangeConfiguration",
            json!({"settings": {"codellama": {"contextTokens": context}}}),
        );
        let id = inline(&mut client, 300, 0, 1);
        let response = client.response(&json!(id));
        assert!(
            response.get("error").is_none(),
            "round {round} (contextTokens {context}): {response}"
        );
    }
    client.assert_clean_stdout();
}
