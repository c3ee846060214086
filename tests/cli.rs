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
fn models_info_estimates_memory_with_the_kv_cache_of_the_chosen_type() {
    let model = fixture("codellama-lsp-tiny-q8_0.gguf");
    let path = model.to_str().unwrap();
    let f16 = stdout_json(&run(&["models", "info", path, "--json"], b""));
    let f32 = stdout_json(&run(
        &["models", "info", path, "--kv-type", "f32", "--json"],
        b"",
    ));
    let bytes = |info: &Value, field: &str| info["memory"][field].as_u64().unwrap();
    assert_eq!(f16["memory"]["kv_type"], "f16", "{f16}");
    assert!(bytes(&f16, "kv_cache_bytes") > 0);
    assert_eq!(
        bytes(&f32, "kv_cache_bytes"),
        2 * bytes(&f16, "kv_cache_bytes")
    );
    assert_eq!(
        bytes(&f16, "total_bytes"),
        bytes(&f16, "weights_bytes") + bytes(&f16, "kv_cache_bytes")
    );
    let text = run(&["models", "info", path], b"");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("memory:") && text.contains("in f16"),
        "{text}"
    );
    // Both cache types generate, and an unknown one is refused before anything loads.
    for kv_type in ["f16", "f32"] {
        let generated = stdout_json(&run(
            &[
                "generate",
                "--model",
                path,
                "--ids",
                "1,455,403",
                "--max-tokens",
                "3",
                "--kv-type",
                kv_type,
                "--json",
            ],
            b"",
        ));
        assert_eq!(generated["ids"].as_array().unwrap().len(), 3);
    }
    let bad = run(
        &["generate", "--model", path, "--ids", "1", "--kv-type", "q4"],
        b"",
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("f16 or f32"),
        "{stderr}"
    );
}

