-- The model's state as the server reports it (codellama/status), for the statusline,
-- :checkhealth and notifications.
local util = require("codellama.util")

local M = {}

-- The last Status object from the server (nil until the first one arrives).
M.current = nil

local icon = "🦙"

-- The server also says "ready" and "failed" with window/showMessage. Each piece of news
-- is told once, whichever comes first: the server's message or the status.
local recent_messages = {} -- texts of the server's last few shown messages

local function already_shown(text)
  if not text or text == "" then
    return false
  end
  for _, shown in ipairs(recent_messages) do
    if shown:find(text, 1, true) then
      return true
    end
  end
  return false
end

--- Remembers a Status and tells the user about changes that matter (ready, error),
--- once per change: downloads report progress several times a second.
function M.update(status)
  if type(status) ~= "table" or type(status.state) ~= "string" then
    return
  end
  local previous = M.current
  M.current = status
  local opts = require("codellama.config").options
  local changed = not previous
    or previous.state ~= status.state
    or previous.model ~= status.model
    or (status.state == "error" and previous.message ~= status.message)
  local message = type(status.message) == "string" and status.message or nil
  if opts.notify and changed and not already_shown(message) then
    if status.state == "ready" then
      local text = "codellama: " .. (message or ((status.model or "the model") .. " is ready"))
      util.notify(text, status.infill == false and vim.log.levels.WARN or vim.log.levels.INFO)
    elseif status.state == "error" then
      util.notify("codellama: " .. (message or "error"), vim.log.levels.ERROR)
    end
  end
  vim.schedule(function()
    vim.api.nvim_exec_autocmds("User", { pattern = "CodellamaStatus", modeline = false })
    vim.cmd.redrawstatus({ bang = true })
  end)
end

--- Whether a window/showMessage from the server only repeats what a status
--- notification already told (model ready, loaded with a problem, failed to load).
function M.is_duplicate_message(params)
  local s = M.current
  if not s or not require("codellama.config").options.notify or type(params) ~= "table" then
    return false
  end
  local text = type(params.message) == "string" and params.message or ""
  if s.state ~= "ready" and s.state ~= "error" then
    return false
  end
  return (type(s.message) == "string" and s.message ~= "" and text:find(s.message, 1, true) ~= nil)
    or text:match("^codellama%-lsp: loaded .*, but ") ~= nil
end

--- window/showMessage for the codellama client: Neovim's default, less duplicates.
function M.show_message_handler(err, params, ctx, cfg)
  if M.is_duplicate_message(params) then
    return
  end
  if type(params) == "table" and type(params.message) == "string" then
    table.insert(recent_messages, params.message)
    if #recent_messages > 5 then
      table.remove(recent_messages, 1)
    end
  end
  return vim.lsp.handlers["window/showMessage"](err, params, ctx, cfg)
end

--- The `codellama/status` notification handler (for vim.lsp.config handlers).
function M.handler(_, result)
  M.update(result)
end

--- Forgets the state when the last client stops.
function M.reset()
  M.current = nil
end

--- A short statusline string: "🦙 ready CodeLlama-7b", "🦙 downloading 42%",
--- "🦙 loading", "🦙 error"; "" when no codellama server runs.
function M.text()
  if not util.any_client() then
    return ""
  end
  local s = M.current
  if not s then
    return icon .. " starting"
  end
  if s.state == "ready" then
    return type(s.model) == "string" and ("%s ready %s"):format(icon, vim.fn.fnamemodify(s.model, ":t"))
      or (icon .. " ready")
  elseif s.state == "downloading" then
    if type(s.percent) == "number" then
      return ("%s downloading %d%%"):format(icon, s.percent)
    end
    return icon .. " downloading"
  end
  return icon .. " " .. s.state
end

return M
