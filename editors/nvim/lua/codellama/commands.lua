-- User commands (:Codellama*) and client-side handlers for the server's code action
-- commands. The server does the work and applies edits with workspace/applyEdit,
-- which Neovim's default handler carries out.
local util = require("codellama.util")

local api = vim.api
local M = {}

local function need_client(bufnr)
  local client = util.client(bufnr)
  if not client then
    vim.notify("codellama: no codellama server is attached to this buffer", vim.log.levels.WARN)
  end
  return client
end

--- Runs a server command that applies an edit itself; says so when nothing was applied.
local function run_edit_command(client, bufnr, command, args, not_applied, on_done)
  util.execute(client, bufnr, command, args, function(result)
    if type(result) == "table" and result.applied == false then
      util.notify(not_applied, vim.log.levels.WARN)
    end
    if on_done then
      on_done(result)
    end
  end)
end

--- :CodellamaDocstring: a docstring for the function or class at the cursor.
function M.docstring(bufnr, on_done)
  bufnr = bufnr or api.nvim_get_current_buf()
  local client = need_client(bufnr)
  if not client then
    return
  end
  local row, col = util.cursor()
  run_edit_command(client, bufnr, "codellama.generateDocstring", {
    uri = vim.uri_from_bufnr(bufnr),
    position = util.lsp_position(bufnr, row, col, client.offset_encoding),
  }, "codellama: the docstring was not applied", on_done)
end

local function edit_selection(client, bufnr, args, on_done)
  run_edit_command(client, bufnr, "codellama.editSelection", args, "codellama: the answer changed nothing", on_done)
end

--- Asks for an instruction unless `args` has one, then runs codellama.editSelection.
local function edit_with_instruction(client, bufnr, args, instruction, on_done)
  if instruction and instruction ~= "" then
    args.instruction = instruction
    return edit_selection(client, bufnr, args, on_done)
  end
  vim.ui.input({ prompt = "Edit instruction: " }, function(input)
    if input and vim.trim(input) ~= "" then
      args.instruction = input
      edit_selection(client, bufnr, args, on_done)
    end
  end)
end

--- :[range]CodellamaEdit {instruction}
function M.edit(opts, on_done)
  local bufnr = api.nvim_get_current_buf()
  local client = need_client(bufnr)
  if not client then
    return
  end
  local line1, line2 = opts.line1, opts.line2
  if opts.range == 0 then
    line1, line2 = vim.fn.line("."), vim.fn.line(".")
  end
  local args = {
    uri = vim.uri_from_bufnr(bufnr),
    range = util.command_range(bufnr, line1, line2, client.offset_encoding),
  }
  edit_with_instruction(client, bufnr, args, opts.args, on_done)
end

-- Chat ---------------------------------------------------------------------------

-- One conversation per Neovim instance unless :CodellamaChat! starts a new one.
M.session_id = ("nvim-%d-%d"):format(vim.fn.getpid(), os.time())
local chat_buf
local pending = {} -- sessionId -> { first = line of the answer in the chat buffer }

local function chat_buffer()
  if chat_buf and api.nvim_buf_is_valid(chat_buf) then
    return chat_buf
  end
  chat_buf = api.nvim_create_buf(false, true)
  api.nvim_buf_set_name(chat_buf, "codellama://chat")
  vim.bo[chat_buf].filetype = "markdown"
  vim.bo[chat_buf].bufhidden = "hide"
  return chat_buf
end

local function show_buffer(buf)
  local win = vim.fn.bufwinid(buf)
  if win == -1 then
    vim.cmd("botright vsplit")
    win = api.nvim_get_current_win()
    api.nvim_win_set_buf(win, buf)
    vim.wo[win].wrap = true
    vim.wo[win].linebreak = true
    vim.cmd("wincmd p")
  end
  return win
end

