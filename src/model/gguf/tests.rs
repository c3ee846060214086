use super::*;
use crate::test_support::{Rng, fixtures_dir};
use std::time::{Duration, Instant};

const FIXTURES: [&str; 4] = [
    "ggml-vocab-llama-spm.gguf",
    "llama-2-tiny-random.gguf",
    "codellama-tiny-random.gguf",
    "codellama-tiny-random-legacy.gguf",
];

fn load(name: &str) -> Option<(Vec<u8>, GgufFile)> {
    let path = crate::test_support::fixture(name)?;
    let bytes = std::fs::read(&path).unwrap();
    let file = GgufFile::parse(&bytes, name).unwrap();
    Some((bytes, file))
}

/// Parses `bytes`, failing the test if parsing panics or takes more than a second.
fn parse_quickly(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    let start = Instant::now();
    let result = GgufFile::parse(bytes, "x.gguf");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "parse took {:?}",
        start.elapsed()
    );
    result
}

fn err_text(bytes: &[u8]) -> String {
    match parse_quickly(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// ggml types
// ------------------------------------------------------------------------------------------

#[test]
fn ggml_type_table_is_consistent() {
    for (i, row) in GgmlType::TABLE.iter().enumerate() {
        assert_eq!(row.0 as usize, i, "table row {i} out of order");
        assert_eq!(GgmlType::from_id(row.1), Some(row.0));
        assert_eq!(row.0.name(), row.2);
    }
    let expected = [
        (0, "F32", 1, 4),
        (1, "F16", 1, 2),
        (2, "Q4_0", 32, 18),
        (3, "Q4_1", 32, 20),
        (6, "Q5_0", 32, 22),
        (7, "Q5_1", 32, 24),
        (8, "Q8_0", 32, 34),
        (9, "Q8_1", 32, 36),
        (10, "Q2_K", 256, 84),
        (11, "Q3_K", 256, 110),
        (12, "Q4_K", 256, 144),
        (13, "Q5_K", 256, 176),
        (14, "Q6_K", 256, 210),
        (15, "Q8_K", 256, 292),
        (30, "BF16", 1, 2),
    ];
    for (id, name, block, size) in expected {
        let t = GgmlType::from_id(id).unwrap();
        assert_eq!(
            (t.id(), t.name(), t.block_size(), t.type_size()),
            (id, name, block, size)
        );
    }
    for removed in [4, 5, 31, 32, 33, 36, 1000] {
        assert_eq!(GgmlType::from_id(removed), None);
    }
    assert_eq!(GgmlType::Q4_K.tensor_size(&[512, 3]), Ok(2 * 144 * 3));
    assert!(GgmlType::Q4_K.tensor_size(&[100, 3]).is_err());
    assert!(GgmlType::F32.tensor_size(&[u64::MAX, 2]).is_err());
    assert!(GgmlType::F32.tensor_size(&[4, 0]).is_err());
}

// ------------------------------------------------------------------------------------------
// fixtures
// ------------------------------------------------------------------------------------------

#[test]
fn parses_every_fixture() {
    let Some(dir) = fixtures_dir() else {
        eprintln!("skipping: shared fixtures not found (see test_support::fixtures_dir)");
        return;
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&path).unwrap();
        let parsed = GgufFile::parse(&bytes, "f.gguf").unwrap();
        let read = GgufFile::read(&path).unwrap();
        assert_eq!(parsed.metadata.entries(), read.metadata.entries());
        assert_eq!(parsed.tensors, read.tensors);
        assert_eq!(parsed.data_offset, read.data_offset);
        assert_eq!(read.file_len, bytes.len() as u64);
        assert_eq!(parsed.alignment, DEFAULT_ALIGNMENT);
        for t in &parsed.tensors {
            let data = parsed.tensor_data(&bytes, t).unwrap();
            assert_eq!(data.len() as u64, t.size);
            assert_eq!(parsed.tensor_file_offset(t) % parsed.alignment, 0);
        }
    }
    assert!(
        seen >= 4,
        "expected the four fixture GGUF files, saw {seen}"
    );
}

#[test]
fn vocab_only_fixture_facts() {
    let Some((_, f)) = load("ggml-vocab-llama-spm.gguf") else {
        return;
    };
    assert_eq!(f.version, 3);
    assert!(f.tensors.is_empty());
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "llama");
    let md = &f.metadata;
    assert_eq!(
        md.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        32000
    );
    assert_eq!(
        md.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
        32000
    );
    assert_eq!(
        md.get_i64_array("tokenizer.ggml.token_type").unwrap().len(),
        32000
    );
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 32);
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert!(f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert!(!f.get_bool("tokenizer.ggml.add_eos_token").unwrap());
    // The file ends right after the metadata: no padding, no data section.
    assert!(f.data_offset >= f.file_len);
}

