//! A defensive reader (and a small writer) for GGUF files, versions 2 and 3.
//!
//! The input is untrusted: every length, count and offset read from the file is checked against
//! the bytes that are actually left before anything is allocated or indexed, all arithmetic on
//! header values is checked, and every problem is reported as a [`GgufError`] that names the file
//! and, where it helps, the byte offset.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::Path;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Nested arrays deeper than this are rejected so that hostile files cannot exhaust the stack.
const MAX_ARRAY_NESTING: u32 = 8;
/// Smallest possible tensor info: empty name (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_SIZE: u64 = 32;
/// Smallest possible metadata entry: empty key (8), value type (4), one-byte value.
const MIN_KV_SIZE: u64 = 13;
/// First chunk read by [`GgufFile::read`]; it grows only when the header is larger.
const FIRST_READ_CHUNK: u64 = 4 << 20;

/// Everything that can go wrong while reading, querying or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{file}: cannot read file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a GGUF file (magic is '{magic}')")]
    NotGguf { file: String, magic: String },
    #[error("{file}: unsupported GGUF version {version}{hint}")]
    UnsupportedVersion {
        file: String,
        version: u32,
        hint: &'static str,
    },
    #[error(
        "{file}: truncated at byte {offset} while reading {context}: {needed} bytes needed, \
         file is {file_len} bytes"
    )]
    Truncated {
        file: String,
        offset: u64,
        needed: u64,
        context: String,
        file_len: u64,
    },
    #[error("{file}: at byte {offset}, in {context}: {problem}")]
    Malformed {
        file: String,
        offset: u64,
        context: String,
        problem: String,
    },
    #[error("{file}: tensor '{tensor}': {problem}")]
    InvalidTensor {
        file: String,
        tensor: String,
        problem: String,
    },
    #[error("{file}: tensor '{tensor}' has unknown ggml type id {type_id}")]
    UnknownTensorType {
        file: String,
        tensor: String,
        type_id: u32,
    },
    #[error("{file}: metadata key '{key}' is missing")]
    MissingKey { file: String, key: String },
    #[error("{file}: metadata key '{key}' is {found}, expected {expected}")]
    WrongType {
        file: String,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{file}: metadata key '{key}' has value {value}, which is not a valid {expected}")]
    OutOfRange {
        file: String,
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
}

// ---------------------------------------------------------------------------------------------
// ggml tensor types
// ---------------------------------------------------------------------------------------------

/// The ggml tensor element types this reader knows the storage layout of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// (type, id, name, elements per block, bytes per block), following ggml's block structs.
    const TABLE: [(GgmlType, u32, &'static str, u64, u64); 32] = [
        (GgmlType::F32, 0, "F32", 1, 4),
        (GgmlType::F16, 1, "F16", 1, 2),
        (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
        (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
        (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
        (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
        (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
        (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
        (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
        (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
        (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
        (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
        (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
        (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
        (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
        (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
        (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
        (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
        (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
        (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
        (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
        (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
        (GgmlType::I8, 24, "I8", 1, 1),
        (GgmlType::I16, 25, "I16", 1, 2),
        (GgmlType::I32, 26, "I32", 1, 4),
        (GgmlType::I64, 27, "I64", 1, 8),
        (GgmlType::F64, 28, "F64", 1, 8),
        (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
        (GgmlType::BF16, 30, "BF16", 1, 2),
        (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
        (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
        (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    ];

    fn entry(self) -> (GgmlType, u32, &'static str, u64, u64) {
        // The table is indexed by the enum's declaration order, which matches its row order.
        Self::TABLE[self as usize]
    }

    /// The type with ggml id `id`, or `None` for ids this reader does not know (or that ggml
    /// has removed, such as 4 and 5).
    pub fn from_id(id: u32) -> Option<Self> {
        Self::TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The ggml type id as stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// The name ggml uses for the type, e.g. `"Q4_K"`.
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Number of elements in one block.
    pub fn block_size(self) -> u64 {
        self.entry().3
    }

    /// Number of bytes one block occupies.
    pub fn type_size(self) -> u64 {
        self.entry().4
    }

    /// Bytes needed to store a tensor of this type with the given dims (fastest-varying first),
    /// or a plain-words reason why the dims are impossible.
    pub fn tensor_size(self, dims: &[u64]) -> Result<u64, String> {
        let Some((&row_len, rest)) = dims.split_first() else {
            return Err("has no dimensions".into());
        };
        if let Some(pos) = dims.iter().position(|&d| d == 0) {
            return Err(format!("dimension {pos} is zero (dims {dims:?})"));
        }
        // ggml stores element counts as i64, so the total must fit there as well.
        dims.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("element count overflows (dims {dims:?})"))?;
        if row_len % self.block_size() != 0 {
            return Err(format!(
                "row length {row_len} is not a multiple of the {} block size {}",
                self.name(),
                self.block_size()
            ));
        }
        let row_bytes = (row_len / self.block_size())
            .checked_mul(self.type_size())
            .ok_or_else(|| format!("byte size overflows (dims {dims:?})"))?;
        rest.iter()
            .try_fold(row_bytes, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("byte size overflows (dims {dims:?})"))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// metadata values
// ---------------------------------------------------------------------------------------------

/// GGUF metadata value type ids.
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;

    pub fn name(id: u32) -> &'static str {
        match id {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            BOOL => "bool",
            STRING => "string",
            ARRAY => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
            _ => "unknown",
        }
    }

    /// Bytes the smallest encoded value of this type occupies, used to bound counts before
    /// allocating; `None` for unknown types.
    pub fn min_size(id: u32) -> Option<u64> {
        Some(match id {
            U8 | I8 | BOOL => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            STRING => 8,
            ARRAY => 12,
            _ => return None,
        })
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array. Elements are stored compactly by type; nested arrays may each have their
/// own element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => vt::U8,
            Value::I8(_) => vt::I8,
            Value::U16(_) => vt::U16,
            Value::I16(_) => vt::I16,
            Value::U32(_) => vt::U32,
            Value::I32(_) => vt::I32,
            Value::F32(_) => vt::F32,
            Value::Bool(_) => vt::BOOL,
            Value::String(_) => vt::STRING,
            Value::Array(_) => vt::ARRAY,
            Value::U64(_) => vt::U64,
            Value::I64(_) => vt::I64,
            Value::F64(_) => vt::F64,
        }
    }

    /// Type name for messages, e.g. `"u32"` or `"array of string"`.
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", vt::name(a.elem_type_id())),
            v => vt::name(v.type_id()).to_string(),
        }
    }

    /// The value as an integer if it is one (of any width and signedness).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            // Integer-valued floats are sometimes written as integers (e.g. a rope base of 10000).
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for error messages (long strings and arrays are abbreviated).
    fn brief(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 40 => {
                format!("{:?}…", s.chars().take(40).collect::<String>())
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} elements]", a.len()),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            v => v.as_i128().map(|i| i.to_string()).unwrap_or_default(),
        }
    }
}

impl Array {
    fn elem_type_id(&self) -> u32 {
        match self {
            Array::U8(_) => vt::U8,
            Array::I8(_) => vt::I8,
            Array::U16(_) => vt::U16,
            Array::I16(_) => vt::I16,
            Array::U32(_) => vt::U32,
            Array::I32(_) => vt::I32,
            Array::F32(_) => vt::F32,
            Array::Bool(_) => vt::BOOL,
            Array::String(_) => vt::STRING,
            Array::Array(_) => vt::ARRAY,
            Array::U64(_) => vt::U64,
            Array::I64(_) => vt::I64,
            Array::F64(_) => vt::F64,
        }
    }

    /// Name of the element type, e.g. `"f32"`.
    pub fn elem_type_name(&self) -> &'static str {
        vt::name(self.elem_type_id())
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// The elements as i64 if this is an integer array whose values all fit.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => conv(v, |x| Some(x.into())),
            Array::I8(v) => conv(v, |x| Some(x.into())),
            Array::U16(v) => conv(v, |x| Some(x.into())),
            Array::I16(v) => conv(v, |x| Some(x.into())),
            Array::U32(v) => conv(v, |x| Some(x.into())),
            Array::I32(v) => conv(v, |x| Some(x.into())),
            Array::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            Array::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The elements as f32 if this is an f32 or f64 array.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        match self {
            Array::F32(v) => Some(v.clone()),
            Array::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$variant(v) }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Self { Value::Array(Array::$variant(v)) }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_string())
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Self {
        Value::Array(v)
    }
}

// ---------------------------------------------------------------------------------------------
// metadata map with typed accessors
// ---------------------------------------------------------------------------------------------

/// Metadata entries in file order, with typed accessors whose errors name the file and key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    file: String,
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty map; `file` is used in error messages.
    pub fn new(file: &str) -> Self {
        Metadata {
            file: file.to_string(),
            ..Default::default()
        }
    }

    /// Adds an entry or replaces the value of an existing key (keeping its position).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value.into(),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value.into()));
            }
        }
    }

    pub fn file_name(&self) -> &str {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in file order.
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            file: self.file.clone(),
            key: key.to_string(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            file: self.file.clone(),
            key: key.to_string(),
            expected,
            found: v.type_name(),
        }
    }

    fn int_as<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T, GgufError> {
        let v = self.require(key)?;
        let i = v
            .as_i128()
            .ok_or_else(|| self.wrong_type(key, "an integer", v))?;
        T::try_from(i).map_err(|_| GgufError::OutOfRange {
            file: self.file.clone(),
            key: key.to_string(),
            value: i.to_string(),
            expected,
        })
    }

    /// Any integer value that fits in u32 (writers vary between u32, i32 and u64).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.int_as(key, "u32")
    }

    /// Any integer value that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.int_as(key, "u64")
    }

    /// Any integer value that fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.int_as(key, "i64")
    }

    /// An f32 or f64 value (or an integer, converted).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| self.wrong_type(key, "a number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "bool", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "string", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| self.wrong_type(key, "an array", v))
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        let v = self.require(key)?;
        v.as_array()
            .and_then(Array::as_strings)
            .ok_or_else(|| self.wrong_type(key, "array of string", v))
    }

    /// An f32 or f64 array as f32s.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let v = self.require(key)?;
        v.as_array()
            .and_then(Array::to_f32_vec)
            .ok_or_else(|| self.wrong_type(key, "array of f32", v))
    }

    /// An integer array (any element type whose values fit in i64) as i64s.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let v = self.require(key)?;
        match v.as_array() {
            Some(a) => a.to_i64_vec().ok_or_else(|| match a {
                Array::U64(_) => GgufError::OutOfRange {
                    file: self.file.clone(),
                    key: key.to_string(),
                    value: "above i64::MAX".into(),
                    expected: "i64",
                },
                _ => self.wrong_type(key, "array of integers", v),
            }),
            None => Err(self.wrong_type(key, "array of integers", v)),
        }
    }

    /// Like [`Metadata::get_u32`] but `Ok(None)` when the key is absent.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.optional(key, Self::get_u32)
    }

    /// Like [`Metadata::get_f32`] but `Ok(None)` when the key is absent.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.optional(key, Self::get_f32)
    }

    /// Like [`Metadata::get_bool`] but `Ok(None)` when the key is absent.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.optional(key, Self::get_bool)
    }

    /// Like [`Metadata::get_str`] but `Ok(None)` when the key is absent.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.optional(key, Self::get_str)
    }

    fn optional<'s, T>(
        &'s self,
        key: &str,
        f: impl FnOnce(&'s Self, &str) -> Result<T, GgufError>,
    ) -> Result<Option<T>, GgufError> {
        if self.contains_key(key) {
            f(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tensor infos and the parsed file
// ---------------------------------------------------------------------------------------------

/// Where a tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, fastest-varying first (`[row_len, rows, ...]`).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data relative to the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        // Validated not to overflow when the file was parsed.
        self.dims.iter().product()
    }
}

/// A parsed GGUF header: metadata, tensor infos and the data-section layout.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor's offset.
    pub alignment: u64,
    /// Absolute offset of the data section. For a file without tensors it may equal or exceed
    /// the file length (writers do not always pad such files).
    pub data_offset: u64,
    pub file_len: u64,
}

impl GgufFile {
    /// Reads and validates the header of the GGUF file at `path`. Only the header is read into
    /// memory (in growing chunks), not the tensor data.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let io_err = |source| GgufError::Io {
            file: name.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut reader = std::io::BufReader::new(file);
        let mut buf = Vec::new();
        let mut want = FIRST_READ_CHUNK.min(file_len);
        loop {
            let more = want.saturating_sub(buf.len() as u64);
            (&mut reader)
                .take(more)
                .read_to_end(&mut buf)
                .map_err(io_err)?;
            // A file that shrank while being read is reported as truncated by the parser.
            let len = if (buf.len() as u64) < want {
                buf.len() as u64
            } else {
                file_len
            };
            match parse_prefix(&buf, len, &name) {
                Err(Fail::NeedMore(end)) if end > want => {
                    want = end.max(want.saturating_mul(2)).min(file_len);
                }
                Err(Fail::NeedMore(_)) => {
                    // Unreachable in practice: the parser asked for bytes it already has.
                    return Err(GgufError::Invalid {
                        file: name,
                        problem: "internal error while reading the header".into(),
                    });
                }
                Err(Fail::Error(e)) => return Err(e),
                Ok(f) => return Ok(f),
            }
        }
    }

    /// Parses and validates a whole GGUF file held in memory.
    pub fn parse(bytes: &[u8], name_for_errors: &str) -> Result<Self, GgufError> {
        match parse_prefix(bytes, bytes.len() as u64, name_for_errors) {
            Ok(f) => Ok(f),
            Err(Fail::Error(e)) => Err(e),
            // Cannot happen when the buffer is the whole file; report it rather than panic.
            Err(Fail::NeedMore(_)) => Err(GgufError::Invalid {
                file: name_for_errors.to_string(),
                problem: "internal error while parsing".into(),
            }),
        }
    }

    pub fn file_name(&self) -> &str {
        self.metadata.file_name()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Absolute file offset of a tensor's data.
    pub fn tensor_file_offset(&self, t: &TensorInfo) -> u64 {
        // Validated not to overflow when the file was parsed.
        self.data_offset + t.offset
    }

    /// The bytes of `t` within the full file contents `file_bytes`, or `None` if they are not
    /// there (e.g. `file_bytes` is not the file this header came from).
    pub fn tensor_data<'b>(&self, file_bytes: &'b [u8], t: &TensorInfo) -> Option<&'b [u8]> {
        let start = usize::try_from(self.data_offset.checked_add(t.offset)?).ok()?;
        let end = start.checked_add(usize::try_from(t.size).ok()?)?;
        file_bytes.get(start..end)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.metadata.get_u32(key)
    }
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.metadata.get_u64(key)
    }
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.metadata.get_i64(key)
    }
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.metadata.get_f32(key)
    }
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.metadata.get_bool(key)
    }
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.metadata.get_str(key)
    }
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        self.metadata.get_array(key)
    }
}

