//! `eval`: completion quality on real code. Holes punched into a corpus (seeded, so two models or
//! two settings meet the same holes) are filled through the server's completion path — prompt
//! window, workspace context, the model, post-processing — and scored (see `crate::eval`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::actions::Language;
use crate::completion::{Completer, CompletionRequest, finish_text};
use crate::document::Document;
use crate::eval::report::{self, Baseline, CorpusInfo, ModelInfo, REPORT_VERSION};
use crate::eval::{self, HoleKind, HoleResult, Report, SourceFile, corpus, score};
use crate::model::generate::{GenerationRequest, generate};
use crate::model::{DeviceSpec, KvType, LoadedModel};
use crate::prompt::{FimOrder, FimTemplate};
use crate::settings::Settings;

/// Files of one default corpus root at most (the Python standard library has thousands).
const DEFAULT_ROOT_FILES: usize = 300;
/// Other files of the same language fed to the workspace context, as if open in the editor.
const CONTEXT_FILES: usize = 8;
/// Folders never walked.
const SKIPPED_DIRS: [&str; 3] = ["node_modules", "__pycache__", ".git"];
/// Parts of the Python standard library that are tests, data tables or tools, not library code.
const SKIPPED_STDLIB_DIRS: [&str; 8] = [
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "encodings",
    "site-packages",
    "dist-packages",
    "turtledemo",
];

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model to evaluate: a GGUF file or owner/repo:file.gguf. Models without infilling
    /// tokens are evaluated prefix-only.
    #[arg(long, value_name = "PATH|SPEC")]
    model: super::models::ModelRef,
    /// Files or folders of code to punch holes into (.py .rs .js .go .c; .gitignore respected).
    /// Default: this repository's src/ when run inside it, and the Python standard library.
    #[arg(value_name = "CORPUS")]
    corpus: Vec<PathBuf>,
    /// How many holes, spread evenly over languages and kinds.
    #[arg(long, default_value_t = 200, value_name = "N")]
    holes: usize,
    /// Seed of the hole selection: the same seed and corpus give the same holes for any model
    /// and settings.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Hole kinds: line (the rest of a line), lines (2–6 lines), body (a function's body).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "line,lines,body",
        value_name = "KINDS"
    )]
    kinds: Vec<HoleKind>,
    /// Languages to evaluate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "python,rust,javascript,go,c",
        value_parser = eval::parse_language,
        value_name = "LANGUAGES"
    )]
    languages: Vec<Language>,
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_tokens: usize,
    /// The context prompts are built for (the server's default is 4096; smaller is faster).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    context_tokens: usize,
    /// The infilling order; none: the text before the cursor only.
    #[arg(long, default_value = "spm", value_name = "spm|psm|none")]
    fim_order: FimOrder,
    /// No workspace context (by default prompts get chunks of other corpus files of the same
    /// language, as the server gets them from open files).
    #[arg(long)]
    no_context: bool,
    /// Score the raw generation (up to its first blank line) instead of the post-processed text.
    #[arg(long)]
    no_postprocess: bool,
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceSpec,
    /// How the KV cache stores keys and values: f16 (half the memory of f32) or f32.
    #[arg(long, default_value = "f16", value_name = "f16|f32")]
    kv_type: KvType,
    /// Corpus files read at most per root given (more are thinned evenly).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    max_files: usize,
    /// Print the full JSON report on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// A previous report: compare with it on the holes both have.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
}

