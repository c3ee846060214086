//! The assistant's flows with a scripted stand-in for the model: what it is asked, and what its
//! answers turn into.

use std::ops::Range;
use std::sync::Mutex;

use super::*;

/// Answers from a script, streamed in small pieces; records every ask.
pub struct Scripted {
    pub can_infill: bool,
    answers: Mutex<Vec<String>>,
    pub asks: Mutex<Vec<Ask>>,
}

impl Scripted {
    pub fn new(can_infill: bool, answers: &[&str]) -> Self {
        Self {
            can_infill,
            answers: Mutex::new(answers.iter().rev().map(|a| a.to_string()).collect()),
            asks: Mutex::default(),
        }
    }

    fn last_ask(&self) -> Ask {
        self.asks.lock().unwrap().last().cloned().expect("asked")
    }
}

impl Generator for Scripted {
    async fn info(&self) -> Result<ModelInfo, AssistError> {
        Ok(ModelInfo {
            name: "scripted".into(),
            can_infill: self.can_infill,
        })
    }

    async fn generate(
        &self,
        ask: Ask,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, AssistError> {
        self.asks.lock().unwrap().push(ask);
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop()
            .expect("a scripted answer");
        let chars: Vec<char> = answer.chars().collect();
        for piece in chars.chunks(3) {
            on_text(&piece.iter().collect::<String>());
            tokio::task::yield_now().await;
        }
        Ok(answer)
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn docstrings_infill_when_the_model_can_and_stream_their_text() {
    let source = "def area(r):\n    return 3.14 * r * r\n";
    let model = Scripted::new(true, &["Area of a circle of radius r."]);
    let mut streamed = String::new();
    let doc = block_on(docstring(
        &model,
        Language::Python,
        source,
        source.find("3.14").unwrap(),
        &mut |piece| streamed.push_str(piece),
    ))
    .unwrap();
    assert_eq!(streamed, "Area of a circle of radius r.");
    assert_eq!((doc.kind, doc.name.as_str()), ("function", "area"));
    assert_eq!(doc.edit.range, 13..13);
    assert_eq!(
        doc.edit.text,
        "    \"\"\"Area of a circle of radius r.\"\"\"\n"
    );
    let ask = model.last_ask();
    assert_eq!(
        ask.prompt,
        Prompt::Infill {
            prefix: "def area(r):\n    \"\"\"".into(),
            suffix: "\"\"\"\n    return 3.14 * r * r\n".into()
        }
    );
    assert_eq!(ask.stop, ["\"\"\""]);
}

#[test]
fn docstrings_use_chat_for_models_without_infilling() {
    let source = "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n";
    let model = Scripted::new(
        false,
        &[
            "Sure! Here is the documentation:\n\n```rust\n/// Adds `a` and `b`.\nfn add(a: i32, b: i32) -> i32 {\n```",
        ],
    );
    let doc = block_on(docstring(&model, Language::Rust, source, 4, &mut |_| {})).unwrap();
    // "Sure! Here is…" is chatter outside the fence; the fence holds the comment and the signature.
    assert_eq!(doc.edit.text, "/// Adds `a` and `b`.\n");
    assert_eq!(doc.edit.range, 0..0);
    let Prompt::Chat(chat) = model.last_ask().prompt else {
        panic!("expected a chat prompt")
    };
    assert!(
        chat.user
            .contains("```rust\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n```")
    );
}

#[test]
fn chat_docstrings_are_primed_with_the_opening_of_the_comment() {
    let source = "package main\n\nfunc Add(a, b int) int {\n\treturn a + b\n}\n";
    let model = Scripted::new(
        false,
        &["returns the sum of a and b.\nfunc Add(a, b int) int {"],
    );
    let doc = block_on(docstring(&model, Language::Go, source, 30, &mut |_| {})).unwrap();
    assert_eq!(doc.edit.text, "// Add returns the sum of a and b.\n");
    let Prompt::Chat(chat) = model.last_ask().prompt else {
        panic!("expected a chat prompt")
    };
    assert_eq!(chat.answer_prefix, "// Add ");
}

#[test]
fn docstring_refusals_say_why() {
    let model = Scripted::new(true, &["   "]);
    let documented = "/// Adds.\nfn add() {}\n";
    let error = block_on(docstring(
        &model,
        Language::Rust,
        documented,
        12,
        &mut |_| {},
    ));
    assert_eq!(
        error,
        Err(AssistError::NothingToDo(
            "the function `add` already has documentation".into()
        ))
    );
    assert!(
        model.asks.lock().unwrap().is_empty(),
        "no model call for nothing"
    );
    let error = block_on(docstring(
        &model,
        Language::Rust,
        "use std::fs;\n",
        3,
        &mut |_| {},
    ));
    assert!(matches!(error, Err(AssistError::NothingToDo(_))));
    let error = block_on(docstring(
        &model,
        Language::Rust,
        "fn f() {}\n",
        3,
        &mut |_| {},
    ));
    assert!(matches!(error, Err(AssistError::Unusable(_))), "{error:?}");
}

#[test]
fn edits_become_minimal_replacements_at_the_right_bytes() {
    let source = "import os\n\ndef f(a, b):\n    x = a + b\n    return x\n\nprint(f(1, 2))\n";
    let start = source.find("def").unwrap();
    let end = source.find("\n\nprint").unwrap(); // the selection ends after "return x"
    let model = Scripted::new(
        true,
        &["def f(a: int, b: int) -> int:\n    x = a + b\n    return x\n```\nI added hints."],
    );
    let (edits, new) = block_on(edit_selection(
        &model,
        Some(Language::Python),
        "main.py",
        source,
        start..end,
        "add type hints",
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!(
        edits,
        [Replacement {
            range: start..start + "def f(a, b):\n".len(),
            text: "def f(a: int, b: int) -> int:\n".into()
        }]
    );
    assert_eq!(
        new,
        "def f(a: int, b: int) -> int:\n    x = a + b\n    return x"
    );
    let Prompt::Chat(chat) = model.last_ask().prompt else {
        panic!()
    };
    assert_eq!(chat.answer_prefix, "```python\n");
    assert!(chat.user.contains("Instruction: add type hints"));
}

#[test]
fn edits_keep_the_indentation_of_nested_selections() {
    let source = "class A:\n    def f(self):\n        return 1\n";
    let start = source.find("    def").unwrap();
    let model = Scripted::new(true, &["def f(self) -> int:\n    return 1\n"]);
    let (edits, _) = block_on(edit_selection(
        &model,
        Some(Language::Python),
        "a.py",
        source,
        start..source.len(),
        "annotate",
        &mut |_| {},
    ))
    .unwrap();
    let mut result = source.to_owned();
    for edit in edits.iter().rev() {
        result.replace_range(edit.range.clone(), &edit.text);
    }
    assert_eq!(
        result,
        "class A:\n    def f(self) -> int:\n        return 1\n"
    );
}

#[test]
fn edit_requests_that_cannot_work_are_refused_before_asking() {
    let model = Scripted::new(true, &[]);
    let source = "x = 1\n";
    for (range, instruction) in [
        (0..5, " "),
        (0..0, "do it"),
        (3..99, "do it"),
        (Range { start: 2, end: 1 }, "x"),
    ] {
        let result = block_on(edit_selection(
            &model,
            None,
            "f",
            source,
            range,
            instruction,
            &mut |_| {},
        ));
        assert!(result.is_err());
    }
    assert!(model.asks.lock().unwrap().is_empty());
    let model = Scripted::new(true, &["```\n```"]);
    let result = block_on(edit_selection(
        &model,
        None,
        "f",
        source,
        0..5,
        "rename",
        &mut |_| {},
    ));
    assert!(matches!(result, Err(AssistError::Unusable(_))));
}

#[test]
fn chat_remembers_turns_per_session() {
    let model = Scripted::new(false, &["It adds.", "Yes, `add(1, 2)` is 3."]);
    let sessions = ChatSessions::new();
    let context = CodeContext {
        language: Some(Language::Go),
        file_name: "main.go",
        code: "func add(a, b int) int { return a + b }",
    };
    let first = block_on(chat(
        &model,
        &sessions,
        "s1",
        "What does this do?",
        Some(context),
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!(first, "It adds.");
    let second = block_on(chat(
        &model,
        &sessions,
        "s1",
        "Is add(1,2) 3?",
        None,
        &mut |_| {},
    ))
    .unwrap();
    assert_eq!(second, "Yes, `add(1, 2)` is 3.");
    let Prompt::Chat(asked) = model.last_ask().prompt else {
        panic!()
    };
    assert_eq!(asked.turns.len(), 1);
    assert!(asked.turns[0].0.contains("```go\nfunc add"));
    assert_eq!(asked.turns[0].1, "It adds.");
    assert!(sessions.history("other").is_empty());
}

#[test]
fn a_primed_chat_answer_without_words_is_asked_once_more_unprimed() {
    let source = "def area(r):\n    return 3.14 * r * r\n";
    let model = Scripted::new(
        false,
        &[
            "\ndef area(r):\n    ",
            "Sure:\n```python\n\"\"\"Area of a circle of radius r.\"\"\"\n```",
        ],
    );
    let doc = block_on(docstring(&model, Language::Python, source, 20, &mut |_| {})).unwrap();
    assert_eq!(doc.lines, ["Area of a circle of radius r."]);
    let asks = model.asks.lock().unwrap();
    assert_eq!(asks.len(), 2);
    let (Prompt::Chat(first), Prompt::Chat(second)) = (&asks[0].prompt, &asks[1].prompt) else {
        panic!("chat prompts expected")
    };
    assert_eq!(first.answer_prefix, "\"\"\"");
    assert_eq!(second.answer_prefix, "");
    assert!(asks[1].stop.is_empty());
}
