//! Structure-aware mutation fuzzing of GGUF files through the real binary.
//!
//! The committed tiny models are taken apart into their fields (header counts, metadata keys,
//! value types, arrays, tensor infos, the data section), mutated where files go wrong — counts,
//! string and array lengths, value and element types, dims, n_dims, ggml types, offsets,
//! alignment, tokenizer arrays and special ids, hyper-parameters — written back (sometimes with
//! a few flipped bytes on top), and run through `models info`, `models verify` and `generate`,
//! each under a memory and a time limit. Each command may succeed or fail with one clear error
//! line; it may never panic, die by a signal, abort on an allocation or hang. And the three must
//! agree on what is a usable file: what `generate` runs, `verify` accepts; what `verify` accepts,
//! `info` describes and `generate` runs (a vocabulary-only file aside: it is a remote backend's
//! tokenizer, not a model).
//!
//! `CODELLAMA_FUZZ_GGUF_CASES` (default 300, ~40 s on two cores) and `CODELLAMA_FUZZ_GGUF_SEED` run it longer or
//! elsewhere; `CODELLAMA_FUZZ_GGUF_CASE=N` replays one case of a seed, and
//! `CODELLAMA_FUZZ_GGUF_VERBOSE=1` prints every case's mutations and errors. Failing files are
//! kept in the target's temporary directory and named in the failure.
#![cfg(unix)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use codellama_lsp::fixtures::SplitMix64;
use codellama_lsp::model::gguf::{Array, GgufFile, Value};

const DEFAULT_CASES: usize = 300;
const DEFAULT_SEED: u64 = 0x6775_6666_2d66_757a;
/// Address-space limit for every command, in KiB. Loading and running the tiny fixture needs a
/// fraction of it; a file that asks for gigabytes must be refused before allocating them.
const MEMORY_LIMIT_KIB: u64 = 3 << 20;
const TIME_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// the file as fields
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct TensorEntry {
    name: String,
    /// Written instead of `dims.len()` when set.
    n_dims: Option<u32>,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

/// A GGUF file as its fields, written back exactly as given (counts and ids need not agree).
#[derive(Clone, Debug)]
struct Layout {
    version: u32,
    /// Written instead of the real counts when set.
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorEntry>,
    /// The data section: everything after the header's padding.
    data: Vec<u8>,
}

/// The kinds of fields a raw mutation overwrites in the written bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    TensorCount,
    KvCount,
    KeyLen,
    StrLen,
    ValueType,
    ArrayType,
    ArrayLen,
    NameLen,
    NDims,
    Dim,
    GgmlType,
    Offset,
}

const FIELDS: [Field; 12] = [
    Field::TensorCount,
    Field::KvCount,
    Field::KeyLen,
    Field::StrLen,
    Field::ValueType,
    Field::ArrayType,
    Field::ArrayLen,
    Field::NameLen,
    Field::NDims,
    Field::Dim,
    Field::GgmlType,
    Field::Offset,
];

impl Field {
    fn width(self) -> usize {
        match self {
            Field::ValueType | Field::ArrayType | Field::NDims | Field::GgmlType => 4,
            _ => 8,
        }
    }
}

struct Written {
    bytes: Vec<u8>,
    /// (kind, byte offset) of every field written.
    fields: Vec<(Field, usize)>,
    header_len: usize,
}

impl Layout {
    fn from_bytes(bytes: &[u8]) -> Self {
        let file = GgufFile::parse(bytes, "fixture").expect("the fixture parses");
        Self {
            version: file.version,
            tensor_count: None,
            kv_count: None,
            kvs: file.metadata.entries().to_vec(),
            tensors: file
                .tensors
                .iter()
                .map(|t| TensorEntry {
                    name: t.name.clone(),
                    n_dims: None,
                    dims: t.dims.clone(),
                    type_id: t.ggml_type.id(),
                    offset: t.offset,
                })
                .collect(),
            data: bytes[file.data_offset as usize..].to_vec(),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn set(&mut self, key: &str, value: Value) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.kvs.push((key.to_owned(), value)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.kvs.retain(|(k, _)| k != key);
    }

    fn arch(&self) -> String {
        match self.get("general.architecture") {
            Some(Value::String(arch)) => arch.clone(),
            _ => "llama".to_owned(),
        }
    }

    fn token_count(&self) -> u64 {
        match self.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len() as u64,
            _ => 0,
        }
    }

    /// The alignment the data section is padded to: the file's, when a reader could accept it.
    fn padding(&self) -> u64 {
        match self.get("general.alignment").and_then(Value::as_i128) {
            Some(a) if a > 0 && a <= 1 << 20 && (a & (a - 1)) == 0 => a as u64,
            _ => 32,
        }
    }

    fn write(&self) -> Written {
        let mut w = Writer::default();
        w.raw(b"GGUF");
        w.raw(&self.version.to_le_bytes());
        w.u64(
            Field::TensorCount,
            self.tensor_count.unwrap_or(self.tensors.len() as u64),
        );
        w.u64(
            Field::KvCount,
            self.kv_count.unwrap_or(self.kvs.len() as u64),
        );
        for (key, value) in &self.kvs {
            w.string(Field::KeyLen, key);
            w.u32(Field::ValueType, type_id(value));
            w.value(value);
        }
        for t in &self.tensors {
            w.string(Field::NameLen, &t.name);
            w.u32(Field::NDims, t.n_dims.unwrap_or(t.dims.len() as u32));
            for &d in &t.dims {
                w.u64(Field::Dim, d);
            }
            w.u32(Field::GgmlType, t.type_id);
            w.u64(Field::Offset, t.offset);
        }
        let header_len = w.bytes.len();
        let padding = self.padding() as usize;
        w.bytes.resize(header_len.div_ceil(padding) * padding, 0);
        w.raw(&self.data);
        Written {
            bytes: w.bytes,
            fields: w.fields,
            header_len,
        }
    }
}

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
    fields: Vec<(Field, usize)>,
}

