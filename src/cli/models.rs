//! `models list | pull | info | verify`, and `--model` for every command: a GGUF path or a hub
//! spec (`owner/repo:file.gguf`), downloaded once into the Hugging Face cache with a progress bar.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::model::gguf::GgufFile;
use crate::model::summary::{self, ModelSummary};
use crate::model::{KvType, tokenizer_for};
use crate::store::{self, DownloadProgress, ModelSpec, Store};

/// What `--model` names: a local GGUF file or `owner/repo:file.gguf` on the Hugging Face hub.
#[derive(Clone, Debug)]
pub struct ModelRef(ModelSpec);

impl FromStr for ModelRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse().map(Self)
    }
}

impl ModelRef {
    /// The local file: the path, or the hub file from the cache, downloaded if needed.
    pub fn path(&self) -> Result<PathBuf> {
        resolve(&self.0)
    }
}

/// Resolves a spec, downloading with a progress bar on stderr (a line when it is not a terminal).
fn resolve(spec: &ModelSpec) -> Result<PathBuf> {
    let hub = match spec {
        ModelSpec::Path(path) => return Ok(path.clone()),
        ModelSpec::Hub(hub) => hub,
    };
    let store = Store::from_env();
    if let Some(path) = store.cached(hub) {
        return Ok(path);
    }
    if !store.offline {
        eprintln!(
            "codellama-lsp: downloading {hub} into {}",
            store.cache_dir.display()
        );
    }
    let bar = Arc::new(Bar::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(store.fetch(hub, bar.clone()));
    bar.bar.finish_and_clear();
    let path = outcome?;
    eprintln!("codellama-lsp: {hub} is at {}", path.display());
    Ok(path)
}

struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }
}

impl DownloadProgress for Bar {
    fn started(&self, file: &str, total: u64) {
        self.bar.set_length(total);
        self.bar.set_message(file.to_owned());
    }

    fn advanced(&self, done: u64, _: u64) {
        self.bar.set_position(done);
    }

    fn verifying(&self) {
        self.bar.set_message("verifying the checksum");
    }
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// The GGUF models in the Hugging Face cache ($HF_HOME/hub): size, architecture,
    /// quantization, context and whether they can infill.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download a model into the cache (resuming a broken download) and print its path.
    Pull {
        /// owner/repo:file.gguf (default: the server's default model).
        #[arg(default_value = store::DEFAULT_MODEL)]
        spec: String,
    },
    /// What a GGUF file holds: architecture, vocabulary, context, quantization, infilling.
    Info {
        /// A GGUF file or owner/repo:file.gguf.
        model: ModelRef,
        /// The KV cache type the memory estimate assumes: f16 or f32.
        #[arg(long, default_value = "f16", value_name = "f16|f32")]
        kv_type: KvType,
        #[arg(long)]
        json: bool,
    },
    /// Check a GGUF file: every tensor header, the tensors' extents, the tokenizer, and the
    /// SHA-256 a hub download was published with. Exit code 0 when it is sound, 1 when not.
    Verify {
        /// A GGUF file or owner/repo:file.gguf.
        model: ModelRef,
    },
}

pub fn run(args: &ModelsArgs) -> Result<()> {
    match &args.command {
        ModelsCommand::List { json } => list(*json),
        ModelsCommand::Pull { spec } => {
            let spec: ModelSpec = spec.parse().map_err(anyhow::Error::msg)?;
            if let ModelSpec::Path(path) = &spec {
                bail!(
                    "{} is not a hub spec: give owner/repo:file.gguf",
                    path.display()
                );
            }
            println!("{}", resolve(&spec)?.display());
            Ok(())
        }
        ModelsCommand::Info {
            model,
            kv_type,
            json,
        } => info(&model.path()?, *kv_type, *json),
        ModelsCommand::Verify { model } => verify(&model.path()?),
    }
}

fn read_summary(path: &std::path::Path) -> Result<ModelSummary> {
    let gguf = GgufFile::read(path)?;
    Ok(summary::summarize(&gguf)?)
}