#[test]
fn codellama_fixture_facts() {
    let Some((_, f)) = load("codellama-tiny-random.gguf") else {
        return;
    };
    let md = &f.metadata;
    assert_eq!(
        md.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        32016
    );
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 1e6);
    assert_eq!(f.get_u32("llama.context_length").unwrap(), 16384);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 8);
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 1);
    assert_eq!(f.get_u32("tokenizer.ggml.fim_pre_token_id").unwrap(), 32007);
    assert_eq!(f.get_u32("tokenizer.ggml.eot_token_id").unwrap(), 32010);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![8, 32016]);
    assert_eq!(emb.ggml_type, GgmlType::F16);
    assert_eq!(emb.size, 8 * 32016 * 2);
    assert_eq!(emb.n_elements(), 8 * 32016);
    assert_eq!(f.tensor("output.weight").unwrap().dims, vec![8, 32016]);

    let Some((_, legacy)) = load("codellama-tiny-random-legacy.gguf") else {
        return;
    };
    assert!(legacy.get("tokenizer.ggml.fim_pre_token_id").is_none());
    assert!(legacy.get("tokenizer.ggml.add_bos_token").is_none());
    assert_eq!(legacy.tensors.len(), f.tensors.len());
}

#[test]
fn llama2_fixture_facts() {
    let Some((_, f)) = load("llama-2-tiny-random.gguf") else {
        return;
    };
    let md = &f.metadata;
    assert_eq!(
        md.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        32000
    );
    assert!(f.get("llama.rope.freq_base").is_none());
    assert!(matches!(
        f.get_f32("llama.rope.freq_base"),
        Err(GgufError::MissingKey { .. })
    ));
    assert_eq!(f.tensor("token_embd.weight").unwrap().dims, vec![8, 32000]);
}

// ------------------------------------------------------------------------------------------
// corrupt fixtures
// ------------------------------------------------------------------------------------------

fn cut_points(len: usize) -> impl Iterator<Item = usize> {
    (0..len.min(4096)).chain((4096..len).step_by(4093))
}