impl Writer {
    fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn u32(&mut self, field: Field, v: u32) {
        self.fields.push((field, self.bytes.len()));
        self.raw(&v.to_le_bytes());
    }

    fn u64(&mut self, field: Field, v: u64) {
        self.fields.push((field, self.bytes.len()));
        self.raw(&v.to_le_bytes());
    }

    fn string(&mut self, field: Field, s: &str) {
        self.u64(field, s.len() as u64);
        self.raw(s.as_bytes());
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::U8(x) => self.raw(&x.to_le_bytes()),
            Value::I8(x) => self.raw(&x.to_le_bytes()),
            Value::U16(x) => self.raw(&x.to_le_bytes()),
            Value::I16(x) => self.raw(&x.to_le_bytes()),
            Value::U32(x) => self.raw(&x.to_le_bytes()),
            Value::I32(x) => self.raw(&x.to_le_bytes()),
            Value::F32(x) => self.raw(&x.to_le_bytes()),
            Value::Bool(x) => self.raw(&[u8::from(*x)]),
            Value::String(s) => self.string(Field::StrLen, s),
            Value::Array(a) => self.array(a),
            Value::U64(x) => self.raw(&x.to_le_bytes()),
            Value::I64(x) => self.raw(&x.to_le_bytes()),
            Value::F64(x) => self.raw(&x.to_le_bytes()),
        }
    }

    fn array(&mut self, a: &Array) {
        self.u32(Field::ArrayType, elem_type_id(a));
        self.u64(Field::ArrayLen, a.len() as u64);
        macro_rules! each {
            ($v:expr) => {
                for x in $v {
                    self.raw(&x.to_le_bytes());
                }
            };
        }
        match a {
            Array::U8(v) => self.raw(v),
            Array::I8(v) => each!(v),
            Array::U16(v) => each!(v),
            Array::I16(v) => each!(v),
            Array::U32(v) => each!(v),
            Array::I32(v) => each!(v),
            Array::F32(v) => each!(v),
            Array::Bool(v) => v.iter().for_each(|&b| self.raw(&[u8::from(b)])),
            Array::String(v) => v.iter().for_each(|s| self.string(Field::StrLen, s)),
            Array::Array(v) => v.iter().for_each(|inner| self.array(inner)),
            Array::U64(v) => each!(v),
            Array::I64(v) => each!(v),
            Array::F64(v) => each!(v),
        }
    }
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn elem_type_id(a: &Array) -> u32 {
    match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::String(_) => 8,
        Array::Array(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    }
}

// ---------------------------------------------------------------------------------------------
// mutations
// ---------------------------------------------------------------------------------------------

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// A random index below `len`, or `None` when there is nothing to pick.
fn index(rng: &mut SplitMix64, len: usize) -> Option<usize> {
    (len > 0).then(|| rng.below(len as u64) as usize)
}

/// A count, length, dim or offset where readers go wrong.
fn odd_u64(rng: &mut SplitMix64, original: u64) -> u64 {
    match rng.below(11) {
        0 => 0,
        1 => 1,
        2 => original.wrapping_add(1),
        3 => original.wrapping_sub(1),
        4 => original.wrapping_mul(2),
        5 => original / 2,
        6 => u64::MAX,
        7 => 1 << (31 + rng.below(33)),
        8 => i64::MAX as u64 + 1,
        9 => rng.next_u64(),
        _ => original ^ (1 << rng.below(64)),
    }
}

/// An integer hyper-parameter or id where readers go wrong, in one of the integer types.
fn odd_int(rng: &mut SplitMix64, original: i128) -> Value {
    let n: i128 = match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => 3,
        3 => original + 1,
        4 => original - 1,
        5 => original * 2,
        6 => 1 << 20,
        7 => 1 << 24,
        8 => u32::MAX.into(),
        _ => -1,
    };
    match rng.below(4) {
        _ if n < 0 => Value::I32(n as i32),
        0 => Value::U64(n as u64),
        1 => Value::I32(n as i32),
        _ => Value::U32(n as u32),
    }
}

fn odd_float(rng: &mut SplitMix64) -> Value {
    let x = *pick(
        rng,
        &[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1.0,
            0.0,
            1e-30,
            1e30,
            f32::MIN_POSITIVE,
        ],
    );
    if rng.below(4) == 0 {
        Value::F64(x.into())
    } else {
        Value::F32(x)
    }
}

