//! `tokenize`, `generate` and `bench`: the engine from the command line, for scripts and checks.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::model::generate::{GenerationRequest, generate as run_generation};
use crate::model::gguf::GgufFile;
use crate::model::sampling::{SamplingParams, argmax};
use crate::model::{DeviceSpec, KvType, LoadedModel, tokenizer_for};

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// A GGUF model file (only its vocabulary is read).
    #[arg(long, value_name = "PATH|SPEC")]
    model: super::models::ModelRef,
    /// Encode as a Code Llama infilling segment: no implicit leading space, no BOS.
    #[arg(long)]
    infill: bool,
    /// Do not prepend the beginning-of-sequence token.
    #[arg(long)]
    no_bos: bool,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF model file.
    #[arg(long, value_name = "PATH|SPEC")]
    model: super::models::ModelRef,
    /// Where to run: auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceSpec,
    /// How the KV cache stores keys and values: f16 (half the memory of f32) or f32.
    #[arg(long, default_value = "f16", value_name = "f16|f32")]
    kv_type: KvType,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text (tokenized with BOS).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids, used as given.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,...")]
    ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_tokens: usize,
    /// 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f32,
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Print one JSON object (ids, text, timings) instead of streaming the text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Instead: a scripted typing session (one infilling completion per keystroke) reporting
    /// p50/p95 latency and the share of prompt tokens reused, with and without KV reuse, PSM
    /// and SPM. Needs a model with infilling tokens.
    #[arg(long)]
    typing: bool,
    /// Tokens generated per keystroke in the typing session.
    #[arg(long, default_value_t = 16, value_name = "N", requires = "typing")]
    completion_tokens: usize,
    /// The context the typing session's prompts are built for.
    #[arg(long, default_value_t = 4096, value_name = "N", requires = "typing")]
    context_tokens: usize,
    /// With --typing and a server: the same session through this process's engine and through
    /// the server (running the same --model), to measure what the network path adds.
    #[command(flatten)]
    backend: super::backend::BackendArgs,
    /// Instead: editor latency over real LSP. Starts this binary as `serve --stdio --model M`
    /// per scenario and types into a 335-line Python file as an editor sends it (didChange,
    /// inlineCompletion, $/cancelRequest); reports p50/p95/max from didChange to the answer,
    /// non-empty answers, cancellations, late answers, prompt reuse and RSS.
    #[arg(long, conflicts_with = "typing")]
    lsp: bool,
    /// The --lsp scenarios to run, each in a fresh server.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = super::lsp_bench::Scenario::ALL,
        requires = "lsp"
    )]
    scenarios: Vec<super::lsp_bench::Scenario>,
    /// Keystrokes typed per --lsp scenario.
    #[arg(long, default_value_t = 200, value_name = "N", requires = "lsp")]
    keystrokes: usize,
    /// Seed of the --lsp keystroke timing.
    #[arg(long, default_value_t = 1, value_name = "S", requires = "lsp")]
    seed: u64,
    /// The maxTokens setting sent to the --lsp server.
    #[arg(long, default_value_t = 32, value_name = "N", requires = "lsp")]
    max_tokens: usize,
    /// The deadlineMs setting sent to the --lsp server.
    #[arg(long, default_value_t = 3000, value_name = "MS", requires = "lsp")]
    deadline_ms: u64,
    /// The firstAnswerMs setting sent to the --lsp server (default: the server's).
    #[arg(long, value_name = "MS", requires = "lsp")]
    first_answer_ms: Option<u64>,
    /// How long the file is open (after the warm-up notification) before typing starts.
    #[arg(long, default_value_t = 5000, value_name = "MS", requires = "lsp")]
    warmup_ms: u64,
    /// One decode step, the slack allowed past the deadline (default: measured first).
    #[arg(long, value_name = "MS", requires = "lsp")]
    decode_step_ms: Option<f64>,
    /// Append the --lsp servers' stderr to this file (default: discarded).
    #[arg(long, value_name = "FILE", requires = "lsp")]
    server_log: Option<PathBuf>,
    /// Prompt tokens of the prefill measurement.
    #[arg(long, default_value_t = 512, value_name = "N", conflicts_with_all = ["typing", "lsp"])]
    prefill_tokens: usize,
    /// Tokens generated by the decode measurement (after the prefill prompt).
    #[arg(long, default_value_t = 128, value_name = "N", conflicts_with_all = ["typing", "lsp"])]
    decode_tokens: usize,
    /// The keystroke measurement's cached prompt; the keystroke adds one token to it.
    #[arg(long, default_value_t = 1500, value_name = "N", conflicts_with_all = ["typing", "lsp"])]
    keystroke_tokens: usize,
    /// The buffer read to measure memory bandwidth, which bounds decode (0: skip).
    #[arg(
        long,
        default_value_t = super::bandwidth::DEFAULT_BUFFER_MIB,
        value_name = "MIB",
        conflicts_with_all = ["typing", "lsp"]
    )]
    bandwidth_mib: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("stdin is not valid UTF-8 text")?;
    Ok(text)
}

