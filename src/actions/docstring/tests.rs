//! Docstrings end to end without a model: source with a `$0` cursor and an answer in, the
//! edited document out. Every result must parse cleanly and count as documented afterwards.

use super::*;
use crate::actions::target::{self, Lookup};

fn target_at(language: Language, marked: &str) -> (DocTarget, String) {
    let offset = marked.find("$0").expect("$0 cursor");
    let source = marked.replacen("$0", "", 1);
    match target::find(language, &source, offset) {
        Lookup::Found(target) => (target, source),
        other => panic!("no target in {marked:?}: {other:?}"),
    }
}

/// Applies `answer` as a docstring at the cursor and checks the whole result.
#[track_caller]
fn documented(language: Language, marked: &str, origin: Answer, answer: &str, expected: &str) {
    let (target, source) = target_at(language, marked);
    let lines = sanitize(answer, origin, language, &target).expect("usable answer");
    let (range, text) = render(language, &target, &source, &lines);
    let mut result = source.clone();
    result.replace_range(range, &text);
    assert_eq!(
        result, expected,
        "\n--- got:\n{result}\n--- expected:\n{expected}"
    );
    let tree = language.parse(&result).expect("parses");
    assert!(!tree.root_node().has_error(), "syntax error in:\n{result}");
    let cursor = marked.find("$0").unwrap() + text.len();
    assert!(
        matches!(
            target::find(language, &result, cursor),
            Lookup::Documented { .. }
        ),
        "not documented afterwards:\n{result}"
    );
}

#[test]
fn python_docstring_from_a_chat_answer_with_fences_and_signature() {
    documented(
        Language::Python,
        "class Cart:\n    def total(self, tax):\n        return sum$0(self.items) * (1 + tax)\n",
        Answer::Chat,
        "```python\ndef total(self, tax):\n    \"\"\"Return the total price including tax.\n\n    Args:\n        tax: The tax rate, e.g. 0.2.\n    \"\"\"\n```",
        "class Cart:\n    def total(self, tax):\n        \"\"\"Return the total price including tax.\n\n        Args:\n            tax: The tax rate, e.g. 0.2.\n        \"\"\"\n        return sum(self.items) * (1 + tax)\n",
    );
}

#[test]
fn leaked_infilling_tokens_never_reach_the_docstring() {
    documented(
        Language::Python,
        "def area(r):\n    return$0 3.14 * r * r\n",
        Answer::Infill,
        "<MID>Area of a circle<MID> of radius r.</s>",
        "def area(r):\n    \"\"\"Area of a circle of radius r.\"\"\"\n    return 3.14 * r * r\n",
    );
}

#[test]
fn python_one_liners_and_dangerous_quotes() {
    documented(
        Language::Python,
        "def twice(x): return$0 2 * x\n",
        Answer::Infill,
        "Say \"\"\"twice\"\"\" and \"double\"",
        "def twice(x):\n    \"\"\"Say \\\"\\\"\\\"twice\\\"\\\"\\\" and \"double\" \"\"\"\n    return 2 * x\n",
    );
    documented(
        Language::Python,
        "def path():\n\treturn$0 'C:\\\\'\n",
        Answer::Infill,
        "Return the root C:\\",
        "def path():\n\t\"\"\"Return the root C:\\\\\"\"\"\n\treturn 'C:\\\\'\n",
    );
}

#[test]
fn rust_doc_comments_above_attributes_from_an_infilled_middle() {
    documented(
        Language::Rust,
        "impl Stack {\n    #[inline]\n    pub fn push(&mut self, v: i32) {\n        self.items.push$0(v);\n    }\n}\n",
        Answer::Infill,
        "Pushes `v` on top of the stack.\n    ///\n    /// Never fails.\n    pub fn push(&mut self, v: i32) {",
        "impl Stack {\n    /// Pushes `v` on top of the stack.\n    ///\n    /// Never fails.\n    #[inline]\n    pub fn push(&mut self, v: i32) {\n        self.items.push(v);\n    }\n}\n",
    );
}

#[test]
fn jsdoc_and_javadoc_blocks_cannot_be_closed_early() {
    documented(
        Language::JavaScript,
        "export function sum(a, b) {\n  return a $0+ b;\n}\n",
        Answer::Chat,
        "/**\n * Adds two numbers (a */ b).\n * @param {number} a\n * @returns {number}\n */",
        "/**\n * Adds two numbers (a *\\/ b).\n * @param {number} a\n * @returns {number}\n */\nexport function sum(a, b) {\n  return a + b;\n}\n",
    );
    documented(
        Language::Java,
        "class Cart {\n    @Override\n    public String toString() {\n        return \"c$0art\";\n    }\n}\n",
        Answer::Chat,
        "Describes the cart for logs.",
        "class Cart {\n    /**\n     * Describes the cart for logs.\n     */\n    @Override\n    public String toString() {\n        return \"cart\";\n    }\n}\n",
    );
    documented(
        Language::TypeScript,
        "export const area = (r: number): number => Math.PI * r$0 * r;\n",
        Answer::Chat,
        "The area of a circle of radius `r`.",
        "/**\n * The area of a circle of radius `r`.\n */\nexport const area = (r: number): number => Math.PI * r * r;\n",
    );
}

#[test]
fn go_comments_start_with_the_name() {
    documented(
        Language::Go,
        "package main\n\nfunc Add(a, b int) int {\n\treturn a $0+ b\n}\n",
        Answer::Chat,
        "Returns the sum of a and b.",
        "package main\n\n// Add returns the sum of a and b.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n",
    );
}