local function set_answer(session_id, text)
  local p = pending[session_id]
  if not p or not api.nvim_buf_is_valid(p.buf) then
    return
  end
  local lines = vim.split(text, "\n", { plain = true })
  api.nvim_buf_set_lines(p.buf, p.first, -1, false, lines)
  local win = vim.fn.bufwinid(p.buf)
  if win ~= -1 then
    api.nvim_win_set_cursor(win, { api.nvim_buf_line_count(p.buf), 0 })
  end
end

--- `codellama/chatStream` {sessionId, text, done}: the answer so far, whole each time.
function M.chat_stream_handler(_, result)
  if type(result) ~= "table" or type(result.text) ~= "string" then
    return
  end
  set_answer(result.sessionId, result.text)
end

--- Sends a chat message; the answer streams into the chat buffer.
function M.chat(message, opts, on_done)
  opts = opts or {}
  local bufnr = api.nvim_get_current_buf()
  local client = util.client(bufnr) or util.any_client()
  if not client then
    vim.notify("codellama: no codellama server is running", vim.log.levels.WARN)
    return
  end
  if opts.new_session then
    M.session_id = ("nvim-%d-%d-%d"):format(vim.fn.getpid(), os.time(), vim.uv.hrtime() % 1000000)
  end
  local session_id = opts.session_id or M.session_id
  local args = { sessionId = session_id, message = message, show = false }
  if opts.range and util.client(bufnr) then
    args.uri = vim.uri_from_bufnr(bufnr)
    args.range = opts.range
  end
  local buf = chat_buffer()
  local header = { "## You", "" }
  vim.list_extend(header, vim.split(message, "\n", { plain = true }))
  if opts.range then
    table.insert(
      header,
      ("(with lines %d-%d of %s)"):format(
        opts.range.start.line + 1,
        opts.range["end"].line + 1,
        vim.fn.fnamemodify(api.nvim_buf_get_name(bufnr), ":~:.")
      )
    )
  end
  vim.list_extend(header, { "", "## Codellama", "" })
  local start = api.nvim_buf_line_count(buf)
  if start == 1 and api.nvim_buf_get_lines(buf, 0, 1, false)[1] == "" then
    start = 0
  else
    table.insert(header, 1, "")
  end
  api.nvim_buf_set_lines(buf, start, -1, false, header)
  pending[session_id] = { buf = buf, first = api.nvim_buf_line_count(buf) }
  set_answer(session_id, "…")
  show_buffer(buf)
  util.execute(client, bufnr, "codellama.chat", args, function(result)
    if type(result) == "table" and type(result.answer) == "string" then
      set_answer(session_id, result.answer)
    end
    pending[session_id] = nil
    if on_done then
      on_done(result)
    end
  end)
end

--- :[range]CodellamaChat[!] {message}; ! starts a new conversation.
function M.chat_command(opts)
  local bufnr = api.nvim_get_current_buf()
  local client = util.client(bufnr)
  local range
  if opts.range > 0 and client then
    range = util.command_range(bufnr, opts.line1, opts.line2, client.offset_encoding)
  end
  local function send(message)
    if message and vim.trim(message) ~= "" then
      M.chat(message, { range = range, new_session = opts.bang })
    end
  end
  if opts.args ~= "" then
    send(opts.args)
  else
    vim.ui.input({ prompt = "Ask Codellama: " }, send)
  end
end

-- Prompt -------------------------------------------------------------------------