pub fn tokenize(args: &TokenizeArgs) -> Result<()> {
    let gguf = GgufFile::read(args.model.path()?)?;
    let tokenizer = tokenizer_for(&gguf)?;
    let text = read_stdin()?;
    let ids = if args.infill {
        tokenizer.encode_infilling(&text)
    } else {
        tokenizer.encode(&text, !args.no_bos)
    };
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn load(args: &ModelArgs, max_positions: Option<usize>) -> Result<LoadedModel> {
    let device = args.device.open()?;
    let started = Instant::now();
    let mut model = LoadedModel::load(&args.model.path()?, &device, max_positions)?;
    model.llama.set_kv_type(args.kv_type);
    tracing::info!(
        "loaded {} on {} in {:.0} ms",
        model.name,
        crate::model::device::describe(&device),
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(model)
}

pub fn generate(args: &GenerateArgs) -> Result<()> {
    let prompt = match (&args.prompt, &args.ids) {
        (Some(text), _) => {
            let gguf = GgufFile::read(args.model.model.path()?)?;
            tokenizer_for(&gguf)?.encode(text, true)
        }
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt TEXT or --ids 1,2,3"),
    };
    // Size the context (and the KV cache's memory) to this one run.
    let model = load(&args.model, Some(prompt.len() + args.max_tokens))?;
    let vocab = model.tokenizer.vocab_size();
    if let Some(bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
        bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    let mut cache = model.llama.new_cache()?;
    let request = GenerationRequest {
        prompt,
        max_new_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            seed: args.seed,
            ..SamplingParams::default()
        },
        ..GenerationRequest::default()
    };
    let mut stdout = std::io::stdout().lock();
    let mut stream = |text: &str| {
        if !args.json {
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
    };
    let generation = run_generation(&model, &mut cache, &request, &mut || false, &mut stream)?;
    if args.json {
        println!("{}", serde_json::to_string(&generation)?);
    } else {
        println!();
    }
    Ok(())
}

/// A prompt of `len` tokens cut from realistic code, so the benchmark sees real token patterns.
fn bench_prompt(model: &LoadedModel, len: usize) -> Vec<u32> {
    const CODE: &str = "def merge_sorted(left: list[int], right: list[int]) -> list[int]:\n    \
        result = []\n    i = j = 0\n    while i < len(left) and j < len(right):\n        \
        if left[i] <= right[j]:\n            result.append(left[i])\n            i += 1\n        \
        else:\n            result.append(right[j])\n            j += 1\n    \
        return result + left[i:] + right[j:]\n\n";
    let unit = model.tokenizer.encode(CODE, false);
    let mut prompt: Vec<u32> = model.tokenizer.bos_id().into_iter().collect();
    while prompt.len() < len {
        prompt.extend_from_slice(&unit);
    }
    prompt.truncate(len);
    prompt
}

/// `bench --typing --backend URL`: the typing session through the local engine and the server.
fn bench_backends(args: &BenchArgs, backend: &crate::remote::BackendChoice) -> Result<()> {
    let path = args.model.model.path()?;
    let (_host, server) = super::backend::start(
        path,
        args.model.device,
        args.model.kv_type,
        args.context_tokens,
        backend,
    )?;
    let local = load(&args.model, Some(args.context_tokens))?;
    let template = crate::prompt::FimTemplate::detect(&local.tokenizer, &local.name)
        .map_err(anyhow::Error::msg)?;
    let tokenizer = local.tokenizer.clone();
    let window = crate::prompt::WindowConfig {
        budget_tokens: args
            .context_tokens
            .min(server.context_tokens)
            .saturating_sub(args.completion_tokens + 8),
        ..crate::prompt::WindowConfig::default()
    };
    let engines = [
        ("local".to_owned(), crate::engine::Engine::start(local)?),
        (server.name.clone(), server.engine.clone()),
    ];
    let mut sessions = super::typing_bench::compare_backends(
        &engines,
        &tokenizer,
        &template,
        args.completion_tokens,
        &window,
    )?;
    let same_output = sessions[0]["outputs"] == sessions[1]["outputs"];
    let added = sessions[1]["overhead_p50_ms"].as_f64().unwrap_or_default()
        - sessions[0]["overhead_p50_ms"].as_f64().unwrap_or_default();
    for session in &mut sessions {
        if let Some(object) = session.as_object_mut() {
            object.remove("outputs");
        }
    }
    if args.json {
        println!(
            "{}",
            json!({"sessions": sessions, "added_p50_ms": added, "same_output": same_output})
        );
        return Ok(());
    }
    println!(
        "one completion of {} tokens per keystroke, SPM, KV reuse",
        args.completion_tokens
    );
    for s in &sessions {
        println!(
            "{}\n    p50 {:>7.1} ms (outside the model {:>5.1} ms)  p95 {:>7.1} ms  {:>5.1}% of prompt tokens reused",
            s["backend"].as_str().unwrap_or_default(),
            s["p50_ms"].as_f64().unwrap_or_default(),
            s["overhead_p50_ms"].as_f64().unwrap_or_default(),
            s["p95_ms"].as_f64().unwrap_or_default(),
            s["reused_share"].as_f64().unwrap_or_default() * 100.0
        );
    }
    println!(
        "the network path adds {added:.1} ms at p50 (time outside the model); same completions: {}",
        if same_output { "yes" } else { "NO" }
    );
    Ok(())
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let backend = args.backend.choice()?;
    if args.lsp {
        if backend.remote().is_some() {
            bail!("--backend is not supported with --lsp");
        }
        let options = super::lsp_bench::Options {
            model: args.model.model.path()?,
            device: args.model.device,
            kv_type: args.model.kv_type,
            scenarios: args.scenarios.clone(),
            keystrokes: args.keystrokes,
            seed: args.seed,
            max_tokens: args.max_tokens,
            deadline_ms: args.deadline_ms,
            first_answer_ms: args.first_answer_ms,
            warmup_ms: args.warmup_ms,
            decode_step_ms: args.decode_step_ms,
            server_log: args.server_log.clone(),
        };
        return super::lsp_bench::run(&options, args.json);
    }
    if backend.remote().is_some() {
        if !args.typing {
            bail!("--backend is for the typing session: add --typing");
        }
        return bench_backends(args, &backend);
    }
    if args.typing {
        let model = load(&args.model, Some(args.context_tokens))?;
        let sessions =
            super::typing_bench::run(&model, args.completion_tokens, args.context_tokens)?;
        if args.json {
            println!("{}", json!({"model": model.name, "sessions": sessions}));
        } else {
            println!(
                "model {}: one completion of {} tokens per keystroke",
                model.name, args.completion_tokens
            );
            for s in sessions {
                println!(
                    "{:>3}  kv reuse {:<5}  p50 {:>8.1} ms  p95 {:>8.1} ms  prompt {:>6.0} tokens, {:>5.1}% reused",
                    s["order"].as_str().unwrap_or_default(),
                    s["kv_reuse"],
                    s["p50_ms"].as_f64().unwrap_or_default(),
                    s["p95_ms"].as_f64().unwrap_or_default(),
                    s["mean_prompt_tokens"].as_f64().unwrap_or_default(),
                    s["reused_share"].as_f64().unwrap_or_default() * 100.0
                );
            }
        }
        return Ok(());
    }
    speed(args)
}

/// `bench` without a mode: load time, prefill, decode, a keystroke with and without KV reuse,
/// peak RSS, and the decode bound that the machine's memory bandwidth sets.
fn speed(args: &BenchArgs) -> Result<()> {
    let (prefill, decode, keystroke) = (
        args.prefill_tokens,
        args.decode_tokens,
        args.keystroke_tokens,
    );
    if prefill == 0 || decode == 0 || keystroke == 0 {
        bail!("--prefill-tokens, --decode-tokens and --keystroke-tokens must be at least 1");
    }
    let positions = (prefill + 1 + decode).max(keystroke + 1) + 8;
    let started = Instant::now();
    let model = load(&args.model, Some(positions))?;
    let load_s = started.elapsed().as_secs_f64();
    if model.llama.max_positions() < positions - 8 {
        bail!(
            "the model's context ({} tokens) is too short for these measurements ({} positions)",
            model.llama.max_positions(),
            positions - 8
        );
    }
    let llama = &model.llama;
    let mut cache = llama.new_cache()?;
    let seconds = |since: Instant| since.elapsed().as_secs_f64();

    // Warm-up: first calls pay for allocations and weight repacking.
    llama.forward(&bench_prompt(&model, 16), &mut cache, false)?;

    cache.clear();
    let prompt = bench_prompt(&model, prefill);
    let started = Instant::now();
    for chunk in prompt.chunks(crate::model::generate::PREFILL_CHUNK) {
        llama.forward(chunk, &mut cache, false)?;
    }
    let prefill_s = seconds(started);

    let mut logits = llama.forward(&prompt[..1], &mut cache, false)?;
    let started = Instant::now();
    for _ in 0..decode {
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        logits = llama.forward(&[argmax(&row)], &mut cache, false)?;
    }
    let decode_s = seconds(started);

    // A keystroke: the previous prompt plus one token. Without reuse the whole prompt is
    // evaluated again; with reuse only the new token is.
    let long = bench_prompt(&model, keystroke + 1);
    cache.clear();
    let started = Instant::now();
    for chunk in long.chunks(crate::model::generate::PREFILL_CHUNK) {
        llama.forward(chunk, &mut cache, false)?;
    }
    let keystroke_cold_s = seconds(started);
    cache.truncate(keystroke);
    let started = Instant::now();
    llama.forward(&long[keystroke..], &mut cache, false)?;
    let keystroke_reuse_s = seconds(started);
    // Before the bandwidth buffer exists, which would count.
    let peak_rss = peak_rss_mib();
    drop(cache);

    let threads = rayon::current_num_threads();
    let weight_bytes =
        super::bandwidth::weight_bytes_per_token(&GgufFile::read(&model.path)?.tensors);
    let bandwidth = match args.bandwidth_mib {
        0 => None,
        mib => Some(
            super::bandwidth::measure_read(mib, threads, super::bandwidth::RUNS)
                .map_err(anyhow::Error::msg)?,
        ),
    };
    let decode_tok_s = decode as f64 / decode_s;
    let bound = bandwidth.map(|b| super::bandwidth::decode_bound(b, weight_bytes));

    let report = json!({
        "model": model.name,
        "path": model.path,
        "device": crate::model::device::describe(llama.device()),
        "kv_type": llama.kv_type().name(),
        "threads": threads,
        "load_ms": load_s * 1000.0,
        "prefill_tokens": prefill,
        "prefill_tok_s": prefill as f64 / prefill_s,
        "decode_tokens": decode,
        "decode_tok_s": decode_tok_s,
        "keystroke_prompt_tokens": keystroke + 1,
        "keystroke_without_reuse_ms": keystroke_cold_s * 1000.0,
        "keystroke_with_reuse_ms": keystroke_reuse_s * 1000.0,
        "peak_rss_mib": peak_rss,
        "weight_bytes_per_token": weight_bytes,
        "read_bandwidth_gb_s": bandwidth.map(|b| b / 1e9),
        "bandwidth_buffer_mib": args.bandwidth_mib,
        "decode_bound_tok_s": bound,
        "decode_share_of_bound": bound.filter(|&b| b > 0.0).map(|b| decode_tok_s / b),
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!("model            {} ({threads} threads)", model.name);
    println!("load             {:.0} ms", load_s * 1000.0);
    println!(
        "prefill          {:.1} tok/s ({prefill} tokens)",
        prefill as f64 / prefill_s
    );
    match (bandwidth, bound) {
        (Some(bandwidth), Some(bound)) if bound > 0.0 => println!(
            "decode           {decode_tok_s:.1} tok/s ({decode} tokens); bound {bound:.1} tok/s = \
             {:.1} GB/s read / {:.0} MB of weights per token: {:.0}% of it",
            bandwidth / 1e9,
            weight_bytes as f64 / 1e6,
            decode_tok_s / bound * 100.0
        ),
        _ => println!("decode           {decode_tok_s:.1} tok/s ({decode} tokens)"),
    }
    println!(
        "keystroke        {:.2} ms with KV reuse, {:.2} ms without ({} tokens)",
        keystroke_reuse_s * 1000.0,
        keystroke_cold_s * 1000.0,
        keystroke + 1
    );
    if let Some(rss) = peak_rss {
        println!("peak RSS         {rss:.0} MiB");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct FixturesArgs {
    /// The folder to write into; with --shape, the file to write.
    #[arg(long, default_value = "fixtures", value_name = "DIR|FILE")]
    out: PathBuf,
    /// Do not write: exit 1 unless the files there are byte-identical to freshly generated ones.
    #[arg(long, conflicts_with = "shape")]
    check: bool,
    /// Instead: one random Code-Llama-shaped model of this size, for benchmarks (1b: width 2048,
    /// 16 layers, 32 heads, 8 KV heads, FFN 5632; 7b: Code Llama 7B's shape). Deterministic.
    #[arg(long, value_enum, value_name = "SHAPE")]
    shape: Option<crate::fixtures::BenchShape>,
    /// The storage types of the --shape model, per tensor as llama.cpp's quantizer picks them (the
    /// _m mixes raise some layers to Q6_K). Every type holds the same drawn values.
    #[arg(long, value_enum, default_value = "q4_k_m", requires = "shape")]
    quant: crate::fixtures::BenchQuant,
    /// Key/value heads of the --shape model (divides 32; default 8 for 1b, 32 for 7b).
    #[arg(long, value_name = "N", requires = "shape")]
    kv_heads: Option<usize>,
}

/// `fixtures --shape`: a large random model streamed to a `.part` file, renamed when complete.
fn bench_model(args: &FixturesArgs, shape: crate::fixtures::BenchShape) -> Result<()> {
    use std::io::IsTerminal;
    let path = &args.out;
    if path.is_dir() {
        bail!(
            "{} is a folder: with --shape, --out names the file to write (e.g. random-1b.gguf)",
            path.display()
        );
    }
    let kv_heads = args.kv_heads.unwrap_or(shape.default_kv_heads());
    let mut partial = path.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    let started = Instant::now();
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        if terminal {
            eprint!("\r{done}/{total} tensors");
            if done == total {
                eprintln!();
            }
        }
    };
    let written =
        crate::fixtures::write_bench_model(shape, args.quant, kv_heads, &mut out, &mut progress)
            .map_err(anyhow::Error::msg)
            .and_then(|()| {
                out.into_inner()
                    .map_err(|e| e.into_error())?
                    .sync_all()
                    .map_err(anyhow::Error::from)
            });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(error.context(format!("writing {}", partial.display())));
    }
    std::fs::rename(&partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    let bytes = std::fs::metadata(path)?.len();
    println!(
        "{}: {bytes} bytes ({:.2} GiB, {kv_heads} KV heads) in {:.1} s",
        path.display(),
        bytes as f64 / f64::from(1u32 << 30),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn fixtures(args: &FixturesArgs) -> Result<()> {
    if let Some(shape) = args.shape {
        return bench_model(args, shape);
    }
    for (name, bytes) in crate::fixtures::all() {
        let bytes = bytes.map_err(anyhow::Error::msg)?;
        let path = args.out.join(name);
        if args.check {
            let existing =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if existing != bytes {
                bail!(
                    "{} differs from a fresh generation: run `codellama-lsp fixtures`",
                    path.display()
                );
            }
            println!("{}: up to date", path.display());
        } else {
            std::fs::create_dir_all(&args.out)?;
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            println!("{}: {} bytes", path.display(), bytes.len());
        }
    }
    Ok(())
}