/// A corpus root: where to walk, how holes name its files, and how many to read at most.
struct Root {
    path: PathBuf,
    /// Prefix of the files' names in hole ids (the root's own name for a folder).
    name_base: PathBuf,
    max_files: usize,
    stdlib: bool,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.kinds.is_empty() || args.languages.is_empty() {
        bail!("--kinds and --languages need at least one value each");
    }
    // A baseline that cannot be read should fail before the model runs for minutes.
    let baseline = match &args.baseline {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the baseline {}", file.display()))?;
            let baseline: Baseline = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not an eval report (make one with --report)",
                    file.display()
                )
            })?;
            Some((file.display().to_string(), baseline))
        }
        None => None,
    };
    let roots = roots(args)?;
    let (files, corpus_info) = load_corpus(&roots, &args.languages);
    if files.is_empty() {
        bail!(
            "the corpus has no usable {} files (skipped: {:?})",
            args.languages
                .iter()
                .map(|&l| eval::language_name(l))
                .collect::<Vec<_>>()
                .join("/"),
            corpus_info.skipped
        );
    }
    let holes = eval::select(&files, &args.languages, &args.kinds, args.holes, args.seed);
    if holes.len() < args.holes {
        eprintln!(
            "codellama-lsp: note: the corpus has room for {} of the {} holes asked for",
            holes.len(),
            args.holes
        );
    }

    let path = args.model.path()?;
    let device = args.device.open()?;
    let mut model = LoadedModel::load(&path, &device, Some(args.context_tokens + 64))?;
    model.llama.set_kv_type(args.kv_type);
    let (template, note) =
        FimTemplate::or_prefix_only(FimTemplate::detect(&model.tokenizer, &model.name));
    if let Some(note) = note {
        eprintln!("codellama-lsp: note: {note}");
    }
    let settings = Settings {
        max_tokens: args.max_tokens,
        context_tokens: args.context_tokens.min(model.llama.max_positions()),
        fim_order: args.fim_order,
        workspace_context: !args.no_context,
        ..Settings::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    let documents: Vec<Document> = files
        .iter()
        .map(|f| Document::new(&f.text, 0, eval::language_name(f.language)))
        .collect();
    let mut cache = model.llama.new_cache()?;
    let progress = Progress::new(holes.len());
    let mut results = Vec::with_capacity(holes.len());
    for hole in &holes {
        let file = &files[hole.file];
        let document = &documents[hole.file];
        let rope = document.rope();
        let cursor = rope.byte_to_char(hole.start);
        let started = Instant::now();
        // The completion sees the file as if the hole's text had not been typed yet.
        let punched = Document::new(
            &score::fill(&file.text, hole.start, hole.end, ""),
            0,
            document.language_id(),
        );
        let request = CompletionRequest {
            uri: uri(&file.rel_path),
            document: punched.clone(),
            cursor,
            automatic: false,
            others: if args.no_context {
                Vec::new()
            } else {
                context_files(&files, hole.file)
                    .into_iter()
                    .map(|i| (uri(&files[i].rel_path), documents[i].clone()))
                    .collect()
            },
            sent_version: None,
            refreshes: false,
        };
        // A fresh completer per hole: its context is this hole's neighbours only, whatever the
        // order or the other holes.
        let built = runtime
            .block_on(Completer::new().build_prompt(
                &request,
                &settings,
                &model.tokenizer,
                &template,
            ))
            .map_err(anyhow::Error::msg)?
            .prompt;
        let generation = generate(
            &model,
            &mut cache,
            &GenerationRequest {
                prompt: built.ids.clone(),
                max_new_tokens: args.max_tokens,
                ..GenerationRequest::default()
            },
            &mut || false,
            &mut |_| {},
        )
        .with_context(|| format!("generating for the hole {}", hole.id))?;
        let completion = if args.no_postprocess {
            eval::unprocessed(&generation.text)
        } else {
            finish_text(
                punched.rope(),
                cursor,
                &built.window.suffix,
                &generation.text,
            )
            .unwrap_or_default()
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let expected = file.text.get(hole.start..hole.end).unwrap_or_default();
        let filled = score::fill(&file.text, hole.start, hole.end, &completion);
        results.push(HoleResult {
            id: hole.id.clone(),
            file: file.rel_path.clone(),
            language: eval::language_name(file.language).to_owned(),
            kind: hole.kind,
            line: rope.byte_to_line(hole.start) + 1,
            expected: expected.to_owned(),
            exact: score::exact_match(expected, &completion),
            edit_similarity: score::edit_similarity(expected, &completion),
            parses: score::parses_cleanly(file.language, &filled),
            completion,
            raw: generation.text,
            latency_ms,
            prompt_tokens: built.ids.len(),
        });
        progress.tick(&results);
    }
    progress.finish();

    let comparison = baseline.as_ref().map(|(file, baseline)| {
        if let Some(settings) = &baseline.settings
            && settings.seed != args.seed
        {
            eprintln!(
                "codellama-lsp: note: the baseline was made with --seed {}, this run with {}: few holes will match",
                settings.seed, args.seed
            );
        }
        report::compare(&results, baseline, file)
    });
    let report = Report {
        version: REPORT_VERSION,
        model: ModelInfo {
            name: model.name.clone(),
            path: path.display().to_string(),
            infill: template.family != crate::prompt::FimFamily::PrefixOnly,
        },
        settings: report::Settings {
            seed: args.seed,
            holes: args.holes,
            kinds: args.kinds.clone(),
            languages: args
                .languages
                .iter()
                .map(|&l| eval::language_name(l).to_owned())
                .collect(),
            max_tokens: args.max_tokens,
            context_tokens: settings.context_tokens,
            fim_order: format!("{:?}", args.fim_order).to_lowercase(),
            prefix_only: template.is_prefix_only(args.fim_order),
            context: !args.no_context,
            postprocess: !args.no_postprocess,
        },
        corpus: corpus_info,
        summary: report::summarize(&results),
        holes: results,
        baseline: comparison,
    };
    if let Some(file) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(file, json + "\n")
            .with_context(|| format!("cannot write the report {}", file.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {} holes (seed {}, {}{}{}):",
            report.model.name,
            report.holes.len(),
            args.seed,
            if report.settings.prefix_only {
                "prefix-only".to_owned()
            } else {
                report.settings.fim_order.to_uppercase()
            },
            if args.no_context { ", no context" } else { "" },
            if args.no_postprocess {
                ", raw text"
            } else {
                ""
            },
        );
        print!("{}", report::table(&report.summary));
        if let Some(comparison) = &report.baseline {
            println!();
            print!("{}", report::delta_table(comparison));
        }
    }
    Ok(())
}

/// How a corpus file is named to the completer (its context headers show the last parts).
fn uri(rel_path: &str) -> String {
    format!("file:///{rel_path}")
}

/// The files fed to the workspace context for a hole in `file`: other files of its language,
/// those in its folder first, then the nearest by path.
fn context_files(files: &[SourceFile], file: usize) -> Vec<usize> {
    let this = &files[file];
    let folder = |path: &str| path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
    let here = folder(&this.rel_path);
    let mut same: Vec<usize> = (0..files.len())
        .filter(|&i| i != file && files[i].language == this.language)
        .collect();
    same.sort_by(|&a, &b| files[a].rel_path.cmp(&files[b].rel_path));
    let position = same.partition_point(|&i| files[i].rel_path < this.rel_path);
    let mut ranked: Vec<(bool, usize, usize)> = same
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let distance = if k < position {
                position - k
            } else {
                k - position + 1
            };
            (folder(&files[i].rel_path) != here, distance, i)
        })
        .collect();
    ranked.sort_unstable();
    ranked
        .into_iter()
        .take(CONTEXT_FILES)
        .map(|(_, _, i)| i)
        .collect()
}

