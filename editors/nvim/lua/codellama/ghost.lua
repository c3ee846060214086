-- Ghost text for Neovim 0.11: asks the server for textDocument/inlineCompletion while
-- typing, draws the answer with extmarks and inserts it on accept. On 0.12+ the
-- native vim.lsp.inline_completion is used instead (see attach_native below).
local util = require("codellama.util")

local api = vim.api
local M = {}

M.ns = api.nvim_create_namespace("codellama.ghost")

-- Global switch; vim.b.codellama_enabled (true/false) overrides it per buffer.
M.enabled = true

local TRIGGER_INVOKED, TRIGGER_AUTOMATIC = 1, 2
local REQUEST_CANCELLED = -32800

---@class codellama.Item
---@field ghost string  text to insert at the cursor (what is not typed yet)
---@field end_row integer  the item's range end: text from the cursor up to it is replaced
---@field end_col integer

---@class codellama.BufState
---@field timer? uv.uv_timer_t
---@field request? {id: integer, client_id: integer, tick: integer, row: integer, col: integer, trigger: integer}
---@field items codellama.Item[]
---@field index integer
---@field tick? integer  changedtick and cursor the shown items belong to
---@field row? integer
---@field col? integer
---@field extmark? integer
---@field last_error? string
---@field cycle? integer  direction to move once an invoked request answers

---@type table<integer, codellama.BufState>
local states = {}

local function state(bufnr)
  local st = states[bufnr]
  if not st then
    st = { items = {}, index = 1 }
    states[bufnr] = st
  end
  return st
end

function M.is_enabled(bufnr)
  local b = vim.b[bufnr].codellama_enabled
  if b ~= nil then
    return b
  end
  return M.enabled
end

local function in_insert_mode()
  return api.nvim_get_mode().mode == "i"
end

local function stop_timer(st)
  if st.timer then
    st.timer:stop()
    st.timer:close()
    st.timer = nil
  end
end

--- Cancels the request in flight, if any ($/cancelRequest goes to the server).
local function cancel(st)
  local req = st.request
  st.request = nil
  if req then
    local client = vim.lsp.get_client_by_id(req.client_id)
    if client then
      pcall(client.cancel_request, client, req.id)
    end
  end
end

local function undraw(bufnr, st)
  if st.extmark then
    pcall(api.nvim_buf_del_extmark, bufnr, M.ns, st.extmark)
    st.extmark = nil
  end
end