--- :CodellamaPrompt: the prompt the model sees at the cursor, in a scratch buffer.
function M.prompt(on_done)
  local bufnr = api.nvim_get_current_buf()
  local client = need_client(bufnr)
  if not client then
    return
  end
  local row, col = util.cursor()
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = util.lsp_position(bufnr, row, col, client.offset_encoding),
  }
  client:request("codellama/prompt", params, function(err, result)
    if err or type(result) ~= "table" then
      util.notify("codellama: codellama/prompt failed: " .. util.error_text(err), vim.log.levels.ERROR)
      return
    end
    local lines = {
      ("-- codellama prompt: %d tokens"):format(result.tokens or 0),
    }
    for _, source in ipairs(result.contextSources or {}) do
      table.insert(lines, "-- context from: " .. source)
    end
    table.insert(lines, "")
    vim.list_extend(lines, vim.split(result.text or "", "\n", { plain = true }))
    local buf = api.nvim_create_buf(false, true)
    api.nvim_buf_set_lines(buf, 0, -1, false, lines)
    vim.bo[buf].bufhidden = "wipe"
    vim.bo[buf].modifiable = false
    pcall(api.nvim_buf_set_name, buf, "codellama://prompt/" .. buf)
    vim.cmd("botright split")
    api.nvim_win_set_buf(0, buf)
    vim.keymap.set("n", "q", "<Cmd>close<CR>", { buffer = buf, nowait = true })
    if on_done then
      on_done(buf, result)
    end
  end, bufnr)
end

-- Toggle -------------------------------------------------------------------------

--- :CodellamaToggle toggles ghost text everywhere; :CodellamaToggle! only in the
--- current buffer (b:codellama_enabled overrides the global switch).
function M.toggle(opts)
  local ghost = require("codellama.ghost")
  local bufnr = api.nvim_get_current_buf()
  local on
  if opts and opts.bang then
    on = not ghost.is_enabled(bufnr)
    vim.b[bufnr].codellama_enabled = on
  else
    ghost.enabled = not ghost.enabled
    on = ghost.enabled
  end
  -- The 0.12 native inline completion has its own switch.
  if vim.lsp.inline_completion and require("codellama.config").options.native then
    local filter = (opts and opts.bang) and { bufnr = bufnr } or nil
    pcall(vim.lsp.inline_completion.enable, on, filter)
  end
  if not on then
    ghost.reset(bufnr)
  end
  vim.notify(
    ("codellama: suggestions %s%s"):format(on and "on" or "off", (opts and opts.bang) and " in this buffer" or ""),
    vim.log.levels.INFO
  )
end

-- Client-side code action commands -----------------------------------------------

--- vim.lsp.commands entries: the server's "Edit with instruction…" action comes
--- without an instruction; ask for one. "Explain this code" streams into the chat view.
function M.register_lsp_commands()
  vim.lsp.commands["codellama.editSelection"] = function(command, ctx)
    local client = vim.lsp.get_client_by_id(ctx.client_id)
    local args = vim.deepcopy((command.arguments or {})[1] or {})
    if not client then
      return
    end
    edit_with_instruction(client, ctx.bufnr, args, args.instruction)
  end
  vim.lsp.commands["codellama.chat"] = function(command, ctx)
    local args = (command.arguments or {})[1] or {}
    if type(args.message) ~= "string" then
      return
    end
    local bufnr = ctx.bufnr or api.nvim_get_current_buf()
    if api.nvim_get_current_buf() ~= bufnr then
      return
    end
    M.chat(args.message, { range = args.range, session_id = args.sessionId })
  end
end

--- Creates the :Codellama* user commands.
function M.create_user_commands()
  local cmd = api.nvim_create_user_command
  cmd("CodellamaDocstring", function()
    M.docstring()
  end, { desc = "codellama: generate a docstring for the function at the cursor" })
  cmd("CodellamaEdit", function(opts)
    M.edit(opts)
  end, { nargs = "*", range = true, desc = "codellama: edit the selection as instructed" })
  cmd("CodellamaChat", function(opts)
    M.chat_command(opts)
  end, { nargs = "*", range = true, bang = true, desc = "codellama: ask about code (! = new conversation)" })
  cmd("CodellamaPrompt", function()
    M.prompt()
  end, { desc = "codellama: show the prompt the model sees at the cursor" })
  cmd("CodellamaToggle", function(opts)
    M.toggle(opts)
  end, { bang = true, desc = "codellama: toggle suggestions (! = this buffer only)" })
end

return M
