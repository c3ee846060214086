//! Parity with llama.cpp on a real vocabulary: SmolLM2-135M-Instruct (gpt2 model, pre "smollm").
//!
//! `smollm2-vectors.json` holds llama.cpp's ids (see tools/gen_vectors.py). The model file is
//! looked up at `$SMOLLM2_GGUF`, else where `../shared/tools/get-smollm2.sh` puts it; when it
//! is absent the tests say so and pass without checking.

use std::path::PathBuf;

use codellama_lsp::model::gguf::{Array, GgufFile, Value};
use codellama_lsp::model::tokenizer::bpe::{BpeTokenizer, PreType, TokenType, byte_level_char};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<PathBuf> {
    let path = match std::env::var_os("SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = match std::env::var_os("CODELLAMA_TOOLS_HOME") {
                Some(h) => PathBuf::from(h),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/codellama-lsp-tools"),
            };
            home.join("models").join(MODEL_FILE)
        }
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: SmolLM2 model not found at {} (set SMOLLM2_GGUF or run \
             ../shared/tools/get-smollm2.sh)",
            path.display()
        );
        None
    }
}

fn load() -> Option<(BpeTokenizer, PathBuf)> {
    let path = model_path()?;
    let file = GgufFile::read(&path).unwrap();
    let tok = BpeTokenizer::from_gguf(&file).unwrap();
    Some((tok, path))
}

/// Compares `token_to_piece` of every token with llama.cpp's `llama_token_to_piece(special =
/// false)`, recorded as a digest of all pieces plus samples.
fn check_pieces(t: &BpeTokenizer, expected: &serde_json::Value, what: &str) {
    let n = expected.get("n_vocab").unwrap().as_u64().unwrap() as u32;
    assert_eq!(t.vocab_size(), n as usize, "{what}");
    let serde_json::Value::Object(samples) = expected.get("samples").unwrap() else {
        panic!("samples is not an object");
    };
    for (id, hex) in samples {
        let id: u32 = id.parse().unwrap();
        let got: String = t
            .token_to_piece(id)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, hex.as_str().unwrap(), "{what}: piece of token {id}");
    }
    let mut all = Vec::new();
    for id in 0..n {
        let piece = t.token_to_piece(id);
        all.extend_from_slice(&(piece.len() as u32).to_le_bytes());
        all.extend_from_slice(&piece);
    }
    let want = expected.get("sha256").unwrap().as_str().unwrap();
    assert_eq!(sha256_hex(&all), want, "{what}: digest of all pieces");
    println!("{what}: all {n} token pieces match llama.cpp");
}

/// Bytes whose byte-level character is not a token of the vocabulary.
fn missing_bytes(t: &BpeTokenizer) -> Vec<u8> {
    (0..=255u8)
        .filter(|&b| t.piece_to_id(&byte_level_char(b).to_string()).is_none())
        .collect()
}

#[test]
fn loads_smollm2_vocabulary() {
    let Some((t, _)) = load() else { return };
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.pre_name(), "smollm");
    assert_eq!(t.pre_type(), PreType::Smollm);
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.add_bos_token()),
        (Some(1), Some(2), false)
    );
    assert_eq!(t.piece(1), Some("<|im_start|>"));
    assert_eq!(t.token_type(1), Some(TokenType::Control));
    assert_eq!(t.token_to_piece(1), b"");
    assert_eq!(t.decode(&[1, 2, 0]), "");
    assert_eq!(t.encode("", true), [1]);
}

#[test]
fn smollm2_matches_llama_cpp() {
    let Some((t, path)) = load() else { return };
    let json = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/smollm2-vectors.json"
    ))
    .unwrap();
    let doc = serde_json::from_str::<serde_json::Value>(&json).unwrap();
    let want_sha = doc.get("model_sha256").unwrap().as_str().unwrap();
    let got_sha = sha256_hex(&std::fs::read(&path).unwrap());
    assert_eq!(
        got_sha,
        want_sha,
        "{} is not the model the vectors were made with",
        path.display()
    );
    let cases = doc.get("cases").unwrap().as_array().unwrap();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let missing = missing_bytes(&t);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let text = case.get("text").unwrap().as_str().unwrap();
        let want: Vec<u32> = case
            .get("ids")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = t.encode(text, false);
        if got != want {
            failures.push(format!(
                "case {i} {text:?}:\n  llama.cpp {want:?}\n  ours      {got:?}"
            ));
        }
        // Byte-level BPE loses nothing the vocabulary can spell: llama.cpp's ids decode back.
        if text.bytes().all(|b| !missing.contains(&b)) {
            assert_eq!(t.decode(&want), text, "case {i}");
        }
    }
    println!(
        "{} of {} cases match llama.cpp token for token",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    check_pieces(&t, doc.get("pieces").unwrap(), "smollm");
}

