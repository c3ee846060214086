//! Target finding, one case per line of intent: source with a `$0` cursor, what must be found.

use super::*;

/// Finds the target at the `$0` marker.
fn at_marker(language: Language, marked: &str) -> (Lookup, String) {
    let offset = marked.find("$0").expect("the case has a $0 cursor");
    let source = marked.replacen("$0", "", 1);
    (find(language, &source, offset), source)
}

/// Asserts a found target with `kind`, `name`, placed above line `line` at `indent`.
#[track_caller]
fn above(language: Language, marked: &str, kind: &str, name: &str, line: usize, indent: &str) {
    let (lookup, _) = at_marker(language, marked);
    let Lookup::Found(target) = lookup else {
        panic!("expected a target in {marked:?}, got {lookup:?}");
    };
    assert_eq!(
        (target.kind, target.name.as_str()),
        (kind, name),
        "{marked}"
    );
    assert_eq!(
        target.placement,
        Placement::Above {
            line,
            indent: indent.into()
        },
        "{marked}"
    );
}

#[track_caller]
fn documented(language: Language, marked: &str) {
    let (lookup, _) = at_marker(language, marked);
    assert!(
        matches!(lookup, Lookup::Documented { .. }),
        "expected documented in {marked:?}, got {lookup:?}"
    );
}

#[track_caller]
fn nothing(language: Language, marked: &str) {
    let (lookup, _) = at_marker(language, marked);
    assert_eq!(lookup, Lookup::Nothing, "{marked}");
}

#[test]
fn python_docstrings_go_first_in_the_body() {
    let (lookup, source) = at_marker(
        Language::Python,
        "import os\n\nclass Store:\n    @staticmethod\n    def lo$0ad(path):\n        # read it\n        return open(path).read()\n",
    );
    let Lookup::Found(target) = lookup else {
        panic!("{lookup:?}")
    };
    assert_eq!((target.kind, target.name.as_str()), ("method", "load"));
    assert_eq!(
        target.placement,
        Placement::BodyStart {
            line: 5,
            indent: "        ".into()
        }
    );
    assert!(source[target.code.clone()].starts_with("    @staticmethod\n    def load"));
    assert!(source[target.code].ends_with(".read()"));

    let (lookup, _) = at_marker(Language::Python, "class P$0oint:\n    x: int = 0\n");
    assert!(
        matches!(lookup, Lookup::Found(DocTarget { kind: "class", ref name, placement: Placement::BodyStart { line: 1, .. }, .. }) if name == "Point")
    );
}

#[test]
fn python_one_liners_move_their_body_down() {
    let (lookup, source) = at_marker(Language::Python, "def tw$0ice(x): return 2 * x\n");
    let Lookup::Found(target) = lookup else {
        panic!("{lookup:?}")
    };
    let Placement::AfterColon { replace, indent } = target.placement else {
        panic!("{:?}", target.placement)
    };
    assert_eq!(&source[replace.clone()], " ");
    assert_eq!(&source[..replace.start], "def twice(x):");
    assert_eq!(indent, "    ");
}

#[test]
fn python_existing_docstrings_and_outside_positions() {
    documented(
        Language::Python,
        "def f$0():\n    \"\"\"Doc.\"\"\"\n    return 1\n",
    );
    documented(
        Language::Python,
        "def f():\n    # note\n    'single quoted doc'\n    return $01\n",
    );
    nothing(Language::Python, "import o$0s\nx = 1\n");
    // The innermost definition wins: a nested function without a docstring is a target.
    let (lookup, _) = at_marker(
        Language::Python,
        "def outer():\n    \"\"\"Doc.\"\"\"\n    def in$0ner():\n        pass\n    return inner\n",
    );
    assert!(
        matches!(lookup, Lookup::Found(ref t) if t.name == "inner"),
        "{lookup:?}"
    );
}

#[test]
fn rust_docs_go_above_attributes() {
    above(
        Language::Rust,
        "use std::fmt;\n\n#[derive(Debug)]\n#[allow(dead_code)]\npub struct Po$0int {\n    x: i32,\n}\n",
        "struct",
        "Point",
        2,
        "",
    );
    above(
        Language::Rust,
        "impl Point {\n    pub fn norm(&self) -> f64 {\n        (self.x * $0self.x) as f64\n    }\n}\n",
        "method",
        "norm",
        1,
        "    ",
    );
    documented(Language::Rust, "/// Adds.\nfn add$0(a: i32) -> i32 { a }\n");
    documented(
        Language::Rust,
        "/// Adds.\n#[inline]\nfn add$0(a: i32) -> i32 { a }\n",
    );
    documented(Language::Rust, "#[doc = \"Adds.\"]\nfn add$0() {}\n");
    // A plain comment is not documentation in Rust.
    above(
        Language::Rust,
        "// helper\nfn add$0() {}\n",
        "function",
        "add",
        1,
        "",
    );
}

