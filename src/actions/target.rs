//! Which definition a "Generate docstring" action is about, and where its documentation goes.
//!
//! A real parser (tree-sitter) finds the innermost function, method or type around the cursor,
//! tells whether it is documented already, and where each language's convention puts the
//! documentation: Python's docstring is the first statement of the body; everything else puts
//! a comment above the definition, above its attributes, decorators, `export` or `template`.

use std::ops::Range;

use tree_sitter::Node;

use super::language::Language;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocTarget {
    /// What it is, in words ("function", "method", "class", "struct"…), for prompts and titles.
    pub kind: &'static str,
    pub name: String,
    /// Bytes of the whole definition, attributes and wrappers included.
    pub code: Range<usize>,
    pub placement: Placement,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Comment lines inserted before line `line` (0-based), indented with `indent`.
    Above { line: usize, indent: String },
    /// A Python docstring inserted before line `line`, the body's first statement.
    BodyStart { line: usize, indent: String },
    /// A Python one-liner (`def f(): return x`): the bytes `replace` (the blanks after the colon)
    /// become the docstring, and the body moves to its own line at `indent`.
    AfterColon {
        replace: Range<usize>,
        indent: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(DocTarget),
    /// The innermost definition at the cursor has documentation already.
    Documented {
        kind: &'static str,
        name: String,
    },
    /// The cursor is not inside a definition we document.
    Nothing,
}

/// Finds the definition around byte `offset` of `source`.
pub fn find(language: Language, source: &str, offset: usize) -> Lookup {
    let Some(tree) = language.parse(source) else {
        return Lookup::Nothing;
    };
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    // A cursor at the end of a line is after the last node: look at the text before it too.
    let before = source[..offset]
        .trim_end_matches([' ', '\t', '\r', '\n'])
        .len();
    for at in [offset, before.saturating_sub(1)] {
        let mut node = tree.root_node().descendant_for_byte_range(at, at);
        while let Some(current) = node {
            if let Some(definition) = definition(language, current) {
                return describe(language, definition, source);
            }
            node = current.parent();
        }
    }
    Lookup::Nothing
}

/// The last line a node covers (a line comment's node may end at column 0 of the next line).
fn last_row(node: Node<'_>) -> usize {
    let end = node.end_position();
    if end.column == 0 && end.row > node.start_position().row {
        end.row - 1
    } else {
        end.row
    }
}

/// A definition found while walking up from the cursor.
struct Definition<'t> {
    /// The node that carries the name and body.
    node: Node<'t>,
    /// The statement that holds it (the same node, or e.g. `const f = () => …`).
    statement: Node<'t>,
    kind: &'static str,
}