/// The other pre-tokenizers, checked against llama.cpp over SmolLM2's vocabulary:
/// pretokenizer-vectors.json holds llama.cpp's ids for vocabulary-only copies of the model
/// whose `tokenizer.ggml.pre` was replaced (see tools/gen_vectors.py).
#[test]
fn other_pre_tokenizers_match_llama_cpp() {
    let Some(path) = model_path() else { return };
    let read = |name: &str| {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (cases, pre) = (
        read("smollm2-vectors.json"),
        read("pretokenizer-vectors.json"),
    );
    let texts: Vec<&str> = cases
        .get("cases")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.get("text").unwrap().as_str().unwrap())
        .collect();
    let serde_json::Value::Object(by_pre) = pre.get("ids").unwrap() else {
        panic!("ids is not an object");
    };
    assert_eq!(
        pre.get("model_sha256").unwrap().as_str(),
        cases.get("model_sha256").unwrap().as_str()
    );
    let file = GgufFile::read(&path).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;

    // The same vocabulary with a few tokens turned user-defined (split out of raw text first).
    let ud = pre.get("user_defined").unwrap();
    let mut md = file.metadata.clone();
    let Some(Value::Array(Array::I32(types))) = md.get("tokenizer.ggml.token_type") else {
        panic!("token types are not i32");
    };
    let mut types = types.clone();
    for id in ud.get("token_ids").unwrap().as_array().unwrap() {
        types[id.as_u64().unwrap() as u32 as usize] = 4;
    }
    md.insert("tokenizer.ggml.token_type", types);
    md.insert(
        "tokenizer.ggml.pre",
        ud.get("pre").unwrap().as_str().unwrap(),
    );
    let t = BpeTokenizer::from_metadata(&md).unwrap();
    assert_eq!(
        t.token_type(2),
        Some(TokenType::Control),
        "<|im_end|> is forced to control"
    );
    check_pieces(&t, ud.get("pieces").unwrap(), "user-defined");
    let variants = by_pre
        .iter()
        .map(|(name, ids)| (name.as_str(), ids))
        .chain([("smollm+user-defined", ud.get("ids").unwrap())]);

    for (name, expected) in variants {
        let t = if name == "smollm+user-defined" {
            t.clone()
        } else {
            let mut md = file.metadata.clone();
            md.insert("tokenizer.ggml.pre", name);
            BpeTokenizer::from_metadata(&md).unwrap()
        };
        assert!(t.warnings().is_empty(), "{name}: {:?}", t.warnings());
        let expected = expected.as_array().unwrap();
        assert_eq!(expected.len(), texts.len(), "{name}");
        for (i, (text, want)) in texts.iter().zip(expected).enumerate() {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = t.encode(text, false);
            if got != want {
                failures.push(format!(
                    "{name} ({:?}) case {i} {text:?}:\n  llama.cpp {want:?}\n  ours      {got:?}",
                    t.pre_type()
                ));
            }
            checked += 1;
        }
    }
    println!(
        "{} of {checked} cases over {} variants match llama.cpp",
        checked - failures.len(),
        by_pre.len() + 1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn smollm2_random_text_round_trips() {
    let Some((t, _)) = load() else { return };
    // SmolLM2 lacks the byte-level tokens of some bytes (control characters such as 0x04 and
    // 0x1D, and the UTF-8 lead bytes 0xF1 and 0xF2 of U+40000–U+BFFFF): like llama.cpp, encoding
    // drops those, so only text without them can round-trip.
    let missing = missing_bytes(&t);
    assert!(
        missing.contains(&0xF1) && !missing.contains(&b' '),
        "{missing:?}"
    );
    let representable = |c: char| {
        let mut buf = [0u8; 4];
        c.encode_utf8(&mut buf)
            .bytes()
            .all(|b| !missing.contains(&b))
    };
    // U+50000 is F1 90 80 80: the lead byte is dropped, the rest decode as invalid UTF-8.
    let dropped = "a\u{1d}b\u{50000}c";
    assert_eq!(
        t.decode(&t.encode(dropped, false)),
        "ab\u{FFFD}\u{FFFD}\u{FFFD}c"
    );

    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut checked = 0;
    while checked < 500 {
        let len = next() % 64;
        let s: String = (0..len)
            .map(|_| {
                let r = next();
                let cp = match r % 6 {
                    0 => (r >> 8) % 0x80,
                    1 => [0x20, 0x09, 0x0A, 0x0D, 0xA0, 0x3000][(r >> 8) as usize % 6],
                    2 => 0x80 + (r >> 8) % 0x2000,
                    3 => 0x4E00 + (r >> 8) % 0x5000,
                    _ => (r >> 8) % 0x110000,
                };
                char::from_u32(cp as u32).unwrap_or('?')
            })
            .filter(|&c| representable(c))
            .collect();
        let ids = t.encode(&s, false);
        assert_eq!(t.decode(&ids), s);
        let mut d = t.stream_decoder();
        let streamed: String = ids.iter().map(|&id| d.push(id)).collect();
        assert!(!d.has_pending());
        assert_eq!(streamed + &d.finish(), s);
        checked += 1;
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