#[test]
fn bench_reports_every_number() {
    let model = fixture("codellama-lsp-tiny-q4_k.gguf");
    let report = stdout_json(&run(
        &[
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--bandwidth-mib",
            "64",
        ],
        b"",
    ));
    for field in [
        "load_ms",
        "prefill_tok_s",
        "decode_tok_s",
        "keystroke_with_reuse_ms",
        "keystroke_without_reuse_ms",
        "peak_rss_mib",
        "read_bandwidth_gb_s",
        "weight_bytes_per_token",
        "decode_bound_tok_s",
        "decode_share_of_bound",
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

#[test]
fn the_fixtures_command_refuses_a_bad_shape_request_and_leaves_no_file() {
    let dir = tempdir().join("shape");
    std::fs::create_dir_all(&dir).unwrap();
    let folder = run(
        &["fixtures", "--shape", "1b", "--out", dir.to_str().unwrap()],
        b"",
    );
    assert_clean_failure(&folder, "is a folder");
    let file = dir.join("random.gguf");
    let heads = run(
        &[
            "fixtures",
            "--shape",
            "1b",
            "--kv-heads",
            "5",
            "--out",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert_clean_failure(&heads, "do not divide 32 heads");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "a file was left"
    );
    let check = run(&["fixtures", "--shape", "7b", "--check"], b"");
    assert!(!check.status.success());
}

/// `bench --lsp` against this binary with the fixture model: one short idle session, every
/// request answered, the JSON shape scripts read.
#[test]
fn bench_lsp_types_over_real_lsp_and_reports_every_request_answered() {
    let model = fixture("codellama-lsp-tiny-q8_0.gguf");
    let started = std::time::Instant::now();
    let output = run(
        &[
            "bench",
            "--lsp",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "--keystrokes",
            "20",
            "--scenarios",
            "idle",
            "--warmup-ms",
            "300",
            "--decode-step-ms",
            "100",
            "--json",
        ],
        b"",
    );
    let report = stdout_json(&output);
    eprintln!("bench --lsp took {:?}", started.elapsed());
    assert_eq!(report["keystrokes"], 20);
    assert_eq!(report["max_tokens"], 32);
    assert_eq!(report["deadline_ms"], 3000);
    assert_eq!(report["decode_step_ms"], 100.0);
    assert_eq!(report["decode_step_measured"], false);
    assert!(report["document_lines"].as_u64().unwrap() > 300);
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 1, "{report}");
    let idle = &scenarios[0];
    assert_eq!(idle["scenario"], "idle");
    assert_eq!(idle["requests"], 20, "{idle}");
    assert_eq!(idle["answered"], 20, "{idle}");
    assert_eq!(idle["unanswered"], 0, "{idle}");
    assert_eq!(idle["errors"], 0, "{idle}");
    let count = |key: &str| {
        idle[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {idle}"))
    };
    assert_eq!(count("results") + count("cancelled_answers"), 20, "{idle}");
    assert!(count("non_empty") <= count("results"));
    assert!(count("cancelled") <= 20);
    assert_eq!(count("deadline_violations"), 0, "{idle}");
    let latency = &idle["latency_ms"];
    let (p50, p95, max) = (
        latency["p50"].as_f64().unwrap(),
        latency["p95"].as_f64().unwrap(),
        latency["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p95 && p95 <= max, "{latency}");
    // codellama/stats may not be there yet: then these are null, never missing.
    for key in [
        "reused_share",
        "wasted_tokens",
        "speculative_hits",
        "stats_delta",
    ] {
        assert!(idle.get(key).is_some(), "{key} missing: {idle}");
    }
    if cfg!(target_os = "linux") {
        for when in ["loaded", "before", "after"] {
            assert!(idle["rss"][when]["rss_kib"].as_u64().unwrap() > 0, "{idle}");
            assert!(
                idle["rss"][when]["peak_kib"].as_u64().unwrap() > 0,
                "{idle}"
            );
        }
    }
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("codellama-lsp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn docstring_and_edit_print_json_diffs_and_write_in_place() {
    let model = fixture("codellama-lsp-tiny-q8_0.gguf")
        .display()
        .to_string();
    let dir = tempdir().join("assist");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lib.rs");
    let source = "use std::fmt;\n\n#[inline]\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n";
    std::fs::write(&file, source).unwrap();
    let file_arg = file.display().to_string();

    // --json: where the docstring goes (1-based), above the attribute, in rustdoc style.
    let report = stdout_json(&run(
        &[
            "docstring",
            "--model",
            &model,
            &file_arg,
            "--line",
            "5",
            "--json",
        ],
        b"",
    ));
    assert_eq!(report["name"], "add");
    assert_eq!(report["kind"], "function");
    assert_eq!(
        report["range"]["start"],
        serde_json::json!({"line": 3, "character": 1})
    );
    let text = report["text"].as_str().unwrap();
    assert!(text.lines().all(|line| line.starts_with("///")), "{text:?}");

    // --diff: a unified diff that adds exactly those lines.
    let diff = run(
        &[
            "docstring",
            "--model",
            &model,
            &file_arg,
            "--line",
            "5",
            "--diff",
        ],
        b"",
    );
    assert!(diff.status.success());
    let diff = String::from_utf8(diff.stdout).unwrap();
    assert!(
        diff.starts_with(&format!("--- {file_arg}\n+++ {file_arg}\n@@ ")),
        "{diff}"
    );
    let added: String = diff
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    assert_eq!(added, text);

    // --in-place: the file gains the docstring and nothing else.
    let output = run(
        &[
            "docstring",
            "--model",
            &model,
            &file_arg,
            "--line",
            "5",
            "--in-place",
        ],
        b"",
    );
    assert!(output.status.success());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        source.replace("#[inline]", &format!("{text}#[inline]"))
    );
    // Now documented: a clear refusal, the file untouched.
    let body_line = (5 + text.lines().count()).to_string();
    let output = run(
        &[
            "docstring",
            "--model",
            &model,
            &file_arg,
            "--line",
            &body_line,
        ],
        b"",
    );
    assert_clean_failure(&output, "`add` already has documentation");

    // edit --json: edits inside the range only, and the range's new text.
    std::fs::write(&file, source).unwrap();
    let output = run(
        &[
            "edit",
            "--model",
            &model,
            &file_arg,
            "--range",
            "4:1-7:1",
            "--instruction",
            "use wrapping_add",
            "--json",
        ],
        b"",
    );
    if output.status.success() {
        let report = stdout_json(&output);
        for edit in report["edits"].as_array().unwrap() {
            assert!(
                edit["range"]["start"]["line"].as_u64().unwrap() >= 4,
                "{edit}"
            );
        }
    } else {
        // A random-weight model may answer without code: that is a clean, explained failure.
        assert_clean_failure(&output, "answer");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn docstring_and_edit_refuse_bad_requests_before_loading_a_model() {
    let dir = tempdir().join("assist-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.py");
    std::fs::write(&file, "x = 1\n").unwrap();
    let file_arg = file.display().to_string();
    let missing = "/nonexistent/model.gguf";
    let cases: [(&[&str], &str); 6] = [
        (
            &["docstring", "--model", missing, &file_arg, "--line", "9"],
            "line 9 is past the end",
        ),
        (
            &["docstring", "--model", missing, &file_arg, "--line", "1"],
            "no function, method or type",
        ),
        (
            &[
                "docstring",
                "--model",
                missing,
                "/nonexistent/a.py",
                "--line",
                "1",
            ],
            "cannot read",
        ),
        (
            &[
                "docstring",
                "--model",
                missing,
                &file_arg,
                "--line",
                "1",
                "--language",
                "cobol",
            ],
            "unknown --language",
        ),
        (
            &[
                "edit",
                "--model",
                missing,
                &file_arg,
                "--range",
                "1:1",
                "--instruction",
                "x",
            ],
            "is not L1:C1-L2:C2",
        ),
        (
            &[
                "edit",
                "--model",
                missing,
                &file_arg,
                "--range",
                "1:1-1:6",
                "--instruction",
                "x",
            ],
            "cannot load",
        ),
    ];
    for (args, expected) in cases {
        assert_clean_failure(&run(args, b""), expected);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_log_level_goes_anywhere_but_server_options_do_not_precede_a_subcommand() {
    let home = tempdir().join("empty-hf-home");
    std::fs::create_dir_all(&home).unwrap();
    let output = Command::new(support::binary())
        .args(["--log-level", "warn", "models", "list"])
        .env("HF_HOME", &home)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("No GGUF models"));
    let output = Command::new(support::binary())
        .args(["--model", "x.gguf", "models", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("options of the server"));
}
