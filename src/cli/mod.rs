//! The command line: argument parsing, logging set-up and dispatch to the subcommands.
//!
//! Each subcommand is one variant of [`Command`] and one `run` function in a module of its own;
//! later features (`complete`, `models`, `docstring`, `edit`) add theirs the same way.

use std::io::IsTerminal;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::lsp::{ClientLogLayer, ClientLogReceiver};

mod assist_commands;
mod backend;
mod bandwidth;
mod complete;
mod eval;
mod lsp_bench;
mod model_commands;
mod models;
mod typing_bench;

const EXAMPLES: &str = "\
Examples:
  codellama-lsp                      Run the language server on stdin/stdout (what editors do)
  codellama-lsp serve --stdio        The same, spelled out
  printf 'def add(a, b):\n    <FILL_ME>\n' | codellama-lsp complete --model model.gguf --stdin
  codellama-lsp complete --model model.gguf src/main.py --line 10 --character 4 --json
  codellama-lsp --backend http://gpu-box:8080
                                     Serve completions from a team's llama-server
  codellama-lsp complete --backend vllm:http://gpu-box:8000 --model model.gguf --stdin < hole.py
  codellama-lsp docstring --model model.gguf src/shapes.py --line 12 --diff
  codellama-lsp edit --model model.gguf src/shapes.py --range 12:1-20:1 \
      --instruction 'add type hints' --in-place
  echo 'def f():' | codellama-lsp tokenize --model model.gguf
  codellama-lsp generate --model model.gguf --prompt 'def fib(n):' --max-tokens 32
  codellama-lsp bench --model model.gguf --json
  codellama-lsp bench --lsp --model model.gguf --scenarios idle,assist
                                     Editor latency over real LSP (a scripted typing session)
  codellama-lsp fixtures --shape 1b --quant q4_k_m --out random-1b.gguf
                                     A random 1B-shape model for benchmarks
  codellama-lsp eval --model model.gguf --seed 1 --report a.json
                                     Score completions on holes punched into real code
  codellama-lsp models pull          Download the default model (Code Llama 7B Instruct Q4_K_M)
  codellama-lsp models info TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf --json
  codellama-lsp --log-level debug    Run the server with detailed logs on stderr
  RUST_LOG=codellama_lsp=trace codellama-lsp
                                     Fine-grained log filters (see tracing-subscriber's EnvFilter)

Logs go to stderr and, while serving, to the editor's output panel (window/logMessage);
stdout carries only LSP messages.";

/// A language server that runs Code Llama on your machine: inline completions, docstrings and
/// chat edits for any LSP editor, with nothing sent over the network.
#[derive(Debug, Parser)]
#[command(name = "codellama-lsp", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Log verbosity on stderr (overrides RUST_LOG).
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

    /// Threads for the model's CPU work (default: the physical cores this process may use).
    #[arg(long, global = true, value_name = "N", env = "CODELLAMA_THREADS")]
    pub threads: Option<std::num::NonZeroUsize>,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options for running the server when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the language server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Complete code at a cursor (FILE --line L --character C, or --stdin with a <FILL_ME> hole).
    Complete(complete::CompleteArgs),
    /// Write the docstring of the function, method or type at a line (FILE --line L).
    Docstring(assist_commands::DocstringArgs),
    /// Rewrite a range of a file as instructed (FILE --range L1:C1-L2:C2 --instruction TEXT).
    Edit(assist_commands::EditArgs),
    /// List, download, inspect and verify models (GGUF files and owner/repo:file.gguf specs).
    Models(models::ModelsArgs),
    /// Print the token ids of the UTF-8 text on stdin as one JSON array.
    Tokenize(model_commands::TokenizeArgs),
    /// Generate text from a prompt with a GGUF model.
    Generate(model_commands::GenerateArgs),
    /// Measure prefill and decode speed, the cost of a keystroke with and without KV reuse, and
    /// peak memory.
    Bench(model_commands::BenchArgs),
    /// Measure completion quality: holes punched into real code, filled by the model, scored.
    Eval(eval::EvalArgs),
    /// Write the project's tiny deterministic test models (for developers).
    Fixtures(model_commands::FixturesArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Speak LSP on stdin/stdout. This is the only transport, so the flag is optional; editors
    /// (vscode-languageclient among them) pass it anyway.
    #[arg(long)]
    pub stdio: bool,
    /// The model to serve: a GGUF file or owner/repo:file.gguf on the Hugging Face hub (default:
    /// Code Llama 7B Instruct Q4_K_M, downloaded once). The editor's "model" setting overrides it.
    #[arg(long, value_name = "PATH|SPEC")]
    pub model: Option<String>,
    /// Where to run the model: auto, cpu, cuda, cuda:N or metal (the editor's "device" setting
    /// overrides it).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<crate::model::DeviceSpec>,
    /// How the KV cache stores keys and values: f16 (the default; half the memory of f32) or
    /// f32 (the editor's "kvType" setting overrides it).
    #[arg(long, value_name = "f16|f32")]
    pub kv_type: Option<crate::model::KvType>,
    /// Where the model runs (the editor's "backend" setting overrides it).
    #[command(flatten)]
    pub backend: backend::BackendArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn as_filter(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Parses the command line, runs the chosen command and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // The server's options (`codellama-lsp --model M`) belong to serving; with a subcommand they
    // are a mistake. (clap's `args_conflicts_with_subcommands` would also reject the global
    // `--log-level` before a subcommand, so this is checked here.)
    let serve_options = cli.serve.stdio
        || cli.serve.model.is_some()
        || cli.serve.device.is_some()
        || cli.serve.kv_type.is_some()
        || cli.serve.backend.backend.is_some();
    if serve_options && !matches!(cli.command, None | Some(Command::Serve(_))) {
        eprintln!(
            "codellama-lsp: error: --stdio, --model, --device, --kv-type and --backend before a subcommand are options of the server; put them after the subcommand"
        );
        return 2;
    }
    // The server logs at info by default (its stderr is the editor's log); commands whose output
    // is the point stay quiet unless asked.
    let serving = matches!(cli.command, None | Some(Command::Serve(_)));
    // Before any other thread exists: this may set candle's thread-count variable.
    crate::model::kernels::use_threads(cli.threads.map(std::num::NonZeroUsize::get));
    let client_log = init_logging(cli.log_level, if serving { "info" } else { "warn" });
    let outcome = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => return run_serve(client_log, &args),
        Command::Complete(args) => complete::run(&args),
        Command::Docstring(args) => assist_commands::docstring(&args),
        Command::Edit(args) => assist_commands::edit(&args),
        Command::Models(args) => models::run(&args),
        Command::Tokenize(args) => model_commands::tokenize(&args),
        Command::Generate(args) => model_commands::generate(&args),
        Command::Bench(args) => model_commands::bench(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Fixtures(args) => model_commands::fixtures(&args),
    };
    match outcome {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("codellama-lsp: error: {}", describe(&error));
            1
        }
    }
}

/// The error and its causes on one line, skipping causes the message already quotes (our error
/// types include their source's text in their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    // One line, whatever a file's keys and names hold (a key read with a damaged length can
    // end in a newline).
    if message.contains(char::is_control) {
        message = message
            .chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect();
    }
    message
}

