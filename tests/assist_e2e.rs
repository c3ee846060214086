//! Docstrings and chat edits end to end over stdio, with the project's tiny fixture model: the
//! action is listed, running it streams `$/progress` and ends in one versioned
//! `workspace/applyEdit` at the right place; cancelled or outdated work changes nothing.

mod support;

use std::time::Duration;

use codellama_lsp::actions::Language;
use codellama_lsp::actions::target::{self, Lookup};
use serde_json::{Value, json};
use support::{LspClient, error_code};

const URI: &str = "file:///work/shapes.py";

const SHAPES: &str = "import math\n\n\nclass Circle:\n    def __init__(self, radius):\n        self.radius = radius\n\n    def area(self):\n        return math.pi * self.radius ** 2\n";

/// A client that can do everything the actions use.
fn capabilities() -> Value {
    json!({
        "window": {"workDoneProgress": true},
        "workspace": {"workspaceEdit": {"documentChanges": true}},
        "textDocument": {"codeAction": {
            "codeActionLiteralSupport": {"codeActionKind": {"valueSet": ["refactor.rewrite", ""]}},
            "resolveSupport": {"properties": ["edit"]}
        }}
    })
}

fn start(options: Value) -> LspClient {
    LspClient::with_model(&support::fixture_model(), options, capabilities())
}

fn code_actions(client: &mut LspClient, range: Value) -> Vec<Value> {
    let response = client.call(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": URI}, "range": range, "context": {"diagnostics": []}}),
    );
    response["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .clone()
}

fn mentions(params: &Value, text: &str) -> bool {
    params["message"].as_str().is_some_and(|m| m.contains(text))
}

fn point(line: u32, character: u32) -> Value {
    json!({"line": line, "character": character})
}

/// Applies LSP text edits (in UTF-16 positions; the texts here are ASCII) to `text`.
fn apply_edits(text: &str, edits: &[Value]) -> String {
    let offset = |position: &Value| {
        let line = position["line"].as_u64().unwrap() as usize;
        let character = position["character"].as_u64().unwrap() as usize;
        let line_start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
        line_start + character
    };
    let mut sorted: Vec<&Value> = edits.iter().collect();
    sorted.sort_by_key(|edit| std::cmp::Reverse(offset(&edit["range"]["start"])));
    let mut result = text.to_owned();
    for edit in sorted {
        let (start, end) = (
            offset(&edit["range"]["start"]),
            offset(&edit["range"]["end"]),
        );
        result.replace_range(start..end, edit["newText"].as_str().unwrap());
    }
    result
}

/// The text edits of the one document change in a `workspace/applyEdit` request.
fn document_edits(apply: &Value, version: i64) -> Vec<Value> {
    let changes = apply["params"]["edit"]["documentChanges"]
        .as_array()
        .unwrap_or_else(|| panic!("not a versioned edit: {apply}"));
    assert_eq!(changes.len(), 1, "{apply}");
    assert_eq!(changes[0]["textDocument"]["uri"], URI);
    assert_eq!(changes[0]["textDocument"]["version"], version, "{apply}");
    changes[0]["edits"].as_array().unwrap().clone()
}

#[test]
fn the_docstring_action_is_listed_and_running_it_inserts_a_well_formed_docstring() {
    let mut client = start(json!({}));
    client.open(URI, "python", SHAPES);

    // Inside `area`: the docstring action, and nothing for a selection-less cursor.
    let actions = code_actions(
        &mut client,
        json!({"start": point(8, 12), "end": point(8, 12)}),
    );
    let titles: Vec<&str> = actions.iter().filter_map(|a| a["title"].as_str()).collect();
    assert_eq!(titles, ["Generate docstring for `area`"], "{actions:?}");
    let action = actions[0].clone();
    assert_eq!(action["kind"], "refactor.rewrite");
    assert!(action.get("edit").is_none(), "listing must not generate");

    // Outside any definition: no docstring action.
    let none = code_actions(
        &mut client,
        json!({"start": point(0, 3), "end": point(0, 3)}),
    );
    assert!(none.is_empty(), "{none:?}");

    let resolved = client.call("codeAction/resolve", action);
    let command = resolved["result"]["command"].clone();
    assert_eq!(
        command["command"], "codellama.generateDocstring",
        "{resolved}"
    );

    let response = client.call(
        "workspace/executeCommand",
        json!({"command": command["command"], "arguments": command["arguments"]}),
    );
    assert_eq!(response["result"]["applied"], true, "{response}");
    assert_eq!(response["result"]["name"], "area");

    let apply = client.wait_for("workspace/applyEdit");
    let edits = document_edits(&apply, 1);
    assert_eq!(edits.len(), 1);
    // Inserted as the first statement of the body, at the body's indentation.
    assert_eq!(edits[0]["range"]["start"], point(8, 0));
    assert_eq!(edits[0]["range"]["end"], point(8, 0));
    let inserted = edits[0]["newText"].as_str().unwrap();
    assert!(inserted.starts_with("        \"\"\""), "{inserted:?}");
    assert!(inserted.ends_with("\"\"\"\n"), "{inserted:?}");
    let result = apply_edits(SHAPES, &edits);
    let tree = Language::Python.parse(&result).unwrap();
    assert!(!tree.root_node().has_error(), "not valid Python:\n{result}");
    let area = result.find("return math.pi").unwrap();
    assert!(
        matches!(
            target::find(Language::Python, &result, area),
            Lookup::Documented { .. }
        ),
        "{result}"
    );

    // Progress was reported from begin to end, with the streamed text in between.
    let progress = client.notifications("$/progress");
    let kinds: Vec<&str> = progress
        .iter()
        .filter_map(|p| p["params"]["value"]["kind"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"begin"), "{progress:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{progress:?}");
    assert!(progress.iter().any(|p| {
        p["params"]["value"]["title"]
            .as_str()
            .is_some_and(|t| t.contains("docstring"))
    }));
    assert!(client.shutdown().success());
}

#[test]
fn documented_definitions_get_no_action_and_the_command_says_why() {
    let text = "def f(x):\n    \"\"\"Doubles x.\"\"\"\n    return 2 * x\n";
    let mut client = start(json!({}));
    client.open(URI, "python", text);
    let actions = code_actions(
        &mut client,
        json!({"start": point(2, 5), "end": point(2, 5)}),
    );
    assert!(actions.is_empty(), "{actions:?}");
    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "codellama.generateDocstring",
               "arguments": [{"uri": URI, "position": point(2, 5)}]}),
    );
    assert!(
        response["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already has documentation")),
        "{response}"
    );
    let shown = client.wait_for_matching("window/showMessage", |p| mentions(p, "documentation"));
    assert!(
        mentions(&shown["params"], "`f` already has documentation"),
        "{shown}"
    );
    assert!(client.notifications("workspace/applyEdit").is_empty());
    // Bad arguments are an error reply, never a crash.
    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "codellama.editSelection", "arguments": [{"uri": 5}]}),
    );
    assert_eq!(error_code(&response), Some(-32602), "{response}");
    assert!(client.shutdown().success());
}

