#!/usr/bin/env bash
# test-e2e.sh — the extension in a real VS Code (code-server 4.99.4 in headless Chromium):
# build and package the .vsix, install it into a fresh code-server, open a Python file, and check
#   1. the status bar item says the model is ready (and names it),
#   2. typing shows ghost text; Tab accepts it; the saved file equals what the CLI oracle
#      (`codellama-lsp complete … --json`) predicts,
#   3. the light bulb's "Generate docstring for `area`" puts a """ docstring under `def area`,
#   4. the light bulb's "Edit with instruction…" asks for the instruction and sends it,
#   5. the status item's menu turns inline completions off for Python (codellama.enable),
#   6. "Codellama: Chat" opens the chat view and shows an answer,
#   7. the light bulb's "Explain this code" answers in the chat view,
#   8. "Codellama: Show prompt" opens the prompt at the cursor.
# Usage: editors/vscode/test-e2e.sh [SCREENSHOT.png]
#   SCREENSHOT default: $OUT/ghost-text.png when $OUT is set, else editors/vscode/test/artifacts/ghost-text.png
# Environment:
#   CODELLAMA_LSP_BIN   the server binary (default: <repo>/target/debug/codellama-lsp)
#   SHARED_TOOLS        the shared editor tools (default: <repo>/../shared/tools)
#   E2E_KEEP=DIR        keep code-server's user data, logs and the workspace in DIR
#   E2E_SKIP_BUILD=1    use the existing codellama-lsp-*.vsix
#   plus setup-code-server.sh's: CODELLAMA_TOOLS_HOME, CODE_SERVER_DIR, NODE_TOOLS_DIR, CHROMIUM_PATH
# Exit 0 only when every check passed; on failure the reason, code-server's log tail and the
# extension's output channel are printed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SHARED_TOOLS="${SHARED_TOOLS:-$(cd "$REPO/.." && pwd)/shared/tools}"
BIN="${CODELLAMA_LSP_BIN:-$REPO/target/debug/codellama-lsp}"
FIXTURE="$REPO/fixtures/codellama-lsp-tiny-q8_0.gguf"
SHOT="${1:-${OUT:+$OUT/ghost-text.png}}"
SHOT="${SHOT:-$HERE/test/artifacts/ghost-text.png}"
case "$SHOT" in /*) ;; *) SHOT="$PWD/$SHOT" ;; esac
# Small and deterministic: the same numbers go to the server (settings) and to the oracle.
MAX_TOKENS=24

say() { printf 'test-e2e: %s\n' "$*" >&2; }
fail() { printf 'test-e2e: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

[ -x "$BIN" ] || fail "no codellama-lsp binary at $BIN (cargo build, or set CODELLAMA_LSP_BIN)"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
[ -f "$FIXTURE" ] || fail "no test model at $FIXTURE"
[ -f "$SHARED_TOOLS/setup-code-server.sh" ] || fail "no shared tools at $SHARED_TOOLS (set SHARED_TOOLS)"
T_ALL="$(now)"

# --- setup (a no-op after the first time) ------------------------------------------------------
T="$(now)"
CODE_SERVER_DIR="$(bash "$SHARED_TOOLS/setup-code-server.sh" | tail -n1)"
NODE_TOOLS_DIR="${NODE_TOOLS_DIR:-$(dirname "$CODE_SERVER_DIR")/node-tools}"
ENTRY="$CODE_SERVER_DIR/node_modules/code-server/out/node/entry.js"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
[ -f "$ENTRY" ] || fail "code-server is not installed at $CODE_SERVER_DIR"
[ -x "$CHROMIUM" ] || fail "no browser at $CHROMIUM (set CHROMIUM_PATH)"
TIME_SETUP="$(since "$T")"
say "setup: $TIME_SETUP (code-server in $CODE_SERVER_DIR)"

# --- build the .vsix -----------------------------------------------------------------------------
T="$(now)"
VERSION="$(node -p 'require(process.argv[1]).version' "$HERE/package.json")"
VSIX="$HERE/codellama-lsp-$VERSION.vsix"
if [ "${E2E_SKIP_BUILD:-0}" != 1 ]; then
  cd "$HERE"
  # npm ci only when node_modules does not match package-lock.json (it always starts from scratch).
  if ! npm ls --depth=0 >/dev/null 2>&1; then
    say "npm ci"
    npm ci --no-audit --no-fund >&2
  fi
  rm -f "$VSIX"
  # vscode:prepublish compiles (tsc --noEmit + esbuild) before vsce packs.
  npm run --silent package </dev/null >&2
  cd - >/dev/null
fi
[ -f "$VSIX" ] || fail "no $VSIX after packaging"
TIME_BUILD="$(since "$T")"
say "build: $TIME_BUILD ($VSIX, $(du -k "$VSIX" | cut -f1) kB)"

# --- workspace, expected texts -------------------------------------------------------------------
if [ -n "${E2E_KEEP:-}" ]; then WORK="$E2E_KEEP"; rm -rf "$WORK"; mkdir -p "$WORK"; else WORK="$(mktemp -d "${TMPDIR:-/tmp}/codellama-e2e.XXXXXX")"; fi
WORK="$(cd "$WORK" && pwd)"
WS="$WORK/workspace"; UDATA="$WORK/user-data"; EXTDIR="$WORK/extensions"; LOG="$WORK/code-server.log"
mkdir -p "$WS" "$UDATA/User" "$EXTDIR" "$WORK/xdg/config" "$WORK/xdg/data" "$WORK/xdg/cache" "$WORK/hf" "$(dirname "$SHOT")"
: >"$LOG"
cat >"$WS/shapes.py" <<'PY'
import math


def area(radius):
    return math.pi * radius ** 2


def perimeter(radius):
    return 2 * math.pi * radius

PY
TYPED='total = '
# What the editor will hold when the suggestion is asked for: the file plus what is typed.
mkdir -p "$WORK/oracle"
{ cat "$WS/shapes.py"; printf '%s' "$TYPED"; } >"$WORK/oracle/shapes.py"
LINE="$(($(wc -l <"$WS/shapes.py") + 1))"
T="$(now)"
HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf" "$BIN" complete --model "$FIXTURE" "$WORK/oracle/shapes.py" \
  --line "$LINE" --character "$((${#TYPED} + 1))" --max-tokens "$MAX_TOKENS" --json >"$WORK/oracle/out.json" \
  || fail "the CLI oracle failed: $BIN complete …"
COMPLETION="$(node -p 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).text' "$WORK/oracle/out.json")"
[ -n "$COMPLETION" ] || fail "the CLI oracle suggests nothing at $LINE:$((${#TYPED} + 1)); pick another spot"
say "oracle ($(since "$T")): $(node -p 'JSON.stringify(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).text).replace(/[\u007f-\uffff]/g, c => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"))' "$WORK/oracle/out.json")"

HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf" "$BIN" models info "$FIXTURE" --json >"$WORK/oracle/info.json" \
  || fail "$BIN models info $FIXTURE failed"

# The browser script's inputs, and the user settings.
node - "$WORK" "$WS" "$SHOT" "$NODE_TOOLS_DIR" "$CHROMIUM" "$TYPED" "$BIN" "$FIXTURE" "$MAX_TOKENS" <<'JS'
const fs = require('fs');
const path = require('path');
const [work, ws, shot, nodeTools, chromium, typed, bin, fixture, maxTokens] = process.argv.slice(2);
const oracle = JSON.parse(fs.readFileSync(path.join(work, 'oracle/out.json'), 'utf8'));
const info = JSON.parse(fs.readFileSync(path.join(work, 'oracle/info.json'), 'utf8'));
const before = fs.readFileSync(path.join(work, 'oracle/shapes.py'), 'utf8');
fs.writeFileSync(path.join(work, 'e2e.json'), JSON.stringify({
  folder: ws,
  file: 'shapes.py',
  typed,
  expectedAfterAccept: before + oracle.text,
  // 1-based, on the name in `def area(radius):`; the docstring goes on the next line (0-based 4).
  docstringAt: { line: 4, character: 6 },
  docstringName: 'area',
  screenshot: shot,
  playwrightDir: nodeTools,
  chromium,
  // The ready status names the model: by its file or by the name inside it (general.name).
  modelNames: [path.basename(fixture).replace(/\.gguf$/, ''), info.name].filter(Boolean),
  settingsFile: path.join(work, 'user-data/User/settings.json'),
}, null, 2));
fs.writeFileSync(path.join(work, 'user-data/User/settings.json'), JSON.stringify({
  'workbench.startupEditor': 'none',
  'files.autoSave': 'off',
  'security.workspace.trust.enabled': false,
  'telemetry.telemetryLevel': 'off',
  'update.mode': 'none',
  'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false,
  'workbench.tips.enabled': false,
  'workbench.enableExperiments': false,
  'codellama.serverPath': bin,
  'codellama.model': fixture,
  // Match the oracle: no context from other files, no deadline cut, no first words shown
  // ahead of the whole suggestion, the same length.
  'codellama.workspaceContext': false,
  'codellama.deadlineMs': 120000,
  'codellama.firstAnswerMs': 0,
  'codellama.maxTokens': Number(maxTokens),
}, null, 2));
JS

# --- code-server -----------------------------------------------------------------------------
export XDG_CONFIG_HOME="$WORK/xdg/config" XDG_DATA_HOME="$WORK/xdg/data" XDG_CACHE_HOME="$WORK/xdg/cache"
# The extension host inherits this environment, and so does the server it starts.
export HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf"
printf 'bind-addr: 127.0.0.1:0\nauth: none\ncert: false\n' >"$WORK/config.yaml"
CS_ARGS=(--config "$WORK/config.yaml" --user-data-dir "$UDATA" --extensions-dir "$EXTDIR")
node "$ENTRY" "${CS_ARGS[@]}" --install-extension "$VSIX" >>"$LOG" 2>&1 \
  || { tail -20 "$LOG" >&2; fail "code-server --install-extension $VSIX failed"; }

CS_PID=""
show_logs() {
  say "--- last 40 lines of code-server's log ($LOG)"
  tail -n 40 "$LOG" >&2 || true
  local channel
  channel="$(find "$UDATA/logs" -name 'Codellama.log' 2>/dev/null | head -n1)"
  if [ -n "$channel" ]; then
    say "--- the extension's output channel ($channel)"
    tail -n 80 "$channel" >&2 || true
  else
    say "--- no output channel log of the extension under $UDATA/logs"
  fi
}
cleanup() {
  local rc=$?
  if [ -n "$CS_PID" ]; then
    # setsid made code-server a process group leader: this reaches it and the helpers it started
    # (extension host, file watcher, and the codellama-lsp it runs), nothing else.
    kill -TERM -- "-$CS_PID" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 -- "-$CS_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$CS_PID" 2>/dev/null || true
  fi
  [ "$rc" = 0 ] || show_logs
  if [ -z "${E2E_KEEP:-}" ]; then rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

T="$(now)"
PORT="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
URL="http://127.0.0.1:$PORT"
setsid node "$ENTRY" "${CS_ARGS[@]}" --auth none --bind-addr "127.0.0.1:$PORT" \
  --disable-telemetry --disable-update-check --disable-workspace-trust --disable-getting-started-override \
  "$WS" >>"$LOG" 2>&1 </dev/null &
CS_PID=$!
until node -e 'require("http").get(process.argv[1], r => process.exit(r.statusCode === 200 ? 0 : 1)).on("error", () => process.exit(1))' "$URL/healthz" 2>/dev/null; do
  kill -0 "$CS_PID" 2>/dev/null || fail "code-server exited before answering"
  awk -v a="$T" -v b="$(now)" 'BEGIN { exit !(b - a > 60) }' && fail "code-server did not answer on $URL within 60s"
  sleep 0.3
done
say "code-server up on $URL after $(since "$T")"
node -e 'const f=process.argv[1],c=JSON.parse(require("fs").readFileSync(f,"utf8"));c.url=process.argv[2];require("fs").writeFileSync(f,JSON.stringify(c,null,2))' "$WORK/e2e.json" "$URL"

node "$HERE/test/e2e.mjs" "$WORK/e2e.json"
TIME_TEST="$(since "$T")"
say "screenshot: $SHOT"
say "OK: setup $TIME_SETUP, build $TIME_BUILD, test $TIME_TEST, total $(since "$T_ALL")"
