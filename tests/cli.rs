//! The command line as scripts use it: exact output shapes, exit codes, clear errors.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(support::binary())
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading stdin (e.g. on a bad model path): a broken pipe here
    // is expected, not a failure.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn assert_clean_failure(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn tokenize_matches_llama_cpp_on_the_shared_code_llama_vocabulary() {
    let Some(model) = support::shared_fixture("codellama-tiny-random.gguf") else {
        return;
    };
    let model = model.to_str().unwrap();
    let cases: [(&[&str], &str, Value); 4] = [
        (&[], " <PRE>", serde_json::json!([1, 29871, 32007])),
        (
            &["--no-bos"],
            "<SUF> <MID> <EOT>",
            serde_json::json!([32008, 32009, 32010]),
        ),
        (&["--no-bos"], "<s>", serde_json::json!([529, 29879, 29958])),
        (&["--infill"], "☺", serde_json::json!([31171])),
    ];
    for (flags, text, expected) in cases {
        let mut args = vec!["tokenize", "--model", model];
        args.extend_from_slice(flags);
        assert_eq!(
            stdout_json(&run(&args, text.as_bytes())),
            expected,
            "{text:?} {flags:?}"
        );
    }
}

#[test]
fn generate_json_has_the_documented_fields_and_is_deterministic() {
    let model = fixture("codellama-lsp-tiny-q8_0.gguf");
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "def fib(n):",
        "--max-tokens",
        "8",
        "--json",
    ];
    let first = stdout_json(&run(&args, b""));
    for field in ["ids", "text", "prompt_tokens", "prefill_ms", "decode_ms"] {
        assert!(first.get(field).is_some(), "missing {field}: {first}");
    }
    assert_eq!(first["ids"].as_array().unwrap().len(), 8);
    let second = stdout_json(&run(&args, b""));
    assert_eq!(first["ids"], second["ids"]);
    let by_ids = stdout_json(&run(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--ids",
            "1,455,403",
            "--max-tokens",
            "3",
            "--json",
        ],
        b"",
    ));
    assert_eq!(by_ids["prompt_tokens"], 3);
}

#[test]
fn bench_reports_every_number() {
    let model = fixture("codellama-lsp-tiny-q4_k.gguf");
    let report = stdout_json(&run(
        &["bench", "--model", model.to_str().unwrap(), "--json"],
        b"",
    ));
    for field in [
        "prefill_tok_s",
        "decode_tok_s",
        "keystroke_with_reuse_ms",
        "keystroke_without_reuse_ms",
        "peak_rss_mib",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {report}"
        );
    }
}

#[test]
fn bad_input_gives_a_clear_error_and_exit_code_1() {
    let missing = run(
        &[
            "generate",
            "--model",
            "/no/such/model.gguf",
            "--prompt",
            "x",
        ],
        b"",
    );
    assert_clean_failure(&missing, "/no/such/model.gguf: cannot read file");

    let dir = tempdir();
    let text_file = dir.join("notes.gguf");
    std::fs::write(&text_file, "these are not weights").unwrap();
    let not_gguf = run(&["tokenize", "--model", text_file.to_str().unwrap()], b"x");
    assert_clean_failure(&not_gguf, "not a GGUF file");

    let model = fixture("codellama-lsp-tiny-q8_0.gguf");
    let bad_id = run(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--ids",
            "1,99999",
        ],
        b"",
    );
    assert_clean_failure(&bad_id, "outside the model's vocabulary");

    let bad_device = run(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
            "--device",
            "tpu",
        ],
        b"",
    );
    assert_eq!(bad_device.status.code(), Some(2), "usage errors exit 2");
    assert!(String::from_utf8_lossy(&bad_device.stderr).contains("use auto, cpu"));

    let invalid_utf8 = run(
        &["tokenize", "--model", model.to_str().unwrap()],
        b"\xff\xfe",
    );
    assert_clean_failure(&invalid_utf8, "not valid UTF-8");
}

#[test]
fn the_fixtures_command_checks_the_committed_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let output = run(
        &["fixtures", "--check", "--out", dir.to_str().unwrap()],
        b"",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("codellama-lsp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