/// A value of the wrong type for any key.
fn wrong_type(rng: &mut SplitMix64) -> Value {
    match rng.below(6) {
        0 => Value::String("8".into()),
        1 => Value::Bool(true),
        2 => Value::F32(8.5),
        3 => Value::Array(Array::U32(vec![8, 8])),
        4 => Value::Array(Array::String(vec![])),
        _ => Value::I8(-8),
    }
}

const HYPER_INT: [&str; 9] = [
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "context_length",
    "rope.dimension_count",
    "attention.key_length",
    "attention.value_length",
];
const HYPER_FLOAT: [&str; 2] = ["rope.freq_base", "attention.layer_norm_rms_epsilon"];
const SPECIAL_IDS: [&str; 11] = [
    "bos_token_id",
    "eos_token_id",
    "unknown_token_id",
    "padding_token_id",
    "eot_token_id",
    "fim_pre_token_id",
    "fim_suf_token_id",
    "fim_mid_token_id",
    "prefix_token_id",
    "suffix_token_id",
    "middle_token_id",
];
const GGML_TYPES: [u32; 22] = [
    0, 1, 2, 3, 6, 7, 8, 14, 30, // candle computes with these
    9, 15, 16, 19, 24, 26, 28, 34, 39, // known to the reader, not to candle
    4, 31, 40, 1000, // unknown
];

