#!/usr/bin/env python3
"""Regenerates tests/data/infill_golden.json: infilling prompts as llama.cpp tokenizes them.

Independent of our Rust code: the prompt ids are assembled from llama.cpp's tokenizer (the
`llama-cpp-python` package) following Meta's Code Llama reference (`infilling_prompt_tokens`):
  PSM: [BOS, PRE] + encode(prefix) + [SUF] + encode_infilling(suffix) + [MID]
  SPM: [BOS, PRE, SUF] + encode_infilling(suffix) + [MID] + encode(prefix)
with encode_infilling(s) = encode("☺" + s)[2:].

Usage (not part of the test suite; needs `pip install llama-cpp-python`):
  python tools/infill_golden.py ../shared/fixtures fixtures > tests/data/infill_golden.json
"""
import json
import os
import sys

from llama_cpp import Llama

MARKER = "<FILL_ME>"
CASES = [
    "def fibonacci(n):\n    <FILL_ME>\n\nprint(fibonacci(10))\n",
    "fn main() {\n    let s = \"héllo 😀\";\n    <FILL_ME>\n}\n",
    "const add = (a, b) => <FILL_ME>;\n",
    "<FILL_ME>",
    "x = <FILL_ME>  # trailing\r\ny = 2\r\n",
    "\tif (ok) {\n\t\t<FILL_ME>\n\t}\n",
    "  leading spaces<FILL_ME> after",
    "plain text mentioning <PRE> and <SUF> as text: <FILL_ME> <MID> <EOT>",
    "日本語のコメント # <FILL_ME>\n",
    "\n\n<FILL_ME>\n\n",
]
MODELS = [
    ("shared", "codellama-tiny-random.gguf"),
    ("shared", "codellama-tiny-random-legacy.gguf"),
    ("own", "codellama-lsp-tiny-q8_0.gguf"),
]
PRE, SUF, MID = 32007, 32008, 32009


def main():
    roots = {"shared": sys.argv[1], "own": sys.argv[2]}
    out = []
    for where, name in MODELS:
        llm = Llama(model_path=os.path.join(roots[where], name), vocab_only=True, verbose=False)

        def encode(text):
            return llm.tokenize(text.encode(), add_bos=False, special=False) if text else []

        def encode_infilling(text):
            return llm.tokenize(("☺" + text).encode(), add_bos=False, special=False)[2:]

        for case in CASES:
            prefix, suffix = case.split(MARKER)
            psm = [1, PRE] + encode(prefix) + [SUF] + encode_infilling(suffix) + [MID]
            spm = [1, PRE, SUF] + encode_infilling(suffix) + [MID] + encode(prefix)
            out.append({"model": f"{where}:{name}", "input": case, "psm": psm, "spm": spm})
    json.dump({"generator": "tools/infill_golden.py", "cases": out}, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main()
