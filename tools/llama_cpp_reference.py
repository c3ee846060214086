#!/usr/bin/env python3
"""Reference outputs from llama.cpp (through llama-cpp-python) for the tiny fixture models.

Usage: python tools/llama_cpp_reference.py [OUT_JSON]   (needs llama-cpp-python; not run by the tests)

For each model: tokenization of fixed prompts (add_bos=True, special=False), greedy generation of
exactly 24 tokens (argmax computed here in numpy, lowest index wins ties, EOS not honoured), with the
top-1 logit and top-1/top-2 gap per step, and the first 64 last-position logits after the first
generation prompt.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"  # ../shared/fixtures
MODELS = ["llama-2-tiny-random.gguf", "codellama-tiny-random.gguf", "codellama-tiny-random-legacy.gguf"]
N_GEN = 24
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

TOKENIZE_PROMPTS = [
    "def fibonacci(n):\n    ",
    " <PRE>",
    "<SUF> <MID> <EOT>",
    "<s>",
    "☺",
    "fn main() {\n\tprintln!(\"héllo 😀\");\n}\n",
    "",
    " ",
    "\n\n  x",
]

GEN_PROMPTS = [
    [1, 822, 1667, 29898, 29877, 29892, 263, 1125, 13, 1678, 736],
    [1, 29871, 32007],  # codellama only (id 32007 >= 32000)
    [1],
    [1, 13],
]


def f(x) -> float:
    """float32 -> Python float (exact value of the float32)."""
    return float(np.float32(x))


def top2(logits: np.ndarray):
    idx = int(np.argmax(logits))  # first (lowest) index among equal maxima
    top1 = logits[idx]
    rest = np.delete(logits, idx)
    second = rest.max()
    n_ties = int(np.count_nonzero(logits == top1))
    return idx, f(top1), f(top1) - f(second), n_ties


def last_logits(llm: Llama) -> np.ndarray:
    # llama-cpp-python 0.3.36's Llama.eval() no longer copies logits into llm.scores when
    # logits_all=False, so read the last computed row with the low-level llama_get_logits_ith(ctx, -1).
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    if not ptr:
        raise RuntimeError("no logits for the last position")
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32, copy=True)


def greedy(llm: Llama, prompt):
    llm.reset()
    llm.eval(prompt)
    steps = []
    ids = []
    for _ in range(N_GEN):
        logits = last_logits(llm)
        idx, top1, gap, n_ties = top2(logits)
        steps.append({"id": idx, "top1_logit": top1, "gap_top1_top2": gap, "n_at_max": n_ties})
        ids.append(idx)
        llm.eval([idx])
    return ids, steps


def run_model(name: str):
    path = FIXTURES / name
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, n_batch=512, logits_all=False,
                verbose=False, seed=0)
    n_vocab = llm.n_vocab()
    out = {
        "file": name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "n_vocab": n_vocab,
        "token_bos": llm.token_bos(),
        "token_eos": llm.token_eos(),
        "tokenize": [],
        "greedy": [],
    }
    for text in TOKENIZE_PROMPTS:
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        out["tokenize"].append({"text": text, "ids": [int(t) for t in toks]})

    first_logits = None
    for prompt in GEN_PROMPTS:
        if max(prompt) >= n_vocab:
            continue
        ids, steps = greedy(llm, prompt)
        if first_logits is None:
            # Last-position logits right after evaluating the first prompt: re-evaluate it alone.
            llm.reset()
            llm.eval(prompt)
            lg = last_logits(llm)
            assert int(np.argmax(lg)) == ids[0]
            first_logits = {
                "prompt": prompt,
                "first64": [f(v) for v in lg[:64]],
                "argmax": int(np.argmax(lg)),
                "max": f(lg.max()),
                "sum": float(np.sum(lg, dtype=np.float64)),
            }
        out["greedy"].append({
            "prompt": prompt,
            "ids": ids,
            "steps": steps,
            "min_gap": min(s["gap_top1_top2"] for s in steps),
            "text_bytes_hex": llm.detokenize(ids).hex(),
        })
    out["last_logits_first_prompt"] = first_logits
    del llm
    return out


def main():
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("reference.json")
    result = {
        "generator": "llama-cpp-python",
        "llama_cpp_python_version": llama_cpp.__version__,
        # Not exposed by the Python API; taken from the sdist's vendor/llama.cpp git metadata (see versions.txt).
        "llama_cpp_commit": LLAMA_CPP_COMMIT if llama_cpp.__version__ == "0.3.36" else "unknown",
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "settings": {"n_ctx": 512, "n_threads": 2, "n_batch": 512, "logits_all": False, "seed": 0,
                     "tokenize": {"add_bos": True, "special": False},
                     "greedy": {"n_tokens": N_GEN, "argmax_ties": "lowest index", "stop_at_eos": False}},
        "models": [run_model(m) for m in MODELS],
    }
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