/// One mutation of the file's structure, re-encoded consistently; returns what it did.
fn mutate(layout: &mut Layout, rng: &mut SplitMix64) -> String {
    let arch = layout.arch();
    let n_tokens = layout.token_count();
    let n_tensors = layout.tensors.len() as u64;
    match rng.below(24) {
        0 => {
            let name = pick(rng, &HYPER_INT);
            let key = format!("{arch}.{name}");
            let original = layout.get(&key).and_then(Value::as_i128).unwrap_or(64);
            let value = if rng.below(5) == 0 {
                wrong_type(rng)
            } else {
                odd_int(rng, original)
            };
            layout.set(&key, value.clone());
            format!("{key} = {value:?}")
        }
        1 => {
            let key = format!("{arch}.{}", pick(rng, &HYPER_FLOAT));
            let value = if rng.below(5) == 0 {
                wrong_type(rng)
            } else {
                odd_float(rng)
            };
            layout.set(&key, value.clone());
            format!("{key} = {value:?}")
        }
        2 => {
            let key = format!("{arch}.{}", pick(rng, &HYPER_INT));
            layout.remove(&key);
            format!("removed {key}")
        }
        3 => {
            let key = format!("tokenizer.ggml.{}", pick(rng, &SPECIAL_IDS));
            let value = match rng.below(6) {
                0 => Value::U32(n_tokens as u32),
                1 => Value::U32(n_tokens as u32 + 1),
                2 => Value::U32(u32::MAX),
                3 => Value::I32(-1),
                4 => Value::U64(1 << 40),
                _ => wrong_type(rng),
            };
            layout.set(&key, value.clone());
            format!("{key} = {value:?}")
        }
        4 => {
            // Tokenizer arrays of disagreeing lengths, or empty.
            let key = *pick(
                rng,
                &[
                    "tokenizer.ggml.tokens",
                    "tokenizer.ggml.scores",
                    "tokenizer.ggml.token_type",
                    "tokenizer.ggml.merges",
                ],
            );
            let Some(Value::Array(array)) = layout.get(key).cloned() else {
                layout.set(key, Value::Array(Array::String(vec!["a b".into()])));
                return format!("added a one-element {key}");
            };
            let len = array.len();
            let new_len = match rng.below(5) {
                0 => 0,
                1 => 1,
                2 => len.saturating_sub(1),
                3 => len / 2,
                _ => len + 1,
            };
            layout.set(key, Value::Array(resize(&array, new_len)));
            format!("{key} resized from {len} to {new_len}")
        }
        5 => {
            // Element types: scores as integers, types as floats or strings, tokens as numbers.
            let (key, array) = *pick(
                rng,
                &[
                    ("tokenizer.ggml.scores", 0),
                    ("tokenizer.ggml.token_type", 1),
                    ("tokenizer.ggml.tokens", 2),
                    ("tokenizer.ggml.token_type", 3),
                ],
            );
            let len = n_tokens as usize;
            let value = match array {
                0 => Array::I32(vec![0; len]),
                1 => Array::F32(vec![1.0; len]),
                2 => Array::U32(vec![1; len]),
                _ => Array::Array(vec![Array::I32(vec![1]); len.min(64)]),
            };
            let what = format!("{key} as an array of {}", elem_type_id(&value));
            layout.set(key, Value::Array(value));
            what
        }
        6 => {
            // Odd token texts and types at random ids.
            let id = index(rng, n_tokens as usize).unwrap_or(0);
            let how = rng.below(5);
            if let Some((_, Value::Array(array))) = layout
                .kvs
                .iter_mut()
                .find(|(k, _)| k == "tokenizer.ggml.tokens" || k == "tokenizer.ggml.token_type")
                .filter(|(k, _)| (how < 3) == (k == "tokenizer.ggml.tokens"))
            {
                match array {
                    Array::String(tokens) if id < tokens.len() => {
                        tokens[id] = match how {
                            0 => String::new(),
                            1 => "<0xZZ>".into(),
                            _ => tokens[(id + 1) % tokens.len()].clone(),
                        };
                    }
                    Array::I32(types) if id < types.len() => {
                        types[id] = if how == 3 { 99 } else { -1 };
                    }
                    _ => {}
                }
            }
            format!("token {id} edited ({how})")
        }
        7 => {
            let key = *pick(
                rng,
                &[
                    "tokenizer.ggml.model",
                    "tokenizer.ggml.pre",
                    "general.architecture",
                ],
            );
            let value = match rng.below(7) {
                0 => Value::String("gpt2".into()),
                1 => Value::String("llama".into()),
                2 => Value::String("bert".into()),
                3 => Value::String(String::new()),
                4 => {
                    Value::String(pick(rng, &["qwen2", "starcoder2", "gemma", "mamba"]).to_string())
                }
                5 => Value::String("deepseek-coder".into()),
                _ => wrong_type(rng),
            };
            layout.set(key, value.clone());
            format!("{key} = {value:?}")
        }
        8 => {
            let key = *pick(
                rng,
                &[
                    "general.architecture",
                    "tokenizer.ggml.model",
                    "tokenizer.ggml.tokens",
                    "tokenizer.ggml.scores",
                    "tokenizer.ggml.token_type",
                    "tokenizer.ggml.merges",
                    "general.name",
                    "general.alignment",
                ],
            );
            layout.remove(key);
            format!("removed {key}")
        }
        9 => {
            let value = match rng.below(9) {
                0 => Value::U32(0),
                1 => Value::U32(3),
                2 => Value::U32(48),
                3 => Value::U32(1 << 31),
                4 => Value::U64(u64::MAX),
                5 => Value::I32(-32),
                6 => Value::U32(*pick(rng, &[1, 8, 16, 64, 4096])),
                7 => Value::U64(1 << 30),
                _ => wrong_type(rng),
            };
            layout.set("general.alignment", value.clone());
            format!("general.alignment = {value:?}")
        }
        10..=15 if n_tensors == 0 => "no tensor to mutate".into(),
        10 => {
            let i = rng.below(n_tensors) as usize;
            let name = layout.tensors.remove(i).name;
            format!("removed tensor {name}")
        }
        11 => {
            let i = rng.below(n_tensors) as usize;
            let j = rng.below(n_tensors) as usize;
            let (a, b) = (
                layout.tensors[i].name.clone(),
                layout.tensors[j].name.clone(),
            );
            match rng.below(3) {
                0 => {
                    let copy = layout.tensors[i].clone();
                    layout.tensors.push(copy);
                    format!("tensor {a} listed twice")
                }
                1 => {
                    layout.tensors[i].name = b.clone();
                    format!("tensor {a} renamed {b}")
                }
                _ => {
                    layout.tensors.swap(i, j);
                    format!("tensors {a} and {b} swapped in the table")
                }
            }
        }
        12 => {
            let i = rng.below(n_tensors) as usize;
            let t = &mut layout.tensors[i];
            let before = t.dims.clone();
            match rng.below(6) {
                0 => {
                    if let Some(d) = index(rng, t.dims.len()) {
                        t.dims[d] = odd_u64(rng, t.dims[d]);
                    }
                }
                1 => t.dims.reverse(),
                2 => t.dims.push(1),
                3 => t.dims = vec![1 << 32, 1 << 32, 1 << 32],
                4 => t.dims.clear(),
                _ => t.dims.extend([1, 1, 1, 1]),
            }
            format!("tensor {} dims {before:?} → {:?}", t.name, t.dims)
        }
        13 => {
            let i = rng.below(n_tensors) as usize;
            let n_dims = *pick(rng, &[0, 3, 5, 255, u32::MAX]);
            layout.tensors[i].n_dims = Some(n_dims);
            format!("tensor {} n_dims = {n_dims}", layout.tensors[i].name)
        }
        14 => {
            let i = rng.below(n_tensors) as usize;
            let type_id = *pick(rng, &GGML_TYPES);
            layout.tensors[i].type_id = type_id;
            format!("tensor {} type id = {type_id}", layout.tensors[i].name)
        }
        15 => {
            let i = rng.below(n_tensors) as usize;
            let j = rng.below(n_tensors) as usize;
            let data_len = layout.data.len() as u64;
            let other = layout.tensors[j].offset;
            let t = &mut layout.tensors[i];
            let before = t.offset;
            t.offset = match rng.below(7) {
                0 => before + 1,
                1 => other,
                2 => other + 32,
                3 => data_len,
                4 => data_len.saturating_sub(32),
                5 => 0,
                _ => odd_u64(rng, before),
            };
            format!("tensor {} offset {before} → {}", t.name, t.offset)
        }
        16 => {
            let count = odd_u64(rng, n_tensors);
            layout.tensor_count = Some(count);
            format!("tensor count = {count}")
        }
        17 => {
            let count = odd_u64(rng, layout.kvs.len() as u64);
            layout.kv_count = Some(count);
            format!("kv count = {count}")
        }
        18 => {
            let version = *pick(rng, &[0, 1, 2, 4, 3 << 24, u32::MAX]);
            layout.version = version;
            format!("version = {version}")
        }
        19 => {
            // The data section cut, grown, or with weights turned into NaN and Inf.
            let len = layout.data.len();
            match rng.below(3) {
                0 => {
                    let cut = (rng.below(len as u64 / 4 + 1) as usize + 1).min(len);
                    layout.data.truncate(len - cut);
                    format!("data section cut by {cut} bytes")
                }
                1 => {
                    layout.data.extend(std::iter::repeat_n(0x5a, 4096));
                    "data section grown by 4096 bytes".into()
                }
                _ => {
                    for _ in 0..64 {
                        let Some(at) = index(rng, len.saturating_sub(1)) else {
                            break;
                        };
                        layout.data[at..at + 2].copy_from_slice(&[0x00, 0x7e]);
                    }
                    "64 NaN halves in the data section".into()
                }
            }
        }
        20 => {
            let Some(i) = index(rng, layout.kvs.len()) else {
                return "no metadata to mutate".into();
            };
            let (key, _) = layout.kvs[i].clone();
            match rng.below(3) {
                0 => {
                    let value = wrong_type(rng);
                    layout.kvs[i].1 = value.clone();
                    format!("{key} = {value:?}")
                }
                1 => {
                    let entry = layout.kvs[i].clone();
                    layout.kvs.push(entry);
                    format!("{key} listed twice")
                }
                _ => {
                    layout.kvs.remove(i);
                    format!("removed {key}")
                }
            }
        }
        21 => {
            // Nested arrays, huge strings and odd keys.
            match rng.below(3) {
                0 => {
                    let mut nested = Array::U8(vec![1]);
                    for _ in 0..rng.below(12) {
                        nested = Array::Array(vec![nested]);
                    }
                    layout.set("general.nested", Value::Array(nested));
                    "nested arrays".into()
                }
                1 => {
                    layout.set("general.name", Value::String("x".repeat(1 << 20)));
                    "a 1 MB general.name".into()
                }
                _ => {
                    layout.set(&"k".repeat(100_000), Value::U8(1));
                    "a 100 kB key".into()
                }
            }
        }
        22 => {
            // Hyper-parameters that contradict the tensors but are each plausible.
            let key = format!("{arch}.{}", pick(rng, &HYPER_INT[..5]));
            let original = layout.get(&key).and_then(Value::as_i128).unwrap_or(1);
            let value = *pick(
                rng,
                &[original / 2, original - 1, original + 1, original * 2],
            );
            let value = Value::U32(value.max(1) as u32);
            layout.set(&key, value.clone());
            format!("{key} = {value:?}")
        }
        _ => {
            // A vocabulary only: every tensor gone.
            layout.tensors.clear();
            layout.data.clear();
            "every tensor removed".into()
        }
    }
}

