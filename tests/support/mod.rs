//! A small JSON-RPC client that drives the real `codellama-lsp` binary over stdio.
//!
//! A reader thread parses every frame the server writes; anything on stdout that is not a
//! well-formed LSP frame is recorded as a protocol violation and fails the test at the end.
#![allow(dead_code)] // each test file uses a different part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod fake_hub;
pub mod fake_openai;
pub mod llama_server;

/// How long any single wait may take before the test fails with the server's stderr.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct LspClient {
    child: Child,
    stdin: Option<ChildStdin>,
    incoming: Receiver<Value>,
    /// Messages received but not consumed yet (notifications and out-of-order responses).
    pub backlog: Vec<Value>,
    next_id: i64,
    stderr: Arc<Mutex<String>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// The reply to `workspace/applyEdit` requests (an editor that applies them, by default).
    pub apply_edit_reply: Value,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_codellama-lsp")
}

impl LspClient {
    /// Starts the server with `args` (e.g. `["serve", "--stdio"]`). It never reaches the
    /// network: the hub is offline and the model cache is a fresh empty folder, unless `env`
    /// says otherwise.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary());
        command
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HOME", scratch_dir("hf-home"))
            .env_remove("HF_ENDPOINT")
            .env_remove("HF_TOKEN");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .env("RUST_LOG", "codellama_lsp=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the codellama-lsp binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (sender, incoming) = mpsc::channel();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let reader_violations = violations.clone();
        thread::spawn(move || read_frames(stdout, sender, reader_violations));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut log = stderr_sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            incoming,
            backlog: Vec::new(),
            next_id: 1,
            stderr,
            violations,
            apply_edit_reply: json!({"applied": true}),
        }
    }

    /// Starts the server with `model` (plus `options` as initializationOptions) and waits
    /// until the model is loaded.
    pub fn with_model(model: &str, options: Value, capabilities: Value) -> Self {
        Self::with_model_and_env(model, options, capabilities, &[])
    }

    /// [`with_model`](Self::with_model) with extra environment variables for the server.
    pub fn with_model_and_env(
        model: &str,
        options: Value,
        capabilities: Value,
        env: &[(&str, &str)],
    ) -> Self {
        let mut client = Self::spawn_with_env(&["serve", "--stdio"], env);
        let mut init_options = json!({"model": model, "device": "cpu"});
        for (key, value) in options.as_object().expect("options are an object") {
            init_options[key] = value.clone();
        }
        let response = client.call(
            "initialize",
            json!({"processId": null, "capabilities": capabilities, "initializationOptions": init_options}),
        );
        assert!(response.get("result").is_some(), "{response}");
        client.notify("initialized", json!({}));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let messages = client.notifications("window/showMessage");
            if let Some(message) = messages.iter().find(|m| {
                m["params"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("ready")
            }) {
                assert_eq!(message["params"]["type"], 3, "{message}");
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "the model never became ready: {messages:?}"
            );
            let message = client.next_message();
            client.backlog.push(message);
        }
    }

    /// Waits for the first message with `method` (a notification or a request from the server),
    /// taking it out of the backlog.
    pub fn wait_for(&mut self, method: &str) -> Value {
        self.wait_for_matching(method, |_| true)
    }

    /// Waits for the first message with `method` whose params satisfy `wanted`.
    pub fn wait_for_matching(&mut self, method: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let matches = |m: &Value| {
            m.get("method").and_then(Value::as_str) == Some(method) && wanted(&m["params"])
        };
        if let Some(index) = self.backlog.iter().position(matches) {
            return self.backlog.remove(index);
        }
        loop {
            let message = self.next_message();
            if matches(&message) {
                return message;
            }
            self.backlog.push(message);
        }
    }

    /// Spawns the server and completes the `initialize` handshake.
    pub fn initialized(capabilities: Value) -> (Self, Value) {
        let mut client = Self::spawn(&[]);
        let result = client.initialize(capabilities);
        (client, result)
    }

    pub fn initialize(&mut self, capabilities: Value) -> Value {
        let response = self.call(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": capabilities}),
        );
        self.notify("initialized", json!({}));
        response
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("initialize failed: {response}"))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).expect("write to the server");
        stdin.flush().expect("flush to the server");
    }

    pub fn send(&mut self, message: &Value) {
        let body = serde_json::to_vec(message).unwrap();
        let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        frame.extend_from_slice(&body);
        self.send_raw(&frame);
    }

    /// Sends a request and returns its id without waiting.
    pub fn request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and waits for its response message (with `result` or `error`).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        self.response(&json!(id))
    }

    /// Waits for the response to `id`, keeping anything else in the backlog.
    pub fn response(&mut self, id: &Value) -> Value {
        if let Some(index) = self
            .backlog
            .iter()
            .position(|m| m.get("id") == Some(id) && m.get("method").is_none())
        {
            return self.backlog.remove(index);
        }
        loop {
            let message = self.next_message();
            if message.get("id") == Some(id) && message.get("method").is_none() {
                return message;
            }
            self.backlog.push(message);
        }
    }

    /// The next message from the server, answering its requests as a plain client would:
    /// `null` (e.g. progress creation), and `apply_edit_reply` for `workspace/applyEdit`.
    pub fn next_message(&mut self) -> Value {
        match self.incoming.recv_timeout(TIMEOUT) {
            Ok(message) => {
                if message.get("method").is_some()
                    && let Some(id) = message.get("id")
                {
                    let result = if message["method"] == "workspace/applyEdit" {
                        self.apply_edit_reply.clone()
                    } else {
                        Value::Null
                    };
                    let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
                    self.send(&reply);
                }
                message
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no message from the server in {TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the server closed stdout; stderr:\n{}", self.stderr())
            }
        }
    }

    /// Notifications received so far with this method.
    pub fn notifications(&self, method: &str) -> Vec<Value> {
        self.backlog
            .iter()
            .filter(|m| m.get("method").and_then(Value::as_str) == Some(method))
            .cloned()
            .collect()
    }

    pub fn open(&mut self, uri: &str, language: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}),
        );
    }

    /// The server's copy of a document (`codellama/document`).
    pub fn document(&mut self, uri: &str) -> Value {
        let response = self.call("codellama/document", json!({"textDocument": {"uri": uri}}));
        response
            .get("result")
            .cloned()
            .unwrap_or_else(|| panic!("codellama/document failed: {response}"))
    }

    /// Closes stdin (as an editor that goes away does).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for the process to end and checks that stdout carried only LSP frames.
    pub fn wait_exit(mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit; stderr:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.assert_clean_stdout();
        status
    }

    /// Shuts down properly and returns the exit status.
    pub fn shutdown(mut self) -> ExitStatus {
        let response = self.call("shutdown", Value::Null);
        assert_eq!(response.get("result"), Some(&Value::Null), "{response}");
        self.notify("exit", Value::Null);
        self.wait_exit()
    }

    pub fn assert_clean_stdout(&self) {
        // Give the reader thread a moment to see the last bytes.
        thread::sleep(Duration::from_millis(50));
        let violations = self.violations.lock().unwrap();
        assert!(
            violations.is_empty(),
            "stdout carried non-LSP output: {violations:?}"
        );
    }
}

