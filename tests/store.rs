//! Models from a hub: downloads into the Hugging Face cache through a fake hub on 127.0.0.1
//! (`HF_ENDPOINT`), offline use of the cache, and every failure with one clear message and no
//! damaged file left behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use support::fake_hub::{Behaviour, COMMIT, FakeHub};
use support::{LspClient, scratch_dir};

const REPO: &str = "acme/tiny-code-GGUF";
const FILE: &str = "tiny-q8_0.gguf";

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(support::fixture_model()).expect("the committed fixture")
}

/// Runs the CLI against `hub` with the cache in `home`.
fn cli(args: &[&str], hub: Option<&FakeHub>, home: &Path, offline: bool) -> Output {
    let mut command = Command::new(support::binary());
    command
        .args(args)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0");
    match hub {
        Some(hub) => command.env("HF_ENDPOINT", &hub.endpoint),
        None => command.env("HF_ENDPOINT", "http://127.0.0.1:9"),
    };
    if offline {
        command.env("HF_HUB_OFFLINE", "1");
    } else {
        command.env_remove("HF_HUB_OFFLINE");
    }
    command.output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// No usable-looking model file is in the cache: no snapshot entry, no complete blob (lock files
/// and, after a broken connection, hf-hub's resumable `.sync.part` may remain).
fn assert_no_model_in_cache(home: &Path) {
    for file in files_under(home) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".lock") || name.ends_with(".sync.part"),
            "left in the cache: {}",
            file.display()
        );
    }
}

#[test]
fn pull_downloads_verifies_and_is_then_served_from_the_cache_offline() {
    let hub = FakeHub::start();
    let bytes = fixture_bytes();
    hub.publish(REPO, FILE, bytes.clone(), Behaviour::Serve);
    let home = scratch_dir("pull");
    let spec = format!("{REPO}:{FILE}");

    let output = cli(&["models", "pull", &spec], Some(&hub), &home, false);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("downloading"),
        "{}",
        stderr(&output)
    );
    let path = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    let expected = home
        .join("hub/models--acme--tiny-code-GGUF/snapshots")
        .join(COMMIT)
        .join(FILE);
    assert_eq!(path, expected);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Offline, and even with the hub gone, the cached file is used without any request.
    let before = hub.requests.load(Ordering::SeqCst);
    let output = cli(&["models", "info", &spec, "--json"], None, &home, true);
    assert!(output.status.success(), "{}", stderr(&output));
    let info: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["infill"], true);
    assert_eq!(info["vocab_size"], 32016);
    assert_eq!(hub.requests.load(Ordering::SeqCst), before);

    let output = cli(&["models", "list"], None, &home, true);
    let listing = String::from_utf8(output.stdout).unwrap();
    assert!(
        listing.contains(&spec) && listing.contains("yes"),
        "{listing}"
    );
    let output = cli(&["models", "verify", &spec], None, &home, true);
    let verdict = String::from_utf8(output.stdout).unwrap();
    assert!(
        verdict.contains("matches the published checksum"),
        "{verdict}"
    );

    // A damaged cached file is caught by verify (exit 1).
    let blob = std::fs::canonicalize(&path).unwrap();
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&blob, damaged).unwrap();
    let output = cli(&["models", "verify", &spec], None, &home, true);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("does not match the published"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn failures_say_what_happened_and_leave_no_model_file() {
    let hub = FakeHub::start();
    let bytes = fixture_bytes();
    hub.publish(REPO, "corrupt.gguf", bytes.clone(), Behaviour::Corrupt);
    hub.publish(REPO, "gated.gguf", bytes.clone(), Behaviour::Unauthorized);
    let cases = [
        (
            format!("{REPO}:missing.gguf"),
            Some(&hub),
            false,
            "was not found on",
        ),
        (
            "nobody/nothing:x.gguf".to_owned(),
            Some(&hub),
            false,
            "was not found on",
        ),
        (
            format!("{REPO}:corrupt.gguf"),
            Some(&hub),
            false,
            "does not match its published checksum",
        ),
        (format!("{REPO}:gated.gguf"), Some(&hub), false, "HF_TOKEN"),
        (
            format!("{REPO}:{FILE}"),
            None,
            false,
            "cannot reach http://127.0.0.1:9",
        ),
        (
            format!("{REPO}:{FILE}"),
            Some(&hub),
            true,
            "HF_HUB_OFFLINE is set",
        ),
    ];
    for (spec, hub, offline, expected) in cases {
        let home = scratch_dir("fail");
        let output = cli(&["models", "pull", &spec], hub, &home, offline);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{spec}: {message}");
        assert!(
            message.contains(expected),
            "{spec}: expected {expected:?} in {message}"
        );
        assert!(!message.contains("panicked"), "{message}");
        assert!(output.stdout.is_empty());
        assert_no_model_in_cache(&home);
    }
    // Offline and unreachable failures say how to use a file from elsewhere.
    let home = scratch_dir("fail");
    let output = cli(
        &["models", "pull", &format!("{REPO}:{FILE}")],
        None,
        &home,
        false,
    );
    assert!(stderr(&output).contains("--model /path/to/file.gguf"));
}

#[test]
fn a_broken_download_resumes_and_then_completes() {
    let hub = FakeHub::start();
    let bytes = fixture_bytes();
    hub.publish(REPO, FILE, bytes.clone(), Behaviour::CutAfter(100_000));
    let home = scratch_dir("resume");
    let spec = format!("{REPO}:{FILE}");
    let output = cli(&["models", "pull", &spec], Some(&hub), &home, false);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("run it again to resume"),
        "{}",
        stderr(&output)
    );
    assert_no_model_in_cache(&home);

    hub.set_behaviour(REPO, FILE, Behaviour::Serve);
    let output = cli(&["models", "pull", &spec], Some(&hub), &home, false);
    assert!(output.status.success(), "{}", stderr(&output));
    let path = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    assert_eq!(std::fs::read(path).unwrap(), bytes);
}