fn list(json: bool) -> Result<()> {
    let store = Store::from_env();
    let models = store.list();
    let rows: Vec<(store::CachedModel, Option<ModelSummary>)> = models
        .into_iter()
        .map(|model| {
            let summary = read_summary(&model.path).ok();
            (model, summary)
        })
        .collect();
    if json {
        let items: Vec<_> = rows
            .iter()
            .map(|(model, summary)| {
                json!({"spec": model.spec, "path": model.path, "size_bytes": model.size,
                       "summary": summary})
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "No GGUF models in {} yet. Download one with `codellama-lsp models pull` (the default model) or `models pull owner/repo:file.gguf`.",
            store.cache_dir.display()
        );
        return Ok(());
    }
    println!(
        "{:<60} {:>9} {:<8} {:<6} {:>8} INFILL",
        "MODEL", "SIZE", "ARCH", "QUANT", "CONTEXT"
    );
    for (model, summary) in rows {
        let (arch, quant, context, infill) = match &summary {
            Some(s) => (
                s.architecture.clone(),
                s.quantization.clone(),
                s.context_length.map_or("?".into(), |c| c.to_string()),
                if s.infill { "yes" } else { "no" },
            ),
            None => ("?".into(), "?".into(), "?".into(), "?"),
        };
        println!(
            "{:<60} {:>9} {:<8} {:<6} {:>8} {}",
            model.spec,
            gigabytes(model.size),
            arch,
            quant,
            context,
            infill
        );
    }
    Ok(())
}

fn info(path: &std::path::Path, kv_type: KvType, json: bool) -> Result<()> {
    let gguf = GgufFile::read(path)?;
    let summary = summary::summarize(&gguf)?;
    let memory = summary::memory_estimate(&gguf, kv_type);
    if json {
        let mut value = serde_json::to_value(&summary)?;
        value["path"] = json!(path);
        value["memory"] = json!(memory);
        println!("{value}");
        return Ok(());
    }
    let or_unknown = |value: Option<String>| value.unwrap_or_else(|| "unknown".into());
    println!("file:          {}", path.display());
    println!("name:          {}", or_unknown(summary.name.clone()));
    println!(
        "architecture:  {}{}",
        summary.architecture,
        if summary.runs {
            ""
        } else {
            " (not one codellama-lsp runs: llama, qwen2, starcoder2, gemma)"
        }
    );
    println!(
        "size:          {} ({} tensors, {} parameters)",
        gigabytes(summary.size_bytes),
        summary.tensors,
        parameters(summary.parameters)
    );
    let types: Vec<String> = summary
        .quant_types
        .iter()
        .map(|(name, count)| format!("{name} ×{count}"))
        .collect();
    println!(
        "quantization:  {} ({})",
        summary.quantization,
        if types.is_empty() {
            "no tensors".to_owned()
        } else {
            types.join(", ")
        }
    );
    println!(
        "vocabulary:    {} tokens ({})",
        summary
            .vocab_size
            .map_or_else(|| "unknown".into(), |v| v.to_string()),
        summary.tokenizer.unwrap_or("no tokenizer")
    );
    println!(
        "context:       {}",
        or_unknown(summary.context_length.map(|c| c.to_string()))
    );
    match &summary.fim_tokens {
        Some(fim) => println!(
            "infill:        yes, {} ({} {}, {} {}, {} {})",
            fim.family,
            fim.pieces[0],
            fim.prefix,
            fim.pieces[1],
            fim.suffix,
            fim.pieces[2],
            fim.middle
        ),
        None => println!(
            "infill:        no (completions continue the text before the cursor only; a fill-in-the-middle model suggests better)"
        ),
    }
    println!("chat template: {}", summary.chat_template.unwrap_or("none"));
    if let Some(memory) = memory {
        println!(
            "memory:        about {} (weights {} + KV cache {}: {} positions in {})",
            gigabytes(memory.total_bytes),
            gigabytes(memory.weights_bytes),
            gigabytes(memory.kv_cache_bytes),
            memory.kv_positions,
            memory.kv_type
        );
    }
    Ok(())
}

fn verify(path: &std::path::Path) -> Result<()> {
    // Reading the header checks every tensor's extent, and that no two tensors share bytes;
    // what `info` needs to describe the file (its architecture), verify needs too.
    let gguf = GgufFile::read(path)?;
    summary::summarize(&gguf)?;
    tokenizer_for(&gguf)?;
    // Everything loading checks, verify checks: the same load, on the CPU with a tiny context
    // (architecture, hyper-parameters against the tensors, every tensor's presence, shape and
    // type). A vocabulary-only file has nothing to load; it serves as a remote backend's
    // tokenizer.
    let vocabulary_only = gguf.tensors.is_empty();
    if !vocabulary_only {
        crate::model::LoadedModel::load(path, &candle_core::Device::Cpu, Some(16))?;
    }
    let what = if vocabulary_only {
        "a vocabulary only (a remote backend's tokenizer; not a model to run)".to_owned()
    } else {
        format!("{} tensors that load", gguf.tensors.len())
    };
    let digest =
        store::sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    match store::published_sha256(path) {
        Some(expected) if expected != digest => bail!(
            "{}: sha256 {digest} does not match the published {expected}: the file is damaged; delete it and download it again",
            path.display()
        ),
        Some(_) => println!(
            "ok: {what}, {}, sha256 {digest} (matches the published checksum)",
            gigabytes(gguf.file_len)
        ),
        None => println!("ok: {what}, {}, sha256 {digest}", gigabytes(gguf.file_len)),
    }
    Ok(())
}

fn parameters(count: u64) -> String {
    match count {
        0..1_000_000 => format!("{:.1}k", count as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", count as f64 / 1e6),
        _ => format!("{:.2}B", count as f64 / 1e9),
    }
}

fn gigabytes(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}
