#!/usr/bin/env python3
"""The numbers `codellama-lsp bench` reports, measured with llama.cpp on the same GGUF.

Not part of the test suite. Needs `llama-cpp-python` built without native CPU detection, e.g.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install --no-cache-dir llama-cpp-python
Usage: python tools/llama_cpp_bench.py MODEL.gguf [THREADS]
"""
import json
import sys
import time

from llama_cpp import Llama

CODE = (
    "def merge_sorted(left: list[int], right: list[int]) -> list[int]:\n    result = []\n"
    "    i = j = 0\n    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n"
    "            result.append(left[i])\n            i += 1\n        else:\n"
    "            result.append(right[j])\n            j += 1\n    return result + left[i:] + right[j:]\n\n"
)


def prompt(llm, length):
    unit = llm.tokenize(CODE.encode(), add_bos=False, special=False)
    ids = [llm.token_bos()]
    while len(ids) < length:
        ids += unit
    return ids[:length]


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    path = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    llm = Llama(model_path=path, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads,
                verbose=False, logits_all=False)
    llm.eval(prompt(llm, 16))  # warm-up
    llm.reset()
    p512 = prompt(llm, 512)
    prefill = timed(lambda: llm.eval(p512))
    decode_steps = 128
    token = p512[-1]
    start = time.perf_counter()
    for _ in range(decode_steps):
        llm.eval([token])
    decode = time.perf_counter() - start
    long = prompt(llm, 1501)
    llm.reset()
    cold = timed(lambda: llm.eval(long))
    llm.reset()
    llm.eval(long[:1500])
    warm = timed(lambda: llm.eval(long[1500:]))
    print(json.dumps({
        "engine": "llama.cpp (llama-cpp-python)",
        "threads": threads,
        "prefill_tok_s": 512 / prefill,
        "decode_tok_s": decode_steps / decode,
        "keystroke_without_reuse_ms": cold * 1000,
        "keystroke_with_reuse_ms": warm * 1000,
    }))


if __name__ == "__main__":
    main()
