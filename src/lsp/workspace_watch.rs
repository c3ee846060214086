//! Workspace context from disk: files saved or changed in the workspace (by the editor, a
//! formatter, `git checkout`…) feed the completion context ring. Folders are found with the
//! `ignore` walker, so `.gitignore`d trees (`target/`, `node_modules/`) are never watched, and
//! each kept folder gets a non-recursive watch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{EventKind, RecursiveMode, Watcher};

use crate::actions::Language;
use crate::completion::{Completer, source_name};
use crate::context::MAX_FILE_BYTES;

/// Folders watched at most: bounded work and bounded inotify use on huge workspaces.
const MAX_FOLDERS: usize = 2000;

/// Watches `roots` and adds changed source files to `completer`'s context. Returns the watcher
/// (dropping it stops the watch) and how many folders are watched.
pub fn start(
    roots: &[PathBuf],
    completer: Arc<Completer>,
) -> notify::Result<(notify::RecommendedWatcher, usize)> {
    let roots_for_events: Vec<PathBuf> = roots.to_vec();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            return;
        };
        if !matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) {
            return;
        }
        for path in &event.paths {
            add_file(path, &roots_for_events, &completer);
        }
    })?;
    let mut watched = 0;
    for root in roots {
        let walker = ignore::WalkBuilder::new(root)
            .hidden(true)
            .git_ignore(true)
            .require_git(false)
            .build();
        for entry in walker.flatten() {
            if watched >= MAX_FOLDERS {
                tracing::warn!(
                    "the workspace has more than {MAX_FOLDERS} folders; only the first are watched for context"
                );
                return Ok((watcher, watched));
            }
            if entry.file_type().is_some_and(|t| t.is_dir())
                && watcher
                    .watch(entry.path(), RecursiveMode::NonRecursive)
                    .is_ok()
            {
                watched += 1;
            }
        }
    }
    Ok((watcher, watched))
}

/// Reads a changed source file into the context (small, UTF-8, a language we know).
fn add_file(path: &Path, roots: &[PathBuf], completer: &Completer) {
    let known = path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Language::from_extension)
        .is_some();
    if !known {
        return;
    }
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    if !metadata.is_file() || metadata.len() as usize > MAX_FILE_BYTES {
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    // Named as open documents are, so the same file never appears twice.
    let _ = roots;
    let source = source_name(&path.to_string_lossy().replace('\\', "/"));
    tracing::debug!("workspace context: {source} changed");
    completer.add_context_file(&source, &text);
}
