//! The remote backend, end to end: the real binary against a REAL llama.cpp `llama-server`
//! (skipped, saying why, when it is not built) and against a scripted server with vLLM's API
//! shape, which also plays every failure: HTTP errors, slowness, broken and cut streams, no server.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fake_openai::{Behaviour, FakeOpenAi, MODEL_ID};
use support::llama_server::{self, LlamaServer};
use support::{LspClient, fixture_model, shared_fixture};

const HOLE: &str = "def fibonacci(n):\n    <FILL_ME>\n    return result\n";

fn run(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(support::binary());
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn complete(model: Option<&Path>, backend: Option<&str>, extra: &[&str]) -> Output {
    let model = model.map(|m| m.display().to_string());
    let mut args = vec!["complete", "--stdin", "--json", "--max-tokens", "16"];
    if let Some(model) = &model {
        args.extend(["--model", model.as_str()]);
    }
    if let Some(backend) = backend {
        args.extend(["--backend", backend]);
    }
    args.extend(extra);
    run(&args, HOLE, &[])
}

// ---------------------------------------------------------------------------------------------
// A real llama-server

fn real_server() -> Option<(LlamaServer, PathBuf)> {
    let binary = llama_server::binary()?;
    let model = shared_fixture("codellama-tiny-random.gguf")?;
    Some((LlamaServer::start(&binary, &model), model))
}

#[test]
fn llama_server_gets_the_same_prompt_ids_and_gives_the_same_greedy_completion() {
    let Some((server, model)) = real_server() else {
        return;
    };
    let local = json_of(&complete(Some(&model), None, &[]));
    let remote = json_of(&complete(Some(&model), Some(&server.url), &[]));
    assert_eq!(remote["prompt_ids"], local["prompt_ids"]);
    assert_eq!(remote["ids"], local["ids"], "greedy ids differ");
    assert_eq!(remote["text"], local["text"]);
    assert_eq!(remote["raw"], local["raw"]);
    assert!(!local["raw"].as_str().unwrap().is_empty(), "{local}");

    // The server evaluates exactly our ids: no BOS added, nothing re-tokenized.
    let ids = local["prompt_ids"].clone();
    let (status, answer) = server.post(
        "/completion",
        &json!({"prompt": ids, "n_predict": 1, "temperature": 0, "top_k": 1, "return_tokens": true}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["tokens_evaluated"].as_u64(),
        Some(ids.as_array().unwrap().len() as u64),
        "{answer}"
    );
    assert_eq!(answer["tokens"][0], local["ids"][0], "{answer}");
    // And it tokenizes text as we do (what the vocabulary check at connect time relies on).
    let (_, tokens) = server.post(
        "/tokenize",
        &json!({"content": "def fibonacci(n):\n    return n", "add_special": false}),
    );
    let ours = run(
        &["tokenize", "--model", &model.display().to_string()],
        "def fibonacci(n):\n    return n",
        &[],
    );
    let ours: Value = serde_json::from_slice(&ours.stdout).unwrap();
    let ours: Vec<Value> = ours.as_array().unwrap().iter().skip(1).cloned().collect(); // BOS
    assert_eq!(tokens["tokens"], json!(ours));
}

#[test]
fn llama_server_names_its_model_file_so_no_model_setting_is_needed() {
    let Some((server, model)) = real_server() else {
        return;
    };
    let remote = json_of(&complete(None, Some(&server.url), &[]));
    assert!(!remote["prompt_ids"].as_array().unwrap().is_empty());
    // An OpenAI-style text prompt reaches the same server too (tokenized again there: lossy,
    // which is why ids are sent wherever the server takes them).
    let text = json_of(&complete(
        Some(&model),
        Some(&format!("openai:{}/v1", server.url)),
        &["--remote-model", "any"],
    ));
    assert!(text["ids"].as_array().unwrap().is_empty());
    assert!(!text["raw"].as_str().unwrap().is_empty(), "{text}");
}

#[test]
fn a_vocabulary_that_is_not_the_servers_is_reported() {
    let Some((server, _)) = real_server() else {
        return;
    };
    // The project's fixture has its own vocabulary; the server runs Code Llama's.
    let other = fixture_model();
    let output = complete(Some(Path::new(&other)), Some(&server.url), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tokenizes text differently") && stderr.contains("set \"tokenizer\""),
        "{stderr}"
    );
}

#[test]
fn the_language_server_completes_through_llama_server_as_it_does_locally() {
    let Some((server, model)) = real_server() else {
        return;
    };
    let model = model.display().to_string();
    let text = "def fibonacci(n):\n    if n < 2:\n        return n\n    \n";
    let ask = |client: &mut LspClient| {
        client.open("file:///w/fib.py", "python", text);
        client.call(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": "file:///w/fib.py"}, "position": {"line": 3, "character": 4},
                   "context": {"triggerKind": 1}}),
        )["result"]
            .clone()
    };
    let options = json!({"maxTokens": 12, "deadlineMs": 30000});
    let mut local = LspClient::with_model(&model, options.clone(), json!({}));
    let expected = ask(&mut local);
    assert!(
        expected[0]["insertText"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "the local model suggests something: {expected}"
    );
    let mut remote_options = options;
    remote_options["backend"] = json!({"url": server.url, "kind": "llama-server"});
    let mut remote = LspClient::with_model(&model, remote_options, json!({}));
    let status = remote.call("codellama/status", json!({}))["result"].clone();
    assert_eq!(status["state"], "ready", "{status}");
    assert!(
        status["model"]
            .as_str()
            .unwrap()
            .contains("via llama-server at http://127.0.0.1"),
        "{status}"
    );
    let answer = ask(&mut remote);
    assert_eq!(answer, expected);
    // The docstring action goes through the same path.
    let docstring = remote.call(
        "workspace/executeCommand",
        json!({"command": "codellama.generateDocstring",
               "arguments": [{"uri": "file:///w/fib.py", "position": {"line": 0, "character": 5}}]}),
    );
    assert!(docstring.get("error").is_none(), "{docstring}");
    local.assert_clean_stdout();
    remote.assert_clean_stdout();
    assert_eq!(remote.shutdown().code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// vLLM's API shape, scripted

#[test]
fn vllm_gets_token_ids_its_model_name_stop_ids_and_the_key() {
    let fake = FakeOpenAi::start(Behaviour::Answer(vec!["    result = ".into(), "n".into()]));
    let model = fixture_model();
    let backend = format!("vllm:{}", fake.url);
    let output = run(
        &[
            "complete",
            "--stdin",
            "--json",
            "--max-tokens",
            "16",
            "--model",
            &model,
            "--backend",
            &backend,
            "--api-key-env",
            "TEAM_KEY",
        ],
        HOLE,
        &[("TEAM_KEY", "s3cret-key")],
    );
    let answer = json_of(&output);
    assert_eq!(answer["raw"], "    result = n", "{answer}");
    let sent = fake.completions();
    assert_eq!(sent.len(), 1);
    let body = &sent[0].body;
    assert_eq!(
        body["prompt"], answer["prompt_ids"],
        "the prompt goes as ids"
    );
    assert_eq!(
        body["model"], MODEL_ID,
        "the model name comes from /v1/models"
    );
    assert_eq!(body["max_tokens"], 16);
    assert_eq!(body["stream"], true);
    assert!(
        !body["stop_token_ids"].as_array().unwrap().is_empty(),
        "{body}"
    );
    assert_eq!(sent[0].header("authorization"), Some("Bearer s3cret-key"));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!printed.contains("s3cret"), "the key leaked: {printed}");
    // A missing key variable is said plainly, before anything is sent.
    let output = run(
        &[
            "complete",
            "--stdin",
            "--model",
            &model,
            "--backend",
            &backend,
            "--api-key-env",
            "NO_SUCH_VAR_FOR_TEST",
        ],
        HOLE,
        &[],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("NO_SUCH_VAR_FOR_TEST"));
}

#[test]
fn every_server_failure_is_a_clear_error_on_the_command_line() {
    let fake = FakeOpenAi::start(Behaviour::Answer(vec![]));
    let model = fixture_model();
    let backend = format!("vllm:{}", fake.url);
    let cases = [
        (
            Behaviour::Status(500, r#"{"error":{"message":"CUDA out of memory"}}"#.into()),
            "HTTP 500: CUDA out of memory",
        ),
        (Behaviour::Status(401, String::new()), "API key"),
        (Behaviour::Malformed, "not JSON"),
        (
            Behaviour::Truncated,
            "closed the stream before the answer ended",
        ),
    ];
    for (behaviour, expected) in cases {
        fake.set(behaviour.clone());
        let output = run(
            &[
                "complete",
                "--stdin",
                "--model",
                &model,
                "--backend",
                &backend,
            ],
            HOLE,
            &[],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{behaviour:?}: {stderr}");
        assert!(stderr.contains(expected), "{behaviour:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Nothing listening: the server is not there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = run(
        &[
            "complete",
            "--stdin",
            "--model",
            &model,
            "--backend",
            &format!("http://127.0.0.1:{port}"),
        ],
        HOLE,
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

fn remote_client(fake: &FakeOpenAi, timeout_ms: u64) -> LspClient {
    let options = json!({
        "backend": {"url": fake.url, "kind": "vllm", "timeoutMs": timeout_ms},
        "tokenizer": fixture_model(),
        "maxTokens": 16,
        "deadlineMs": 20000,
    });
    // `model` is the tokenizer's file too: with a remote backend only its vocabulary is read.
    LspClient::with_model(&fixture_model(), options, json!({}))
}

fn inline_text(client: &mut LspClient) -> Value {
    let response = client.call(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": "file:///w/a.py"}, "position": {"line": 1, "character": 4},
               "context": {"triggerKind": 1}}),
    );
    assert!(
        response.get("error").is_none(),
        "a failing server is not an error: {response}"
    );
    response["result"].clone()
}

#[test]
fn a_failing_server_gives_empty_answers_one_message_a_minute_and_is_tried_again() {
    let fake = FakeOpenAi::start(Behaviour::Status(
        503,
        r#"{"error":{"message":"overloaded"}}"#.into(),
    ));
    let mut client = remote_client(&fake, 2000);
    client.open("file:///w/a.py", "python", "def add(a, b):\n    \n");
    for _ in 0..3 {
        assert_eq!(inline_text(&mut client), json!([]));
    }
    // A broken stream and a slow server count the same: empty answers, no second message.
    fake.set(Behaviour::Malformed);
    assert_eq!(inline_text(&mut client), json!([]));
    fake.set(Behaviour::Slow(Duration::from_secs(4), vec!["late".into()]));
    let start = Instant::now();
    assert_eq!(inline_text(&mut client), json!([]));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the timeout did not cut the wait"
    );
    let messages: Vec<String> = client
        .notifications("window/showMessage")
        .iter()
        .map(|m| m["params"]["message"].as_str().unwrap_or("").to_owned())
        .filter(|m| m.contains("no completion"))
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("HTTP 503: overloaded"), "{messages:?}");
    // The server is back: the next request uses it.
    fake.set(Behaviour::Answer(vec!["return a + b".into()]));
    let items = inline_text(&mut client);
    assert_eq!(items[0]["insertText"], "return a + b", "{items}");
    assert_eq!(
        fake.completions().len(),
        6,
        "one request each, never a retry loop"
    );
    client.assert_clean_stdout();
    assert_eq!(client.shutdown().code(), Some(0));
}

#[test]
fn a_cancelled_request_closes_its_http_request() {
    let fake = FakeOpenAi::start(Behaviour::Slow(Duration::from_secs(30), vec!["x".into()]));
    let mut client = remote_client(&fake, 60_000);
    client.open("file:///w/a.py", "python", "def add(a, b):\n    \n");
    let id = client.request(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": "file:///w/a.py"}, "position": {"line": 1, "character": 4},
               "context": {"triggerKind": 1}}),
    );
    let wait = Instant::now() + Duration::from_secs(10);
    while fake.completions().is_empty() {
        assert!(
            Instant::now() < wait,
            "the request never reached the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    client.notify("$/cancelRequest", json!({"id": id}));
    let response = client.response(&json!(id));
    assert!(start.elapsed() < Duration::from_secs(5), "{response}");
    // The server side sees the connection close: it would stop generating.
    while fake.abandoned.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the HTTP request stayed open after the cancel"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client.assert_clean_stdout();
}
