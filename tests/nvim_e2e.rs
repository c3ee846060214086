//! The Neovim plugin (editors/nvim) in a real headless Neovim: against this build of the
//! server and the tiny fixture model (ghost text, accepting, keys falling back, docstrings,
//! chat, health, status), and against a scripted in-process server. The Lua runners in
//! editors/nvim/tests do the work; these tests give them a clean environment, a time limit
//! and the exit code.
//!
//! Neovim comes from the `NVIM` environment variable (a 0.11+ binary); without it the test
//! is skipped with a message, since not every machine has Neovim.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("codellama-nvim-e2e-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nvim() -> Option<PathBuf> {
    let Some(path) = std::env::var_os("NVIM").filter(|p| !p.is_empty()) else {
        println!(
            "skipped: NVIM not set; run `NVIM=$(bash ../shared/tools/setup-neovim.sh | tail -n1) cargo test --test nvim_e2e`"
        );
        return None;
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        println!(
            "skipped: NVIM={} is missing; run `NVIM=$(bash ../shared/tools/setup-neovim.sh | tail -n1) cargo test --test nvim_e2e`",
            path.display()
        );
        return None;
    }
    Some(path)
}

/// Reads a pipe to the end on a thread, so that a chatty child never blocks on it.
fn drain(pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs one Lua runner of editors/nvim/tests in a headless Neovim with a clean
/// environment (temp HOME and XDG dirs, offline Hugging Face cache) and asserts that it
/// exits 0 in time, printing its output either way.
fn run_runner(nvim: &Path, runner: &str, extra_env: &[(&str, &std::ffi::OsStr)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let runner = root.join("editors/nvim/tests").join(runner);
    let temp = TempDir::new();
    let home = temp.0.join("home");
    let xdg = |name: &str| temp.0.join(name);
    for dir in [
        &home,
        &xdg("config"),
        &xdg("data"),
        &xdg("state"),
        &xdg("cache"),
        &xdg("hf"),
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }

    let started = Instant::now();
    let mut command = Command::new(nvim);
    command
        .args(["--headless", "--clean", "-n", "-S"])
        .arg(&runner)
        .current_dir(&temp.0)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", xdg("config"))
        .env("XDG_DATA_HOME", xdg("data"))
        .env("XDG_STATE_HOME", xdg("state"))
        .env("XDG_CACHE_HOME", xdg("cache"))
        .env("HF_HOME", xdg("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("NVIM_APPNAME")
        .env_remove("VIMINIT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", nvim.display()));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    let Some(status) = status else {
        panic!(
            "{} did not finish within {TIMEOUT:?}; killed\n{output}",
            runner.display()
        );
    };
    assert!(
        status.success(),
        "{} failed ({status})\n{output}",
        runner.display()
    );
    println!("{output}");
    println!("{} took {:.1?}", runner.display(), started.elapsed());
}

/// The plugin against this build of the server and the tiny fixture model.
#[test]
fn neovim_plugin_against_the_server() {
    let Some(nvim) = nvim() else {
        return;
    };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/codellama-lsp-tiny-q8_0.gguf");
    assert!(model.is_file(), "fixture missing: {}", model.display());
    let binary = std::ffi::OsStr::new(env!("CARGO_BIN_EXE_codellama-lsp"));
    run_runner(
        &nvim,
        "e2e.lua",
        &[
            ("CODELLAMA_LSP_BIN", binary),
            ("CODELLAMA_TEST_MODEL", model.as_os_str()),
        ],
    );
}

/// The plugin's ghost text and commands against a scripted in-process server: several
/// words, lines and items, ranges, slow answers (what the fixture model never produces).
#[test]
fn neovim_plugin_against_a_scripted_server() {
    let Some(nvim) = nvim() else {
        return;
    };
    run_runner(&nvim, "ui.lua", &[]);
}
