//! The server's model: which one is configured, whether it is loading, ready or failed, and the
//! running engine once it is ready.
//!
//! Loading runs on a blocking thread; requests that arrive meanwhile wait on a `watch` channel
//! until the model is ready or their deadline passes, and never fail the server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::engine::Engine;
use crate::model::tokenizer::Tokenizer;
use crate::model::{DeviceSpec, KvType, LoadedModel, Vocabulary};
use crate::prompt::{ChatTemplate, FimOrder, FimTemplate};
use crate::remote::{self, BackendChoice, RemoteSpec};

/// Loads a model and starts its engine, on a blocking thread; for a remote backend, reads the
/// vocabulary and connects instead.
async fn build(key: LoadKey) -> Result<ReadyModel, String> {
    match key.backend {
        BackendChoice::Local => build_local(key.path, key.device, key.kv_type, key.context).await,
        BackendChoice::Remote(spec) => connect(spec, key.path, key.context).await,
    }
}

async fn build_local(
    path: PathBuf,
    device: DeviceSpec,
    kv_type: KvType,
    context: usize,
) -> Result<ReadyModel, String> {
    tokio::task::spawn_blocking(move || -> Result<ReadyModel, String> {
        let device = device.open().map_err(|e| e.to_string())?;
        let mut model =
            LoadedModel::load(&path, &device, Some(context)).map_err(|e| e.to_string())?;
        model.llama.set_kv_type(kv_type);
        let template = FimTemplate::detect(&model.tokenizer, &model.name);
        let chat = ChatTemplate::detect(&model.tokenizer);
        let context_tokens = model.llama.max_positions();
        let tokenizer = model.tokenizer.clone();
        let name = model.name.clone();
        let engine = Engine::start(model).map_err(|e| e.to_string())?;
        Ok(ReadyModel {
            name,
            path,
            engine,
            tokenizer,
            template,
            chat,
            context_tokens,
            warning: None,
        })
    })
    .await
    .unwrap_or_else(|_| Err("the model loader crashed (see the log)".into()))
}

