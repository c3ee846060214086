//! A Hugging Face hub on 127.0.0.1 for tests: serves files under `/{repo}/resolve/{rev}/{file}`
//! the way the hub does (ranged GETs, `x-repo-commit`, `etag` = the file's SHA-256), and can
//! misbehave on purpose: a damaged body, a broken connection, a gated repository.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Serve,
    /// The body differs from the published checksum (one byte flipped).
    Corrupt,
    /// The connection closes after this many body bytes of each ranged download.
    CutAfter(usize),
    /// 401, as for a gated model without a token.
    Unauthorized,
}

struct Served {
    bytes: Arc<Vec<u8>>,
    sha256: String,
    behaviour: Behaviour,
}

pub struct FakeHub {
    pub endpoint: String,
    files: Arc<Mutex<HashMap<String, Served>>>,
    /// File requests answered so far (metadata and data).
    pub requests: Arc<AtomicUsize>,
}

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakeHub {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Served>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (served, counter) = (files.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (served, counter) = (served.clone(), counter.clone());
                thread::spawn(move || {
                    let _ = handle(stream, &served, &counter);
                });
            }
        });
        Self {
            endpoint,
            files,
            requests,
        }
    }

    /// Publishes `bytes` as `repo`'s `file` at revision `main`.
    pub fn publish(&self, repo: &str, file: &str, bytes: Vec<u8>, behaviour: Behaviour) {
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.files.lock().unwrap().insert(
            format!("/{repo}/resolve/main/{file}"),
            Served {
                bytes: Arc::new(bytes),
                sha256,
                behaviour,
            },
        );
    }

    pub fn set_behaviour(&self, repo: &str, file: &str, behaviour: Behaviour) {
        if let Some(served) = self
            .files
            .lock()
            .unwrap()
            .get_mut(&format!("/{repo}/resolve/main/{file}"))
        {
            served.behaviour = behaviour;
        }
    }
}

fn handle(
    stream: TcpStream,
    files: &Mutex<HashMap<String, Served>>,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = value.trim().strip_prefix("bytes=").and_then(|r| {
                let (a, b) = r.split_once('-')?;
                Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
            });
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let mut stream = stream;
    let (bytes, sha256, behaviour) = {
        let files = files.lock().unwrap();
        match files.get(&path) {
            Some(served) => (
                served.bytes.clone(),
                served.sha256.clone(),
                served.behaviour,
            ),
            None => {
                let body = "Entry not found";
                write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )?;
                return Ok(());
            }
        }
    };
    if behaviour == Behaviour::Unauthorized {
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let last = bytes.len().saturating_sub(1);
    let (start, end) = range.map_or((0, last), |(a, b)| (a.min(last), b.min(last)));
    let mut body = bytes[start..=end].to_vec();
    if behaviour == Behaviour::Corrupt && !body.is_empty() && body.len() > 1 {
        let middle = body.len() / 2;
        body[middle] ^= 0x55;
    }
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{end}/{}\r\nx-repo-commit: {COMMIT}\r\netag: \"{sha256}\"\r\nx-linked-etag: \"{sha256}\"\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n",
        body.len(),
        bytes.len()
    )?;
    match behaviour {
        // The metadata request (one byte) still works; data requests break midway.
        Behaviour::CutAfter(limit) if body.len() > 1 => {
            stream.write_all(&body[..limit.min(body.len())])?;
            stream.flush()?;
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        _ => stream.write_all(&body)?,
    }
    Ok(())
}
