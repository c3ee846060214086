-- End-to-end tests of the plugin in a real headless Neovim against a real codellama-lsp.
--
--   CODELLAMA_LSP_BIN=target/debug/codellama-lsp \
--   CODELLAMA_TEST_MODEL=$PWD/fixtures/codellama-lsp-tiny-q8_0.gguf \
--   nvim --headless --clean -S editors/nvim/tests/e2e.lua
--
-- The tests type with nvim_input() and let Neovim's main loop run (insert mode, timers,
-- LSP messages), so they run in a coroutine that yields while waiting; `-l` would not
-- do: it exits before the main loop. Expected suggestions come from the server's CLI
-- (`codellama-lsp complete --stdin --json`), not from the plugin. Exit code 0 when all
-- pass, 1 otherwise; one line per test on stderr.

local here = debug.getinfo(1, "S").source:sub(2)
local H = dofile(vim.fn.fnamemodify(here, ":p:h") .. "/harness.lua")
local api = vim.api

local BIN = os.getenv("CODELLAMA_LSP_BIN")
local MODEL = os.getenv("CODELLAMA_TEST_MODEL")
-- Short suggestions keep the test fast; a long deadline keeps them whole on a busy
-- machine (past deadlineMs the server answers with what it has so far), and so does
-- firstAnswerMs 0 (no first words shown ahead of the whole; ui.lua tests that path).
local MAX_TOKENS = "40"
local SETTINGS = {
  model = MODEL,
  workspaceContext = false,
  maxTokens = tonumber(MAX_TOKENS),
  deadlineMs = 60000,
  firstAnswerMs = 0,
}
local DEADLINE_MS = tonumber(os.getenv("CODELLAMA_E2E_TIMEOUT_MS") or "") or 100000

if not BIN or BIN == "" or not MODEL or MODEL == "" then
  H.out("e2e: set CODELLAMA_LSP_BIN and CODELLAMA_TEST_MODEL")
  H.quit(2)
  return
end

H.init(here)
local sleep, wait_for, test, eq, check = H.sleep, H.wait_for, H.test, H.eq, H.check
local open, shown, cursor, spliced, type_and_wait = H.open, H.shown, H.cursor, H.spliced, H.type_and_wait
local notes = H.notes
local ghost = require("codellama.ghost")

--- The completion the server's CLI gives at (row, col) of `buf`'s text: the expected
--- suggestion, computed without the plugin.
local function oracle(buf, row, col)
  local lines = api.nvim_buf_get_lines(buf, 0, -1, false)
  local line = lines[row + 1]
  lines[row + 1] = line:sub(1, col) .. "<FILL_ME>" .. line:sub(col + 1)
  local text = table.concat(lines, "\n") .. "\n"
  local r = vim
    .system({ BIN, "complete", "--model", MODEL, "--max-tokens", MAX_TOKENS, "--stdin", "--json" }, {
      stdin = text,
      text = true,
      env = { HF_HUB_OFFLINE = "1" },
    })
    :wait(60000)
  check(r.code == 0, "codellama-lsp complete failed: " .. tostring(r.stderr))
  return vim.json.decode(r.stdout).text
end

-- The tests ------------------------------------------------------------------------

