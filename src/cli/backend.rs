//! `--backend` and its companions, shared by the server and the commands that generate: where
//! the model runs, and how the commands reach a remote one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::models::ModelRef;
use crate::model::{DeviceSpec, KvType};
use crate::model_host::{ModelHost, ModelState, ReadyModel};
use crate::remote::{self, BackendChoice, RemoteKind};

#[derive(Debug, Clone, Default, Args)]
pub struct BackendArgs {
    /// Where the model runs: local (this process, the default), the URL of a llama.cpp
    /// llama-server, or KIND:URL with KIND vllm or openai (vllm:http://gpu:8000). With a server,
    /// --model names the GGUF file it runs: only its vocabulary is read here, to build the
    /// prompts.
    #[arg(long, value_name = "local|URL|KIND:URL")]
    pub backend: Option<BackendChoice>,
    /// The model name the server's API wants (vllm, openai); by default the first one the server
    /// lists.
    #[arg(long, value_name = "NAME")]
    pub remote_model: Option<String>,
    /// The environment variable that holds the server's API key (sent as a bearer token).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
}

impl BackendArgs {
    /// The backend the flags describe (local when none is given).
    pub fn choice(&self) -> Result<BackendChoice> {
        let mut choice = self.backend.clone().unwrap_or_default();
        match &mut choice {
            BackendChoice::Local => {
                if self.remote_model.is_some() || self.api_key_env.is_some() {
                    bail!("--remote-model and --api-key-env need a server: add --backend URL");
                }
            }
            BackendChoice::Remote(spec) => {
                spec.model = self.remote_model.clone().or(spec.model.take());
                spec.api_key_env = self.api_key_env.clone().or(spec.api_key_env.take());
                spec.validate().map_err(anyhow::Error::msg)?;
            }
        }
        Ok(choice)
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The local file behind `--model`; with a llama-server backend and no `--model`, the file the
/// server says it runs (when this machine can read it).
pub fn model_file(model: Option<&ModelRef>, backend: &BackendChoice) -> Result<PathBuf> {
    if let Some(model) = model {
        return model.path();
    }
    let Some(server) = backend.remote() else {
        bail!("give the model with --model PATH|SPEC");
    };
    if server.kind != RemoteKind::LlamaServer {
        bail!(
            "{} servers do not share their vocabulary: give --model, the GGUF file the server runs (only its vocabulary is read)",
            server.kind.name()
        );
    }
    let facts = runtime()?
        .block_on(remote::probe(server))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot ask {server} which model it runs; give --model"))?;
    match facts.model_path.map(PathBuf::from) {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => bail!(
            "{server} runs {}, which is not on this machine: give --model, a copy of it (only its vocabulary is read)",
            path.display()
        ),
        None => bail!("{server} does not say which model it runs: give --model"),
    }
}

/// Loads the model here, or connects to the server that runs it, as the language server does.
pub fn start(
    path: PathBuf,
    device: DeviceSpec,
    kv_type: KvType,
    context_tokens: usize,
    backend: &BackendChoice,
) -> Result<(Arc<ModelHost>, Arc<ReadyModel>)> {
    let host = Arc::new(ModelHost::new());
    let outcome =
        runtime()?.block_on(host.load(path.clone(), device, kv_type, context_tokens, backend));
    if let Some(Err(error)) = outcome {
        bail!("cannot load {}: {error}", path.display());
    }
    let ModelState::Ready(model) = host.state() else {
        bail!("cannot load {}", path.display());
    };
    if let Some(warning) = &model.warning {
        eprintln!("codellama-lsp: warning: {warning}");
    }
    Ok((host, model))
}
