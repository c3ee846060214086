-- Insert-mode keys. Each one acts on the suggestion when one is shown and otherwise
-- does exactly what it did before: the mapping it had (captured when the buffer
-- attaches) or the key itself.
local api = vim.api
local M = {}

-- bufnr -> lhs -> the mapping that lhs had before this plugin mapped it.
local captured = {}

local function termcodes(keys)
  -- do_lt: maparg() gives "<" as "<lt>".
  return api.nvim_replace_termcodes(keys, true, true, true)
end

--- Runs a mapping captured with maparg(lhs, "i", false, true), or types `lhs` itself.
--- Keys go to the front of the typeahead ("i"), so they keep their place among keys
--- typed after this one.
local function make_fallback(lhs, previous)
  if type(previous) ~= "table" or vim.tbl_isempty(previous) then
    return function()
      api.nvim_feedkeys(termcodes(lhs), "in", false)
    end
  end
  local remap = previous.noremap ~= 1
  return function()
    local keys
    if previous.callback then
      local ok, result = pcall(previous.callback)
      if not ok then
        vim.notify(tostring(result), vim.log.levels.ERROR)
        return
      end
      if previous.expr ~= 1 or type(result) ~= "string" then
        return
      end
      keys = previous.replace_keycodes == 1 and termcodes(result) or result
    elseif previous.expr == 1 then
      local ok, result = pcall(vim.fn.eval, previous.rhs)
      if not ok or type(result) ~= "string" then
        return
      end
      keys = result
    else
      keys = termcodes(previous.rhs or "")
    end
    -- A remappable rhs that starts with lhs would loop back here, as Vim itself
    -- avoids: feed it without remapping then.
    local self_ref = keys:sub(1, #termcodes(lhs)) == termcodes(lhs)
    api.nvim_feedkeys(keys, (remap and not self_ref) and "im" or "in", false)
  end
end

---@param bufnr integer
---@param lhs string|false|nil
---@param action fun(): boolean  true when it handled the key
---@param desc string
local function map(bufnr, lhs, action, desc)
  if not lhs or lhs == "" then
    return
  end
  -- On a second attach (server restart) the mapping found is our own: keep the one
  -- captured the first time instead of calling ourselves.
  captured[bufnr] = captured[bufnr] or {}
  local previous = vim.fn.maparg(lhs, "i", false, true)
  if type(previous.desc) == "string" and previous.desc:match("^codellama: ") then
    previous = captured[bufnr][lhs] or {}
  end
  captured[bufnr][lhs] = previous
  local fallback = make_fallback(lhs, previous)
  vim.keymap.set("i", lhs, function()
    local ok, handled = pcall(action)
    if not ok then
      vim.notify("codellama: " .. tostring(handled), vim.log.levels.ERROR)
    end
    if not (ok and handled) then
      fallback()
    end
  end, { buffer = bufnr, desc = "codellama: " .. desc, silent = true })
end

--- Maps the configured keys in `bufnr` for the plugin's own ghost text (0.11 path).
function M.attach(bufnr)
  local ghost = require("codellama.ghost")
  local keys = require("codellama.config").options.keys
  map(bufnr, keys.accept, function()
    return ghost.accept("all")
  end, "accept suggestion")
  map(bufnr, keys.accept_word, function()
    return ghost.accept("word")
  end, "accept next word of suggestion")
  map(bufnr, keys.accept_line, function()
    return ghost.accept("line")
  end, "accept next line of suggestion")
  map(bufnr, keys.dismiss, function()
    return ghost.dismiss()
  end, "dismiss suggestion")
  map(bufnr, keys.next, function()
    return ghost.cycle(1)
  end, "next suggestion")
  map(bufnr, keys.prev, function()
    return ghost.cycle(-1)
  end, "previous suggestion")
end

--- Neovim 0.12+: the native inline completion draws and accepts; only the keys are
--- ours. Kept small on purpose.
function M.attach_native(bufnr, client)
  local ic = vim.lsp.inline_completion
  pcall(ic.enable, true, { bufnr = bufnr, client_id = client.id })
  local keys = require("codellama.config").options.keys
  map(bufnr, keys.accept, function()
    return ic.get({ bufnr = bufnr }) == true
  end, "accept suggestion")
  local select = ic.select or ic.jump
  if select then
    map(bufnr, keys.next, function()
      select({ bufnr = bufnr, count = 1 })
      return true
    end, "next suggestion")
    map(bufnr, keys.prev, function()
      select({ bufnr = bufnr, count = -1 })
      return true
    end, "previous suggestion")
  end
end

return M
