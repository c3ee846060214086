//! `docstring` and `edit`: the code actions from the command line, through the same flows and
//! engine as the server. Lines and columns are 1-based, as editors and compilers show them;
//! columns count characters.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use ropey::Rope;
use serde_json::json;

use crate::actions::Language;
use crate::actions::edit::unified_diff;
use crate::assist::{self, ModelGenerator, Replacement};
use crate::model::{DeviceSpec, KvType};
use crate::settings::Settings;

/// What both commands need to run a model.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF model: Code Llama 7B/13B (Instruct is best for edits), or any llama-architecture
    /// chat model.
    #[arg(long, value_name = "PATH|SPEC")]
    model: Option<super::models::ModelRef>,
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceSpec,
    /// How the KV cache stores keys and values: f16 (half the memory of f32) or f32.
    #[arg(long, default_value = "f16", value_name = "f16|f32")]
    kv_type: KvType,
    #[command(flatten)]
    backend: super::backend::BackendArgs,
    /// 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f32,
    /// The context the prompt is built for.
    #[arg(long, default_value_t = Settings::default().context_tokens, value_name = "N")]
    context_tokens: usize,
}

#[derive(Debug, Args)]
pub struct DocstringArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The source file.
    file: PathBuf,
    /// A line inside the function, method or type to document (1-based).
    #[arg(long, value_name = "L")]
    line: usize,
    /// The column on that line (1-based; by default the first non-blank character).
    #[arg(long, value_name = "C")]
    character: Option<usize>,
    #[command(flatten)]
    output: OutputArgs,
}

/// How the result is given: printed (the default), as JSON, as a diff, or written in place.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// The language, when the file's extension does not say it (python, rust, go, …).
    #[arg(long, value_name = "ID")]
    language: Option<String>,
    /// Print one JSON object (docstring: kind, name, text, lines, range; edit: edits, text).
    #[arg(long)]
    json: bool,
    /// Print the change as a unified diff.
    #[arg(long, conflicts_with = "in_place")]
    diff: bool,
    /// Write the change into FILE.
    #[arg(long)]
    in_place: bool,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The source file.
    file: PathBuf,
    /// The code to rewrite, L1:C1-L2:C2 (1-based; the end is the position after the last
    /// selected character, so 3:1-5:1 is lines 3 and 4 whole).
    #[arg(long, value_name = "L1:C1-L2:C2")]
    range: String,
    /// How to rewrite it, e.g. "add type hints" or "use an iterator instead of the loop".
    #[arg(long, value_name = "TEXT")]
    instruction: String,
    #[command(flatten)]
    output: OutputArgs,
}

pub fn docstring(args: &DocstringArgs) -> Result<()> {
    let source = read_source(&args.file)?;
    let language = language_of(&args.file, args.output.language.as_deref())?;
    let rope = Rope::from_str(&source);
    let character = match args.character {
        Some(character) => character,
        None => first_non_blank_column(&rope, args.line),
    };
    let offset = byte_at(&rope, args.line, character)?;
    // Say what is wrong with the request before spending seconds on loading the model.
    assist::docstring_target(language, &source, offset)?;
    let generator = start_model(&args.model)?;
    let runtime = super::backend::runtime()?;
    let docstring = runtime.block_on(assist::docstring(
        &generator,
        language,
        &source,
        offset,
        &mut |_| {},
    ))?;
    let edits = [docstring.edit.clone()];
    let new = apply(&source, &edits);
    if args.output.json {
        let report = json!({
            "kind": docstring.kind,
            "name": docstring.name,
            "text": docstring.edit.text,
            "lines": docstring.lines,
            "range": range_json(&rope, &docstring.edit),
        });
        println!("{report}");
    } else {
        finish(
            &args.file,
            &source,
            &new,
            args.output.diff,
            args.output.in_place,
            || print!("{}", docstring.edit.text),
        )?;
    }
    Ok(())
}

pub fn edit(args: &EditArgs) -> Result<()> {
    let source = read_source(&args.file)?;
    // Edits work on any text (the language only names the code fence), but a --language that
    // names nothing we know is a mistake worth reporting.
    let language = match &args.output.language {
        Some(id) => Some(language_of(&args.file, Some(id))?),
        None => language_of(&args.file, None).ok(),
    };
    let rope = Rope::from_str(&source);
    let selection = parse_range(&rope, &args.range)?;
    let generator = start_model(&args.model)?;
    let runtime = super::backend::runtime()?;
    let file_name = args
        .file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let (edits, new_text) = runtime.block_on(assist::edit_selection(
        &generator,
        language,
        &file_name,
        &source,
        selection,
        &args.instruction,
        &mut |_| {},
    ))?;
    let new = apply(&source, &edits);
    if args.output.json {
        let edits: Vec<_> = edits
            .iter()
            .map(|edit| json!({"range": range_json(&rope, edit), "text": edit.text}))
            .collect();
        println!("{}", json!({"edits": edits, "text": new_text}));
    } else {
        finish(
            &args.file,
            &source,
            &new,
            args.output.diff,
            args.output.in_place,
            || {
                print!("{new_text}");
                if !new_text.ends_with('\n') {
                    println!();
                }
            },
        )?;
    }
    Ok(())
}

