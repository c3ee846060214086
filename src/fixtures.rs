//! Tiny, deterministic Code-Llama-shaped GGUF models for tests (`codellama-lsp fixtures`).
//!
//! The files are shaped like Code Llama where it matters to the code under test — llama
//! architecture, RoPE base 1e6, a 16k training context, grouped-query attention, a
//! SentencePiece-style vocabulary of 32016 pieces with byte fallback and Code Llama's 16 extra
//! pieces at 32000–32015 — and tiny everywhere else (2 layers of width 32), so that all three
//! variants together stay near 6 MB (the 32016-row embedding dominates). Weights come from a seeded generator: regenerating gives
//! identical bytes, which a test checks.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::model::gguf::{Array, GgmlType, GgufError, GgufWriter, Value};

mod bench_model;
mod families;
pub use bench_model::{BenchQuant, BenchShape, write as write_bench_model};
pub use families::{
    Family, SAMPLE_CODE, generate as generate_family,
    generate_with_matrices as generate_family_with_matrices,
};

/// Every committed fixture: its file name and a generator of its bytes.
pub fn all() -> Vec<(&'static str, Result<Vec<u8>, String>)> {
    let llama = Variant::ALL.map(|variant| (variant.file_name(), generate(variant)));
    let others = Family::ALL.map(|family| (family.file_name(), generate_family(family)));
    llama.into_iter().chain(others).collect()
}

/// SplitMix64: a tiny, well-mixed, reproducible generator.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The three committed variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Every matrix in F16.
    F16,
    /// Every matrix in Q8_0.
    Q8_0,
    /// Q4_K where a row is long enough for a K-quant block (256), Q8_0 elsewhere — the way
    /// llama.cpp's Q4_K_M mixes types.
    Q4KMixed,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::F16, Variant::Q8_0, Variant::Q4KMixed];

    pub fn file_name(self) -> &'static str {
        match self {
            Variant::F16 => "codellama-lsp-tiny-f16.gguf",
            Variant::Q8_0 => "codellama-lsp-tiny-q8_0.gguf",
            Variant::Q4KMixed => "codellama-lsp-tiny-q4_k.gguf",
        }
    }

    /// The storage type for a matrix whose rows have `row_len` values.
    fn matrix_type(self, row_len: usize) -> GgmlType {
        match self {
            Variant::F16 => GgmlType::F16,
            Variant::Q8_0 => GgmlType::Q8_0,
            Variant::Q4KMixed if row_len.is_multiple_of(256) => GgmlType::Q4_K,
            Variant::Q4KMixed => GgmlType::Q8_0,
        }
    }
}

pub const VOCAB_SIZE: usize = 32016;
const EMBEDDING: usize = 32;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FEED_FORWARD: usize = 256;
const CONTEXT: u32 = 16384;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const FIM_PREFIX: u32 = 32007;
pub const FIM_SUFFIX: u32 = 32008;
pub const FIM_MIDDLE: u32 = 32009;
pub const FIM_EOT: u32 = 32010;

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_BYTE: i32 = 6;

/// Code Llama's pieces 32000–32015, in order.
fn code_llama_pieces() -> Vec<String> {
    let mut pieces: Vec<String> = [
        "▁<SU", "▁<SUF", "▁<PRE", "▁<M", "▁<MID", "▁<E", "▁<EOT", "▁<PRE>", "▁<SUF>", "▁<MID>",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for count in 1..=6 {
        pieces.push(format!("▁{}", "<EOT>".repeat(count)));
    }
    pieces
}

/// Pieces that give realistic code some real merges: printable ASCII, indentation, keywords and
/// every prefix of them (SentencePiece merges only through pieces that exist).
fn ordinary_pieces() -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    let add = |piece: String, pieces: &mut Vec<String>| {
        if !pieces.contains(&piece) {
            pieces.push(piece);
        }
    };
    add("▁".into(), &mut pieces);
    // Meta's encode_infilling encodes "☺" + text and drops two ids: Code Llama has "☺" as a
    // piece (31171), and so must a vocabulary shaped like it.
    add("☺".into(), &mut pieces);
    for width in [2, 3, 4, 8] {
        add("▁".repeat(width), &mut pieces);
    }
    for byte in 0x21u8..0x7f {
        let ch = char::from(byte);
        add(ch.to_string(), &mut pieces);
        add(format!("▁{ch}"), &mut pieces);
    }
    const WORDS: &[&str] = &[
        "def", "return", "self", "print", "import", "from", "class", "None", "True", "False", "fn",
        "let", "mut", "pub", "struct", "impl", "function", "const", "var", "if", "else", "for",
        "while", "in", "int", "str", "string", "main", "value", "result", "range", "len", "():",
        "()", "->", "==", "+=", "//", "/**", "\"\"\"",
    ];
    for word in WORDS {
        for marked in [word.to_string(), format!("▁{word}")] {
            let chars: Vec<char> = marked.chars().collect();
            for end in 2..=chars.len() {
                add(chars[..end].iter().collect(), &mut pieces);
            }
        }
    }
    for special in code_llama_pieces() {
        let chars: Vec<char> = special.chars().collect();
        for end in 2..chars.len() {
            add(chars[..end].iter().collect(), &mut pieces);
        }
    }
    pieces.retain(|piece| !code_llama_pieces().contains(piece));
    pieces
}