/// A model on an inference server: its vocabulary is read from `vocabulary_file` (the GGUF the
/// server runs, or one with the same vocabulary), and the server is asked what it runs. A server
/// that cannot be asked yet is a warning, not a failure: every request tries it again.
async fn connect(
    mut spec: RemoteSpec,
    vocabulary_file: PathBuf,
    context: usize,
) -> Result<ReadyModel, String> {
    let file = vocabulary_file.clone();
    let vocabulary = tokio::task::spawn_blocking(move || Vocabulary::read(&file))
        .await
        .map_err(|_| "reading the vocabulary crashed (see the log)".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut warning = None;
    let facts = match remote::probe(&spec).await {
        Ok(facts) => facts,
        Err(problem) => {
            warning = Some(format!(
                "the server does not answer yet ({problem}); completions will try it again"
            ));
            remote::ServerFacts::default()
        }
    };
    if spec.model.is_none() {
        spec.model = facts.model_name.clone();
    }
    if warning.is_none() {
        warning =
            remote::vocabulary_mismatch(&spec, &facts, &vocabulary_file, &vocabulary.tokenizer)
                .await;
    }
    let template = FimTemplate::detect(&vocabulary.tokenizer, &vocabulary.name);
    let chat = ChatTemplate::detect(&vocabulary.tokenizer);
    let name = format!("{} via {spec}", vocabulary.name);
    let tokenizer = vocabulary.tokenizer.clone();
    let engine = Engine::remote(spec, vocabulary.tokenizer, vocabulary.stop_tokens)?;
    Ok(ReadyModel {
        name,
        path: vocabulary_file,
        engine,
        tokenizer,
        template,
        chat,
        // The server's own context bounds ours.
        context_tokens: facts.context.map_or(context, |n| n.min(context)),
        warning,
    })
}

/// What a request needs from a loaded model, besides the engine that runs it.
pub struct ReadyModel {
    pub name: String,
    pub path: PathBuf,
    pub engine: Engine,
    /// A copy for building prompts on the async side (the engine thread owns the original).
    pub tokenizer: Tokenizer,
    /// The infilling template, or why this model cannot infill.
    pub template: Result<FimTemplate, String>,
    /// How this model's conversations are laid out.
    pub chat: ChatTemplate,
    /// Positions the KV cache holds: the prompt and the answer must fit in them together.
    pub context_tokens: usize,
    /// Something the user should know although the model works (e.g. a remote server that does
    /// not answer yet).
    pub warning: Option<String>,
}

#[derive(Clone)]
pub enum ModelState {
    Unconfigured,
    Loading(PathBuf),
    Ready(Arc<ReadyModel>),
    Failed(String),
}

impl ReadyModel {
    /// The template completions use in `order`: the model's infilling template, or prefix-only
    /// completion when the model has none or `order` asks for it.
    pub fn completion_template(&self, order: FimOrder) -> FimTemplate {
        match &self.template {
            Ok(template) if order != FimOrder::None => template.clone(),
            _ => FimTemplate::prefix_only(),
        }
    }
}

/// What identifies a load: the same file, device, KV cache type and context need no reload.
#[derive(Clone, Debug, PartialEq)]
struct LoadKey {
    /// The model file; for a remote backend, the file whose vocabulary the server's model uses.
    path: PathBuf,
    device: DeviceSpec,
    kv_type: KvType,
    context: usize,
    backend: BackendChoice,
}

pub struct ModelHost {
    state: watch::Sender<ModelState>,
    current: Mutex<Option<LoadKey>>,
}

impl Default for ModelHost {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelHost {
    pub fn new() -> Self {
        Self {
            state: watch::Sender::new(ModelState::Unconfigured),
            current: Mutex::new(None),
        }
    }

    pub fn state(&self) -> ModelState {
        self.state.borrow().clone()
    }

    /// Every state change, for whoever displays it.
    pub fn subscribe(&self) -> watch::Receiver<ModelState> {
        self.state.subscribe()
    }

    /// Loads `path` unless that exact model is already loaded or loading. Returns `None` when
    /// nothing had to be done, else the outcome (the model's name, or why it failed).
    pub async fn load(
        &self,
        path: PathBuf,
        device: DeviceSpec,
        kv_type: KvType,
        context: usize,
        backend: &BackendChoice,
    ) -> Option<Result<String, String>> {
        let key = LoadKey {
            path: path.clone(),
            device,
            kv_type,
            context,
            backend: backend.clone(),
        };
        {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.as_ref() == Some(&key) && !matches!(self.state(), ModelState::Failed(_)) {
                return None;
            }
            *current = Some(key.clone());
        }
        self.state.send_replace(ModelState::Loading(path));
        let loaded = build(key).await;
        let outcome = loaded
            .as_ref()
            .map(|model| model.name.clone())
            .map_err(Clone::clone);
        self.state.send_replace(match loaded {
            Ok(model) => ModelState::Ready(Arc::new(model)),
            Err(error) => ModelState::Failed(error),
        });
        Some(outcome)
    }

    /// Loads the file at the current model's path again (it was replaced on disk) while the
    /// current model keeps serving, then switches to it between requests. On failure the
    /// current model stays; the error says why.
    pub async fn reload(&self) -> Result<String, String> {
        let key = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("no model is loaded")?;
        let model = build(key.clone()).await?;
        let name = model.name.clone();
        // A newer configuration may have been chosen meanwhile: then this reload is stale.
        let still_current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&key);
        if still_current {
            self.state.send_replace(ModelState::Ready(Arc::new(model)));
        }
        Ok(name)
    }

    /// The file of the loaded model, if one is loaded or loading.
    pub fn current_path(&self) -> Option<PathBuf> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|key| key.path.clone())
    }

    /// Marks a model being downloaded: requests wait for it as for a load.
    pub fn fetching(&self, what: &str) {
        self.state
            .send_replace(ModelState::Loading(PathBuf::from(what)));
    }

    /// Records why no model can be used (the next configuration is loaded afresh).
    pub fn fail(&self, reason: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.state.send_replace(ModelState::Failed(reason));
    }

    /// Why there is no model to use now, in words that say what to do.
    pub fn unavailable_reason(&self) -> String {
        match self.state() {
            ModelState::Unconfigured => "no model is configured: set \"model\" to a GGUF file in the editor's settings, or start the server with --model PATH".into(),
            ModelState::Loading(path) => format!("the model {} is still loading; try again in a moment", path.display()),
            ModelState::Failed(error) => format!("there is no model: {error}"),
            ModelState::Ready(model) => format!("{} is ready", model.name),
        }
    }

    /// The ready model, waiting for a load in progress until `deadline`.
    pub async fn ready(&self, deadline: Instant) -> Option<Arc<ReadyModel>> {
        let mut receiver = self.state.subscribe();
        let wait = receiver.wait_for(|state| !matches!(state, ModelState::Loading(_)));
        let state = match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(Ok(state)) => state.clone(),
            _ => return None,
        };
        match state {
            ModelState::Ready(model) => Some(model),
            _ => None,
        }
    }
}