const ADD: &str = "def add(a, b):\n    total = a + b\n    return total\n\n\nprint(add(1, 2))\n";

#[test]
fn an_edit_command_changes_only_the_selected_range() {
    let mut client = start(json!({}));
    client.open(URI, "python", ADD);
    let range = json!({"start": point(0, 0), "end": point(3, 0)});
    let actions = code_actions(&mut client, range.clone());
    let titles: Vec<&str> = actions.iter().filter_map(|a| a["title"].as_str()).collect();
    assert!(titles.contains(&"Edit with instruction…"), "{titles:?}");
    assert!(titles.contains(&"Add type annotations"), "{titles:?}");
    assert!(titles.contains(&"Explain this code"), "{titles:?}");

    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "codellama.editSelection",
               "arguments": [{"uri": URI, "range": range, "instruction": "rename total to result"}]}),
    );
    // A random-weight model writes nonsense, but it must land inside the selection only.
    match response.get("result") {
        Some(result) if result["applied"] == true => {
            let apply = client.wait_for("workspace/applyEdit");
            let edits = document_edits(&apply, 1);
            for edit in &edits {
                assert!(
                    edit["range"]["end"]["line"].as_u64().unwrap() <= 3,
                    "{edit}"
                );
            }
            let result = apply_edits(ADD, &edits);
            assert!(result.ends_with("\n\nprint(add(1, 2))\n"), "{result}");
        }
        _ => {
            // An unusable answer is reported, and nothing is applied.
            assert!(response.get("error").is_some(), "{response}");
            assert!(client.notifications("workspace/applyEdit").is_empty());
        }
    }
    // Without an instruction (a client that did not ask the user for one): a clear error.
    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "codellama.editSelection", "arguments": [{"uri": URI, "range": range}]}),
    );
    assert!(
        response["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("instruction")),
        "{response}"
    );
    assert!(client.shutdown().success());
}

/// A long file to select: the random model then writes thousands of tokens (it never closes the
/// fence), which leaves time to cancel or to edit the document meanwhile.
fn long_source() -> String {
    (0..150)
        .map(|i| format!("def f{i}(x):\n    return x * {i} + {i}\n\n"))
        .collect()
}

fn start_long_edit(client: &mut LspClient, text: &str, token: &str) -> i64 {
    client.open(URI, "python", text);
    let lines = text.lines().count() as u32;
    client.request(
        "workspace/executeCommand",
        json!({"command": "codellama.editSelection",
               "workDoneToken": token,
               "arguments": [{"uri": URI,
                              "range": {"start": point(0, 0), "end": point(lines, 0)},
                              "instruction": "add type hints"}]}),
    )
}