/// The vocabulary: `<unk>`, `<s>`, `</s>`, 256 byte pieces, ordinary pieces, filler pieces made of
/// private-use characters (so no real text merges into them), then Code Llama's 16.
fn vocabulary() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(TYPE_BYTE);
    }
    for piece in ordinary_pieces() {
        tokens.push(piece);
        types.push(TYPE_NORMAL);
    }
    let mut filler = 0u32;
    while tokens.len() < 32000 {
        let a = char::from_u32(0xE000 + filler / 64).unwrap_or('\u{E000}');
        let b = char::from_u32(0xF000 + filler % 64).unwrap_or('\u{F000}');
        tokens.push(format!("{a}{b}"));
        types.push(TYPE_NORMAL);
        filler += 1;
    }
    for piece in code_llama_pieces() {
        tokens.push(piece);
        types.push(TYPE_NORMAL);
    }
    // Llama's scores: ordinary pieces rank by id (earlier merges first); special ones score 0.
    let scores = types
        .iter()
        .enumerate()
        .map(|(id, &kind)| {
            if kind == TYPE_NORMAL {
                -(id as f32 - 259.0)
            } else {
                0.0
            }
        })
        .collect();
    (tokens, scores, types)
}

/// Encodes `values` (a `[rows, row_len]` matrix, row-major) in `ggml_type`.
fn encode(
    values: Vec<f32>,
    rows: usize,
    row_len: usize,
    ggml_type: GgmlType,
) -> Result<Vec<u8>, String> {
    let tensor =
        Tensor::from_vec(values, (rows, row_len), &Device::Cpu).map_err(|e| e.to_string())?;
    let Some(dtype) = crate::model::candle_dtype(ggml_type) else {
        return Err(format!(
            "the fixture generator does not write {}",
            ggml_type.name()
        ));
    };
    let quantized = QTensor::quantize(&tensor, dtype).map_err(|e| e.to_string())?;
    Ok(quantized.data().map_err(|e| e.to_string())?.into_owned())
}

/// The hyper-parameters that differ between the Code-Llama-shaped models written here.
struct Dims {
    embedding: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    feed_forward: usize,
}