local function run()
  require("codellama").setup({
    cmd = { BIN },
    cmd_env = { HF_HUB_OFFLINE = "1" },
    -- No workspace context: the CLI oracle sees only the file, so must the server.
    settings = SETTINGS,
    debounce_ms = 60,
  })

  local buf, client
  test("server starts, loads the fixture model and the status component says ready", function()
    buf, client = open("first.py", { "def add(a, b):", "    " })
    wait_for("status ready", function()
      return require("codellama").status():find("ready", 1, true)
    end, 30000)
    local s = require("codellama").status_object()
    eq("ready", s.state, "status state")
    eq(client.offset_encoding, s.encoding, "negotiated encoding in codellama/status")
    check(require("codellama").status():match("^🦙 ready"), "status(): " .. require("codellama").status())
    -- Told once: by the server's window/showMessage or by the plugin, not both.
    sleep(200)
    local ready = #vim.tbl_filter(function(n)
      return n.msg:find("is ready", 1, true) ~= nil
    end, notes)
    local _, echoed = vim.fn.execute("messages"):gsub("is ready", "")
    eq(1, ready + echoed, "ready messages (notify + :messages)")
  end)
  if not client then
    return
  end

  local expected_full
  test("ghost text appears while typing and equals the server's completion", function()
    local text = type_and_wait(buf, 2, "return ")
    local row, col = cursor()
    expected_full = oracle(buf, row, col)
    check(expected_full ~= "", "the CLI gave an empty completion: pick another spot")
    eq(expected_full, text, "ghost text")
    eq(expected_full, ghost.suggestion(buf), "plugin's suggestion")
  end, { stay = true })

  test("<Tab> accepts: the buffer gets the suggestion and the cursor its end", function()
    check(shown(buf), "no ghost text to accept")
    local before = api.nvim_buf_get_lines(buf, 0, -1, false)
    local row, col = cursor()
    api.nvim_input("<Tab>")
    local want = spliced(before, row, col, expected_full)
    wait_for("the accepted text", function()
      return vim.deep_equal(api.nvim_buf_get_lines(buf, 0, -1, false), want)
    end, 5000)
    local acc = vim.split(expected_full, "\n", { plain = true })
    local want_row = row + #acc - 1
    local want_col = #acc == 1 and col + #acc[1] or #acc[#acc]
    eq({ want_row, want_col }, { cursor() }, "cursor after accept")
    api.nvim_input("<Esc>")
    wait_for("normal mode", function()
      return api.nvim_get_mode().mode == "n"
    end)
    eq(nil, shown(buf), "ghost text left after leaving insert mode")
    -- The accepted text is one undo step of its own.
    api.nvim_input("u")
    wait_for("undo", function()
      return vim.deep_equal(api.nvim_buf_get_lines(buf, 0, -1, false), before)
    end, 3000)
  end)

  test("accept word inserts only the first word, accept line the rest of the line", function()
    vim.cmd("silent! %bwipeout!")
    buf = open("word.py", { "def add(a, b):", "    " })
    local text = type_and_wait(buf, 2, "return ")
    local before = api.nvim_buf_get_lines(buf, 0, -1, false)
    local row, col = cursor()
    -- Independent of the plugin: blanks, then word characters (any non-ASCII byte
    -- counts: the fixture model answers in private-use characters) or punctuation.
    local word = text:match("^[ \t]*[%w_\128-\255]+") or text:match("^[ \t]*[^%w_\128-\255%s]+") or text
    api.nvim_input("<M-Right>")
    wait_for("the first word", function()
      return vim.deep_equal(api.nvim_buf_get_lines(buf, 0, -1, false), spliced(before, row, col, word))
    end, 5000)
    eq({ row, col + #word }, { cursor() }, "cursor after accept word")
    local rest = text:sub(#word + 1)
    eq(rest ~= "" and rest or nil, shown(buf), "the rest of the suggestion")
    if rest ~= "" then
      local line = rest:match("^\n[^\n]*") or rest:match("^[^\n]*")
      api.nvim_input("<M-Down>")
      wait_for("the next line", function()
        return vim.deep_equal(api.nvim_buf_get_lines(buf, 0, -1, false), spliced(before, row, col, word .. line))
      end, 5000)
    end
  end)

  test("<Tab> without a suggestion inserts a tab", function()
    vim.cmd("silent! %bwipeout!")
    buf = open("tab.lua", { "local x" })
    check(not vim.bo[buf].expandtab, "expandtab is set for lua")
    -- All keys arrive at once: the debounce has not fired when <Tab> comes.
    api.nvim_input("o-<Tab>y<Esc>")
    wait_for("the typed line", function()
      return api.nvim_buf_get_lines(buf, 1, 2, false)[1] == "-\ty"
    end, 5000)
  end)

  test("<Tab> without a suggestion runs the user's own <Tab> mapping", function()
    vim.cmd("silent! %bwipeout!")
    vim.cmd("inoremap <Tab> <lt>TAB>")
    buf = open("usermap.lua", { "local y" })
    api.nvim_input("o-<Tab>y<Esc>")
    local ok = pcall(wait_for, "the mapped text", function()
      return api.nvim_buf_get_lines(buf, 1, 2, false)[1] == "-<TAB>y"
    end, 5000)
    eq("-<TAB>y", api.nvim_buf_get_lines(buf, 1, 2, false)[1], "line 2 (waited: " .. tostring(ok) .. ")")
    vim.cmd("iunmap <Tab>")
  end)

  test("multi-byte text before the cursor (utf-8 positions)", function()
    vim.cmd("silent! %bwipeout!")
    buf, client = open("mb.py", { 's = "é😀"', "t = s + " })
    local text = type_and_wait(buf, 1, " + ")
    local row, col = cursor()
    local want = oracle(buf, row, col)
    eq(want, text, "ghost text after multi-byte characters")
    local before = api.nvim_buf_get_lines(buf, 0, -1, false)
    api.nvim_input("<Tab>")
    wait_for("the accepted text", function()
      return vim.deep_equal(api.nvim_buf_get_lines(buf, 0, -1, false), spliced(before, row, col, want))
    end, 5000)
  end)

  test("typing on cancels the request in flight ($/cancelRequest)", function()
    vim.cmd("silent! %bwipeout!")
    buf, client = open("cancel.py", { "def f(x):", "    " })
    local cancelled, typed = {}, false
    local orig_request, orig_cancel = client.request, client.cancel_request
    -- Type a key the moment the first suggestion request goes out: the server is then
    -- still generating when the key arrives.
    client.request = function(self, method, ...)
      local ok, id = orig_request(self, method, ...)
      if method == "textDocument/inlineCompletion" and not typed then
        typed = true
        api.nvim_input("x")
      end
      return ok, id
    end
    client.cancel_request = function(self, id)
      table.insert(cancelled, id)
      return orig_cancel(self, id)
    end
    api.nvim_win_set_cursor(0, { 2, 0 })
    api.nvim_input("Areturn ")
    local ok, err = pcall(wait_for, "a cancel", function()
      return #cancelled > 0
    end, 5000)
    client.request, client.cancel_request = nil, nil
    check(ok, tostring(err))
    -- Only the answer for the new spot may show up.
    local text = wait_for("ghost text after the cancel", function()
      return shown(buf)
    end, 20000)
    local _, mrow, mcol = shown(buf)
    eq({ cursor() }, { mrow, mcol }, "ghost text position")
    eq(api.nvim_buf_get_lines(buf, 1, 2, false)[1], "    return x", "line typed")
    eq(oracle(buf, 1, #"    return x"), text, "ghost text for the new spot")
  end)

  test(":CodellamaDocstring inserts a docstring as the first line of the body", function()
    vim.cmd("silent! %bwipeout!")
    buf = open("doc.py", { "def add(a, b):", "    return a + b", "" })
    api.nvim_win_set_cursor(0, { 1, 4 })
    local result
    require("codellama.commands").docstring(buf, function(r)
      result = r
    end)
    wait_for("the docstring command", function()
      return result
    end, 30000)
    wait_for("the edit", function()
      return api.nvim_buf_line_count(buf) > 3
    end, 5000)
    local lines = api.nvim_buf_get_lines(buf, 0, -1, false)
    eq("def add(a, b):", lines[1], "def line")
    check(lines[2]:match('^    """'), "line 2 should open the docstring: " .. vim.inspect(lines))
    eq("    return a + b", lines[#lines - 1], "body after the docstring")
    check(result.applied ~= false, "result.applied: " .. vim.inspect(result))
    -- The inserted lines close the docstring before the body.
    -- What was inserted is the text the server answered with.
    local text = result.text:gsub("\n$", "")
    eq(vim.split(text, "\n", { plain = true }), vim.list_slice(lines, 2, #lines - 2), "inserted docstring lines")
    local closing = lines[#lines - 2]
    check(closing:match('"""%s*$'), "docstring not closed: " .. vim.inspect(lines))
  end)

  test(":CodellamaPrompt shows the prompt in a scratch buffer", function()
    api.nvim_win_set_cursor(0, { 2, 4 })
    local before = api.nvim_get_current_win()
    vim.cmd("CodellamaPrompt")
    wait_for("the prompt window", function()
      return api.nvim_get_current_win() ~= before
    end, 10000)
    local lines = api.nvim_buf_get_lines(0, 0, -1, false)
    check(lines[1]:match("^%-%- codellama prompt: %d+ tokens"), "header: " .. tostring(lines[1]))
    check(table.concat(lines, "\n"):find("def add", 1, true), "prompt lacks the file's text")
    vim.cmd("close")
  end)

  test(":checkhealth codellama reports no ERROR", function()
    vim.cmd("checkhealth codellama")
    local hbuf = api.nvim_get_current_buf()
    local text = table.concat(api.nvim_buf_get_lines(hbuf, 0, -1, false), "\n")
    check(not text:find("ERROR", 1, true), "health has errors:\n" .. text)
    check(text:find("Model ready", 1, true), "health lacks 'Model ready':\n" .. text)
    check(text:find("OK", 1, true), "health has no OK:\n" .. text)
    vim.cmd("silent! tabclose")
  end)

  test(":CodellamaChat streams the answer into the chat buffer", function()
    vim.cmd("silent! %bwipeout!")
    buf = open("chat.py", { "def add(a, b):", "    return a + b" })
    local commands = require("codellama.commands")
    local streamed, orig_stream = {}, commands.chat_stream_handler
    commands.chat_stream_handler = function(err, result, ctx)
      table.insert(streamed, result)
      return orig_stream(err, result, ctx)
    end
    local answer
    commands.chat("What does this do?", {
      range = { start = { line = 0, character = 0 }, ["end"] = { line = 1, character = 16 } },
    }, function(r)
      answer = r and r.answer
    end)
    wait_for("the chat answer", function()
      return answer
    end, 60000)
    local chat = vim.fn.bufnr("codellama://chat")
    check(chat > 0, "no chat buffer")
    local text = table.concat(api.nvim_buf_get_lines(chat, 0, -1, false), "\n")
    check(text:find("What does this do?", 1, true), "chat lacks the question:\n" .. text)
    check(vim.endswith(text, answer), "chat does not end with the answer:\n" .. text)
    commands.chat_stream_handler = orig_stream
    check(#streamed > 0, "no codellama/chatStream notification")
    local last = streamed[#streamed]
    eq(commands.session_id, last.sessionId, "chatStream sessionId")
    eq(true, last.done, "last chatStream done")
    eq(answer, last.text, "last chatStream text")
  end)

  test("no error notifications", function()
    for _, note in ipairs(notes) do
      check(note.level < vim.log.levels.ERROR, "error notification: " .. note.msg)
    end
  end)

  test("utf-16 positions: a client that offers only utf-16", function()
    vim.cmd("silent! %bwipeout!")
    for _, c in ipairs(vim.lsp.get_clients({ name = "codellama" })) do
      c:stop(true)
    end
    wait_for("the clients to stop", function()
      return #vim.lsp.get_clients({ name = "codellama" }) == 0
    end, 5000)
    local caps = vim.lsp.protocol.make_client_capabilities()
    caps.general.positionEncodings = { "utf-16" }
    require("codellama").setup({
      cmd = { BIN },
      cmd_env = { HF_HUB_OFFLINE = "1" },
      settings = SETTINGS,
      debounce_ms = 60,
      lsp = { capabilities = caps },
    })
    buf, client = open("mb16.py", { 's = "é😀"', "t = s + " })
    eq("utf-16", client.offset_encoding, "negotiated encoding")
    local text = type_and_wait(buf, 1, " + ")
    local row, col = cursor()
    eq(oracle(buf, row, col), text, "ghost text after multi-byte characters (utf-16)")
  end)
end

H.start(run, DEADLINE_MS)