#[test]
fn javascript_and_typescript_docs_go_above_export() {
    above(
        Language::JavaScript,
        "export function su$0m(a, b) {\n  return a + b;\n}\n",
        "function",
        "sum",
        0,
        "",
    );
    above(
        Language::JavaScript,
        "const x = 1;\nconst double = (n) => {\n  return $0n * 2;\n};\n",
        "function",
        "double",
        1,
        "",
    );
    above(
        Language::TypeScript,
        "class Cart {\n  total(items: Item[]): number {\n    return items.len$0gth;\n  }\n}\n",
        "method",
        "total",
        1,
        "  ",
    );
    above(
        Language::TypeScript,
        "export interface Sh$0ape {\n  area(): number;\n}\n",
        "interface",
        "Shape",
        0,
        "",
    );
    documented(
        Language::TypeScript,
        "/** Sums. */\nexport function su$0m(a: number) { return a; }\n",
    );
    // A callback is not a definition of its own: the enclosing function is the target.
    above(
        Language::JavaScript,
        "function main() {\n  items.forEach((i) => con$0sole.log(i));\n}\n",
        "function",
        "main",
        0,
        "",
    );
    above(
        Language::Tsx,
        "export const App = () => <div>h$0i</div>;\n",
        "function",
        "App",
        0,
        "",
    );
}

#[test]
fn go_docs_go_above_funcs_methods_and_types() {
    above(
        Language::Go,
        "package main\n\nfunc Ad$0d(a, b int) int {\n\treturn a + b\n}\n",
        "function",
        "Add",
        2,
        "",
    );
    above(
        Language::Go,
        "package main\n\nfunc (s *Stack) P$0ush(v int) {\n\ts.items = append(s.items, v)\n}\n",
        "method",
        "Push",
        2,
        "",
    );
    above(
        Language::Go,
        "package main\n\ntype St$0ack struct {\n\titems []int\n}\n",
        "type",
        "Stack",
        2,
        "",
    );
    documented(
        Language::Go,
        "package main\n\n// Add adds.\nfunc Ad$0d(a, b int) int { return a + b }\n",
    );
}

#[test]
fn lua_docs_go_above_functions() {
    above(
        Language::Lua,
        "local M = {}\n\nfunction M.gr$0eet(name)\n  return 'hi ' .. name\nend\n",
        "function",
        "M.greet",
        2,
        "",
    );
    above(
        Language::Lua,
        "local square = function(x)\n  return x $0* x\nend\n",
        "function",
        "square",
        0,
        "",
    );
    documented(Language::Lua, "--- Greets.\nlocal function gr$0eet() end\n");
}

#[test]
fn c_and_cpp_docs_go_above_definitions_prototypes_and_templates() {
    above(
        Language::C,
        "#include <stdio.h>\n\nstatic int *fi$0nd(int *xs, int n) {\n  return xs;\n}\n",
        "function",
        "find",
        2,
        "",
    );
    above(
        Language::C,
        "int parse(const char *s$0);\n",
        "function",
        "parse",
        0,
        "",
    );
    above(
        Language::C,
        "typedef struct {\n  int x$0;\n} point;\n",
        "struct",
        "point",
        0,
        "",
    );
    above(
        Language::Cpp,
        "template <typename T>\nT ma$0x(T a, T b) { return a > b ? a : b; }\n",
        "function",
        "max",
        0,
        "",
    );
    above(
        Language::Cpp,
        "class Stack {\n public:\n  void push(int v$0);\n};\n",
        "method",
        "push",
        2,
        "  ",
    );
    documented(
        Language::C,
        "/* Parses s. */\nint parse(const char *s$0);\n",
    );
}

#[test]
fn java_docs_go_above_annotations() {
    above(
        Language::Java,
        "public class Cart {\n    @Override\n    public String toS$0tring() {\n        return \"cart\";\n    }\n}\n",
        "method",
        "toString",
        1,
        "    ",
    );
    above(
        Language::Java,
        "public class Ca$0rt {\n}\n",
        "class",
        "Cart",
        0,
        "",
    );
    documented(Language::Java, "/** A cart. */\npublic class Ca$0rt {\n}\n");
}

#[test]
fn broken_and_edge_inputs_do_not_panic() {
    for language in [
        Language::Python,
        Language::Rust,
        Language::JavaScript,
        Language::Go,
        Language::Lua,
        Language::C,
        Language::Cpp,
        Language::Java,
    ] {
        for source in ["", "def (", "fn {{{{", "\u{feff}🦀\r\n\r\n", "}}}}"] {
            for offset in [0, 1, 3, source.len(), source.len() + 10] {
                let _ = find(language, source, offset.min(source.len()));
            }
        }
    }
}
