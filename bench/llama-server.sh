#!/usr/bin/env bash
# Prints (last stdout line) the path of a llama.cpp `llama-server` this CPU can run, building it
# the first time (~10 min) with ../shared/tools/setup-llama-server.sh. That script turns AVX-512
# on, and such a build dies of SIGILL on a CPU without it (AMD Zen 3, older Intel), though its
# `--version` still runs: there, a copy of the script with AVX-512 off builds into a directory of
# its own. Used by .ci/run (the reference server of tests/remote.rs and tests/families.rs) and
# bench/compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
script=../shared/tools/setup-llama-server.sh
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  exec bash "$script"
fi
copy="$(mktemp)"
trap 'rm -f "$copy"' EXIT
sed 's/-DGGML_AVX512=ON/-DGGML_AVX512=OFF/' "$script" > "$copy"
export LLAMA_SERVER_HOME="${LLAMA_SERVER_HOME:-$HOME/.cache/codellama-lsp-tools/llama-server-no-avx512}"
bash "$copy"
