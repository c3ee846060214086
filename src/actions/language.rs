//! The languages the code actions understand: how to recognise them, parse them and name them.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    Python,
    Rust,
    JavaScript,
    TypeScript,
    Tsx,
    Go,
    Lua,
    C,
    Cpp,
    Java,
}

impl Language {
    /// From an LSP `languageId`, falling back to the file extension of `uri` (clients send ids
    /// like "plaintext" for files they do not recognise).
    pub fn detect(language_id: &str, uri: &str) -> Option<Self> {
        Self::from_language_id(language_id).or_else(|| {
            let path = uri.split(['?', '#']).next().unwrap_or(uri);
            Self::from_extension(Path::new(path).extension()?.to_str()?)
        })
    }

    pub fn from_language_id(id: &str) -> Option<Self> {
        Some(match id {
            "python" => Self::Python,
            "rust" => Self::Rust,
            "javascript" | "javascriptreact" | "jsx" => Self::JavaScript,
            "typescript" => Self::TypeScript,
            "typescriptreact" | "tsx" => Self::Tsx,
            "go" => Self::Go,
            "lua" => Self::Lua,
            "c" => Self::C,
            "cpp" | "c++" | "cuda-cpp" | "objective-cpp" => Self::Cpp,
            "java" => Self::Java,
            _ => return None,
        })
    }

    pub fn from_extension(extension: &str) -> Option<Self> {
        Some(match extension.to_ascii_lowercase().as_str() {
            "py" | "pyi" | "pyw" => Self::Python,
            "rs" => Self::Rust,
            "js" | "mjs" | "cjs" | "jsx" => Self::JavaScript,
            "ts" | "mts" | "cts" => Self::TypeScript,
            "tsx" => Self::Tsx,
            "go" => Self::Go,
            "lua" => Self::Lua,
            "c" => Self::C,
            // A `.h` header may be C or C++; the C++ grammar parses both.
            "h" | "hh" | "hpp" | "hxx" | "cc" | "cpp" | "cxx" | "c++" | "cu" => Self::Cpp,
            "java" => Self::Java,
            _ => return None,
        })
    }

    /// The name used in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Python => "Python",
            Self::Rust => "Rust",
            Self::JavaScript => "JavaScript",
            Self::TypeScript | Self::Tsx => "TypeScript",
            Self::Go => "Go",
            Self::Lua => "Lua",
            Self::C => "C",
            Self::Cpp => "C++",
            Self::Java => "Java",
        }
    }

    /// How a line comment starts.
    pub fn line_comment(self) -> &'static str {
        match self {
            Self::Python => "#",
            Self::Lua => "--",
            _ => "//",
        }
    }

    /// The info string of a Markdown code fence.
    pub fn fence(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Rust => "rust",
            Self::JavaScript => "javascript",
            Self::TypeScript => "typescript",
            Self::Tsx => "tsx",
            Self::Go => "go",
            Self::Lua => "lua",
            Self::C => "c",
            Self::Cpp => "cpp",
            Self::Java => "java",
        }
    }

    pub fn grammar(self) -> tree_sitter::Language {
        match self {
            Self::Python => tree_sitter_python::LANGUAGE.into(),
            Self::Rust => tree_sitter_rust::LANGUAGE.into(),
            Self::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Self::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Self::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Self::Go => tree_sitter_go::LANGUAGE.into(),
            Self::Lua => tree_sitter_lua::LANGUAGE.into(),
            Self::C => tree_sitter_c::LANGUAGE.into(),
            Self::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Self::Java => tree_sitter_java::LANGUAGE.into(),
        }
    }

    /// Parses `source`; `None` only if the grammar cannot be loaded (a build problem) or
    /// parsing was aborted. Syntax errors still give a tree, with error nodes in it.
    pub fn parse(self, source: &str) -> Option<tree_sitter::Tree> {
        let mut parser = tree_sitter::Parser::new();
        parser.set_language(&self.grammar()).ok()?;
        parser.parse(source, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_ids_win_over_extensions_and_extensions_fill_in() {
        assert_eq!(
            Language::detect("python", "file:///a/b.rs"),
            Some(Language::Python)
        );
        assert_eq!(
            Language::detect("plaintext", "file:///a/b.rs"),
            Some(Language::Rust)
        );
        assert_eq!(
            Language::detect("", "file:///a/comp.tsx?x=1"),
            Some(Language::Tsx)
        );
        assert_eq!(Language::detect("markdown", "file:///README.md"), None);
    }

    #[test]
    fn every_grammar_loads_and_parses() {
        for language in [
            Language::Python,
            Language::Rust,
            Language::JavaScript,
            Language::TypeScript,
            Language::Tsx,
            Language::Go,
            Language::Lua,
            Language::C,
            Language::Cpp,
            Language::Java,
        ] {
            let tree = language.parse("x").expect("grammar loads");
            assert!(tree.root_node().child_count() <= 2, "{language:?}");
        }
    }
}
