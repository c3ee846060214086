//! `complete`: one infilling completion from the command line, the way the editor gets it.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::completion::finish_text;
use crate::document::Document;
use crate::engine::JobRequest;
use crate::model::generate::{GenerationRequest, generate};
use crate::model::sampling::SamplingParams;
use crate::model::{DeviceSpec, KvType, LoadedModel, Vocabulary};
use crate::prompt::{self, FimOrder, FimTemplate, WindowConfig};
use crate::settings::Settings;

/// The marker for the hole in `--stdin` mode, as in the transformers fill-mask pipeline.
const MARKER: &str = "<FILL_ME>";

#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// A GGUF model: best one with infilling tokens (Code Llama 7B/13B, base or Instruct); any
    /// other continues the text before the cursor. With --backend, the file the server runs (only
    /// its vocabulary is read).
    #[arg(long, value_name = "PATH|SPEC")]
    model: Option<super::models::ModelRef>,
    #[command(flatten)]
    backend: super::backend::BackendArgs,
    /// The file to complete in (with --line and --character).
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    file: Option<PathBuf>,
    /// Cursor line, 1-based.
    #[arg(long, requires = "file")]
    line: Option<usize>,
    /// Cursor column in characters, 1-based (past the end of the line: its end).
    #[arg(long, requires = "file")]
    character: Option<usize>,
    /// Read the text from stdin, with exactly one <FILL_ME> marking the hole.
    #[arg(long)]
    stdin: bool,
    /// The infilling order; none: the text before the cursor only (what models without infilling
    /// tokens get anyway).
    #[arg(long, default_value = "spm", value_name = "spm|psm|none")]
    fim_order: FimOrder,
    #[arg(long, default_value_t = Settings::default().max_tokens, value_name = "N")]
    max_tokens: usize,
    /// 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f32,
    /// The context the prompt is built for.
    #[arg(long, default_value_t = Settings::default().context_tokens, value_name = "N")]
    context_tokens: usize,
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceSpec,
    /// How the KV cache stores keys and values: f16 (half the memory of f32) or f32.
    #[arg(long, default_value = "f16", value_name = "f16|f32")]
    kv_type: KvType,
    /// Print the prompt's token ids as one JSON array and exit without generating.
    #[arg(long)]
    show_prompt: bool,
    /// Print one JSON object with text, raw, prompt_ids and timings.
    #[arg(long)]
    json: bool,
}

/// The document and the cursor (a char index) described by the arguments.
fn document_and_cursor(args: &CompleteArgs) -> Result<(Document, usize)> {
    if args.stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("stdin is not valid UTF-8 text")?;
        let mut holes = text.match_indices(MARKER);
        let Some((at, _)) = holes.next() else {
            bail!("stdin has no {MARKER} marker: put exactly one where the completion goes");
        };
        if holes.next().is_some() {
            bail!("stdin has more than one {MARKER} marker: keep exactly one");
        }
        let cursor = text[..at].chars().count();
        text.replace_range(at..at + MARKER.len(), "");
        return Ok((Document::new(&text, 0, "text"), cursor));
    }
    let Some(file) = &args.file else {
        bail!("give FILE with --line and --character, or --stdin")
    };
    let (Some(line), Some(character)) = (args.line, args.character) else {
        bail!("give the cursor with --line L --character C (1-based)");
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let document = Document::new(&text, 0, "text");
    let byte = super::assist_commands::byte_at(document.rope(), line, character)?;
    Ok((document.clone(), document.rope().byte_to_char(byte)))
}

pub fn run(args: &CompleteArgs) -> Result<()> {
    let (document, cursor) = document_and_cursor(args)?;
    let backend = args.backend.choice()?;
    let model_path = super::backend::model_file(args.model.as_ref(), &backend)?;
    // A server is asked first: its context bounds the prompt.
    let server = match backend.remote() {
        Some(_) if !args.show_prompt => Some(
            super::backend::start(
                model_path.clone(),
                args.device,
                args.kv_type,
                args.context_tokens,
                &backend,
            )?
            .1,
        ),
        _ => None,
    };
    let settings = Settings {
        max_tokens: args.max_tokens,
        context_tokens: server.as_ref().map_or(args.context_tokens, |s| {
            s.context_tokens.min(args.context_tokens)
        }),
        ..Settings::default()
    };
    // The server's connection already read the vocabulary; without one, read it here (only the
    // metadata: `--show-prompt` loads no weights).
    let (tokenizer, detected) = match &server {
        Some(server) => (server.tokenizer.clone(), server.template.clone()),
        None => {
            let vocabulary = Vocabulary::read(&model_path)?;
            let detected = FimTemplate::detect(&vocabulary.tokenizer, &vocabulary.name);
            (vocabulary.tokenizer, detected)
        }
    };
    let (template, note) = FimTemplate::or_prefix_only(detected);
    if let Some(note) = note {
        eprintln!("codellama-lsp: note: {note}");
    }
    let window = WindowConfig {
        budget_tokens: settings.prompt_budget(),
        prefix_share: settings.prefix_share,
        ..WindowConfig::default()
    };
    let built = prompt::infill(
        &tokenizer,
        &template,
        document.rope(),
        cursor,
        args.fim_order,
        &window,
    );
    if args.show_prompt {
        println!("{}", serde_json::to_string(&built.ids)?);
        return Ok(());
    }
    let request = GenerationRequest {
        prompt: built.ids.clone(),
        max_new_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            ..SamplingParams::default()
        },
        ..GenerationRequest::default()
    };
    let generation = match server {
        Some(server) => {
            let job = server.engine.submit(JobRequest {
                generation: request,
                ..JobRequest::default()
            });
            job.finish_blocking()
                .map_err(anyhow::Error::msg)?
                .generation
        }
        None => {
            let device = args.device.open()?;
            let mut model = LoadedModel::load(
                &model_path,
                &device,
                Some(built.ids.len() + args.max_tokens),
            )?;
            model.llama.set_kv_type(args.kv_type);
            let mut cache = model.llama.new_cache()?;
            generate(&model, &mut cache, &request, &mut || false, &mut |_| {})?
        }
    };
    let text = finish_text(
        document.rope(),
        cursor,
        &built.window.suffix,
        &generation.text,
    );
    if args.json {
        let report = json!({
            "text": text.clone().unwrap_or_default(),
            "raw": generation.text,
            "ids": generation.ids,
            "prompt_ids": built.ids,
            "finish": generation.finish,
            "timings": {"prefill_ms": generation.prefill_ms, "decode_ms": generation.decode_ms},
        });
        println!("{report}");
    } else {
        println!("{}", text.unwrap_or_default());
    }
    Ok(())
}
