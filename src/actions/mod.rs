//! Code actions, planned without IO: which definition a docstring is for and how it is written,
//! what a chat edit asks and how its answer becomes minimal edits. Plain strings and byte
//! offsets in, plain values out; `assist` runs them against a model, `lsp` speaks the protocol.

pub mod docstring;
pub mod edit;
pub mod language;
pub mod target;

pub use language::Language;