#[test]
fn truncated_fixtures_are_errors() {
    for name in FIXTURES {
        let Some((bytes, full)) = load(name) else {
            return;
        };
        for cut in cut_points(bytes.len()) {
            match GgufFile::parse(&bytes[..cut], name) {
                Err(_) => {}
                // Only a tensor-less file may lose its (absent) tail and still be whole.
                Ok(f) => assert!(
                    full.tensors.is_empty() && f.metadata.len() == full.metadata.len(),
                    "{name} cut at {cut} parsed"
                ),
            }
        }
        // The last bytes of the header and of the data.
        for cut in bytes.len().saturating_sub(64)..bytes.len() {
            assert!(
                GgufFile::parse(&bytes[..cut], name).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn flipped_header_bytes_never_panic() {
    let Some((bytes, _)) = load("codellama-tiny-random.gguf") else {
        return;
    };
    let mut copy = bytes.clone();
    for i in 0..1024 {
        for pattern in [0xffu8, 0x80] {
            let old = copy[i];
            copy[i] ^= pattern;
            let result = GgufFile::parse(&copy, "x.gguf");
            if i < 8 {
                assert!(result.is_err(), "flip at {i} accepted");
            }
            copy[i] = old;
        }
    }
    // Random multi-byte corruption anywhere in the header area.
    let mut rng = Rng::new(7);
    let header_end = 800_000.min(bytes.len());
    for _ in 0..300 {
        let mut copy = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(header_end as u64) as usize;
            copy[at] = rng.next_u64() as u8;
        }
        let _ = GgufFile::parse(&copy, "x.gguf");
    }
}

// ------------------------------------------------------------------------------------------
// hand-made corrupt files
// ------------------------------------------------------------------------------------------

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A file with one metadata entry with key "k"; the value's type id is at byte 33, the value
/// starts at byte 37.
fn one_kv(value: impl Into<Value>) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("k", value);
    w.to_bytes().unwrap()
}

/// A file with no metadata and one F32 tensor "t" of dims [8, 2]. Layout: name length at 24,
/// name at 32, n_dims at 33, dims at 37 and 45, type at 53, offset at 57, data at 96.
fn one_tensor() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_tensor("t", &[8, 2], GgmlType::F32, vec![0; 64])
        .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn hand_made_layouts_are_as_expected() {
    let b = one_kv(7u32);
    assert_eq!(b.len(), 41);
    assert_eq!(&b[32..33], b"k");
    assert_eq!(u32::from_le_bytes(b[33..37].try_into().unwrap()), 4);
    let b = one_tensor();
    assert_eq!(b.len(), 96 + 64);
    let f = parse_quickly(&b).unwrap();
    assert_eq!(f.data_offset, 96);
    assert_eq!(f.tensors[0].dims, vec![8, 2]);
}

#[test]
fn absurd_lengths_and_counts_fail_fast() {
    // Header counts.
    let mut b = one_kv(7u32);
    put_u64(&mut b, 16, 1 << 60);
    assert!(err_text(&b).contains("metadata entry count 1152921504606846976 cannot fit"));
    let mut b = one_tensor();
    put_u64(&mut b, 8, 1 << 60);
    assert!(err_text(&b).contains("tensor count"));
    let mut b = one_tensor();
    put_u64(&mut b, 8, u64::MAX);
    parse_quickly(&b).unwrap_err();

    // Key and string lengths.
    let mut b = one_kv(7u32);
    put_u64(&mut b, 24, 1 << 60);
    let e = err_text(&b);
    assert!(
        e.contains("string length 1152921504606846976 exceeds"),
        "{e}"
    );
    let mut b = one_kv("hello");
    put_u64(&mut b, 37, u64::MAX);
    let e = err_text(&b);
    assert!(
        e.starts_with("x.gguf: at byte 37, in the value of metadata key 'k' (entry #0): string"),
        "{e}"
    );

    // Array counts of every element type, including strings and nested arrays.
    for value in [
        Value::from(vec![1u8, 2, 3]),
        Value::from(vec![1.0f64]),
        Value::from(vec!["a".to_string()]),
        Value::Array(Array::Array(vec![Array::U8(vec![1])])),
        Value::from(vec![true]),
    ] {
        for count in [1u64 << 60, u64::MAX, 1 << 32, 100] {
            let mut b = one_kv(value.clone());
            put_u64(&mut b, 41, count);
            let e = err_text(&b);
            assert!(e.contains("cannot fit"), "{e}");
        }
    }
    // A nested array whose inner count is absurd.
    let mut b = one_kv(Value::Array(Array::Array(vec![Array::U8(vec![1])])));
    put_u64(&mut b, 53, 1 << 60);
    assert!(err_text(&b).contains("array element count"));
}

#[test]
fn invalid_values_are_errors() {
    // Unknown value type, unknown array element type.
    let mut b = one_kv(7u32);
    put_u32(&mut b, 33, 13);
    assert!(err_text(&b).contains("unknown value type 13"));
    let mut b = one_kv(vec![1u8]);
    put_u32(&mut b, 37, 99);
    assert!(err_text(&b).contains("unknown array element type 99"));
    // Bools must be 0 or 1.
    let mut b = one_kv(true);
    b[37] = 2;
    assert!(err_text(&b).contains("invalid bool value 2"));
    // Strings must be UTF-8.
    let mut b = one_kv("abc");
    b[46] = 0xff;
    assert!(err_text(&b).contains("not valid UTF-8"));
    // Duplicate keys.
    let mut w = GgufWriter::new();
    w.add("a", 1u32).add("b", 2u32);
    let mut b = w.to_bytes().unwrap();
    let second_key = b.windows(1).rposition(|k| k == b"b").unwrap();
    b[second_key] = b'a';
    assert!(err_text(&b).contains("duplicate key 'a'"));
    // Deeply nested arrays are refused rather than recursed into.
    let mut nested = Array::U8(vec![1]);
    for _ in 0..20 {
        nested = Array::Array(vec![nested]);
    }
    let b = one_kv(Value::Array(nested));
    assert!(err_text(&b).contains("nested"));
    // Bad alignment.
    for bad in [0u32, 3, 48] {
        let mut w = GgufWriter::new();
        w.add("general.alignment", 64u32);
        let mut b = w.to_bytes().unwrap();
        let at = b.len() - 4;
        put_u32(&mut b, at, bad);
        assert!(err_text(&b).contains("power of two"));
    }
}

#[test]
fn invalid_tensors_are_errors() {
    let t = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = one_tensor();
        f(&mut b);
        err_text(&b)
    };
    let e = t(&|b| put_u32(b, 33, 5));
    assert!(e.contains("has 5 dimensions"), "{e}");
    let e = t(&|b| put_u32(b, 33, 0));
    assert!(e.contains("has 0 dimensions"), "{e}");
    let e = t(&|b| put_u32(b, 33, u32::MAX));
    assert!(e.contains("dimensions"), "{e}");
    let e = t(&|b| put_u64(b, 45, 0));
    assert!(e.contains("dimension 1 is zero"), "{e}");
    let e = t(&|b| put_u64(b, 45, 1 << 62));
    assert!(e.contains("overflow") || e.contains("past the end"), "{e}");
    let e = t(&|b| put_u64(b, 45, u64::MAX));
    assert!(e.contains("overflow"), "{e}");
    let e = t(&|b| put_u64(b, 45, 3));
    assert!(e.contains("past the end of the file"), "{e}");
    let e = t(&|b| put_u32(b, 53, 99));
    assert_eq!(e, "x.gguf: tensor 't' has unknown ggml type id 99");
    let e = t(&|b| put_u32(b, 53, 4));
    assert!(e.contains("unknown ggml type id 4"), "{e}");
    let e = t(&|b| put_u32(b, 53, GgmlType::Q4_0.id()));
    assert!(
        e.contains("row length 8 is not a multiple of the Q4_0 block size 32"),
        "{e}"
    );
    let e = t(&|b| put_u64(b, 57, 4));
    assert!(e.contains("not a multiple of the alignment 32"), "{e}");
    let e = t(&|b| put_u64(b, 57, 64));
    assert!(e.contains("past the end of the file (160 bytes)"), "{e}");
    let e = t(&|b| put_u64(b, 57, u64::MAX - 31));
    assert!(e.contains("past the end"), "{e}");

    // Duplicate tensor names.
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[1], GgmlType::F32, vec![0; 4]).unwrap();
    w.add_tensor("b", &[1], GgmlType::F32, vec![0; 4]).unwrap();
    let mut b = w.to_bytes().unwrap();
    let at = b.windows(1).position(|k| k == b"b").unwrap();
    b[at] = b'a';
    assert!(err_text(&b).contains("duplicate tensor name"));
}