// ---------------------------------------------------------------------------------------------
// parser
// ---------------------------------------------------------------------------------------------

/// Internal parse failure: a real error, or (only when parsing a prefix of a file) a request
/// for the first `n` bytes of the file.
enum Fail {
    Error(GgufError),
    NeedMore(u64),
}

impl From<GgufError> for Fail {
    fn from(e: GgufError) -> Self {
        Fail::Error(e)
    }
}

/// What the parser was reading, for error messages.
#[derive(Clone, Copy)]
enum Ctx<'k> {
    Header,
    Key(u64),
    Value(u64, &'k str),
    TensorInfos,
    TensorInfo(u64),
}

impl fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ctx::Header => write!(f, "the header"),
            Ctx::Key(i) => write!(f, "the key of metadata entry #{i}"),
            Ctx::Value(i, k) => write!(
                f,
                "the value of metadata key '{}' (entry #{i})",
                shown_name(k)
            ),
            Ctx::TensorInfos => write!(f, "the tensor info table"),
            Ctx::TensorInfo(i) => write!(f, "tensor info #{i}"),
        }
    }
}

/// Bounds-checked little-endian cursor over (a prefix of) the file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    file_len: u64,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left in the whole file (not just in the buffer).
    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.offset())
    }

    fn malformed(&self, offset: u64, ctx: Ctx, problem: String) -> Fail {
        Fail::Error(GgufError::Malformed {
            file: self.file.to_string(),
            offset,
            context: ctx.to_string(),
            problem,
        })
    }

    fn take(&mut self, n: u64, ctx: Ctx) -> Result<&'a [u8], Fail> {
        let start = self.offset();
        if n > self.remaining() {
            return Err(Fail::Error(GgufError::Truncated {
                file: self.file.to_string(),
                offset: start,
                needed: n,
                context: ctx.to_string(),
                file_len: self.file_len,
            }));
        }
        let end = start + n; // cannot overflow: n <= file_len - start
        if end > self.buf.len() as u64 {
            return Err(Fail::NeedMore(end));
        }
        let bytes = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, ctx: Ctx) -> Result<[u8; N], Fail> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, ctx)?);
        Ok(out)
    }

    fn u32(&mut self, ctx: Ctx) -> Result<u32, Fail> {
        self.array(ctx).map(u32::from_le_bytes)
    }

    fn u64(&mut self, ctx: Ctx) -> Result<u64, Fail> {
        self.array(ctx).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in the rest of the
    /// file, so that the count can safely size an allocation.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &str,
        at: u64,
        ctx: Ctx,
    ) -> Result<usize, Fail> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|b| b <= self.remaining());
        match usize::try_from(count) {
            Ok(n) if fits => Ok(n),
            _ => Err(self.malformed(
                at,
                ctx,
                format!(
                    "{what} count {count} cannot fit in the {} bytes left in the file",
                    self.remaining()
                ),
            )),
        }
    }

    fn string(&mut self, ctx: Ctx) -> Result<String, Fail> {
        let at = self.offset();
        let len = self.u64(ctx)?;
        if len > self.remaining() {
            return Err(self.malformed(
                at,
                ctx,
                format!(
                    "string length {len} exceeds the {} bytes left in the file",
                    self.remaining()
                ),
            ));
        }
        let bytes = self.take(len, ctx)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.malformed(
                at + 8 + e.utf8_error().valid_up_to() as u64,
                ctx,
                "string is not valid UTF-8".into(),
            )
        })
    }

    fn value(&mut self, ty: u32, depth: u32, at: u64, ctx: Ctx) -> Result<Value, Fail> {
        Ok(match ty {
            vt::U8 => Value::U8(u8::from_le_bytes(self.array(ctx)?)),
            vt::I8 => Value::I8(i8::from_le_bytes(self.array(ctx)?)),
            vt::U16 => Value::U16(u16::from_le_bytes(self.array(ctx)?)),
            vt::I16 => Value::I16(i16::from_le_bytes(self.array(ctx)?)),
            vt::U32 => Value::U32(u32::from_le_bytes(self.array(ctx)?)),
            vt::I32 => Value::I32(i32::from_le_bytes(self.array(ctx)?)),
            vt::F32 => Value::F32(f32::from_le_bytes(self.array(ctx)?)),
            vt::U64 => Value::U64(u64::from_le_bytes(self.array(ctx)?)),
            vt::I64 => Value::I64(i64::from_le_bytes(self.array(ctx)?)),
            vt::F64 => Value::F64(f64::from_le_bytes(self.array(ctx)?)),
            vt::BOOL => {
                let at = self.offset();
                let [b] = self.array(ctx)?;
                Value::Bool(self.bool_byte(b, at, ctx)?)
            }
            vt::STRING => Value::String(self.string(ctx)?),
            vt::ARRAY => Value::Array(self.array_value(depth, ctx)?),
            other => {
                return Err(self.malformed(at, ctx, format!("unknown value type {other}")));
            }
        })
    }

    fn bool_byte(&self, b: u8, at: u64, ctx: Ctx) -> Result<bool, Fail> {
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.malformed(at, ctx, format!("invalid bool value {b}"))),
        }
    }

    /// Reads `n` fixed-size little-endian elements in one bounds-checked slice.
    fn fixed<const N: usize, T>(
        &mut self,
        n: usize,
        ctx: Ctx,
        conv: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, Fail> {
        // n * N fits: check_count already bounded n * N by the bytes left.
        let bytes = self.take((n as u64) * N as u64, ctx)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }

    fn array_value(&mut self, depth: u32, ctx: Ctx) -> Result<Array, Fail> {
        let at = self.offset();
        if depth >= MAX_ARRAY_NESTING {
            return Err(self.malformed(
                at,
                ctx,
                format!("arrays nested more than {MAX_ARRAY_NESTING} deep"),
            ));
        }
        let elem = self.u32(ctx)?;
        let Some(min) = vt::min_size(elem) else {
            return Err(self.malformed(at, ctx, format!("unknown array element type {elem}")));
        };
        let count = self.u64(ctx)?;
        let n = self.check_count(count, min, "array element", at, ctx)?;
        Ok(match elem {
            vt::U8 => Array::U8(self.fixed(n, ctx, u8::from_le_bytes)?),
            vt::I8 => Array::I8(self.fixed(n, ctx, i8::from_le_bytes)?),
            vt::U16 => Array::U16(self.fixed(n, ctx, u16::from_le_bytes)?),
            vt::I16 => Array::I16(self.fixed(n, ctx, i16::from_le_bytes)?),
            vt::U32 => Array::U32(self.fixed(n, ctx, u32::from_le_bytes)?),
            vt::I32 => Array::I32(self.fixed(n, ctx, i32::from_le_bytes)?),
            vt::F32 => Array::F32(self.fixed(n, ctx, f32::from_le_bytes)?),
            vt::U64 => Array::U64(self.fixed(n, ctx, u64::from_le_bytes)?),
            vt::I64 => Array::I64(self.fixed(n, ctx, i64::from_le_bytes)?),
            vt::F64 => Array::F64(self.fixed(n, ctx, f64::from_le_bytes)?),
            vt::BOOL => {
                let start = self.offset();
                let bytes = self.take(n as u64, ctx)?;
                let mut out = Vec::with_capacity(n);
                for (i, &b) in bytes.iter().enumerate() {
                    out.push(self.bool_byte(b, start + i as u64, ctx)?);
                }
                Array::Bool(out)
            }
            vt::STRING => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.string(ctx)?);
                }
                Array::String(out)
            }
            _ => {
                // vt::ARRAY: every element is itself (type, count, elements).
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.array_value(depth + 1, ctx)?);
                }
                Array::Array(out)
            }
        })
    }
}

