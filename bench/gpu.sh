#!/usr/bin/env bash
# The GPU checks of a `--features cuda` build, in two steps, because the GPU machines lent through
# the `device` tool have no Rust and no network, and the build machines have no GPU:
#
#   bash bench/gpu.sh prepare     # here: builds the CUDA binary and fills gpu/ (git-ignored)
#   bash bench/gpu.sh run [OUT]   # on the GPU machine, from the repository root, with gpu/ carried
#                                 # (device tool: carry ["gpu"]); results go to OUT (default $OUT)
#
# `run` writes to OUT:
# - machine.txt: the GPU (nvidia-smi) and the binary's version;
# - parity.json: greedy ids on `--device cuda` against llama.cpp's (tests/data/llama_cpp_greedy.json,
#   the decidable steps the CPU test `llama_cpp_greedy` checks) and against `--device cpu`;
# - bench-*.json: `codellama-lsp bench --json` on the GPU for the 1B and 7B random models, made there
#   with `codellama-lsp fixtures` (16 cores: about a minute each; GPU_SH_SHAPES="1b" for the 1B one
#   only), and on its CPU for the 1B one.
# It exits non-zero if any greedy id differs from llama.cpp's, after writing everything it could.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${SHARED:-../shared}"
fixtures=(llama-2-tiny-random.gguf codellama-tiny-random.gguf codellama-tiny-random-legacy.gguf)

prepare() {
  # The setup script reads the driver functions cudarc declares from cargo's registry.
  cargo fetch
  # shellcheck disable=SC1091
  source "$(bash "$shared/tools/setup-cuda-build.sh" | tail -n1)/env.sh"
  cargo build --release --features cuda
  local target="${CARGO_TARGET_DIR:-target}"
  mkdir -p gpu/fixtures
  # Stripped and gzipped (70 MB to 19 MB): a device call carries at most 64 MiB.
  rm -f gpu/codellama-lsp
  strip -o gpu/codellama-lsp "$target/release/codellama-lsp"
  gzip -f gpu/codellama-lsp
  cp "$shared/tools/run-on-gpu.sh" gpu/
  for f in "${fixtures[@]}"; do cp "$shared/fixtures/$f" gpu/fixtures/; done
  du -sh gpu >&2
  if [ "$(du -sm gpu | cut -f1)" -ge 64 ]; then
    echo "gpu.sh: gpu/ is over the 64 MiB a device call carries" >&2
    exit 1
  fi
  echo "gpu/ is ready: on the GPU machine run 'bash bench/gpu.sh run' with gpu/ carried" >&2
}

run() {
  local out="${1:-${OUT:-gpu-results}}"
  mkdir -p "$out"
  if [ -f gpu/codellama-lsp.gz ]; then
    gunzip -c gpu/codellama-lsp.gz > gpu/codellama-lsp
    chmod +x gpu/codellama-lsp
  fi
  local ours=(bash gpu/run-on-gpu.sh gpu/codellama-lsp)
  { nvidia-smi -L || true; "${ours[@]}" --version; } > "$out/machine.txt" 2>&1
  cat "$out/machine.txt" >&2

  echo "gpu.sh: greedy parity on the tiny models (cuda, cpu)" >&2
  local status=0
  python3 - "$out/parity.json" "${ours[@]}" <<'PY' || status=$?
import json, subprocess, sys
out, ours = sys.argv[1], sys.argv[2:]
golden = json.load(open("tests/data/llama_cpp_greedy.json"))
report, mismatches = [], 0
for model in golden["models"]:
    path = "gpu/fixtures/" + model["file"]
    for run in model["runs"]:
        row = {"model": model["file"], "prompt": run["prompt"], "llama_cpp": run["ids"]}
        for device in ("cuda", "cpu"):
            cmd = ours + ["generate", "--model", path, "--device", device, "--json",
                          "--ids", ",".join(map(str, run["prompt"])),
                          "--max-tokens", str(len(run["ids"]))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                row[device] = {"error": done.stderr.strip()[-2000:]}
                mismatches += device == "cuda"
                continue
            ids = json.loads(done.stdout.strip().splitlines()[-1])["ids"]
            # A run that stops at EOS is compared over the steps it made.
            same = len(ids) > 0 and ids == run["ids"][: len(ids)]
            row[device] = {"ids": ids, "equal_to_llama_cpp": same}
            mismatches += device == "cuda" and not same
        report.append(row)
        print(f"  {model['file']}: cuda {row['cuda'].get('equal_to_llama_cpp', 'error')}, "
              f"cpu {row['cpu'].get('equal_to_llama_cpp', 'error')}", file=sys.stderr)
json.dump({"runs": report, "cuda_mismatches": mismatches}, open(out, "w"), indent=1)
sys.exit(1 if mismatches else 0)
PY

  local models="$out/models"
  mkdir -p "$models"
  for shape in ${GPU_SH_SHAPES:-1b 7b}; do
    local model="$models/random-$shape-q4_k_m.gguf"
    echo "gpu.sh: generating $model" >&2
    "${ours[@]}" fixtures --shape "$shape" --quant q4_k_m --out "$model" >&2
    echo "gpu.sh: bench $shape on cuda" >&2
    "${ours[@]}" bench --model "$model" --device cuda --json > "$out/bench-$shape-cuda.json" || status=1
    cat "$out/bench-$shape-cuda.json" >&2
  done
  if [ -f "$models/random-1b-q4_k_m.gguf" ]; then
    echo "gpu.sh: bench 1b on the CPU, for comparison" >&2
    "${ours[@]}" bench --model "$models/random-1b-q4_k_m.gguf" --device cpu --json \
      > "$out/bench-1b-cpu.json" || status=1
  fi
  rm -rf "$models"
  echo "gpu.sh: results in $out (status $status)" >&2
  return "$status"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
    ;;
esac