impl Drop for LspClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `Content-Length` frames strictly; anything else is a violation.
fn read_frames(
    stdout: impl Read,
    sender: mpsc::Sender<Value>,
    violations: Arc<Mutex<Vec<String>>>,
) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut length = None;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("unreadable: {error}"));
                    return;
                }
            }
            if line == "\r\n" {
                break;
            }
            match line
                .strip_prefix("Content-Length: ")
                .and_then(|rest| rest.strip_suffix("\r\n"))
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => length = Some(n),
                None => {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("bad header line {line:?}"));
                    return;
                }
            }
        }
        let Some(length) = length else {
            violations
                .lock()
                .unwrap()
                .push("frame without Content-Length".into());
            return;
        };
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            violations.lock().unwrap().push("truncated frame".into());
            return;
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(message) if message.get("jsonrpc") == Some(&json!("2.0")) => {
                if sender.send(message).is_err() {
                    return;
                }
            }
            _ => violations
                .lock()
                .unwrap()
                .push(format!("not JSON-RPC: {}", String::from_utf8_lossy(&body))),
        }
    }
}

/// The error code of a response, if it is an error.
/// A new empty folder under the system's temporary folder, unique to this call.
pub fn scratch_dir(label: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "codellama-test-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// The project's own tiny Code-Llama-shaped model (committed, so always present).
pub fn fixture_model() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/codellama-lsp-tiny-q8_0.gguf")
        .display()
        .to_string()
}

pub fn error_code(response: &Value) -> Option<i64> {
    response.get("error")?.get("code")?.as_i64()
}

/// A file from `../shared/fixtures` (or `$CODELLAMA_SHARED_FIXTURES`), or `None` after printing
/// why the calling test skips (the folder is absent on a user's fresh clone).
pub fn shared_fixture(name: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CODELLAMA_SHARED_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
        });
    let path = dir.join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} not found (../shared/fixtures is absent)",
            path.display()
        );
        None
    }
}

/// SmolLM2-135M-Instruct (a real trained llama-architecture model with a BPE vocabulary), at
/// `$SMOLLM2_GGUF` or where `../shared/tools/get-smollm2.sh` puts it; `None` after printing why
/// the calling test skips.
pub fn smollm2() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("SMOLLM2_GGUF") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?)
            .join(".cache/codellama-lsp-tools/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: SmolLM2 not found at {} (run ../shared/tools/get-smollm2.sh or set SMOLLM2_GGUF)",
            path.display()
        );
        None
    }
}