/// `array` with `len` elements: cut, or grown with made-up ones.
fn resize(array: &Array, len: usize) -> Array {
    fn grow<T: Clone>(v: &[T], len: usize, fill: T) -> Vec<T> {
        let mut v = v[..v.len().min(len)].to_vec();
        v.resize(len, fill);
        v
    }
    match array {
        Array::String(v) => {
            let mut out = grow(v, len, String::new());
            for (i, s) in out.iter_mut().enumerate().skip(v.len()) {
                *s = format!("extra{i}");
            }
            Array::String(out)
        }
        Array::F32(v) => Array::F32(grow(v, len, 0.0)),
        Array::I32(v) => Array::I32(grow(v, len, 1)),
        Array::U32(v) => Array::U32(grow(v, len, 1)),
        other => other.clone(),
    }
}

/// Overwrites one field of the written file with an odd value: the structure-aware raw layer.
fn patch_field(written: &mut Written, rng: &mut SplitMix64) -> String {
    let kind = *pick(rng, &FIELDS);
    let of_kind: Vec<usize> = written
        .fields
        .iter()
        .filter(|(f, _)| *f == kind)
        .map(|&(_, at)| at)
        .collect();
    if of_kind.is_empty() {
        return format!("no {kind:?} field to patch");
    }
    let at = *pick(rng, &of_kind);
    let bytes = &mut written.bytes;
    if kind.width() == 4 {
        let original = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let value = match kind {
            Field::ValueType | Field::ArrayType => *pick(rng, &[0, 4, 6, 8, 9, 10, 12, 13, 99]),
            Field::NDims => *pick(rng, &[0, 1, 2, 3, 5, 255, u32::MAX]),
            _ => *pick(rng, &GGML_TYPES),
        };
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        format!("{kind:?} at byte {at}: {original} → {value}")
    } else {
        let original = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let value = odd_u64(rng, original);
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        format!("{kind:?} at byte {at}: {original} → {value}")
    }
}

