-- A small test harness for headless Neovim: the tests run in a coroutine that yields
-- while Neovim's main loop runs (typed keys, timers, LSP messages), one line per test
-- on stderr, exit code 0 when all pass. Used by e2e.lua and ui.lua.
local api = vim.api
local uv = vim.uv

local H = {}

H.passed, H.failed, H.skipped = 0, 0, 0
H.notes = {} -- vim.notify calls: { msg, level }

local co
local cleanups = {}

function H.out(line)
  io.stderr:write(line .. "\n")
  io.stderr:flush()
end

function H.quit(code)
  for _, fn in ipairs(cleanups) do
    pcall(fn)
  end
  for _, client in ipairs(vim.lsp.get_clients()) do
    pcall(client.stop, client, true)
  end
  vim.cmd((code == 0 and "qall!" or ("cquit " .. code)))
end

function H.on_exit(fn)
  table.insert(cleanups, fn)
end

local function finish()
  H.out(("%d passed, %d failed, %d skipped"):format(H.passed, H.failed, H.skipped))
  H.quit(H.failed == 0 and 0 or 1)
end

local function resume()
  local ok, err = coroutine.resume(co)
  if not ok then
    H.out("runner crashed: " .. tostring(err))
    H.failed = H.failed + 1
    finish()
  end
end

function H.sleep(ms)
  vim.defer_fn(resume, ms)
  coroutine.yield()
end

function H.wait_for(what, cond, timeout_ms)
  local start = uv.now()
  while true do
    local ok, value = pcall(cond)
    if ok and value then
      return value
    end
    if uv.now() - start > (timeout_ms or 15000) then
      error("timed out waiting for " .. what, 2)
    end
    H.sleep(20)
  end
end

--- Runs one test; errors fail it, error("SKIP: why", 0) skips it. Afterwards Normal
--- mode again, unless opts.stay (the next test goes on from here).
function H.test(name, fn, opts)
  local ok, err = xpcall(fn, debug.traceback)
  if ok then
    H.passed = H.passed + 1
    H.out("ok   - " .. name)
  elseif type(err) == "string" and err:match("^SKIP: ") then
    H.skipped = H.skipped + 1
    H.out("skip - " .. name .. ": " .. err:gsub("^SKIP: ", ""))
  else
    H.failed = H.failed + 1
    H.out("FAIL - " .. name .. "\n" .. tostring(err))
  end
  if not (opts and opts.stay) then
    api.nvim_input("<Esc>")
    H.sleep(30)
  end
end

function H.eq(expected, actual, what)
  if type(expected) == "string" and type(actual) == "string" and expected ~= actual then
    local i = 1
    while expected:byte(i) == actual:byte(i) do
      i = i + 1
    end
    error(
      ("%s: strings differ at byte %d (lengths %d and %d):\n  expected: %q\n  actual:   %q"):format(
        what or "values differ",
        i,
        #expected,
        #actual,
        expected:sub(math.max(1, i - 9), i + 20),
        actual:sub(math.max(1, i - 9), i + 20)
      ),
      2
    )
  end
  if not vim.deep_equal(expected, actual) then
    error(
      ("%s:\n  expected: %s\n  actual:   %s"):format(
        what or "values differ",
        vim.inspect(expected),
        vim.inspect(actual)
      ),
      2
    )
  end
end

function H.check(cond, what)
  if not cond then
    error(what, 2)
  end
end

--- Puts editors/nvim on the runtimepath and records notifications.
function H.init(script_path)
  local plugin_root = vim.fn.fnamemodify(script_path, ":p:h:h")
  vim.opt.runtimepath:prepend(plugin_root)
  vim.o.swapfile = false
  vim.o.shortmess = vim.o.shortmess .. "F"
  vim.notify = function(msg, level)
    level = level or vim.log.levels.INFO
    table.insert(H.notes, { msg = tostring(msg), level = level })
    H.out(("  (notify %d) %s"):format(level, tostring(msg)))
  end
  H.workdir = vim.fn.tempname() .. "-codellama-test"
  vim.fn.mkdir(H.workdir, "p")
  H.on_exit(function()
    vim.fn.delete(H.workdir, "rf")
  end)
end

--- Starts `run` in the coroutine, with an overall deadline.
function H.start(run, deadline_ms)
  vim.defer_fn(function()
    H.out("deadline passed")
    H.failed = H.failed + 1
    finish()
  end, deadline_ms)
  co = coroutine.create(function()
    local ok, err = xpcall(run, debug.traceback)
    if not ok then
      H.failed = H.failed + 1
      H.out("runner: " .. tostring(err))
    end
    finish()
  end)
  vim.schedule(resume)
end

-- Buffer helpers -------------------------------------------------------------------

function H.write(name, lines)
  local path = H.workdir .. "/" .. name
  vim.fn.writefile(lines, path)
  return path
end

function H.client_for(buf)
  return vim.lsp.get_clients({ bufnr = buf, name = "codellama" })[1]
end

--- Opens a file and waits until the codellama client is attached and initialized.
function H.open(name, lines)
  local path = H.write(name, lines)
  vim.cmd.edit(vim.fn.fnameescape(path))
  local buf = api.nvim_get_current_buf()
  H.wait_for("the client to attach to " .. name, function()
    local c = H.client_for(buf)
    return c and c.initialized and c.attached_buffers[buf]
  end)
  return buf, H.client_for(buf)
end

--- The ghost text drawn in `buf`, read back from the extmarks (nil when none), and the
--- extmark's row and column.
function H.shown(buf)
  local ns = require("codellama.ghost").ns
  local marks = api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  H.check(#marks == 1, "more than one ghost-text extmark")
  local details = marks[1][4]
  local hl = require("codellama.config").options.hl_group
  local function chunks(list)
    local s = {}
    for _, chunk in ipairs(list or {}) do
      if chunk[2] == hl then
        table.insert(s, chunk[1])
      end
    end
    return table.concat(s)
  end
  local lines = { chunks(details.virt_text) }
  for _, line in ipairs(details.virt_lines or {}) do
    table.insert(lines, chunks(line))
  end
  return table.concat(lines, "\n"), marks[1][2], marks[1][3], details
end

function H.cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

function H.lines(buf)
  return api.nvim_buf_get_lines(buf, 0, -1, false)
end

--- `lines` with `text` inserted at (row, col) (0-based, bytes).
function H.spliced(lines, row, col, text)
  local before = lines[row + 1]:sub(1, col)
  local after = lines[row + 1]:sub(col + 1)
  local copy = vim.list_slice(lines, 1, row)
  vim.list_extend(copy, vim.split(before .. text .. after, "\n", { plain = true }))
  vim.list_extend(copy, vim.list_slice(lines, row + 2))
  return copy
end

function H.wait_lines(buf, want, what)
  local ok = pcall(H.wait_for, what or "buffer lines", function()
    return vim.deep_equal(H.lines(buf), want)
  end, 5000)
  if not ok then
    H.eq(want, H.lines(buf), what or "buffer lines")
  end
end

--- Types `keys` in insert mode at the end of line `lnum` and waits for ghost text.
function H.type_and_wait(buf, lnum, keys)
  api.nvim_win_set_cursor(0, { lnum, 0 })
  api.nvim_input("A" .. keys)
  H.wait_for("insert mode", function()
    return api.nvim_get_mode().mode == "i"
  end)
  return H.wait_for("ghost text after typing " .. keys, function()
    return H.shown(buf)
  end, 20000)
end

return H