fn read_source(file: &Path) -> Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {} as UTF-8 text", file.display()))
}

fn language_of(file: &Path, id: Option<&str>) -> Result<Language> {
    if let Some(id) = id {
        return Language::from_language_id(id).with_context(|| {
            format!("unknown --language {id:?}; use python, rust, javascript, typescript, go, lua, c, cpp or java")
        });
    }
    let extension = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    Language::from_extension(extension).with_context(|| {
        format!(
            "cannot tell the language of {} from its extension; pass --language",
            file.display()
        )
    })
}

fn start_model(args: &ModelArgs) -> Result<ModelGenerator> {
    let backend = args.backend.choice()?;
    let path = super::backend::model_file(args.model.as_ref(), &backend)?;
    let (host, _) = super::backend::start(
        path,
        args.device,
        args.kv_type,
        args.context_tokens,
        &backend,
    )?;
    Ok(ModelGenerator::new(
        host,
        args.temperature,
        args.context_tokens,
    ))
}

/// Prints the result, its diff, or writes it into the file.
fn finish(
    file: &Path,
    old: &str,
    new: &str,
    diff: bool,
    in_place: bool,
    print: impl FnOnce(),
) -> Result<()> {
    if diff {
        print!("{}", unified_diff(old, new, &file.display().to_string()));
    } else if in_place {
        // Write next to the file, then rename: an interrupted write never leaves half a file.
        let temporary = file.with_extension("codellama-tmp");
        std::fs::write(&temporary, new)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, file)
            .with_context(|| format!("cannot replace {}", file.display()))?;
        eprintln!("codellama-lsp: updated {}", file.display());
    } else {
        print();
    }
    Ok(())
}

fn apply(source: &str, edits: &[Replacement]) -> String {
    let mut new = source.to_owned();
    let mut sorted: Vec<&Replacement> = edits.iter().collect();
    sorted.sort_by_key(|edit| std::cmp::Reverse(edit.range.start));
    for edit in sorted {
        new.replace_range(edit.range.clone(), &edit.text);
    }
    new
}

fn first_non_blank_column(rope: &Rope, line: usize) -> usize {
    let Some(text) = line.checked_sub(1).and_then(|l| rope.get_line(l)) else {
        return 1;
    };
    text.chars().take_while(|c| *c == ' ' || *c == '\t').count() + 1
}

/// The byte offset of a 1-based line and column (a column past the end of the line clamps).
pub fn byte_at(rope: &Rope, line: usize, column: usize) -> Result<usize> {
    let lines = rope.len_lines();
    if line == 0 || column == 0 {
        bail!("lines and columns count from 1");
    }
    if line > lines {
        bail!("line {line} is past the end of the file ({lines} lines)");
    }
    let start = rope.line_to_char(line - 1);
    let text = rope.line(line - 1);
    let length = text
        .chars()
        .take_while(|c| *c != '\n' && *c != '\r')
        .count();
    Ok(rope.char_to_byte(start + (column - 1).min(length)))
}

fn parse_range(rope: &Rope, text: &str) -> Result<std::ops::Range<usize>> {
    let parse_point = |point: &str| -> Result<usize> {
        let (line, column) = point
            .split_once(':')
            .with_context(|| format!("{point:?} is not LINE:COLUMN"))?;
        let line = line
            .trim()
            .parse()
            .with_context(|| format!("bad line in {point:?}"))?;
        let column = column
            .trim()
            .parse()
            .with_context(|| format!("bad column in {point:?}"))?;
        byte_at(rope, line, column)
    };
    let (start, end) = text
        .split_once('-')
        .with_context(|| format!("--range {text:?} is not L1:C1-L2:C2"))?;
    let (start, end) = (parse_point(start)?, parse_point(end)?);
    if end <= start {
        bail!("--range {text:?} is empty or backwards");
    }
    Ok(start..end)
}

fn range_json(rope: &Rope, edit: &Replacement) -> serde_json::Value {
    let point = |byte: usize| {
        let char_index = rope.byte_to_char(byte);
        let line = rope.char_to_line(char_index);
        let column = char_index - rope.line_to_char(line);
        json!({"line": line + 1, "character": column + 1})
    };
    json!({"start": point(edit.range.start), "end": point(edit.range.end)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_one_based_and_clamped_to_lines() {
        let rope = Rope::from_str("ab\r\nçd\nlast");
        assert_eq!(byte_at(&rope, 1, 1).unwrap(), 0);
        assert_eq!(byte_at(&rope, 1, 99).unwrap(), 2); // before the \r\n
        assert_eq!(byte_at(&rope, 2, 2).unwrap(), 6); // ç is 2 bytes
        assert!(byte_at(&rope, 4, 1).is_err());
        assert!(byte_at(&rope, 0, 1).is_err());
        assert_eq!(parse_range(&rope, "1:1-2:1").unwrap(), 0..4);
        assert!(parse_range(&rope, "2:1-1:1").is_err());
        assert!(parse_range(&rope, "2:1").is_err());
    }
}