/// The fixtures the cases start from (SentencePiece in two quantizations, and byte-level BPE).
const BASES: [&str; 3] = [
    "codellama-lsp-tiny-q8_0.gguf",
    "codellama-lsp-tiny-q4_k.gguf",
    "codellama-lsp-tiny-deepseek-coder.gguf",
];

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Case `index` of `seed`: the mutated file and what was done to it.
fn make_case(bases: &[Layout], seed: u64, case: u64) -> (Vec<u8>, Vec<String>) {
    let mut rng = SplitMix64::new(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let base = match rng.below(8) {
        0..=3 => 0,
        4 | 5 => 1,
        _ => 2,
    };
    let mut layout = bases[base].clone();
    let mut done = vec![format!("from {}", BASES[base])];
    let semantic = match rng.below(10) {
        0..=6 => 1,
        7 => 2,
        _ => 0,
    };
    for _ in 0..semantic {
        done.push(mutate(&mut layout, &mut rng));
    }
    let mut written = layout.write();
    if semantic == 0 || rng.below(6) == 0 {
        done.push(patch_field(&mut written, &mut rng));
    }
    if rng.below(5) == 0 {
        let flips = 1 + rng.below(4);
        for _ in 0..flips {
            let at = index(&mut rng, written.header_len).unwrap_or(0);
            written.bytes[at] ^= 1 << rng.below(8);
        }
        done.push(format!("{flips} header bits flipped"));
    }
    (written.bytes, done)
}

// ---------------------------------------------------------------------------------------------
// running the commands
// ---------------------------------------------------------------------------------------------

struct Run {
    what: &'static str,
    ok: bool,
    stdout: String,
    stderr: String,
    /// Why the run is not a clean success or a clean error, if it is not.
    unclean: Option<String>,
}

/// Runs the binary with `args` under the memory and time limits.
fn run(what: &'static str, args: &[&str], dir: &Path) -> Run {
    let out = dir.join(format!("{what}.out"));
    let err = dir.join(format!("{what}.err"));
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_LIMIT_KIB} && exec \"$@\""))
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_codellama-lsp"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.join("hf"))
        .env("RAYON_NUM_THREADS", "1")
        .env("MALLOC_ARENA_MAX", "2")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("bash runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default()).into_owned();
    let ok = status.is_some_and(|s| s.success());
    let unclean = match status {
        None => Some(format!("still running after {TIME_LIMIT:?}")),
        Some(s) if s.signal().is_some() => Some(format!("killed by signal {:?}", s.signal())),
        _ if stderr.contains("panicked at") => Some("panicked".into()),
        _ if stderr.contains("memory allocation of") => Some("allocation failure".into()),
        Some(_) if ok => None,
        Some(s) => error_problem(&stderr).map(|p| format!("exit {:?}: {p}", s.code())),
    };
    Run {
        what,
        ok,
        stdout,
        stderr,
        unclean,
    }
}

/// What is wrong with a failed command's stderr, if anything: it must end in exactly one
/// `codellama-lsp: error:` line of reasonable length that names the file (warnings may come
/// before it). A prompt longer than the file's context is the one refusal about the request.
fn error_problem(stderr: &str) -> Option<String> {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("codellama-lsp: error: "))
        .collect();
    let last = stderr.lines().rev().find(|line| !line.trim().is_empty());
    match errors[..] {
        [line] if Some(line) != last => Some("the error line is not the last".into()),
        [line] if line.len() > 2000 => Some(format!("an error line of {} bytes", line.len())),
        [line] if !line.contains("case.gguf") && !line.contains("do not fit in the context") => {
            Some("the error does not name the file".into())
        }
        [_] => None,
        _ => Some("no single error line at the end of stderr".into()),
    }
}

struct Outcome {
    runs: Vec<Run>,
    problems: Vec<String>,
}

/// Runs `info`, `verify` and `generate` on `bytes` and checks each, and their agreement.
fn check_file(bytes: &[u8], dir: &Path, json_info: bool) -> Outcome {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("case.gguf");
    std::fs::write(&file, bytes).unwrap();
    let path = file.to_str().unwrap();
    let mut info_args = vec!["models", "info", path];
    if json_info {
        info_args.push("--json");
    }
    let runs = vec![
        run("info", &info_args, dir),
        run("verify", &["models", "verify", path], dir),
        run(
            "generate",
            &[
                "generate",
                "--model",
                path,
                "--prompt",
                "def add(a, b):",
                "--max-tokens",
                "3",
            ],
            dir,
        ),
    ];
    let mut problems: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.unclean
                .as_ref()
                .map(|p| format!("{}: {p}\n{}", r.what, tail(&r.stderr)))
        })
        .collect();
    let [info, verify, generate] = &runs[..] else {
        unreachable!()
    };
    let vocabulary_only = verify.stdout.contains("a vocabulary only");
    if generate.ok && !verify.ok {
        problems.push(format!(
            "generate ran a file that verify refuses: {}",
            tail(&verify.stderr)
        ));
    }
    if verify.ok && !info.ok {
        problems.push(format!(
            "verify accepts a file that info refuses: {}",
            tail(&info.stderr)
        ));
    }
    // A file may declare a context too small for the prompt: a refusal of the request, not of
    // the file.
    let too_long = generate.stderr.contains("do not fit in the context of");
    if verify.ok && !generate.ok && !vocabulary_only && !too_long {
        problems.push(format!(
            "verify accepts a file that generate refuses: {}",
            tail(&generate.stderr)
        ));
    }
    Outcome { runs, problems }
}

fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim_end().to_owned()
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// A scratch directory under the target's temporary directory, removed on success.
fn scratch(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-gguf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn mutated_gguf_files_end_cleanly_and_the_commands_agree() {
    let bases: Vec<Layout> = BASES
        .iter()
        .map(|name| {
            let bytes = fixture(name);
            let layout = Layout::from_bytes(&bytes);
            assert!(
                layout.write().bytes == bytes,
                "{name}: the fields do not write back to the same file"
            );
            layout
        })
        .collect();
    let seed = env_number("CODELLAMA_FUZZ_GGUF_SEED").unwrap_or(DEFAULT_SEED);
    let cases: Vec<u64> = match env_number("CODELLAMA_FUZZ_GGUF_CASE") {
        Some(one) => vec![one],
        None => {
            let count = env_number("CODELLAMA_FUZZ_GGUF_CASES").unwrap_or(DEFAULT_CASES as u64);
            (0..count).collect()
        }
    };
    let verbose = std::env::var_os("CODELLAMA_FUZZ_GGUF_VERBOSE").is_some();
    let dir = scratch("cases");
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let next = AtomicUsize::new(0);
    // Per command: accepted, refused.
    let tally = Mutex::new([(0usize, 0usize); 3]);
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = cases.get(i) else { break };
                    let (bytes, done) = make_case(&bases, seed, index);
                    let case_dir = dir.join(index.to_string());
                    let outcome = check_file(&bytes, &case_dir, index % 2 == 0);
                    if verbose {
                        let errors: Vec<String> = outcome
                            .runs
                            .iter()
                            .map(|r| match r.stderr.lines().last() {
                                Some(line) if !r.ok => format!("{}: {line}", r.what),
                                _ => format!("{}: ok", r.what),
                            })
                            .collect();
                        println!(
                            "case {index}: {}\n  {}",
                            done.join("; "),
                            errors.join("\n  ")
                        );
                    }
                    {
                        let mut tally = tally.lock().unwrap();
                        for (count, run) in tally.iter_mut().zip(&outcome.runs) {
                            if run.ok {
                                count.0 += 1;
                            } else {
                                count.1 += 1;
                            }
                        }
                    }
                    if outcome.problems.is_empty() {
                        let _ = std::fs::remove_dir_all(&case_dir);
                    } else {
                        failures.lock().unwrap().push(format!(
                            "case {index} ({}), file {}:\n  {}",
                            done.join("; "),
                            case_dir.join("case.gguf").display(),
                            outcome.problems.join("\n  ")
                        ));
                    }
                }
            });
        }
    });
    let tally = tally.into_inner().unwrap();
    println!(
        "fuzz_gguf: seed {seed:#x}, {} cases in {:.1} s on {workers} workers",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    for (name, (accepted, refused)) in ["models info", "models verify", "generate"]
        .iter()
        .zip(tally)
    {
        println!("fuzz_gguf: {name:<14} accepted {accepted:>5}, refused {refused:>5}");
    }
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed (replay one with CODELLAMA_FUZZ_GGUF_SEED={seed:#x} \
         CODELLAMA_FUZZ_GGUF_CASE=N):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// cases the fuzzer found, kept by name
// ---------------------------------------------------------------------------------------------

fn base(name: &str) -> Layout {
    Layout::from_bytes(&fixture(name))
}

fn tensor<'a>(layout: &'a mut Layout, name: &str) -> &'a mut TensorEntry {
    layout
        .tensors
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

/// Runs the three commands on `layout`; each must end cleanly and they must agree.
fn run_all(tag: &str, layout: &Layout) -> (Outcome, PathBuf) {
    let dir = scratch(tag);
    let outcome = check_file(&layout.write().bytes, &dir, false);
    assert!(
        outcome.problems.is_empty(),
        "{tag}:\n{}",
        outcome.problems.join("\n")
    );
    (outcome, dir)
}

/// `verify` and `generate` refuse `layout` with an error containing `expected`.
fn assert_refused(tag: &str, layout: &Layout, expected: &str) -> Outcome {
    let (outcome, dir) = run_all(tag, layout);
    for run in &outcome.runs[1..] {
        assert!(!run.ok, "{tag}: {} accepted the file", run.what);
        assert!(
            run.stderr.contains(expected) && run.stderr.contains("case.gguf"),
            "{tag}: {} did not say '{expected}' naming the file: {}",
            run.what,
            run.stderr
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    outcome
}

#[test]
fn the_fixtures_themselves_pass_every_command() {
    for name in BASES {
        let mut layout = base(name);
        // The order of the tensor table does not matter.
        layout.tensors.swap(0, 1);
        let (outcome, dir) = run_all("fixture", &layout);
        for run in &outcome.runs {
            assert!(run.ok, "{name}: {} failed: {}", run.what, run.stderr);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn info_refuses_a_runnable_model_whose_special_ids_are_out_of_range() {
    let mut layout = base(BASES[0]);
    let n = layout.token_count() as u32;
    layout.set("tokenizer.ggml.bos_token_id", Value::U32(n));
    let outcome = assert_refused("special-ids", &layout, "bos_token_id 32016 is out of range");
    let info = &outcome.runs[0];
    assert!(
        !info.ok,
        "info described a file loading refuses: {}",
        info.stdout
    );
    assert!(info.stderr.contains("bos_token_id 32016 is out of range"));
    // An architecture codellama-lsp does not run is still described (as not run).
    layout.set("general.architecture", Value::String("mamba".into()));
    let (outcome, dir) = run_all("special-ids-mamba", &layout);
    let [info, verify, _] = &outcome.runs[..] else {
        unreachable!()
    };
    assert!(info.ok && info.stdout.contains("not one codellama-lsp runs"));
    assert!(!verify.ok);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn overlapping_tensors_are_refused_by_every_command() {
    let mut layout = base(BASES[0]);
    let offset = tensor(&mut layout, "token_embd.weight").offset;
    tensor(&mut layout, "blk.1.ffn_gate.weight").offset = offset;
    let outcome = assert_refused("overlap", &layout, "overlap in the file");
    assert!(!outcome.runs[0].ok, "info described overlapping tensors");
}

#[test]
fn verify_refuses_what_loading_refuses() {
    let mut layout = base(BASES[0]);
    layout.remove("general.architecture");
    assert_refused(
        "no-arch",
        &layout,
        "metadata key 'general.architecture' is missing",
    );

    let mut layout = base(BASES[0]);
    layout.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    assert_refused(
        "missing-tensor",
        &layout,
        "tensor 'blk.1.ffn_up.weight' is missing",
    );

    // Fewer layers than the file has.
    let mut layout = base(BASES[0]);
    layout.set("llama.block_count", Value::U32(1));
    assert_refused(
        "block-count",
        &layout,
        "belongs to a layer past llama.block_count = 1",
    );

    // A third dimension of 1 on the embeddings used to load and fail in the forward pass.
    let mut layout = base(BASES[1]);
    tensor(&mut layout, "token_embd.weight").dims.push(1);
    assert_refused("embd-rank", &layout, "token_embd.weight has shape");

    // Q4_1 rows of one block: candle's dot product asserts pairs of blocks (a panic in debug
    // builds). The tied output projection multiplies by the embeddings.
    let mut layout = base(BASES[0]);
    tensor(&mut layout, "token_embd.weight").type_id = 3;
    assert_refused("odd-blocks", &layout, "an odd number of blocks");

    // A vocabulary only (a remote backend's tokenizer) verifies, but without its architecture
    // `info` cannot describe it, so `verify` refuses it too.
    let mut layout = base(BASES[2]);
    layout.tensors.clear();
    layout.data.clear();
    let (outcome, dir) = run_all("vocab-only", &layout);
    let [info, verify, generate] = &outcome.runs[..] else {
        unreachable!()
    };
    assert!(info.ok && verify.stdout.contains("a vocabulary only") && !generate.ok);
    let _ = std::fs::remove_dir_all(dir);
    layout.remove("general.architecture");
    let outcome = assert_refused(
        "vocab-no-arch",
        &layout,
        "metadata key 'general.architecture' is missing",
    );
    assert!(!outcome.runs[0].ok);

    // With general.alignment = 1 the tensors' bytes were handed to candle unaligned, which is
    // undefined behaviour (debug builds abort on it).
    let mut layout = base(BASES[2]);
    layout.set("general.alignment", Value::U32(1));
    assert_refused("alignment-1", &layout, "which is not 8-byte aligned");

    // Byte-level BPE infilling ids out of range were accepted, and failed every completion.
    let mut layout = base(BASES[2]);
    let n = layout.token_count() as u32;
    layout.set("tokenizer.ggml.fim_pre_token_id", Value::U32(n + 5));
    assert_refused("bpe-fim", &layout, "fim_pre_token_id");
}

#[test]
fn damaged_keys_give_one_short_error_line() {
    // A key read with a damaged length ended in a newline, which split the error line.
    let mut layout = base(BASES[0]);
    let key = "general.alignment";
    layout.set(key, Value::U64(u64::MAX));
    let mut written = layout.write();
    let at = written
        .fields
        .iter()
        .map(|&(_, at)| at)
        .find(|&at| written.bytes[at + 8..].starts_with(key.as_bytes()))
        .expect("the key's length field");
    written.bytes[at] += 1;
    let dir = scratch("key-newline");
    let outcome = check_file(&written.bytes, &dir, false);
    assert!(
        outcome.problems.is_empty(),
        "{}",
        outcome.problems.join("\n")
    );
    assert!(outcome.runs[1].stderr.contains("'general.alignment\\n'"));
    let _ = std::fs::remove_dir_all(dir);

    // A 100 kB key with a broken value made a 100 kB error line.
    let mut layout = base(BASES[0]);
    layout.kvs.insert(0, ("k".repeat(100_000), Value::U8(1)));
    let mut written = layout.write();
    let at = written
        .fields
        .iter()
        .find(|(field, _)| *field == Field::ValueType)
        .map(|&(_, at)| at)
        .expect("the first value's type");
    written.bytes[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let dir = scratch("long-key");
    let outcome = check_file(&written.bytes, &dir, false);
    assert!(
        outcome.problems.is_empty(),
        "{}",
        outcome.problems.join("\n")
    );
    assert!(
        outcome.runs[1]
            .stderr
            .contains("kkkk…' (entry #0): unknown value type 99")
    );
    let _ = std::fs::remove_dir_all(dir);
}