#[test]
fn error_messages_name_file_and_problem() {
    assert_eq!(
        err_text(b"PK\x03\x04rest of a zip"),
        "x.gguf: not a GGUF file (magic is 'PK\\x03\\x04')"
    );
    let mut b = one_kv(1u32);
    put_u32(&mut b, 4, 1);
    assert_eq!(err_text(&b), "x.gguf: unsupported GGUF version 1");
    put_u32(&mut b, 4, 3u32.swap_bytes());
    assert!(err_text(&b).contains("big-endian"));
    assert!(err_text(b"").contains("not a GGUF file"));
    assert!(err_text(b"GG").contains("truncated at byte 0"));
    let b = one_tensor();
    assert_eq!(
        err_text(&b[..60]),
        "x.gguf: truncated at byte 57 while reading tensor info #0: 8 bytes needed, file is 60 bytes"
    );
    let b = one_kv(7u32);
    assert_eq!(
        err_text(&b[..39]),
        "x.gguf: truncated at byte 37 while reading the value of metadata key 'k' (entry #0): \
         4 bytes needed, file is 39 bytes"
    );
}

#[test]
fn exhaustive_corruption_of_a_small_file_never_panics() {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")
        .add("a", vec!["x".to_string(), "yz".to_string()])
        .add(
            "n",
            Value::Array(Array::Array(vec![
                Array::U16(vec![1, 2]),
                Array::Bool(vec![]),
            ])),
        )
        .add("f", 1.5f32);
    w.add_tensor("w", &[32, 2], GgmlType::Q8_0, vec![1; 68])
        .unwrap();
    w.add_tensor("b", &[4], GgmlType::F16, vec![2; 8]).unwrap();
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::parse(&bytes, "x.gguf").unwrap();
    // Trailing padding after the last tensor is optional; everything before it is required.
    let data_end = f
        .tensors
        .iter()
        .map(|t| f.tensor_file_offset(t) + t.size)
        .max()
        .unwrap();
    for cut in 0..bytes.len() {
        let result = GgufFile::parse(&bytes[..cut], "x.gguf");
        assert_eq!(result.is_err(), (cut as u64) < data_end, "cut at {cut}");
    }
    let mut copy = bytes.clone();
    for i in 0..bytes.len() {
        for v in [
            0u8,
            1,
            0x7f,
            0x80,
            0xff,
            bytes[i] ^ 1,
            bytes[i].wrapping_add(8),
        ] {
            copy[i] = v;
            let _ = parse_quickly(&copy);
        }
        copy[i] = bytes[i];
    }
}

