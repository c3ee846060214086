-- Tests of the plugin's ghost text and commands against a scripted in-process server
-- (no model, no binary): the shapes the tiny fixture model never produces in e2e.lua
-- (several words and lines, ranges that start before the cursor, several items, slow
-- answers) and the exact requests the plugin sends. The fake server speaks utf-16.
--
--   nvim --headless --clean -n -S editors/nvim/tests/ui.lua
local here = debug.getinfo(1, "S").source:sub(2)
local H = dofile(vim.fn.fnamemodify(here, ":p:h") .. "/harness.lua")
local api = vim.api

H.init(here)
local sleep, wait_for, test, eq, check = H.sleep, H.wait_for, H.test, H.eq, H.check
local shown, cursor = H.shown, H.cursor

-- The fake server -------------------------------------------------------------------

local fake = {
  log = {}, -- every request and notification: { method, params, id }
  answer = nil, -- function(params) -> InlineCompletionItem[] (nil: no items)
  delay = 0, -- ms before inline completion answers
  execute = nil, -- function(params) -> result of workspace/executeCommand
}

local READY = {
  state = "ready",
  model = "Fake 7B",
  message = "Fake 7B is ready",
  infill = true,
  version = "0.0.0",
  encoding = "utf-16",
}

local function fake_server(dispatchers)
  fake.dispatchers = dispatchers
  local closing, next_id = false, 0
  return {
    request = function(method, params, callback, notify_reply_callback)
      next_id = next_id + 1
      local id = next_id
      table.insert(fake.log, { method = method, params = params, id = id })
      local result, delay = nil, 0
      if method == "initialize" then
        result = {
          capabilities = { positionEncoding = "utf-16", textDocumentSync = 1, inlineCompletionProvider = true },
          serverInfo = { name = "fake", version = "0" },
        }
      elseif method == "textDocument/inlineCompletion" then
        result = fake.answer and fake.answer(params) or {}
        delay = fake.delay
      elseif method == "codellama/status" then
        result = READY
      elseif method == "workspace/executeCommand" then
        result = fake.execute and fake.execute(params) or {}
      end
      vim.defer_fn(function()
        if notify_reply_callback then
          notify_reply_callback(id)
        end
        callback(nil, result)
      end, delay)
      return true, id
    end,
    notify = function(method, params)
      table.insert(fake.log, { method = method, params = params })
      if method == "exit" then
        closing = true
      end
      return true
    end,
    is_closing = function()
      return closing
    end,
    terminate = function()
      closing = true
    end,
  }
end

local function logged(method)
  return vim.tbl_filter(function(e)
    return e.method == method
  end, fake.log)
end

--- An item inserting `text` at the request's position (range starts `back` utf-16
--- units before it).
local function item(params, text, back)
  local pos = params.position
  local start = { line = pos.line, character = pos.character - (back or 0) }
  return { insertText = text, range = { start = start, ["end"] = pos } }
end

local function enter_insert_at_end(lnum, keys)
  api.nvim_win_set_cursor(0, { lnum, 0 })
  api.nvim_input("A" .. (keys or ""))
  wait_for("insert mode", function()
    return api.nvim_get_mode().mode == "i"
  end)
end

-- The tests ---------------------------------------------------------------------------