/// A writer with the metadata of a Code-Llama-shaped model: llama architecture, RoPE base 1e6,
/// a 16k context and the vocabulary with Code Llama's infilling tokens.
fn code_llama_writer(name: String, dims: &Dims) -> GgufWriter {
    let mut writer = GgufWriter::new();
    let (tokens, scores, types) = vocabulary();
    writer
        .add("general.architecture", "llama")
        .add("general.name", Value::String(name))
        .add("general.alignment", Value::U32(32))
        .add("llama.context_length", Value::U32(CONTEXT))
        .add("llama.embedding_length", Value::U32(dims.embedding as u32))
        .add("llama.block_count", Value::U32(dims.layers as u32))
        .add(
            "llama.feed_forward_length",
            Value::U32(dims.feed_forward as u32),
        )
        .add("llama.attention.head_count", Value::U32(dims.heads as u32))
        .add(
            "llama.attention.head_count_kv",
            Value::U32(dims.kv_heads as u32),
        )
        .add(
            "llama.rope.dimension_count",
            Value::U32((dims.embedding / dims.heads) as u32),
        )
        .add("llama.rope.freq_base", Value::F32(1_000_000.0))
        .add("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .add("tokenizer.ggml.model", "llama")
        .add("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))
        .add("tokenizer.ggml.scores", Value::Array(Array::F32(scores)))
        .add("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))
        .add("tokenizer.ggml.bos_token_id", Value::U32(BOS))
        .add("tokenizer.ggml.eos_token_id", Value::U32(EOS))
        .add("tokenizer.ggml.unknown_token_id", Value::U32(0))
        .add("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .add("tokenizer.ggml.add_eos_token", Value::Bool(false))
        .add("tokenizer.ggml.fim_pre_token_id", Value::U32(FIM_PREFIX))
        .add("tokenizer.ggml.fim_suf_token_id", Value::U32(FIM_SUFFIX))
        .add("tokenizer.ggml.fim_mid_token_id", Value::U32(FIM_MIDDLE))
        .add("tokenizer.ggml.eot_token_id", Value::U32(FIM_EOT));
    writer
}

/// Builds one variant's file contents.
pub fn generate(variant: Variant) -> Result<Vec<u8>, String> {
    let mut rng = SplitMix64::new(0xC0DE_11A3A);
    let mut writer = code_llama_writer(
        format!("codellama-lsp tiny {variant:?}"),
        &Dims {
            embedding: EMBEDDING,
            layers: LAYERS,
            heads: HEADS,
            kv_heads: KV_HEADS,
            feed_forward: FEED_FORWARD,
        },
    );

    // The output projection is tied to the embeddings (no output.weight), which halves the
    // largest tensor and exercises the tied-weights path.
    matrix(
        &mut writer,
        &mut rng,
        variant,
        "token_embd.weight",
        VOCAB_SIZE,
        EMBEDDING,
        1.0,
    )?;
    let head_dim = EMBEDDING / HEADS;
    let projection = 1.0 / (EMBEDDING as f32).sqrt() * 1.7;
    let kv_width = KV_HEADS * head_dim;
    let down_scale = 1.0 / 16.0 * 1.7;
    // (name, rows = outputs, row length = inputs, scale)
    let layer_matrices = [
        ("attn_q.weight", EMBEDDING, EMBEDDING, projection),
        ("attn_k.weight", kv_width, EMBEDDING, projection),
        ("attn_v.weight", kv_width, EMBEDDING, projection),
        ("attn_output.weight", EMBEDDING, EMBEDDING, projection),
        ("ffn_gate.weight", FEED_FORWARD, EMBEDDING, projection),
        ("ffn_up.weight", FEED_FORWARD, EMBEDDING, projection),
        ("ffn_down.weight", EMBEDDING, FEED_FORWARD, down_scale),
    ];
    for layer in 0..LAYERS {
        for (suffix, rows, row_len, scale) in layer_matrices {
            let name = format!("blk.{layer}.{suffix}");
            matrix(&mut writer, &mut rng, variant, &name, rows, row_len, scale)?;
        }
        for norm in ["attn_norm.weight", "ffn_norm.weight"] {
            norm_vector(&mut writer, &format!("blk.{layer}.{norm}"), &mut rng)?;
        }
    }
    norm_vector(&mut writer, "output_norm.weight", &mut rng)?;
    writer.to_bytes().map_err(|e: GgufError| e.to_string())
}

/// Adds a `[rows, row_len]` matrix of uniform values in `±scale`, stored as `variant` says.
fn matrix(
    writer: &mut GgufWriter,
    rng: &mut SplitMix64,
    variant: Variant,
    name: &str,
    rows: usize,
    row_len: usize,
    scale: f32,
) -> Result<(), String> {
    let values = (0..rows * row_len)
        .map(|_| rng.symmetric() * scale)
        .collect();
    let ggml_type = variant.matrix_type(row_len);
    let data = encode(values, rows, row_len, ggml_type)?;
    writer
        .add_tensor(name, &[row_len as u64, rows as u64], ggml_type, data)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Norm weights stay F32, as llama.cpp's converters write them: near 1, a little varied.
fn norm_vector(writer: &mut GgufWriter, name: &str, rng: &mut SplitMix64) -> Result<(), String> {
    let bytes = (0..EMBEDDING)
        .flat_map(|_| (1.0 + 0.2 * rng.symmetric()).to_le_bytes())
        .collect();
    writer
        .add_tensor(name, &[EMBEDDING as u64], GgmlType::F32, bytes)
        .map_err(|e| e.to_string())?;
    Ok(())
}