/// Whether `node` is a definition we document, and as what.
fn definition(language: Language, node: Node<'_>) -> Option<Definition<'_>> {
    let plain = |kind| {
        Some(Definition {
            node,
            statement: node,
            kind,
        })
    };
    let inside = |kinds: &[&str]| node.parent().is_some_and(|p| kinds.contains(&p.kind()));
    match (language, node.kind()) {
        (Language::Python, "function_definition") => {
            let in_class = node
                .parent()
                .and_then(|p| p.parent())
                .is_some_and(|p| p.kind() == "class_definition")
                || node
                    .parent()
                    .filter(|p| p.kind() == "decorated_definition")
                    .and_then(|p| p.parent())
                    .and_then(|p| p.parent())
                    .is_some_and(|p| p.kind() == "class_definition");
            plain(if in_class { "method" } else { "function" })
        }
        (Language::Python, "class_definition") => plain("class"),

        (Language::Rust, "function_item" | "function_signature_item") => {
            let in_impl = node
                .parent()
                .and_then(|p| p.parent())
                .is_some_and(|p| matches!(p.kind(), "impl_item" | "trait_item"));
            plain(if in_impl { "method" } else { "function" })
        }
        (Language::Rust, "struct_item") => plain("struct"),
        (Language::Rust, "enum_item") => plain("enum"),
        (Language::Rust, "trait_item") => plain("trait"),
        (Language::Rust, "union_item") => plain("union"),
        (Language::Rust, "type_item") => plain("type alias"),
        (Language::Rust, "mod_item") => plain("module"),
        (Language::Rust, "macro_definition") => plain("macro"),
        (Language::Rust, "const_item") => plain("constant"),
        (Language::Rust, "static_item") => plain("static"),

        (
            Language::JavaScript | Language::TypeScript | Language::Tsx,
            "function_declaration" | "generator_function_declaration" | "function_signature",
        ) => plain("function"),
        (
            Language::JavaScript | Language::TypeScript | Language::Tsx,
            "class_declaration" | "abstract_class_declaration",
        ) => plain("class"),
        (
            Language::JavaScript | Language::TypeScript | Language::Tsx,
            "method_definition" | "method_signature" | "abstract_method_signature",
        ) => plain("method"),
        (Language::TypeScript | Language::Tsx, "interface_declaration") => plain("interface"),
        (Language::TypeScript | Language::Tsx, "type_alias_declaration") => plain("type"),
        (Language::TypeScript | Language::Tsx, "enum_declaration") => plain("enum"),
        (
            Language::JavaScript | Language::TypeScript | Language::Tsx,
            "arrow_function" | "function_expression" | "function" | "generator_function",
        ) => {
            // `const name = (…) => …`: documented as a function, above the declaration.
            let declarator = node
                .parent()
                .filter(|p| p.kind() == "variable_declarator")?;
            let statement = declarator
                .parent()
                .filter(|p| matches!(p.kind(), "lexical_declaration" | "variable_declaration"))?;
            Some(Definition {
                node: declarator,
                statement,
                kind: "function",
            })
        }

        (Language::Go, "function_declaration") => plain("function"),
        (Language::Go, "method_declaration") => plain("method"),
        (Language::Go, "type_declaration") => plain("type"),

        (Language::Lua, "function_declaration") => plain("function"),
        (Language::Lua, "function_definition") => {
            // `local name = function(…) … end` or `M.name = function(…) … end`.
            let list = node.parent().filter(|p| p.kind() == "expression_list")?;
            let assignment = list
                .parent()
                .filter(|p| p.kind() == "assignment_statement")?;
            let statement = assignment
                .parent()
                .filter(|p| p.kind() == "variable_declaration")
                .unwrap_or(assignment);
            Some(Definition {
                node: assignment,
                statement,
                kind: "function",
            })
        }

        (Language::C | Language::Cpp, "function_definition") => {
            let in_class = inside(&["field_declaration_list"]);
            plain(if in_class { "method" } else { "function" })
        }
        (Language::C | Language::Cpp, "declaration" | "field_declaration")
            if function_declarator(node).is_some() =>
        {
            plain(if node.kind() == "field_declaration" {
                "method"
            } else {
                "function"
            })
        }
        (
            Language::C | Language::Cpp,
            "struct_specifier" | "class_specifier" | "union_specifier" | "enum_specifier",
        ) if node.child_by_field_name("body").is_some() => {
            // `struct s {…};` or `typedef struct {…} name;`: documented above the statement.
            let statement = node
                .parent()
                .filter(|p| matches!(p.kind(), "declaration" | "type_definition"))
                .unwrap_or(node);
            let kind = match node.kind() {
                "class_specifier" => "class",
                "union_specifier" => "union",
                "enum_specifier" => "enum",
                _ => "struct",
            };
            Some(Definition {
                node,
                statement,
                kind,
            })
        }

        (Language::Java, "method_declaration") => plain("method"),
        (Language::Java, "constructor_declaration" | "compact_constructor_declaration") => {
            plain("constructor")
        }
        (Language::Java, "class_declaration") => plain("class"),
        (Language::Java, "interface_declaration" | "annotation_type_declaration") => {
            plain("interface")
        }
        (Language::Java, "enum_declaration") => plain("enum"),
        (Language::Java, "record_declaration") => plain("record"),
        _ => None,
    }
}

/// The function declarator inside a C/C++ declaration, through pointers and references.
fn function_declarator(node: Node<'_>) -> Option<Node<'_>> {
    let mut declarator = node.child_by_field_name("declarator")?;
    loop {
        if declarator.kind() == "function_declarator" {
            return Some(declarator);
        }
        declarator = declarator.child_by_field_name("declarator")?;
    }
}

fn describe(language: Language, definition: Definition<'_>, source: &str) -> Lookup {
    let name = name_of(language, &definition, source);
    let kind = definition.kind;
    let anchor = anchor(language, definition.statement);
    let code = anchor.start_byte()..definition.statement.end_byte();
    if language == Language::Python {
        return python_placement(definition.node, source, kind, name, code);
    }
    let mut first = anchor;
    // Rust attributes are siblings before the item; its documentation goes above them.
    if language == Language::Rust {
        while let Some(previous) = first.prev_named_sibling().filter(|previous| {
            previous.kind() == "attribute_item"
                && last_row(*previous) + 1 >= first.start_position().row
        }) {
            if text(previous, source).replace(' ', "").starts_with("#[doc") {
                return Lookup::Documented { kind, name };
            }
            first = previous;
        }
    }
    if let Some(previous) = first.prev_sibling()
        && previous.kind().contains("comment")
        && last_row(previous) + 1 >= first.start_position().row
        && last_row(previous) < first.start_position().row
        && is_documentation(language, text(previous, source))
    {
        return Lookup::Documented { kind, name };
    }
    let line = first.start_position().row;
    Lookup::Found(DocTarget {
        kind,
        name,
        code: line_start(source, first.start_byte())..code.end,
        placement: Placement::Above {
            line,
            indent: indentation_of_line(source, line).to_owned(),
        },
    })
}

/// Whether a comment right above a definition is its documentation. In Rust only doc comments
/// count (a `// note` above a function is not its documentation); elsewhere any comment does.
fn is_documentation(language: Language, comment: &str) -> bool {
    match language {
        Language::Rust => comment.starts_with("///") || comment.starts_with("/**"),
        _ => true,
    }
}

/// The outermost node that belongs to the definition: `export`, `template<…>`, `declare`.
fn anchor(language: Language, mut node: Node<'_>) -> Node<'_> {
    while let Some(parent) = node.parent() {
        let wraps = match language {
            Language::JavaScript | Language::TypeScript | Language::Tsx => {
                matches!(parent.kind(), "export_statement" | "ambient_declaration")
            }
            Language::Cpp => parent.kind() == "template_declaration",
            Language::Python => parent.kind() == "decorated_definition",
            _ => false,
        };
        if !wraps {
            break;
        }
        node = parent;
    }
    node
}

fn python_placement(
    definition: Node<'_>,
    source: &str,
    kind: &'static str,
    name: String,
    code: Range<usize>,
) -> Lookup {
    let Some(body) = definition.child_by_field_name("body") else {
        return Lookup::Nothing;
    };
    let mut cursor = body.walk();
    let first = body
        .named_children(&mut cursor)
        .find(|child| child.kind() != "comment");
    let Some(first) = first else {
        return Lookup::Nothing;
    };
    if first.kind() == "expression_statement"
        && first
            .named_child(0)
            .is_some_and(|c| matches!(c.kind(), "string" | "concatenated_string"))
    {
        return Lookup::Documented { kind, name };
    }
    let mut cursor = definition.walk();
    let colon = definition
        .children(&mut cursor)
        .filter(|child| child.kind() == ":" && child.end_byte() <= body.start_byte())
        .last();
    let header_row = colon.map_or(definition.start_position().row, |c| c.end_position().row);
    let placement = if first.start_position().row <= header_row {
        let colon_end = colon.map_or(body.start_byte(), |c| c.end_byte());
        let header_indent = indentation_of_line(source, definition.start_position().row);
        let unit = if source.lines().any(|line| line.starts_with('\t')) {
            "\t"
        } else {
            "    "
        };
        Placement::AfterColon {
            replace: colon_end..first.start_byte(),
            indent: format!("{header_indent}{unit}"),
        }
    } else {
        // Before any comment that opens the body: the comment belongs to the code after it.
        let first_row = first.start_position().row;
        let line = source
            .split('\n')
            .enumerate()
            .take(first_row)
            .skip(header_row + 1)
            .find(|(_, text)| text.trim_start().starts_with('#'))
            .map_or(first_row, |(row, _)| row);
        Placement::BodyStart {
            line,
            indent: indentation_of_line(source, line).to_owned(),
        }
    };
    Lookup::Found(DocTarget {
        kind,
        name,
        code: line_start(source, code.start)..code.end,
        placement,
    })
}

fn name_of(language: Language, definition: &Definition<'_>, source: &str) -> String {
    let node = definition.node;
    let named = match (language, node.kind()) {
        (Language::C | Language::Cpp, _) => function_declarator(node)
            .and_then(|f| f.child_by_field_name("declarator"))
            .or_else(|| node.child_by_field_name("name")),
        (Language::Go, "type_declaration") => node
            .named_child(0)
            .and_then(|spec| spec.child_by_field_name("name")),
        (Language::Lua, "assignment_statement") => node.named_child(0),
        _ => node.child_by_field_name("name"),
    };
    let name = named.map_or("", |n| text(n, source)).trim();
    if name.is_empty() {
        // Anonymous (`typedef struct {…} name;`, `export default function () {}`): the first line.
        let statement = text(definition.statement, source);
        let first_line = statement.lines().next().unwrap_or_default().trim();
        if let (Language::C | Language::Cpp, Some(declarator)) = (
            language,
            definition.statement.child_by_field_name("declarator"),
        ) {
            return text(declarator, source).trim().to_owned();
        }
        return first_line.chars().take(60).collect();
    }
    name.to_owned()
}

fn text<'s>(node: Node<'_>, source: &'s str) -> &'s str {
    source.get(node.byte_range()).unwrap_or_default()
}

fn line_start(source: &str, byte: usize) -> usize {
    source[..byte.min(source.len())]
        .rfind('\n')
        .map_or(0, |newline| newline + 1)
}

/// The leading blanks of line `line` (0-based).
pub fn indentation_of_line(source: &str, line: usize) -> &str {
    let text = source.split('\n').nth(line).unwrap_or_default();
    let end = text
        .find(|c: char| c != ' ' && c != '\t')
        .unwrap_or(text.len());
    &text[..end]
}

#[cfg(test)]
mod tests;