/// The roots given, or the defaults: this repository's `src/` and the Python standard library.
fn roots(args: &EvalArgs) -> Result<Vec<Root>> {
    if !args.corpus.is_empty() {
        return args
            .corpus
            .iter()
            .map(|path| {
                let absolute = std::fs::canonicalize(path)
                    .with_context(|| format!("cannot find the corpus {}", path.display()))?;
                let name_base = if absolute.is_dir() {
                    absolute.parent().unwrap_or(&absolute).to_owned()
                } else {
                    absolute.parent().unwrap_or(Path::new("")).to_owned()
                };
                Ok(Root {
                    // A Python standard library given by hand skips its tests too.
                    stdlib: absolute.join("os.py").is_file(),
                    path: absolute,
                    name_base,
                    max_files: args.max_files,
                })
            })
            .collect();
    }
    let mut roots = Vec::new();
    if let Some(src) = this_repository_src() {
        eprintln!("codellama-lsp: corpus: {}", src.display());
        roots.push(Root {
            name_base: src.parent().unwrap_or(&src).to_owned(),
            path: src,
            max_files: args.max_files.min(DEFAULT_ROOT_FILES),
            stdlib: false,
        });
    }
    if let Some(stdlib) = python_stdlib() {
        eprintln!(
            "codellama-lsp: corpus: {} (at most {DEFAULT_ROOT_FILES} files)",
            stdlib.display()
        );
        roots.push(Root {
            name_base: stdlib.parent().unwrap_or(&stdlib).to_owned(),
            path: stdlib,
            max_files: args.max_files.min(DEFAULT_ROOT_FILES),
            stdlib: true,
        });
    }
    if roots.is_empty() {
        bail!(
            "no corpus: give files or folders of code (no codellama-lsp checkout around the current folder, no Python standard library under /usr/lib)"
        );
    }
    Ok(roots)
}