// ------------------------------------------------------------------------------------------
// writer round trip and accessors
// ------------------------------------------------------------------------------------------

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")
        .add("u8", 200u8)
        .add("i8", -5i8)
        .add("u16", 60000u16)
        .add("i16", -30000i16)
        .add("u32", 4_000_000_000u32)
        .add("i32", -7i32)
        .add("f32", 0.25f32)
        .add("bool", true)
        .add("str", "héllo ▁ wörld")
        .add("empty", "")
        .add("u64", u64::MAX)
        .add("i64", i64::MIN)
        .add("f64", -1e300f64)
        .add("arr.u8", vec![1u8, 2, 3])
        .add("arr.i32", vec![-1i32, 2])
        .add("arr.f32", vec![1.0f32, -0.5])
        .add(
            "arr.str",
            vec!["a".to_string(), String::new(), "☺".to_string()],
        )
        .add("arr.bool", vec![true, false])
        .add("arr.empty", Vec::<u64>::new())
        .add(
            "arr.nested",
            Value::Array(Array::Array(vec![
                Array::I16(vec![1, -2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::F64(vec![2.5])]),
            ])),
        );
    w
}

#[test]
fn writer_round_trip() {
    for alignment in [None, Some(64u32), Some(1)] {
        let mut w = sample_writer();
        if let Some(a) = alignment {
            w.add("general.alignment", a);
        }
        let mut rng = Rng::new(1);
        let mut data = |n: usize| (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>();
        let tensors = [
            ("a.f32", vec![3u64, 5], GgmlType::F32),
            ("b.q4_0", vec![64, 3], GgmlType::Q4_0),
            ("c.q4_k", vec![256, 2, 2], GgmlType::Q4_K),
            ("d.q6_k", vec![512], GgmlType::Q6_K),
            ("e.bf16", vec![1, 1, 1, 7], GgmlType::BF16),
        ];
        let mut blobs = Vec::new();
        for (name, dims, ty) in &tensors {
            let blob = data(ty.tensor_size(dims).unwrap() as usize);
            w.add_tensor(*name, dims, *ty, blob.clone()).unwrap();
            blobs.push(blob);
        }
        let bytes = w.to_bytes().unwrap();
        let f = GgufFile::parse(&bytes, "rt.gguf").unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, alignment.map_or(32, u64::from));
        assert_eq!(f.metadata.entries(), w.metadata.entries());
        assert_eq!(f.tensors.len(), tensors.len());
        for ((t, (name, dims, ty)), blob) in f.tensors.iter().zip(&tensors).zip(&blobs) {
            assert_eq!(
                (&t.name, &t.dims, t.ggml_type),
                (&name.to_string(), dims, *ty)
            );
            assert_eq!(f.tensor_data(&bytes, t).unwrap(), &blob[..]);
        }
    }
}