/// Waits until the server has reported streamed text for `token`.
fn wait_for_streaming(client: &mut LspClient, token: &str) {
    client.wait_for_matching("$/progress", |p| {
        p["token"] == token && p["value"]["kind"] == "report"
    });
}

#[test]
fn cancelling_mid_stream_leaves_the_document_untouched() {
    let mut client = start(json!({"contextTokens": 16384}));
    let text = long_source();
    let id = start_long_edit(&mut client, &text, "edit-1");
    wait_for_streaming(&mut client, "edit-1");
    client.notify("window/workDoneProgress/cancel", json!({"token": "edit-1"}));
    let response = client.response(&json!(id));
    assert_eq!(error_code(&response), Some(-32800), "{response}");
    assert!(client.notifications("workspace/applyEdit").is_empty());
    assert_eq!(client.document(URI)["text"], text);

    // The same through $/cancelRequest; the progress is ended either way.
    let id = start_long_edit(&mut client, &text, "edit-2");
    wait_for_streaming(&mut client, "edit-2");
    client.notify("$/cancelRequest", json!({"id": id}));
    let response = client.response(&json!(id));
    assert_eq!(error_code(&response), Some(-32800), "{response}");
    client.wait_for_matching("$/progress", |p| {
        p["token"] == "edit-2" && p["value"]["kind"] == "end"
    });
    assert!(client.notifications("workspace/applyEdit").is_empty());
    assert_eq!(client.document(URI)["text"], text);
    assert!(client.shutdown().success());
}

#[test]
fn an_answer_for_an_outdated_document_is_not_applied() {
    let mut client = start(json!({"contextTokens": 16384}));
    let text = long_source();
    let id = start_long_edit(&mut client, &text, "edit-3");
    wait_for_streaming(&mut client, "edit-3");
    // The user types while the answer is being written.
    client.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": URI, "version": 2},
               "contentChanges": [{"range": {"start": point(0, 0), "end": point(0, 0)}, "text": "# hi\n"}]}),
    );
    let response = client.response(&json!(id));
    assert_eq!(error_code(&response), Some(-32801), "{response}");
    let message = client.wait_for_matching("window/showMessage", |p| p["type"] == 2);
    assert!(mentions(&message["params"], "changed"), "{message}");
    assert!(client.notifications("workspace/applyEdit").is_empty());
    assert_eq!(client.document(URI)["text"], format!("# hi\n{text}"));
    assert!(client.shutdown().success());
}

#[test]
fn chat_answers_and_remembers_the_session() {
    let mut client = start(json!({}));
    client.open(URI, "python", ADD);
    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "codellama.chat",
               "arguments": [{"sessionId": "s", "message": "What does add do?", "uri": URI,
                              "range": {"start": point(0, 0), "end": point(3, 0)}}]}),
    );
    // The random model's answer is noise, but it is an answer (or a clear error), per session.
    if let Some(result) = response.get("result") {
        assert_eq!(result["sessionId"], "s");
        assert!(result["answer"].is_string());
        // Chat views stream the answer from `codellama/chatStream`; the last one is the answer.
        let last = client.wait_for_matching("codellama/chatStream", |p| p["done"] == true);
        assert_eq!(last["params"]["sessionId"], "s");
        assert_eq!(last["params"]["text"], result["answer"]);
    } else {
        assert!(response["error"]["message"].is_string(), "{response}");
    }
    std::thread::sleep(Duration::from_millis(10));
    assert!(client.shutdown().success());
}

#[test]
fn without_a_model_the_commands_say_what_to_do_and_the_server_stays_up() {
    let (mut client, _) = LspClient::initialized(capabilities());
    client.open(URI, "python", SHAPES);
    // Listing needs no model.
    let actions = code_actions(
        &mut client,
        json!({"start": point(8, 12), "end": point(8, 12)}),
    );
    assert_eq!(actions.len(), 1, "{actions:?}");
    let response = client.call(
        "workspace/executeCommand",
        json!({"command": "codellama.generateDocstring",
               "arguments": [{"uri": URI, "position": point(8, 12)}]}),
    );
    assert!(
        response["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--model")),
        "{response}"
    );
    // No model configured: the default one is not in the (empty, offline) cache.
    let shown = client.wait_for_matching("window/showMessage", |p| {
        p["type"] == 1 && mentions(p, "HF_HUB_OFFLINE")
    });
    assert!(
        mentions(&shown["params"], "--model /path/to/file.gguf"),
        "{shown}"
    );
    assert_eq!(client.document(URI)["text"], SHAPES);
    assert!(client.shutdown().success());
}