/// `src/` of the codellama-lsp checkout containing the current folder.
fn this_repository_src() -> Option<PathBuf> {
    let current = std::env::current_dir().ok()?;
    current.ancestors().find_map(|dir| {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        let src = dir.join("src");
        (manifest.contains("name = \"codellama-lsp\"") && src.is_dir()).then_some(src)
    })
}

/// The newest `/usr/lib/python3.N` on the machine.
fn python_stdlib() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let minor: u32 = name.strip_prefix("python3.")?.parse().ok()?;
            let path = entry.path();
            path.join("os.py").is_file().then_some((minor, path))
        })
        .max_by_key(|(minor, _)| *minor)
        .map(|(_, path)| path)
}

/// Walks the roots, reads and checks the files of the wanted languages.
fn load_corpus(roots: &[Root], languages: &[Language]) -> (Vec<SourceFile>, CorpusInfo) {
    let mut info = CorpusInfo::default();
    let mut files: Vec<SourceFile> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for root in roots {
        info.roots.push(root.path.display().to_string());
        let mut paths: Vec<(String, PathBuf, Language)> = Vec::new();
        let stdlib = root.stdlib;
        let walker = ignore::WalkBuilder::new(&root.path)
            .filter_entry(move |entry| {
                let name = entry.file_name().to_str().unwrap_or("");
                let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
                !(is_dir
                    && entry.depth() > 0
                    && (SKIPPED_DIRS.contains(&name)
                        || (stdlib && SKIPPED_STDLIB_DIRS.contains(&name))))
            })
            .build();
        for entry in walker.filter_map(|entry| entry.ok()) {
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            let Some(language) = corpus::language_of(path).filter(|l| languages.contains(l)) else {
                continue;
            };
            let rel = path.strip_prefix(&root.name_base).unwrap_or(path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            paths.push((rel.join("/"), path.to_owned(), language));
        }
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        if paths.len() > root.max_files {
            let total = paths.len();
            paths = (0..root.max_files)
                .filter_map(|i| paths.get(i * total / root.max_files).cloned())
                .collect();
        }
        for (rel, path, language) in paths {
            if !seen.insert(rel.clone()) {
                continue;
            }
            let loaded = match std::fs::read(&path) {
                Err(_) => Err(corpus::Skip::NotUtf8),
                Ok(bytes) if bytes.len() > corpus::MAX_FILE_BYTES => Err(corpus::Skip::TooLarge),
                Ok(bytes) => String::from_utf8(bytes)
                    .map_err(|_| corpus::Skip::NotUtf8)
                    .and_then(|text| SourceFile::new(&rel, language, text)),
            };
            match loaded {
                Ok(file) => {
                    *info
                        .files
                        .entry(eval::language_name(language).to_owned())
                        .or_default() += 1;
                    files.push(file);
                }
                Err(skip) => *info.skipped.entry(skip.name().to_owned()).or_default() += 1,
            }
        }
    }
    (files, info)
}

/// Progress on stderr: a bar on a terminal, else a line every tenth of the holes.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} holes, {elapsed} (ETA {eta}) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self { bar, total }
    }

    fn tick(&self, results: &[HoleResult]) {
        let done = results.len();
        let exact = results.iter().filter(|r| r.exact).count() as f64 / done.max(1) as f64;
        let similarity =
            results.iter().map(|r| r.edit_similarity).sum::<f64>() / done.max(1) as f64;
        let message = format!("exact {:.1}%, edit sim {similarity:.3}", exact * 100.0);
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(message);
            }
            None => {
                let step = (self.total / 10).max(1);
                if done.is_multiple_of(step) || done == self.total {
                    eprintln!(
                        "codellama-lsp: eval: {done}/{} holes, {message}",
                        self.total
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