#[test]
fn writer_rejects_bad_tensors() {
    let mut w = GgufWriter::new();
    assert!(
        w.add_tensor("t", &[32], GgmlType::Q8_0, vec![0; 33])
            .is_err()
    );
    assert!(
        w.add_tensor("t", &[31], GgmlType::Q8_0, vec![0; 34])
            .is_err()
    );
    assert!(w.add_tensor("t", &[], GgmlType::F32, vec![]).is_err());
    assert!(
        w.add_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])
            .is_err()
    );
    w.add_tensor("t", &[1], GgmlType::F32, vec![0; 4]).unwrap();
    assert!(w.add_tensor("t", &[1], GgmlType::F32, vec![0; 4]).is_err());
}

#[test]
fn read_from_disk_grows_past_the_first_chunk() {
    let dir = std::env::temp_dir().join(format!("engine-core-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big-header.gguf");
    let mut w = sample_writer();
    let big = "x".repeat((FIRST_READ_CHUNK as usize) * 2 + 123);
    w.add("big", big.clone());
    w.add_tensor("t", &[4], GgmlType::F32, vec![9; 16]).unwrap();
    w.write(&path).unwrap();
    let f = GgufFile::read(&path).unwrap();
    assert_eq!(f.get_str("big").unwrap(), big);
    assert_eq!(f.tensors[0].size, 16);

    // A truncated copy on disk is reported as truncated, with the path.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..FIRST_READ_CHUNK as usize + 10]).unwrap();
    let e = GgufFile::read(&cut).unwrap_err().to_string();
    assert!(e.starts_with(&cut.display().to_string()), "{e}");
    assert!(e.contains("exceeds"), "{e}");

    let missing = GgufFile::read(dir.join("missing.gguf")).unwrap_err();
    assert!(matches!(missing, GgufError::Io { .. }));
    assert!(
        missing
            .to_string()
            .contains("missing.gguf: cannot read file")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn typed_accessors_convert_and_explain() {
    let bytes = sample_writer().to_bytes().unwrap();
    let f = GgufFile::parse(&bytes, "m.gguf").unwrap();
    assert_eq!(f.get_u32("u8").unwrap(), 200);
    assert_eq!(f.get_u32("u16").unwrap(), 60000);
    assert_eq!(f.get_u32("u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i64("i32").unwrap(), -7);
    assert_eq!(f.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(f.get_i64("i64").unwrap(), i64::MIN);
    assert_eq!(f.get_f32("f32").unwrap(), 0.25);
    assert_eq!(f.get_f32("u16").unwrap(), 60000.0);
    assert_eq!(f.get_f32("f64").unwrap(), f32::NEG_INFINITY);
    assert!(f.get_bool("bool").unwrap());
    assert_eq!(f.get_str("str").unwrap(), "héllo ▁ wörld");
    assert_eq!(f.get_array("arr.str").unwrap().len(), 3);
    assert_eq!(f.metadata.get_i64_array("arr.u8").unwrap(), vec![1, 2, 3]);
    assert_eq!(
        f.metadata.get_f32_array("arr.f32").unwrap(),
        vec![1.0, -0.5]
    );
    assert_eq!(f.metadata.opt_u32("nope").unwrap(), None);
    assert_eq!(f.metadata.opt_u32("u8").unwrap(), Some(200));

    let e = f.get_u32("i32").unwrap_err().to_string();
    assert_eq!(
        e,
        "m.gguf: metadata key 'i32' has value -7, which is not a valid u32"
    );
    let e = f.get_u32("u64").unwrap_err().to_string();
    assert!(e.contains("18446744073709551615"), "{e}");
    let e = f.get_u32("str").unwrap_err().to_string();
    assert_eq!(
        e,
        "m.gguf: metadata key 'str' is string, expected an integer"
    );
    let e = f.get_str("arr.str").unwrap_err().to_string();
    assert_eq!(
        e,
        "m.gguf: metadata key 'arr.str' is array of string, expected string"
    );
    let e = f.get_u32("llama.block_count").unwrap_err().to_string();
    assert_eq!(e, "m.gguf: metadata key 'llama.block_count' is missing");
    assert!(f.metadata.opt_u32("str").is_err());
    assert!(f.metadata.get_str_array("arr.u8").is_err());
    assert!(f.metadata.get_f32_array("arr.i32").is_err());
}

#[test]
fn a_streamed_file_is_byte_identical_to_one_built_in_memory() {
    let tensors = [
        ("a", vec![8u64, 3], GgmlType::F32),
        ("b", vec![32u64], GgmlType::Q8_0),
        ("c", vec![5u64], GgmlType::F16),
    ];
    let data = |index: usize| -> Vec<u8> {
        let (_, dims, ggml_type) = &tensors[index];
        let size = ggml_type.tensor_size(dims).unwrap() as usize;
        (0..size).map(|i| (i * 7 + index) as u8).collect()
    };
    let mut in_memory = GgufWriter::new();
    in_memory
        .add("general.alignment", Value::U32(64))
        .add("k", 7u32);
    for (index, (name, dims, ggml_type)) in tensors.iter().enumerate() {
        in_memory
            .add_tensor(*name, dims, *ggml_type, data(index))
            .unwrap();
    }
    let mut header_only = GgufWriter::new();
    header_only
        .add("general.alignment", Value::U32(64))
        .add("k", 7u32);
    let specs: Vec<StreamedTensor> = tensors
        .iter()
        .map(|(name, dims, ggml_type)| StreamedTensor {
            name: (*name).to_owned(),
            dims: dims.clone(),
            ggml_type: *ggml_type,
        })
        .collect();
    let mut streamed = Vec::new();
    header_only
        .write_streamed(&mut streamed, &specs, |index| Ok(data(index)))
        .unwrap();
    assert_eq!(streamed, in_memory.to_bytes().unwrap());

    // A wrong size or a failing producer is an error naming the tensor.
    let error = header_only
        .write_streamed(&mut Vec::new(), &specs, |_| Ok(vec![0; 3]))
        .unwrap_err();
    assert!(
        error.to_string().contains("tensor 'a' needs 96 bytes"),
        "{error}"
    );
    let error = header_only
        .write_streamed(&mut Vec::new(), &specs, |_| Err("no luck".into()))
        .unwrap_err();
    assert!(error.to_string().contains("'a': no luck"), "{error}");
}
