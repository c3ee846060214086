//! codellama-lsp: a language server that keeps a quantized Code Llama on the local machine.
//!
//! See ARCHITECTURE.md for the map. The short version: `lsp` is a thin protocol layer over a pure,
//! IO-free core (`document`, `session`), and `cli` is the entry point.

pub mod actions;
pub mod assist;
pub mod cli;
pub mod completion;
pub mod context;
pub mod document;
pub mod engine;
pub mod eval;
pub mod fixtures;
pub mod lsp;
pub mod model;
pub mod model_host;
pub mod postprocess;
pub mod prompt;
pub mod remote;
pub mod session;
pub mod settings;
pub mod store;

#[cfg(test)]
mod test_support;

/// This build's version, as reported by `--version` and `serverInfo`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