local function run()
  require("codellama").setup({ cmd = fake_server, debounce_ms = 30 })
  local buf

  test("multi-line ghost text: first line inline at the cursor, the others below", function()
    buf = H.open("multi.py", { "x = 1", "" })
    fake.answer = function(p)
      return { item(p, "hello world\n  next line") }
    end
    local text = H.type_and_wait(buf, 2, "y = ")
    eq("hello world\n  next line", text, "ghost text")
    local _, row, col, details = shown(buf)
    eq({ cursor() }, { row, col }, "extmark at the cursor")
    eq("inline", details.virt_text_pos, "virt_text_pos")
    eq(1, #details.virt_lines, "virt_lines")
  end, { stay = true })

  test("accept word, word, line: pieces in order, the rest stays shown", function()
    fake.answer = nil -- the same suggestion must not come back after the last piece
    api.nvim_input("<M-Right>")
    H.wait_lines(buf, { "x = 1", "y = hello" }, "after the first word")
    eq(" world\n  next line", shown(buf), "rest after the first word")
    api.nvim_input("<M-Right>")
    H.wait_lines(buf, { "x = 1", "y = hello world" }, "after the second word")
    eq("\n  next line", shown(buf), "rest after the second word")
    api.nvim_input("<M-Down>")
    H.wait_lines(buf, { "x = 1", "y = hello world", "  next line" }, "after accept line")
    eq({ 2, 11 }, { cursor() }, "cursor")
    sleep(100)
    eq(nil, shown(buf), "nothing left")
  end)

  test("<Tab> accepts a multi-line suggestion; one undo step removes it", function()
    buf = H.open("tab.py", { "def f():", "    " })
    fake.answer = function(p)
      return { item(p, "return 1\n\nprint(f())") }
    end
    H.type_and_wait(buf, 2, "")
    fake.answer = nil
    api.nvim_input("<Tab>")
    H.wait_lines(buf, { "def f():", "    return 1", "", "print(f())" }, "after <Tab>")
    eq({ 3, 10 }, { cursor() }, "cursor at the end of the insertion")
    api.nvim_input("<Esc>u")
    H.wait_lines(buf, { "def f():", "    " }, "after undo")
  end)

  test("a range that starts before the cursor replaces what was typed (utf-16)", function()
    buf = H.open("range.py", { 's = "é😀" + ' })
    fake.answer = function(p)
      return { item(p, "return x", 3) }
    end
    local text = H.type_and_wait(buf, 1, "ret")
    eq("urn x", text, "ghost text")
    local line = api.nvim_buf_get_lines(buf, 0, 1, false)[1]
    local req = logged("textDocument/inlineCompletion")
    eq({ line = 0, character = vim.str_utfindex(line, "utf-16") }, req[#req].params.position, "request position")
    eq(2, req[#req].params.context.triggerKind, "automatic trigger")
    fake.answer = nil
    api.nvim_input("<Tab>")
    H.wait_lines(buf, { 's = "é😀" + return x' }, "after <Tab>")
  end)

  test("an item that does not start with the typed text is not shown", function()
    buf = H.open("nomatch.py", { "" })
    fake.answer = function(p)
      return { item(p, "xyz", 2) }
    end
    local before = #logged("textDocument/inlineCompletion")
    enter_insert_at_end(1, "ab")
    wait_for("a request", function()
      return #logged("textDocument/inlineCompletion") > before
    end, 3000)
    sleep(150)
    eq(nil, shown(buf), "ghost text")
  end)

  test("next/previous ask again (invoked) and cycle through the items", function()
    buf = H.open("cycle.py", { "" })
    fake.answer = function(p)
      if p.context.triggerKind == 1 then
        return { item(p, "one"), item(p, "two") }
      end
      return { item(p, "one") }
    end
    eq("one", H.type_and_wait(buf, 1, "z = "), "first suggestion")
    api.nvim_input("<M-]>")
    wait_for("the second item", function()
      return shown(buf) == "two"
    end, 3000)
    local _, _, _, details = shown(buf)
    eq(" (2/2)", details.virt_text[2][1], "counter")
    api.nvim_input("<M-[>")
    wait_for("the first item", function()
      return shown(buf) == "one"
    end, 3000)
    fake.answer = nil
    api.nvim_input("<Tab>")
    H.wait_lines(buf, { "z = one" }, "after <Tab>")
  end)

  test("codellama/suggestionReady: the whole suggestion replaces its first words", function()
    buf = H.open("grow.py", { "" })
    local whole = false
    fake.answer = function(p)
      return { item(p, whole and "first words and the rest" or "first words") }
    end
    eq("first words", H.type_and_wait(buf, 1, "q = "), "first words")
    local reqs = logged("textDocument/inlineCompletion")
    local last = reqs[#reqs].params
    local uri = last.textDocument.uri
    local function notice(version, position)
      fake.dispatchers.notification("codellama/suggestionReady", {
        textDocument = { uri = uri, version = version },
        position = position,
      })
    end
    whole = true
    -- For another version or another position: nothing is asked.
    notice(vim.lsp.util.buf_versions[buf] - 1, last.position)
    notice(vim.lsp.util.buf_versions[buf], { line = last.position.line, character = 0 })
    sleep(100)
    eq(#reqs, #logged("textDocument/inlineCompletion"), "requests after stale notices")
    eq("first words", shown(buf), "ghost text after stale notices")
    notice(vim.lsp.util.buf_versions[buf], last.position)
    wait_for("the whole suggestion", function()
      return shown(buf) == "first words and the rest"
    end, 3000)
    fake.answer = nil
    api.nvim_input("<Esc>")
  end)

  test("typing on cancels the slow request; its late answer is ignored", function()
    buf = H.open("slow.py", { "" })
    fake.delay = 300
    local n = 0
    fake.answer = function(p)
      n = n + 1
      return { item(p, n == 1 and "FIRST" or "SECOND") }
    end
    enter_insert_at_end(1, "a")
    wait_for("the first request", function()
      return n == 1
    end, 3000)
    api.nvim_input("b")
    local text = wait_for("ghost text", function()
      return shown(buf)
    end, 3000)
    eq("SECOND", text, "ghost text")
    local cancels = logged("$/cancelRequest")
    check(#cancels >= 1, "no $/cancelRequest")
    local reqs = logged("textDocument/inlineCompletion")
    eq(reqs[#reqs - 1].id, cancels[#cancels].params.id, "cancelled request id")
    sleep(400)
    eq("SECOND", shown(buf), "ghost text after the late answer")
    fake.delay = 0
  end)

  test("ghost text goes away on <Esc>, on moving and on leaving the buffer; <C-]> hides it", function()
    buf = H.open("stale.py", { "a", "" })
    fake.answer = function(p)
      return { item(p, "ghost") }
    end
    H.type_and_wait(buf, 2, "x")
    api.nvim_input("<Esc>")
    wait_for("no ghost after <Esc>", function()
      return shown(buf) == nil
    end, 2000)
    H.type_and_wait(buf, 2, "y")
    api.nvim_input("<Up>")
    wait_for("no ghost after moving", function()
      return shown(buf) == nil
    end, 2000)
    api.nvim_input("<Esc>")
    H.type_and_wait(buf, 2, "z")
    api.nvim_input("<C-]>")
    wait_for("no ghost after <C-]>", function()
      return shown(buf) == nil
    end, 2000)
    H.type_and_wait(buf, 2, "w")
    api.nvim_input("<Cmd>enew<CR>")
    wait_for("no ghost after leaving the buffer", function()
      return shown(buf) == nil
    end, 2000)
    fake.answer = nil
  end)

  test(":CodellamaToggle stops and restarts suggestions", function()
    buf = H.open("toggle.py", { "" })
    fake.answer = function(p)
      return { item(p, "on") }
    end
    vim.cmd("CodellamaToggle")
    local before = #logged("textDocument/inlineCompletion")
    enter_insert_at_end(1, "q = ")
    sleep(200)
    eq(before, #logged("textDocument/inlineCompletion"), "requests while off")
    eq(nil, shown(buf), "ghost text while off")
    api.nvim_input("<Esc>")
    sleep(50)
    vim.cmd("CodellamaToggle")
    eq("on", H.type_and_wait(buf, 1, " "), "ghost text when on again")
  end)

  test(":CodellamaEdit sends the lines and the instruction", function()
    buf = H.open("edit.py", { "def f(x):", '    return "é😀"', "" })
    fake.execute = function()
      return { applied = true, edits = 0, text = "" }
    end
    vim.cmd("1,2CodellamaEdit add type hints")
    local cmd = wait_for("executeCommand", function()
      return logged("workspace/executeCommand")[1]
    end, 3000)
    eq("codellama.editSelection", cmd.params.command, "command")
    eq({
      uri = vim.uri_from_bufnr(buf),
      -- utf-16: 4 + 'return' 6 + space + '"' + 'é' 1 + '😀' 2 + '"' = 16 (bytes would be 19)
      range = { start = { line = 0, character = 0 }, ["end"] = { line = 1, character = 16 } },
      instruction = "add type hints",
    }, cmd.params.arguments[1], "arguments (utf-16 end)")
  end)

  test("the 'Edit with instruction…' code action asks for the instruction", function()
    local orig_input = vim.ui.input
    vim.ui.input = function(_, on_confirm)
      on_confirm("make it shorter")
    end
    local before = #logged("workspace/executeCommand")
    local client = H.client_for(buf)
    local range = { start = { line = 0, character = 0 }, ["end"] = { line = 1, character = 3 } }
    client:exec_cmd({
      title = "Edit with instruction…",
      command = "codellama.editSelection",
      arguments = { { uri = vim.uri_from_bufnr(buf), range = range } },
    }, { bufnr = buf })
    vim.ui.input = orig_input
    local cmd = wait_for("executeCommand", function()
      return logged("workspace/executeCommand")[before + 1]
    end, 3000)
    eq("make it shorter", cmd.params.arguments[1].instruction, "instruction")
    eq(range, cmd.params.arguments[1].range, "range")
  end)

  test("status component follows codellama/status; errors are told once", function()
    local status = require("codellama").status
    eq("🦙 ready Fake 7B", status(), "ready")
    local function notify(s)
      fake.dispatchers.notification("codellama/status", vim.tbl_extend("force", READY, s))
      sleep(30)
    end
    notify({ state = "downloading", percent = 42, model = "org/repo:x.gguf", message = "downloading" })
    eq("🦙 downloading 42%", status(), "downloading")
    notify({ state = "loading", model = "x.gguf", message = "loading x.gguf" })
    eq("🦙 loading", status(), "loading")
    local errors = #vim.tbl_filter(function(n)
      return n.level == vim.log.levels.ERROR
    end, H.notes)
    notify({ state = "error", model = vim.NIL, message = "no such file: set model" })
    notify({ state = "error", model = vim.NIL, message = "no such file: set model" })
    eq("🦙 error", status(), "error")
    local now = #vim.tbl_filter(function(n)
      return n.level == vim.log.levels.ERROR
    end, H.notes)
    eq(errors + 1, now, "error notifications")
    notify({})
    eq("🦙 ready Fake 7B", status(), "ready again")
  end)
end

H.start(run, 60000)