/// Logs go to stderr (never stdout: it carries LSP frames) and, while serving, to the editor.
/// `--log-level` wins over `RUST_LOG`; with neither, `default`.
fn init_logging(level: Option<LogLevel>, default: &str) -> ClientLogReceiver {
    let filter = match level {
        Some(level) => EnvFilter::new(level.as_filter()),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let (client_layer, receiver) = ClientLogLayer::new();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = tracing_subscriber::registry()
        .with(stderr.and_then(client_layer).with_filter(filter))
        .try_init();
    receiver
}

fn run_serve(client_log: ClientLogReceiver, args: &ServeArgs) -> i32 {
    let mut settings = crate::settings::Settings::default();
    if let Some(model) = &args.model {
        settings.model = Some(model.clone());
    }
    if let Some(device) = args.device {
        settings.device = device;
    }
    if let Some(kv_type) = args.kv_type {
        settings.kv_type = kv_type;
    }
    match args.backend.choice() {
        Ok(backend) => settings.backend = backend,
        Err(error) => {
            eprintln!("codellama-lsp: error: {error}");
            return 2;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Prompt building runs on blocking threads: a burst of requests must not start hundreds
        // of them (each thread costs a stack and, with glibc, a malloc arena that stays).
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("codellama-lsp: could not start the async runtime: {error}");
            return 1;
        }
    };
    runtime.block_on(crate::lsp::serve_stdio(client_log, settings))
    // The runtime is not dropped gracefully on purpose: tokio's stdin reader sits in a blocking
    // read that only the editor can end, so `main` exits the process instead of waiting for it.
}