--- Hides the suggestion and forgets it (the request in flight stays).
function M.clear(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local st = states[bufnr]
  if not st then
    return
  end
  undraw(bufnr, st)
  st.items, st.index, st.tick, st.row, st.col, st.cycle = {}, 1, nil, nil, nil, nil
end

--- Hides the suggestion, cancels the request and the pending debounce.
function M.reset(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local st = states[bufnr]
  if not st then
    return
  end
  stop_timer(st)
  cancel(st)
  M.clear(bufnr)
end

local function current_item(bufnr)
  local st = states[bufnr]
  if not st or not st.extmark then
    return nil
  end
  return st.items[st.index], st
end

--- Whether a suggestion is shown in `bufnr` (for mappings and statuslines).
function M.visible(bufnr)
  return current_item(bufnr or api.nvim_get_current_buf()) ~= nil
end

--- The text that accepting now would insert at the cursor, or nil.
function M.suggestion(bufnr)
  local item = current_item(bufnr or api.nvim_get_current_buf())
  return item and item.ghost
end

-- virt_text shows a tab as "^I": expand tabs for display only.
local function display(text)
  if not text:find("\t", 1, true) then
    return text
  end
  return (text:gsub("\t", string.rep(" ", vim.bo.tabstop)))
end

local function draw(bufnr, st)
  undraw(bufnr, st)
  local item = st.items[st.index]
  if not item then
    return
  end
  local hl = require("codellama.config").options.hl_group
  local lines = vim.split(item.ghost, "\n", { plain = true })
  local opts = { hl_mode = "combine", priority = 200 }
  local counter = #st.items > 1 and (" (%d/%d)"):format(st.index, #st.items) or nil
  local first = display(lines[1])
  if first ~= "" or (counter and #lines == 1) then
    opts.virt_text = { { first, hl } }
    if counter and #lines == 1 then
      table.insert(opts.virt_text, { counter, "NonText" })
    end
    opts.virt_text_pos = "inline"
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { display(lines[i]), hl } })
    end
    if counter then
      table.insert(opts.virt_lines[#opts.virt_lines], { counter, "NonText" })
    end
  end
  local ok, id = pcall(api.nvim_buf_set_extmark, bufnr, M.ns, st.row, st.col, opts)
  st.extmark = ok and id or nil
end

--- Turns the server's items into ghost texts relative to the cursor (row, col).
--- An item whose range starts before the cursor replaces what was typed since then:
--- it is shown only if it begins with that text (as VS Code filters them).
local function normalize(bufnr, raw_items, encoding, row, col)
  local items = {}
  for _, raw in ipairs(raw_items or {}) do
    local text = raw.insertText
    if type(text) == "table" then
      text = text.value -- a snippet: shown and inserted as plain text
    end
    if type(text) == "string" then
      local srow, scol, erow, ecol = row, col, row, col
      if type(raw.range) == "table" then
        srow, scol = util.byte_position(bufnr, raw.range.start, encoding)
        erow, ecol = util.byte_position(bufnr, raw.range["end"], encoding)
      end
      local before_cursor = srow < row or (srow == row and scol <= col)
      local after_cursor = erow > row or (erow == row and ecol >= col)
      if before_cursor and after_cursor then
        local typed = table.concat(api.nvim_buf_get_text(bufnr, srow, scol, row, col, {}), "\n")
        if text:sub(1, #typed) == typed and #text > #typed then
          table.insert(items, { ghost = text:sub(#typed + 1), end_row = erow, end_col = ecol })
        end
      end
    end
  end
  return items
end

local function on_response(bufnr, st, req, err, result)
  if st.request ~= req then
    return -- superseded or cancelled
  end
  st.request = nil
  if err then
    -- Cancelled requests are normal while typing; other errors are shown once each
    -- (and not while the model is still starting: suggestions simply wait).
    local status = require("codellama.status").current
    local message = util.error_text(err)
    if err.code ~= REQUEST_CANCELLED and (not status or status.state == "ready") then
      if message ~= st.last_error then
        st.last_error = message
        util.notify("codellama: inline completion failed: " .. message, vim.log.levels.WARN)
      end
    end
    return
  end
  if not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr or not in_insert_mode() then
    return
  end
  local row, col = util.cursor()
  if api.nvim_buf_get_changedtick(bufnr) ~= req.tick or row ~= req.row or col ~= req.col then
    return -- stale: the user moved or typed on
  end
  if vim.fn.pumvisible() == 1 then
    return
  end
  local client = vim.lsp.get_client_by_id(req.client_id)
  if not client then
    return
  end
  local raw = result and (result.items or result) or {}
  local items = normalize(bufnr, raw, client.offset_encoding, row, col)
  local cycle = st.cycle
  local previous = st.items[st.index]
  M.clear(bufnr)
  if #items == 0 then
    return
  end
  st.items, st.tick, st.row, st.col = items, req.tick, row, col
  st.index = 1
  if cycle and previous then
    -- After next/previous: move from the item that was shown, if it came back.
    for i, item in ipairs(items) do
      if item.ghost == previous.ghost then
        st.index = ((i - 1 + cycle) % #items) + 1
        break
      end
    end
  end
  draw(bufnr, st)
end

--- Asks the server for suggestions at the cursor.
--- Our client for `bufnr` when suggestions are enabled there and it is the current buffer.
local function active_client(bufnr)
  if not M.is_enabled(bufnr) or api.nvim_get_current_buf() ~= bufnr then
    return nil
  end
  return util.client(bufnr)
end

--- The document and cursor position of a request, in the client's encoding.
local function cursor_params(bufnr, client, row, col)
  return {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = util.lsp_position(bufnr, row, col, client.offset_encoding),
  }
end

function M.request(bufnr, trigger)
  bufnr = bufnr or api.nvim_get_current_buf()
  local st = state(bufnr)
  stop_timer(st)
  local client = in_insert_mode() and active_client(bufnr)
  if not client then
    return
  end
  cancel(st)
  local row, col = util.cursor()
  local req = {
    client_id = client.id,
    tick = api.nvim_buf_get_changedtick(bufnr),
    row = row,
    col = col,
    trigger = trigger or TRIGGER_AUTOMATIC,
  }
  local params = cursor_params(bufnr, client, row, col)
  params.context = { triggerKind = req.trigger }
  st.request = req
  local ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    on_response(bufnr, st, req, err, result)
  end, bufnr)
  if ok and id then
    req.id = id
  elseif st.request == req then
    st.request = nil
  end
end

--- Handler of codellama/suggestionReady: the suggestion whose first words are shown is now
--- whole. If the buffer is still at that version with the cursor there, ask again (the server
--- answers from its cache at once).
function M.suggestion_ready(_, params, ctx)
  if type(params) ~= "table" or type(params.textDocument) ~= "table" or type(params.position) ~= "table" then
    return
  end
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  local client = ctx and vim.lsp.get_client_by_id(ctx.client_id)
  if not st or st.request or not client or not in_insert_mode() then
    return -- a request is already under way, or nothing is being typed here
  end
  if vim.uri_from_bufnr(bufnr) ~= params.textDocument.uri then
    return
  end
  if (vim.lsp.util.buf_versions[bufnr] or -1) ~= params.textDocument.version then
    return
  end
  local row, col = util.cursor()
  local here = util.lsp_position(bufnr, row, col, client.offset_encoding)
  if here.line ~= params.position.line or here.character ~= params.position.character then
    return
  end
  M.request(bufnr, TRIGGER_AUTOMATIC)
end

--- Tells the server where the cursor is, so it can prefill that prompt before the first
--- keystroke (on entering the buffer or Insert mode). Costs nothing when it is already cached.
function M.warmup(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local client = active_client(bufnr)
  if not client then
    return
  end
  local row, col = util.cursor()
  pcall(client.notify, client, "codellama/warmup", cursor_params(bufnr, client, row, col))
end

--- Restarts the debounce timer; the request goes out when typing pauses.
function M.schedule(bufnr)
  local st = state(bufnr)
  stop_timer(st)
  if not M.is_enabled(bufnr) then
    return
  end
  local timer = vim.uv.new_timer()
  st.timer = timer
  timer:start(
    require("codellama.config").options.debounce_ms,
    0,
    vim.schedule_wrap(function()
      if st.timer == timer then
        stop_timer(st)
        M.request(bufnr, TRIGGER_AUTOMATIC)
      end
    end)
  )
end

--- TextChangedI / CursorMovedI: our own insertions (partial accepts) keep the rest of
--- the suggestion; anything else hides it, cancels the request and waits for a pause.
local function on_edit(bufnr)
  local st = state(bufnr)
  local row, col = util.cursor()
  local tick = api.nvim_buf_get_changedtick(bufnr)
  if st.extmark and st.tick == tick and st.row == row and st.col == col then
    return
  end
  -- Typing what the suggestion says keeps the rest of it shown (no new request).
  if st.extmark and st.row == row and col > st.col then
    local typed = api.nvim_buf_get_text(bufnr, row, st.col, row, col, {})[1] or ""
    local kept = {}
    for _, item in ipairs(st.items) do
      if item.ghost:sub(1, #typed) == typed and #item.ghost > #typed then
        local end_col = item.end_row == row and item.end_col + #typed or item.end_col
        table.insert(kept, { ghost = item.ghost:sub(#typed + 1), end_row = item.end_row, end_col = end_col })
      end
    end
    if #kept > 0 then
      st.items, st.index = kept, math.min(st.index, #kept)
      st.tick, st.col = tick, col
      draw(bufnr, st)
      return
    end
  end
  local req = st.request
  if not st.extmark and req and req.tick == tick and req.row == row and req.col == col then
    return -- the request in flight is still for this spot
  end
  M.reset(bufnr)
  M.schedule(bufnr)
end

-- Breaks the undo sequence so that an accepted suggestion is undone by itself.
local function break_undo()
  vim.o.undolevels = vim.o.undolevels
end

--- Inserts `text` at the cursor, replacing up to (end_row, end_col); moves the cursor
--- after it. Returns the new cursor (0-based row, byte col).
local function insert(bufnr, row, col, text, end_row, end_col)
  local lines = vim.split(text, "\n", { plain = true })
  api.nvim_buf_set_text(bufnr, row, col, end_row or row, end_col or col, lines)
  local new_row = row + #lines - 1
  local new_col = #lines == 1 and col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { new_row + 1, new_col })
  return new_row, new_col
end

-- The first word of a ghost text: leading blanks plus a run of word characters
-- (bytes >= 0x80 count as word characters, so "é" stays whole) or of punctuation;
-- a leading line break is a word of its own, with the next line's indent.
local function first_word(text)
  if text:sub(1, 1) == "\n" then
    return text:match("^\n[ \t]*")
  end
  return text:match("^[ \t]*[%w_\128-\255]+") or text:match("^[ \t]*[^%w_\128-\255%s]+") or text:match("^%s+") or text
end

-- The rest of the current line, or the next line when the ghost starts with one.
local function first_line(text)
  if text:sub(1, 1) == "\n" then
    return text:match("^\n[^\n]*")
  end
  return text:match("^[^\n]*")
end

--- Accepts the shown suggestion: all of it, or its first word or line. Returns false
--- when nothing is shown.
function M.accept(kind)
  local bufnr = api.nvim_get_current_buf()
  local item, st = current_item(bufnr)
  if not item then
    return false
  end
  stop_timer(st)
  cancel(st)
  local row, col = util.cursor()
  local piece = item.ghost
  if kind == "word" then
    piece = first_word(item.ghost)
  elseif kind == "line" then
    piece = first_line(item.ghost)
  end
  if piece == "" then
    piece = item.ghost
  end
  break_undo()
  undraw(bufnr, st)
  if piece == item.ghost then
    M.clear(bufnr)
    local ok, e = pcall(insert, bufnr, row, col, piece, item.end_row, item.end_col)
    if not ok then
      util.notify("codellama: could not insert the suggestion: " .. tostring(e), vim.log.levels.ERROR)
    end
    return true
  end
  local ok, new_row, new_col = pcall(insert, bufnr, row, col, piece)
  if not ok then
    M.clear(bufnr)
    util.notify("codellama: could not insert the suggestion: " .. tostring(new_row), vim.log.levels.ERROR)
    return true
  end
  -- Keep the rest shown, anchored at the new cursor; the replaced range moved too.
  local piece_lines = vim.split(piece, "\n", { plain = true })
  local end_row, end_col = item.end_row, item.end_col
  if end_row == row then
    end_col = #piece_lines == 1 and end_col + #piece_lines[1] or end_col - col + #piece_lines[#piece_lines]
  end
  end_row = end_row + #piece_lines - 1
  st.items = { { ghost = item.ghost:sub(#piece + 1), end_row = end_row, end_col = end_col } }
  st.index = 1
  st.tick, st.row, st.col = api.nvim_buf_get_changedtick(bufnr), new_row, new_col
  draw(bufnr, st)
  return true
end

--- Hides the suggestion. Returns false when nothing was shown.
function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  local shown = M.visible(bufnr)
  M.reset(bufnr)
  return shown
end

--- Shows the next (step 1) or previous (-1) suggestion. The server answers automatic
--- requests with one item at most, so this asks again as an explicit (invoked)
--- request and moves through what comes back. Also requests when nothing is shown.
function M.cycle(step)
  local bufnr = api.nvim_get_current_buf()
  local st = state(bufnr)
  if st.extmark and #st.items > 1 then
    st.index = ((st.index - 1 + step) % #st.items) + 1
    draw(bufnr, st)
    return true
  end
  local keep = st.extmark and st.items[st.index]
  M.request(bufnr, TRIGGER_INVOKED)
  st.cycle = keep and step or nil
  return true
end

--- Buffer-local autocommands; called on LspAttach.
function M.attach(bufnr)
  local group = api.nvim_create_augroup("codellama.ghost." .. bufnr, { clear = true })
  local opts = require("codellama.config").options
  local function au(events, fn)
    api.nvim_create_autocmd(events, { group = group, buffer = bufnr, callback = fn })
  end
  au({ "TextChangedI", "CursorMovedI" }, function()
    on_edit(bufnr)
  end)
  au({ "BufEnter", "InsertEnter" }, function()
    vim.schedule(function()
      M.warmup(bufnr)
    end)
  end)
  if opts.trigger_on_insert_enter then
    au("InsertEnter", function()
      -- InsertEnter fires before the cursor moves into Insert mode: wait for it.
      vim.schedule(function()
        if api.nvim_get_current_buf() == bufnr then
          M.schedule(bufnr)
        end
      end)
    end)
  end
  au({ "InsertLeave", "BufLeave", "WinLeave", "TextChangedP", "CompleteChanged" }, function()
    M.reset(bufnr)
  end)
  au({ "BufUnload", "BufWipeout" }, function()
    M.detach(bufnr)
  end)
end

-- For tests: the buffer's internal state.
function M._state(bufnr)
  return states[bufnr]
end

function M.detach(bufnr)
  M.reset(bufnr)
  states[bufnr] = nil
  pcall(api.nvim_del_augroup_by_name, "codellama.ghost." .. bufnr)
end

return M
