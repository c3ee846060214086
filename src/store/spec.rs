//! What `--model` and the `model` setting name: a local GGUF file, or a file in a Hugging Face
//! repository, `owner/repo:file.gguf` (optionally `owner/repo@revision:file.gguf`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The model used when none is configured: Code Llama 7B Instruct (trained for infilling and for
/// chat), quantized to Q4_K_M (4.1 GB), from TheBloke's widely used GGUF conversions.
pub const DEFAULT_MODEL: &str =
    "TheBloke/CodeLlama-7B-Instruct-GGUF:codellama-7b-instruct.Q4_K_M.gguf";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelSpec {
    Path(PathBuf),
    Hub(HubFile),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HubFile {
    /// `owner/name`.
    pub repo: String,
    /// The file's path inside the repository.
    pub file: String,
    /// A branch, tag or commit; `main` unless given.
    pub revision: String,
}

impl ModelSpec {
    pub fn default_model() -> Self {
        DEFAULT_MODEL
            .parse()
            .unwrap_or_else(|_| Self::Path(PathBuf::from(DEFAULT_MODEL)))
    }
}

impl FromStr for ModelSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the model is empty: give a GGUF file or owner/repo:file.gguf".into());
        }
        // An existing file always wins, whatever its name looks like.
        if std::path::Path::new(text).exists() {
            return Ok(Self::Path(PathBuf::from(text)));
        }
        match HubFile::parse(text) {
            Some(hub) => Ok(Self::Hub(hub)),
            None => Ok(Self::Path(PathBuf::from(text))),
        }
    }
}

impl HubFile {
    fn parse(text: &str) -> Option<Self> {
        let (repo_part, file) = text.split_once(':')?;
        let (repo, revision) = match repo_part.split_once('@') {
            Some((repo, revision)) if !revision.is_empty() => (repo, revision),
            Some(_) => return None,
            None => (repo_part, "main"),
        };
        let (owner, name) = repo.split_once('/')?;
        let valid_name = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let valid_file = !file.is_empty()
            && !file.starts_with('/')
            && !file.contains('\\')
            && file.split('/').all(|part| !part.is_empty() && part != "..");
        (valid_name(owner) && valid_name(name) && valid_file).then(|| Self {
            repo: repo.to_owned(),
            file: file.to_owned(),
            revision: revision.to_owned(),
        })
    }
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == "main" {
            write!(f, "{}:{}", self.repo, self.file)
        } else {
            write!(f, "{}@{}:{}", self.repo, self.revision, self.file)
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Hub(hub) => hub.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(repo: &str, file: &str, revision: &str) -> ModelSpec {
        ModelSpec::Hub(HubFile {
            repo: repo.into(),
            file: file.into(),
            revision: revision.into(),
        })
    }

    #[test]
    fn hub_specs_and_paths_are_told_apart() {
        assert_eq!(
            "TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf".parse(),
            Ok(hub(
                "TheBloke/CodeLlama-7B-GGUF",
                "codellama-7b.Q4_K_M.gguf",
                "main"
            ))
        );
        assert_eq!(
            "a/b@v1.0:sub/dir/m.gguf".parse(),
            Ok(hub("a/b", "sub/dir/m.gguf", "v1.0"))
        );
        for path in [
            "/models/m.gguf",
            "m.gguf",
            "C:\\models\\m.gguf",
            "C:/models/m.gguf",
            "./a/b:c.gguf",
            "a/b:../../etc/passwd",
            "a/b@:m.gguf",
        ] {
            assert_eq!(
                path.parse(),
                Ok(ModelSpec::Path(PathBuf::from(path))),
                "{path}"
            );
        }
        assert!(" ".parse::<ModelSpec>().is_err());
        assert_eq!(ModelSpec::default_model().to_string(), DEFAULT_MODEL);
        assert_eq!(hub("a/b", "m.gguf", "dev").to_string(), "a/b@dev:m.gguf");
    }
}