/// A key or tensor name from the file as an error message shows it: on one line, and short
/// (a damaged length can make one of them anything up to the whole file).
fn shown_name(name: &str) -> String {
    const MAX_CHARS: usize = 80;
    let mut shown: String = name
        .chars()
        .take(MAX_CHARS)
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect();
    if name.chars().nth(MAX_CHARS).is_some() {
        shown.push('…');
    }
    shown
}

fn escape_magic(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'\'' | b'\\' => format!("\\{}", b as char),
            0x20..=0x7e => (b as char).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

fn align_up(x: u64, align: u64) -> Option<u64> {
    // align is a power of two
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Parses the header from `buf`, the first bytes of a file that is `file_len` bytes long.
fn parse_prefix(buf: &[u8], file_len: u64, file: &str) -> Result<GgufFile, Fail> {
    let mut r = Reader {
        buf,
        pos: 0,
        file_len,
        file,
    };
    let err = |e: GgufError| Fail::Error(e);

    let head = &buf[..buf.len().min(4)];
    if head != &GGUF_MAGIC[..head.len()] || (file_len == 0) {
        return Err(err(GgufError::NotGguf {
            file: file.to_string(),
            magic: escape_magic(head),
        }));
    }
    r.take(4, Ctx::Header)?;
    let version = r.u32(Ctx::Header)?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        let hint = if swapped == 2 || swapped == 3 {
            " (the file appears to be big-endian, which is not supported)"
        } else {
            ""
        };
        return Err(err(GgufError::UnsupportedVersion {
            file: file.to_string(),
            version,
            hint,
        }));
    }
    let tensor_count = r.u64(Ctx::Header)?;
    let kv_count = r.u64(Ctx::Header)?;

    // Metadata.
    let at = r.offset();
    let n_kv = r.check_count(kv_count, MIN_KV_SIZE, "metadata entry", at, Ctx::Header)?;
    let mut metadata = Metadata::new(file);
    metadata.entries.reserve(n_kv);
    for i in 0..kv_count {
        let key_at = r.offset();
        let key = r.string(Ctx::Key(i))?;
        let ctx = Ctx::Value(i, &key);
        let ty_at = r.offset();
        let ty = r.u32(ctx)?;
        let value = r.value(ty, 0, ty_at, ctx)?;
        if metadata.contains_key(&key) {
            return Err(r.malformed(
                key_at,
                Ctx::Key(i),
                format!("duplicate key '{}'", shown_name(&key)),
            ));
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i128() {
            Some(a) if a > 0 && a <= 1 << 30 && (a & (a - 1)) == 0 => a as u64,
            _ => {
                return Err(err(GgufError::Invalid {
                    file: file.to_string(),
                    problem: format!(
                        "general.alignment is {} ({}); it must be a power of two",
                        v.brief(),
                        v.type_name()
                    ),
                }));
            }
        },
    };

    // Tensor infos.
    let at = r.offset();
    let n_tensors = r.check_count(
        tensor_count,
        MIN_TENSOR_INFO_SIZE,
        "tensor",
        at,
        Ctx::TensorInfos,
    )?;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut names: HashSet<String> = HashSet::with_capacity(n_tensors);
    for i in 0..tensor_count {
        let ctx = Ctx::TensorInfo(i);
        let name = r.string(ctx)?;
        let dims_at = r.offset();
        let n_dims = r.u32(ctx)?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(r.malformed(
                dims_at,
                ctx,
                format!(
                    "tensor '{}' has {n_dims} dimensions (must be 1 to {MAX_DIMS})",
                    shown_name(&name)
                ),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(ctx)?);
        }
        let type_id = r.u32(ctx)?;
        let offset = r.u64(ctx)?;
        let invalid = |problem: String| {
            err(GgufError::InvalidTensor {
                file: file.to_string(),
                tensor: shown_name(&name),
                problem,
            })
        };
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(err(GgufError::UnknownTensorType {
                file: file.to_string(),
                tensor: shown_name(&name),
                type_id,
            }));
        };
        let size = ggml_type.tensor_size(&dims).map_err(&invalid)?;
        if !names.insert(name.clone()) {
            return Err(invalid(format!("duplicate tensor name (tensor info #{i})")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        });
    }

    let data_offset = align_up(r.offset(), alignment).ok_or_else(|| {
        err(GgufError::Invalid {
            file: file.to_string(),
            problem: "data section offset overflows".into(),
        })
    })?;
    for t in &tensors {
        let invalid = |problem: String| {
            err(GgufError::InvalidTensor {
                file: file.to_string(),
                tensor: shown_name(&t.name),
                problem,
            })
        };
        if t.offset % alignment != 0 {
            return Err(invalid(format!(
                "data offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_len => {}
            _ => {
                return Err(invalid(format!(
                    "its {} bytes of {} data at data-section offset {} (file byte {}) extend \
                     past the end of the file ({file_len} bytes)",
                    t.size,
                    t.ggml_type,
                    t.offset,
                    start.map_or_else(|| "overflow".to_string(), |s| s.to_string()),
                )));
            }
        }
    }
    // Two tensors sharing bytes cannot both hold their weights: the file is damaged (writers,
    // llama.cpp's included, lay tensors out one after another).
    let mut extents: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.size, t.name.as_str()))
        .collect();
    extents.sort_unstable();
    if let Some(pair) = extents.windows(2).find(|pair| pair[1].0 < pair[0].1) {
        return Err(err(GgufError::Invalid {
            file: file.to_string(),
            problem: format!(
                "tensors {} and {} overlap in the file",
                pair[0].2, pair[1].2
            ),
        }));
    }

    Ok(GgufFile {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        file_len,
    })
}

// ---------------------------------------------------------------------------------------------
// writer
// ---------------------------------------------------------------------------------------------

/// A tensor for [`GgufWriter::write_streamed`]: its data is produced while writing.
#[derive(Debug, Clone)]
pub struct StreamedTensor {
    pub name: String,
    /// ggml order: the row length first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

/// Builds a GGUF v3 file from metadata and raw tensor bytes (for deterministic test fixtures).
#[derive(Debug, Clone)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Metadata::new("GgufWriter"),
            tensors: Vec::new(),
        }
    }

    /// Adds a metadata entry (replacing the value if the key exists).
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        self.metadata.insert(key, value);
        self
    }

    fn invalid(&self, problem: String) -> GgufError {
        GgufError::Invalid {
            file: self.metadata.file.clone(),
            problem,
        }
    }

    /// Adds a tensor; `data` must be exactly the size its type and dims require.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(self.invalid(format!("tensor '{name}' must have 1 to 4 dims")));
        }
        let size = ggml_type
            .tensor_size(dims)
            .map_err(|p| self.invalid(format!("tensor '{name}' {p}")))?;
        if size != data.len() as u64 {
            return Err(self.invalid(format!(
                "tensor '{name}' needs {size} bytes of data, got {}",
                data.len()
            )));
        }
        if self.tensors.iter().any(|(t, _)| t.name == name) {
            return Err(self.invalid(format!("duplicate tensor '{name}'")));
        }
        let info = TensorInfo {
            name,
            dims: dims.to_vec(),
            ggml_type,
            offset: 0, // assigned when writing
            size,
        };
        self.tensors.push((info, data));
        Ok(self)
    }

    /// The complete file contents.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let infos: Vec<&TensorInfo> = self.tensors.iter().map(|(t, _)| t).collect();
        let (mut out, alignment) = self.header(&infos)?;
        for (_, data) in &self.tensors {
            pad_to(&mut out, alignment);
            out.extend_from_slice(data);
        }
        if !self.tensors.is_empty() {
            pad_to(&mut out, alignment);
        }
        Ok(out)
    }

    /// The header (magic, metadata, tensor infos with their data offsets) and the alignment of
    /// the data section, which starts at the next multiple of it.
    fn header(&self, tensors: &[&TensorInfo]) -> Result<(Vec<u8>, u64), GgufError> {
        let alignment = match self.metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(_) => {
                return Err(self.invalid("general.alignment must be a u32 power of two".into()));
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in self.metadata.iter() {
            put_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + t.size, alignment)
                .ok_or_else(|| self.invalid("tensor data too large".into()))?;
        }
        Ok((out, alignment))
    }

    /// Writes a file with this writer's metadata and `tensors` (instead of those added with
    /// [`add_tensor`](Self::add_tensor)), whose data comes from `data(i)`, called once per
    /// tensor in order: only one tensor's bytes need to be in memory at a time, so files of
    /// gigabytes can be written. `data` must return exactly the size the type and dims require.
    pub fn write_streamed(
        &self,
        out: &mut impl std::io::Write,
        tensors: &[StreamedTensor],
        mut data: impl FnMut(usize) -> Result<Vec<u8>, String>,
    ) -> Result<(), GgufError> {
        let mut infos: Vec<TensorInfo> = Vec::with_capacity(tensors.len());
        let mut names = HashSet::new();
        for t in tensors {
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
                return Err(self.invalid(format!("tensor '{}' must have 1 to 4 dims", t.name)));
            }
            let size = t
                .ggml_type
                .tensor_size(&t.dims)
                .map_err(|p| self.invalid(format!("tensor '{}' {p}", t.name)))?;
            if !names.insert(t.name.as_str()) {
                return Err(self.invalid(format!("duplicate tensor '{}'", t.name)));
            }
            infos.push(TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                offset: 0,
                size,
            });
        }
        let io = |source: std::io::Error| GgufError::Io {
            file: self.metadata.file.clone(),
            source,
        };
        let (header, alignment) = self.header(&infos.iter().collect::<Vec<_>>())?;
        let mut written = header.len() as u64;
        out.write_all(&header).map_err(io)?;
        let pad = |written: &mut u64, out: &mut dyn std::io::Write| {
            let padding = written.div_ceil(alignment) * alignment - *written;
            *written += padding;
            out.write_all(&vec![0; padding as usize])
        };
        for (index, info) in infos.iter().enumerate() {
            pad(&mut written, out).map_err(io)?;
            let bytes = data(index)
                .map_err(|problem| self.invalid(format!("tensor '{}': {problem}", info.name)))?;
            if bytes.len() as u64 != info.size {
                return Err(self.invalid(format!(
                    "tensor '{}' needs {} bytes of data, got {}",
                    info.name,
                    info.size,
                    bytes.len()
                )));
            }
            out.write_all(&bytes).map_err(io)?;
            written += info.size;
        }
        if !infos.is_empty() {
            pad(&mut written, out).map_err(io)?;
        }
        out.flush().map_err(io)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| GgufError::Io {
            file: path.display().to_string(),
            source,
        })
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let len = out.len() as u64;
    let padded = len.div_ceil(alignment) * alignment;
    out.resize(padded as usize, 0);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.elem_type_id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
    }
}

#[cfg(test)]
mod tests;