#[test]
fn the_server_downloads_a_hub_model_with_progress_then_loads_it_offline_from_the_cache() {
    let hub = FakeHub::start();
    hub.publish(REPO, FILE, fixture_bytes(), Behaviour::Serve);
    let home = scratch_dir("serve");
    let home_text = home.display().to_string();
    let spec = format!("{REPO}:{FILE}");
    let capabilities = json!({"window": {"workDoneProgress": true}});

    let online = [
        ("HF_ENDPOINT", hub.endpoint.as_str()),
        ("HF_HOME", home_text.as_str()),
        ("HF_HUB_OFFLINE", "0"),
    ];
    let mut client = LspClient::with_model_and_env(
        &spec,
        json!({"maxTokens": 4}),
        capabilities.clone(),
        &online,
    );
    let progress = client.notifications("$/progress");
    let begin = progress
        .iter()
        .find(|p| p["params"]["value"]["kind"] == "begin")
        .unwrap_or_else(|| panic!("no progress: {progress:?}"));
    assert!(
        begin["params"]["value"]["title"]
            .as_str()
            .unwrap()
            .contains(FILE),
        "{begin}"
    );
    let messages = client.notifications("window/showMessage");
    assert!(
        messages.iter().any(|m| m["params"]["message"]
            .as_str()
            .unwrap()
            .contains("downloading")),
        "{messages:?}"
    );
    assert_eq!(complete_once(&mut client), 1);
    // The status moved forward only: starting → downloading → loading → ready (a fast download
    // may skip states between reports, never go back).
    client.wait_for_matching("codellama/status", |p| p["state"] == "ready");
    let order = ["starting", "downloading", "loading", "ready"];
    let states: Vec<usize> = client
        .notifications("codellama/status")
        .iter()
        .map(|m| {
            let state = m["params"]["state"].as_str().unwrap();
            order
                .iter()
                .position(|s| *s == state)
                .unwrap_or_else(|| panic!("{m}"))
        })
        .collect();
    assert!(states.windows(2).all(|w| w[0] <= w[1]), "{states:?}");
    assert!(client.shutdown().success());

    // Restarted offline with the hub gone: straight from the cache.
    let requests = hub.requests.load(Ordering::SeqCst);
    let offline = [
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ("HF_HOME", home_text.as_str()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let client = LspClient::with_model_and_env(&spec, json!({}), capabilities, &offline);
    assert!(client.notifications("window/showMessage").iter().all(|m| {
        !m["params"]["message"]
            .as_str()
            .unwrap()
            .contains("downloading")
    }));
    assert_eq!(hub.requests.load(Ordering::SeqCst), requests);
    assert!(client.shutdown().success());
}

#[test]
fn without_any_configuration_the_default_model_is_used_and_offline_says_what_to_do() {
    let (mut client, _) = LspClient::initialized(json!({}));
    let message = client.wait_for_matching("window/showMessage", |p| p["type"] == 1);
    let text = message["params"]["message"].as_str().unwrap();
    assert!(text.contains("CodeLlama-7B-Instruct-GGUF"), "{text}");
    assert!(text.contains("--model /path/to/file.gguf"), "{text}");
    assert!(client.shutdown().success());
}

#[test]
fn replacing_the_model_file_reloads_it_and_a_broken_file_keeps_the_old_one() {
    let dir = scratch_dir("reload");
    let model = dir.join("model.gguf");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    std::fs::copy(fixtures.join("codellama-lsp-tiny-q8_0.gguf"), &model).unwrap();
    let mut client = LspClient::with_model(
        &model.display().to_string(),
        json!({"maxTokens": 4}),
        json!({}),
    );
    let mentions = |params: &Value, text: &str| {
        params["message"]
            .as_str()
            .is_some_and(|message| message.contains(text))
    };

    // A broken file (a copy cut short): the old model keeps serving.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..100_000]).unwrap();
    let warning = client.wait_for_matching("window/showMessage", |p| {
        mentions(p, "still serving the previous model")
    });
    assert_eq!(warning["params"]["type"], 2, "{warning}");
    assert_eq!(complete_once(&mut client), 1);

    // A good new file, renamed into place as download tools do: the server switches to it.
    let incoming = dir.join("incoming.tmp");
    std::fs::copy(fixtures.join("codellama-lsp-tiny-f16.gguf"), &incoming).unwrap();
    std::fs::rename(&incoming, &model).unwrap();
    client.wait_for_matching("window/showMessage", |p| {
        mentions(p, "now serving codellama-lsp tiny F16")
    });
    assert_eq!(complete_once(&mut client), 1);
    assert!(client.shutdown().success());
}

/// Asks for one inline completion in a small Python file; returns how many items came back.
fn complete_once(client: &mut LspClient) -> usize {
    client.open("file:///a.py", "python", "def f():\n    return ");
    let response = client.call(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": "file:///a.py"}, "position": {"line": 1, "character": 11},
               "context": {"triggerKind": 1}}),
    );
    response["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .len()
}

#[test]
fn models_info_describes_every_shared_fixture() {
    let Some(dir) =
        support::shared_fixture("README.md").and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return; // skipped, the reason printed by shared_fixture
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "gguf") {
            continue;
        }
        seen += 1;
        let home = scratch_dir("info");
        let file = path.display().to_string();
        let output = cli(&["models", "info", &file, "--json"], None, &home, true);
        assert!(output.status.success(), "{file}: {}", stderr(&output));
        let info: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(info["architecture"], "llama", "{file}");
        assert!(
            info["vocab_size"].as_u64().unwrap() >= 32000,
            "{file}: {info}"
        );
        assert!(info["quant_types"].is_object(), "{file}");
        let code_llama = file.contains("codellama");
        assert_eq!(info["infill"], code_llama, "{file}: {info}");
        if code_llama {
            assert_eq!(
                info["fim_tokens"],
                json!({"family": "code-llama", "prefix": 32007, "suffix": 32008, "middle": 32009,
                       "pieces": ["▁<PRE>", "▁<SUF>", "▁<MID>"]})
            );
        }
        let text = cli(&["models", "info", &file], None, &home, true);
        let text = String::from_utf8(text.stdout).unwrap();
        for field in ["architecture:", "vocabulary:", "quantization:", "infill:"] {
            assert!(text.contains(field), "{file}: {text}");
        }
    }
    assert!(
        seen >= 4,
        "expected the shared GGUF fixtures in {}",
        dir.display()
    );
}
