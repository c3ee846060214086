#!/usr/bin/env python3
"""Side-by-side engine speed: codellama-lsp against llama.cpp's llama-server, on the same files.

Run from the repository root (Python 3 standard library only):

    python3 bench/compare.py --shapes 1b --quants all
    python3 bench/compare.py --shapes 7b --quants q4_k_m --decode-tokens 32 --delete-models

For each shape and type it generates the random model (`codellama-lsp fixtures --shape S --quant
Q`, skipped when the file exists), then measures it with both engines, one after the other,
`--repeat` times (alternating which goes first), on the same number of threads:

- ours: `codellama-lsp bench --model F --json` (load time, prefill, decode, a keystroke with and
  without KV reuse, peak RSS, memory read bandwidth and the decode bound it sets);
- llama.cpp: a fresh `llama-server` per run (`--no-warmup`, one slot, no host prompt cache), the
  same token ids sent to `POST /completion`, times taken from the answer's `timings`, peak RSS
  from the server's `VmHWM`.

It writes `results.json` and `results.md` in `--out-dir` (merging rows into an existing
`results.json`, so shapes can be run separately), and with `--write-benchmarks FILE` replaces the
table between the `compare.py` markers in that file.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

QUANTS = ["q4_k_m", "q4_0", "q8_0", "q4_1", "q5_0", "q5_1", "q5_k_m", "q6_k"]
# Issue 14's goals: ours / llama.cpp, prefill and decode.
GOALS = {"q4_k_m": 1.1, "q4_0": 1.1, "q8_0": 1.1}
DEFAULT_GOAL = 0.8
# The text `codellama-lsp bench` cuts its prompts from (src/cli/model_commands.rs, bench_prompt).
CODE = (
    "def merge_sorted(left: list[int], right: list[int]) -> list[int]:\n    result = []\n"
    "    i = j = 0\n    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n"
    "            result.append(left[i])\n            i += 1\n        else:\n"
    "            result.append(right[j])\n            j += 1\n    return result + left[i:] + right[j:]\n\n"
)
BEGIN_MARK = "<!-- compare.py: begin -->"
END_MARK = "<!-- compare.py: end -->"


def log(message):
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, text=True, **kwargs)


# ---------------------------------------------------------------------------------------------
# the two engines


def our_binary(args):
    if args.ours:
        return args.ours
    log("building the release binary (cargo build --release)")
    run(["cargo", "build", "--release", "--quiet"])
    meta = json.loads(run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          stdout=subprocess.PIPE).stdout)
    return os.path.join(meta["target_directory"], "release", "codellama-lsp")


def llama_server_binary(args):
    if args.llama_server:
        return args.llama_server
    if os.environ.get("LLAMA_SERVER"):
        return os.environ["LLAMA_SERVER"]
    log("building llama-server (bench/llama-server.sh; ~10 min the first time)")
    out = run(["bash", "bench/llama-server.sh"], stdout=subprocess.PIPE).stdout
    return out.strip().splitlines()[-1]


def thread_env(threads):
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(threads)
    env["CANDLE_NUM_THREADS"] = str(threads)
    env.pop("RUST_LOG", None)
    return env


def run_ours(ours, model, args):
    cmd = [ours, "bench", "--model", model, "--json",
           "--prefill-tokens", str(args.prefill_tokens),
           "--decode-tokens", str(args.decode_tokens),
           "--keystroke-tokens", str(args.keystroke_tokens)]
    out = run(cmd, stdout=subprocess.PIPE, env=thread_env(args.threads)).stdout
    return json.loads(out.strip().splitlines()[-1])


def prompt_ids(ours, model, length):
    """The prompt `codellama-lsp bench` uses: BOS, then the code's tokens repeated, cut."""
    unit = json.loads(run([ours, "tokenize", "--model", model, "--no-bos"], input=CODE,
                          stdout=subprocess.PIPE).stdout)
    bos = json.loads(run([ours, "tokenize", "--model", model], input="",
                         stdout=subprocess.PIPE).stdout)
    ids = list(bos[:1])
    while len(ids) < length:
        ids += unit
    return ids[:length]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def vm_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def run_llama(server, model, ids, args):
    """One fresh llama-server on `model`: the numbers `codellama-lsp bench` reports."""
    p, d, k = args.prefill_tokens, args.decode_tokens, args.keystroke_tokens
    context = max(2048, -(-(max(p + d + 2, k + 2)) // 256) * 256)
    port = free_port()
    cmd = [server, "-m", model, "-t", str(args.threads), "-tb", str(args.threads),
           "-c", str(context), "-np", "1", "--no-warmup", "--cache-ram", "0", "--no-webui",
           "--host", "127.0.0.1", "--port", str(port)]
    log_path = os.path.join(args.models_dir, "llama-server.log")
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log_file:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama-server exited ({proc.returncode}); see {log_path}")
                try:
                    with urllib.request.urlopen(base + "/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.05)
            ready_ms = (time.perf_counter() - started) * 1000

            def complete(tokens, n_predict, cache_prompt):
                body = {"prompt": tokens, "n_predict": n_predict, "cache_prompt": cache_prompt,
                        "temperature": 0, "top_k": 1, "ignore_eos": True, "stream": False}
                return post(base + "/completion", body, timeout=7200)["timings"]

            complete(ids[:16], 1, False)  # warm-up, as ours
            # Prefill and decode in one request: d decode steps after the first token, which
            # comes from the prompt's logits (timings count decode steps, not that token).
            main = complete(ids[:p], d + 1, False)
            cold = complete(ids[:k + 1], 1, False)
            complete(ids[:k], 1, True)
            warm = complete(ids[:k + 1], 1, True)
            peak = vm_hwm_mib(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    checks = {"prefill prompt_n": (main["prompt_n"], p),
              "decode steps": (main["predicted_n"] - 1, d),
              "keystroke cold prompt_n": (cold["prompt_n"], k + 1),
              "keystroke reuse prompt_n": (warm["prompt_n"], 1)}
    mismatches = {name: got for name, (got, want) in checks.items() if got != want}
    if mismatches:
        log(f"llama-server did not measure what was asked: {mismatches}")
    return {
        "ready_ms": ready_ms,
        "prefill_tok_s": main["prompt_per_second"],
        "decode_tok_s": main["predicted_per_second"],
        "keystroke_without_reuse_ms": cold["prompt_ms"],
        "keystroke_with_reuse_ms": warm["prompt_ms"],
        "peak_rss_mib": peak,
        "context": context,
        "mismatches": mismatches,
        "timings": {"main": main, "cold": cold, "warm": warm},
    }


# ---------------------------------------------------------------------------------------------
# the machine


def machine(ours, server):
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""

    cpuinfo = read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    wanted = ["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8"]
    mem_kib = next((int(line.split()[1]) for line in read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    l3 = ""
    try:
        l3 = next((line.split(":", 1)[1].strip() for line in
                   run(["lscpu"], stdout=subprocess.PIPE).stdout.splitlines()
                   if line.startswith("L3 cache")), "")
    except (OSError, subprocess.CalledProcessError):
        pass
    commit = "unknown"
    try:
        commit = run(["git", "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE).stdout.strip()
        # Only what the binary is built from (this script rewrites BENCHMARKS.md as it goes).
        if run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml",
                "Cargo.lock"], stdout=subprocess.PIPE).stdout.strip():
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        pass
    version = subprocess.run([server, "--version"], text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT).stdout
    version = " ".join(line.strip() for line in version.splitlines() if line.strip())
    ours_version = run([ours, "--version"], stdout=subprocess.PIPE).stdout.strip()
    # A lower kernel tier forced on this CPU (to measure the AVX2 kernels on an AVX-512 host).
    forced = os.environ.get("CODELLAMA_KERNELS")
    if forced:
        commit += f", kernels forced to {forced} (CODELLAMA_KERNELS)"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "l3": l3,
        "flags": [f for f in wanted if f in flags],
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "ours": f"{ours_version}, commit {commit}",
        "llama_cpp": version,
    }


# ---------------------------------------------------------------------------------------------
# results


def aggregate(runs, how):
    """One number per field over the runs: the best (fastest) or the median."""
    if not runs:
        return {}
    # The bound is a ceiling: its best is the highest bandwidth measured, as for the speeds (taking
    # the last run's bound beside the best run's decode can put decode above its bound).
    higher = {"prefill_tok_s", "decode_tok_s", "decode_bound_tok_s", "read_bandwidth_gb_s"}
    out = dict(runs[-1])
    for field, value in runs[0].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        values = [r[field] for r in runs if isinstance(r.get(field), (int, float))]
        if how == "median":
            out[field] = statistics.median(values)
        elif field in higher:
            out[field] = max(values)
        elif field.endswith("_ms") or field.endswith("_mib"):
            out[field] = min(values)
    return out


def run_counts(results):
    """"2 run(s)", or "2 run(s) (7b: 1; 1b Q8_0: 3)" naming the shapes, or single rows, that had
    another count."""
    runs = {}
    for row in results["rows"]:
        count = len(row.get("ours_runs", [])) or results["repeat"]
        runs.setdefault(row["shape"], []).append((row["quant_name"], count))
    if not runs:
        return f"{results['repeat']} run(s)"
    every = [count for rows in runs.values() for _, count in rows]
    common = max(set(every), key=every.count)
    others = {}
    for shape, rows in runs.items():
        if len({count for _, count in rows}) == 1:
            labels = [(shape, rows[0][1])]
        else:
            labels = [(f"{shape} {quant}", count) for quant, count in rows]
        for label, count in labels:
            if count != common:
                others.setdefault(count, []).append(label)
    described = [f"{', '.join(labels)}: {n}" for n, labels in sorted(others.items())]
    return f"{common} run(s)" + (f" ({'; '.join(described)})" if described else "")


def fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def bound_shares(row):
    """The row's decode bound (median over our runs) and each engine's decode as a share of it,
    run by run: each of our runs against the bandwidth it measured right after its decode, each
    llama.cpp run against that of our run beside it (the runs alternate), median over the runs.
    Bandwidth on a shared VM moves by ±30% within minutes, so a best-of bound beside a best-of
    speed can pair a run with a moment it did not run in."""
    ours = [r for r in row.get("ours_runs", []) if r.get("decode_bound_tok_s")]
    if not ours:
        bound = row["ours"].get("decode_bound_tok_s")
        if not bound:
            return None, "—", "—"
        share = lambda v: f"{v / bound * 100:.0f}%"
        return bound, share(row["ours"]["decode_tok_s"]), share(row["llama_cpp"]["decode_tok_s"])
    bounds = [r["decode_bound_tok_s"] for r in ours]
    ours_share = statistics.median(r["decode_tok_s"] / r["decode_bound_tok_s"] for r in ours)
    pairs = zip(row.get("llama_cpp_runs", []), bounds)
    llama = [l["decode_tok_s"] / b for l, b in pairs if l.get("decode_tok_s")]
    llama_share = f"{statistics.median(llama) * 100:.0f}%" if llama else "—"
    return statistics.median(bounds), f"{ours_share * 100:.0f}%", llama_share


def median_bandwidth_shares(row, bandwidth_gb_s):
    """Each engine's (best or median) decode as a share of the bound that the median of all our
    runs' bandwidth reads sets: one read of a bandwidth spike beside a run (on a shared VM, one
    read in five came out 1.7x the usual rate) moves the per-run share, not this one."""
    bytes_per_token = row["ours"].get("weight_bytes_per_token")
    if not bandwidth_gb_s or not bytes_per_token:
        return "—", "—"
    bound = bandwidth_gb_s * 1e9 / bytes_per_token
    share = lambda engine: f"{row[engine]['decode_tok_s'] / bound * 100:.0f}%"
    return share("ours"), share("llama_cpp")


def markdown(results):
    m = results["machine"]
    lines = [
        f"**Machine:** {m['cpu']}, {m['cores']} cores, L3 {m['l3'] or '?'}, {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}; CPU flags: {', '.join(m['flags'])}. "
        f"**Ours:** {m['ours']}. **llama.cpp:** {m['llama_cpp']}. "
        f"{results['threads']} threads each; {results['aggregate']} of {run_counts(results)}. "
        f"Memory read bandwidth (ours, {results['threads']} threads, 1 GiB; median of all runs): "
        f"{fmt(results.get('bandwidth_gb_s'))} GB/s.",
        "",
        "| model | GiB | prefill tok/s ours / llama.cpp (ratio) | decode tok/s ours / llama.cpp (ratio) "
        "| decode bound tok/s (median): ours / llama.cpp % of it (median over runs, each against "
        "the bandwidth measured beside it) | decode % of the bound at the median bandwidth: "
        "ours / llama.cpp | keystroke ms with reuse: ours / llama.cpp "
        "| keystroke ms without reuse: ours / llama.cpp | load ms: ours / llama.cpp ready "
        "| peak RSS MiB: ours / llama.cpp | goal (both ratios) | load average before: ours / llama.cpp |",
        "|---|---:|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        o, l = row["ours"], row["llama_cpp"]
        pr = o["prefill_tok_s"] / l["prefill_tok_s"]
        dr = o["decode_tok_s"] / l["decode_tok_s"]
        bound, ours_share, llama_share = bound_shares(row)
        ours_at_median, llama_at_median = median_bandwidth_shares(
            row, results.get("bandwidth_gb_s"))
        goal = row["goal"]
        met = "met" if pr >= goal and dr >= goal else "not met"
        tokens = row["tokens"]
        name = f"{row['shape']} {row['quant_name']}"
        if tokens != {"prefill": 512, "decode": 128, "keystroke": 1500}:
            name += f" ({tokens['prefill']}/{tokens['decode']}/{tokens['keystroke'] + 1} tokens)"
        lines.append(
            f"| {name} | {row['gib']:.2f} "
            f"| {fmt(o['prefill_tok_s'])} / {fmt(l['prefill_tok_s'])} ({pr:.2f}×) "
            f"| {fmt(o['decode_tok_s'], 2)} / {fmt(l['decode_tok_s'], 2)} ({dr:.2f}×) "
            f"| {fmt(bound)}: {ours_share} / {llama_share} "
            f"| {ours_at_median} / {llama_at_median} "
            f"| {fmt(o['keystroke_with_reuse_ms'])} / {fmt(l['keystroke_with_reuse_ms'])} "
            f"| {fmt(o['keystroke_without_reuse_ms'], 0)} / {fmt(l['keystroke_without_reuse_ms'], 0)} "
            f"| {fmt(o.get('load_ms'), 0)} / {fmt(l['ready_ms'], 0)} "
            f"| {fmt(o['peak_rss_mib'], 0)} / {fmt(l['peak_rss_mib'], 0)} "
            f"| ≥{goal}×: {met} "
            f"| {fmt(o.get('loadavg_before'))} / {fmt(l.get('loadavg_before'))} |")
    return "\n".join(lines) + "\n"


def write_benchmarks(path, table):
    with open(path) as f:
        text = f.read()
    if BEGIN_MARK not in text or END_MARK not in text:
        raise SystemExit(f"{path} has no {BEGIN_MARK} … {END_MARK} block to replace")
    head, rest = text.split(BEGIN_MARK, 1)
    _, tail = rest.split(END_MARK, 1)
    with open(path, "w") as f:
        f.write(head + BEGIN_MARK + "\n" + table + END_MARK + tail)


def render(args):
    results_path = os.path.join(args.out_dir, "results.json")
    with open(results_path) as f:
        results = json.load(f)
    results["aggregate"] = args.aggregate
    for row in results["rows"]:
        for side in ("ours", "llama_cpp"):
            if row.get(f"{side}_runs"):
                row[side] = aggregate(row[f"{side}_runs"], args.aggregate)
    print(publish(results, args))


def publish(results, args):
    """Writes `results` (with the median bandwidth over all our runs) as results.json and
    results.md in --out-dir, and the table into --write-benchmarks; returns the table."""
    bandwidths = [run.get("read_bandwidth_gb_s")
                  for r in results["rows"] for run in r.get("ours_runs") or [r["ours"]]]
    bandwidths = [b for b in bandwidths if b]
    results["bandwidth_gb_s"] = statistics.median(bandwidths) if bandwidths else None
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = markdown(results)
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(table)
    if args.write_benchmarks:
        write_benchmarks(args.write_benchmarks, table)
    return table


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1b", help="comma-separated: 1b, 7b (default 1b)")
    parser.add_argument("--quants", default="all",
                        help=f"comma-separated, or all ({','.join(QUANTS)})")
    parser.add_argument("--models-dir", default="/tmp/codellama-bench-models")
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ours", help="our binary (default: cargo build --release)")
    parser.add_argument("--llama-server",
                        help="llama-server (default: $LLAMA_SERVER, else the setup script)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--aggregate", choices=["best", "median"], default="best",
                        help="over --repeat runs: the fastest (default) or the median")
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--keystroke-tokens", type=int, default=1500,
                        help="the cached prompt; the keystroke adds one token")
    parser.add_argument("--delete-models", action="store_true",
                        help="delete each model file once it is measured (disk space)")
    parser.add_argument("--write-benchmarks", metavar="FILE",
                        help="replace the table between the compare.py markers in FILE")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: re-aggregate the runs in --out-dir's results.json "
                             "and rewrite its table (and --write-benchmarks FILE)")
    args = parser.parse_args()
    if args.render:
        render(args)
        return

    quants = QUANTS if args.quants == "all" else args.quants.split(",")
    shapes = args.shapes.split(",")
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(args.models_dir, exist_ok=True)
    ours = our_binary(args)
    server = llama_server_binary(args)
    results_path = os.path.join(args.out_dir, "results.json")
    previous = []
    if os.path.exists(results_path):
        with open(results_path) as f:
            previous = json.load(f).get("rows", [])

    rows = []

    def save():
        """Writes what is measured so far: an interrupted run keeps its finished rows."""
        done = {(r["shape"], r["quant"]) for r in rows}
        order = {key: i for i, key in enumerate((s, q) for s in ["1b", "7b"] for q in QUANTS)}
        merged = [r for r in previous if (r["shape"], r["quant"]) not in done] + rows
        merged.sort(key=lambda r: order.get((r["shape"], r["quant"]), len(order)))
        results = {
            "machine": description,
            "threads": args.threads,
            "repeat": args.repeat,
            "aggregate": args.aggregate,
            "rows": merged,
        }
        return publish(results, args)

    description = machine(ours, server)
    table = ""
    for shape in shapes:
        for quant in quants:
            model = os.path.join(args.models_dir, f"random-{shape}-{quant}.gguf")
            if not os.path.exists(model):
                log(f"generating {model}")
                run([ours, "fixtures", "--shape", shape, "--quant", quant, "--out", model],
                    stdout=subprocess.DEVNULL)
            ids = prompt_ids(ours, model, max(args.prefill_tokens, args.keystroke_tokens + 1))
            ours_runs, llama_runs = [], []
            for i in range(args.repeat):
                order = ["ours", "llama"] if i % 2 == 0 else ["llama", "ours"]
                for engine in order:
                    log(f"{shape} {quant}: {engine} (run {i + 1}/{args.repeat})")
                    load = os.getloadavg()[0]
                    if engine == "ours":
                        ours_runs.append(run_ours(ours, model, args))
                        ours_runs[-1]["loadavg_before"] = load
                        shown = ("prefill_tok_s", "decode_tok_s", "decode_bound_tok_s")
                        log(f"  ours {json.dumps({k: ours_runs[-1].get(k) for k in shown})}")
                    else:
                        llama_runs.append(run_llama(server, model, ids, args))
                        llama_runs[-1]["loadavg_before"] = load
                        shown = ("prefill_tok_s", "decode_tok_s")
                        log(f"  llama.cpp {json.dumps({k: llama_runs[-1][k] for k in shown})}")
            rows.append({
                "shape": shape,
                "quant": quant,
                "quant_name": quant.upper(),
                "file": model,
                "gib": os.path.getsize(model) / 2**30,
                "tokens": {"prefill": args.prefill_tokens, "decode": args.decode_tokens,
                           "keystroke": args.keystroke_tokens},
                "goal": GOALS.get(quant, DEFAULT_GOAL),
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "ours": aggregate(ours_runs, args.aggregate),
                "llama_cpp": aggregate(llama_runs, args.aggregate),
                "ours_runs": ours_runs,
                "llama_cpp_runs": llama_runs,
            })
            if args.delete_models:
                os.remove(model)
            table = save()
    print(table)


if __name__ == "__main__":
    main()
