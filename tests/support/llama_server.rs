//! A real llama.cpp `llama-server` on 127.0.0.1, started and stopped by a test. The binary comes
//! from `$LLAMA_SERVER` or where `bench/llama-server.sh` puts it (a build without AVX-512 on CPUs
//! that lack it); without it, tests skip and say why.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct LlamaServer {
    child: Child,
    pub url: String,
    pub port: u16,
}

/// The llama-server binary, or `None` after printing why the calling test skips.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("LLAMA_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let tools = PathBuf::from(std::env::var_os("HOME")?).join(".cache/codellama-lsp-tools");
            let build = |dir: &str| tools.join(dir).join("build/bin/llama-server");
            // The build without AVX-512 runs on every CPU; `bench/llama-server.sh` makes it only
            // where the other one would die of SIGILL.
            let portable = build("llama-server-no-avx512");
            Some(if portable.is_file() {
                portable
            } else {
                build("llama-server")
            })
        })?;
    if path.is_file() {
        Some(path)
    } else if std::env::var_os("CI").is_some() {
        // CI builds it (.ci/run): a missing server there is a failure, not a quiet skip.
        panic!(
            "CI is set but there is no llama-server at {} (LLAMA_SERVER)",
            path.display()
        );
    } else {
        eprintln!(
            "skipping: no llama-server at {} (set LLAMA_SERVER, or run bench/llama-server.sh)",
            path.display()
        );
        None
    }
}

impl LlamaServer {
    /// Starts `binary` serving `model` and waits until it answers `/health`.
    pub fn start(binary: &Path, model: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("codellama-llama-server-{port}.log")),
        )
        .expect("a log file");
        let child = Command::new(binary)
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--no-webui", "-c", "2048", "-t", "2"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("llama-server starts");
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(port, "/health").map(|(status, _)| status) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "llama-server did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `POST path` with a JSON body; the answer's status and JSON.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string();
        let (status, text) = request(
            self.port,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .expect("llama-server answers");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

fn request(port: u16, text: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(text.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

/// The body of a `Transfer-Encoding: chunked` answer.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