#[test]
fn lua_and_c_and_cpp() {
    documented(
        Language::Lua,
        "local M = {}\n\nfunction M.greet(name)\n  return 'hi ' $0.. name\nend\n",
        Answer::Chat,
        "-- Greets someone.\n-- @param name string",
        "local M = {}\n\n--- Greets someone.\n--- @param name string\nfunction M.greet(name)\n  return 'hi ' .. name\nend\n",
    );
    documented(
        Language::C,
        "int parse(const char *s$0);\r\n",
        Answer::Chat,
        "Parses the decimal number in s.\n@return the number, or -1",
        "/**\r\n * Parses the decimal number in s.\r\n * @return the number, or -1\r\n */\r\nint parse(const char *s);\r\n",
    );
    documented(
        Language::Cpp,
        "template <typename T>\nT max(T a, T b) { return a > b ? $0a : b; }\n",
        Answer::Chat,
        "The larger of a and b.",
        "/**\n * The larger of a and b.\n */\ntemplate <typename T>\nT max(T a, T b) { return a > b ? a : b; }\n",
    );
}

#[test]
fn long_prose_is_wrapped_and_long_answers_are_capped() {
    let (target, source) = target_at(Language::Rust, "fn f$0() {}\n");
    let long = "word ".repeat(60);
    let lines = sanitize(&long, Answer::Chat, Language::Rust, &target).unwrap();
    let (_, text) = render(Language::Rust, &target, &source, &lines);
    assert!(text.lines().count() >= 3);
    assert!(text.lines().all(|l| l.len() <= WRAP_WIDTH), "{text}");

    let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
    let lines = sanitize(&many, Answer::Chat, Language::Rust, &target).unwrap();
    assert_eq!(lines.len(), MAX_LINES);
}

#[test]
fn answers_without_words_are_unusable() {
    let (target, _) = target_at(Language::Python, "def f$0(x):\n    return x\n");
    for answer in [
        "",
        "   \n\n",
        "\"\"\"\"\"\"",
        "```python\ndef f(x):\n    return x\n```",
    ] {
        assert!(
            sanitize(answer, Answer::Chat, Language::Python, &target).is_err(),
            "{answer:?}"
        );
    }
}

#[test]
fn infilled_line_comments_end_where_code_starts() {
    let (target, _) = target_at(Language::Rust, "fn add$0(a: i32) -> i32 { a }\n");
    let lines = sanitize(
        "Adds one.\nlet x = 5;\n/// not this",
        Answer::Infill,
        Language::Rust,
        &target,
    )
    .unwrap();
    assert_eq!(lines, ["Adds one."]);
}

#[test]
fn infill_prompts_open_and_close_the_docstring() {
    let (target, source) = target_at(Language::Python, "def f(x):\n    return x$0\n");
    let ask = infill_prompt(Language::Python, &target, &source);
    assert_eq!(ask.prefix, "def f(x):\n    \"\"\"");
    assert_eq!(ask.suffix, "\"\"\"\n    return x\n");
    assert_eq!(ask.stop, ["\"\"\""]);

    let (target, source) = target_at(Language::Go, "package p\n\nfunc Add() {$0}\n");
    let ask = infill_prompt(Language::Go, &target, &source);
    assert_eq!(ask.prefix, "package p\n\n// Add ");
    assert_eq!(ask.suffix, "\nfunc Add() {}\n");

    let (target, source) = target_at(Language::Python, "def g(): return$0 1\n");
    let ask = infill_prompt(Language::Python, &target, &source);
    assert_eq!(ask.prefix, "def g():\n    \"\"\"");
    assert_eq!(ask.suffix, "\"\"\"\n    return 1\n");
}

#[test]
fn chat_prompts_hold_the_code_and_the_convention() {
    let (target, source) = target_at(
        Language::Java,
        "class A {\n  int size() { return$0 0; }\n}\n",
    );
    let ask = chat_prompt(Language::Java, &target, &source);
    assert!(ask.system.contains("Java"));
    assert!(ask.user.contains("method `size`"));
    assert!(ask.user.contains("Javadoc"));
    assert!(
        ask.user
            .contains("```java\n  int size() { return 0; }\n```")
    );
    // The answer starts inside the comment, so a model writes words, not code.
    assert_eq!(ask.answer_prefix, "/**\n * ");
    assert_eq!(ask.stop, ["*/"]);
}

#[test]
fn looping_answers_are_cut_where_the_loop_starts() {
    let (target, _) = target_at(Language::Python, "def f$0(x):\n    return x\n");
    let answer = "Returns x.\n\nRaises:\n    TypeError: bad.\n\nRaises:\n    ValueError: worse.\n\nRaises:\n    TypeError: bad.\n\nRaises:\n    ValueError: worse.";
    let lines = sanitize(answer, Answer::Infill, Language::Python, &target).unwrap();
    assert_eq!(
        lines,
        [
            "Returns x.",
            "",
            "Raises:",
            "    TypeError: bad.",
            "",
            "Raises:",
            "    ValueError: worse."
        ]
    );
    let lines = sanitize("a\nb\nb\nb\nb", Answer::Infill, Language::Python, &target).unwrap();
    assert_eq!(lines, ["a", "b", "b"]);
}

#[test]
fn chat_answers_with_code_first_find_the_documentation_later() {
    let (target, _) = target_at(Language::Python, "def scale$0(s, k):\n    return s * k\n");
    let answer = "```python\ndef scale(s, k):\n    return s * k\n```\n\nThe docstring:\n\n```python\n\"\"\"Scale s by k.\"\"\"\n```";
    let lines = sanitize(answer, Answer::Chat, Language::Python, &target).unwrap();
    assert_eq!(lines, ["Scale s by k."]);
}
