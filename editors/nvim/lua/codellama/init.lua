-- codellama.nvim: the Neovim client of codellama-lsp. The server decides; this
-- plugin registers it, shows its suggestions and exposes its commands.
local config = require("codellama.config")
local util = require("codellama.util")

local api = vim.api
local M = {}

local did_setup = false

--- Whether Neovim's own inline completion (0.12+) does the ghost text.
function M.uses_native()
  return config.options.native and vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

local function lsp_config()
  local opts = config.options
  local settings = config.server_settings()
  local cfg = {
    cmd = opts.cmd,
    cmd_env = opts.cmd_env,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    -- Without a root marker Neovim starts the server on the file alone.
    workspace_required = false,
    -- nil rather than {}: an empty Lua table goes out as a JSON array, which the server
    -- refuses as settings.
    init_options = next(settings) and settings or nil,
    -- The statusline and vim.notify show codellama/status, so the server skips its "ready" pop-up.
    -- Ghost text asks again on codellama/suggestionReady, so the server may answer typing with a
    -- suggestion's first words and tell us when the whole of it is ready.
    capabilities = vim.tbl_deep_extend(
      "force",
      vim.lsp.protocol.make_client_capabilities(),
      { experimental = { codellamaStatus = true, codellamaSuggestionRefresh = true } }
    ),
    -- Answers workspace/configuration and is sent as didChangeConfiguration after
    -- initialize (Neovim does that when settings are not empty).
    settings = next(settings) and { codellama = settings } or nil,
    handlers = {
      -- Looked up on each call, so that a reloaded module (or a test) takes effect.
      ["codellama/status"] = function(...)
        return require("codellama.status").handler(...)
      end,
      ["codellama/chatStream"] = function(...)
        return require("codellama.commands").chat_stream_handler(...)
      end,
      ["codellama/suggestionReady"] = function(...)
        return require("codellama.ghost").suggestion_ready(...)
      end,
      ["window/showMessage"] = function(...)
        return require("codellama.status").show_message_handler(...)
      end,
    },
  }
  return vim.tbl_deep_extend("force", cfg, opts.lsp or {})
end

local function define_highlights()
  local hl = config.options.hl_group
  api.nvim_set_hl(0, hl, { link = "Comment", default = true })
end

--- The codellama client of an LspAttach/LspDetach event, or nil for another server's.
local function event_client(args)
  local client = vim.lsp.get_client_by_id(args.data.client_id)
  if client and client.name == util.name then
    return client
  end
end

local function on_attach(args)
  local client = event_client(args)
  if not client then
    return
  end
  local bufnr = args.buf
  if M.uses_native() then
    require("codellama.keys").attach_native(bufnr, client)
  else
    require("codellama.ghost").attach(bufnr)
    vim.schedule(function()
      require("codellama.ghost").warmup(bufnr)
    end)
    require("codellama.keys").attach(bufnr)
  end
  -- Ask for the state once: notifications only tell of changes after this point.
  client:request("codellama/status", {}, function(err, result)
    if not err then
      require("codellama.status").update(result)
    end
  end, bufnr)
end

local function on_detach(args)
  if not event_client(args) then
    return
  end
  require("codellama.ghost").detach(args.buf)
end

--- Sends the current settings to running servers (after setup() was called again).
local function push_settings()
  local settings = config.server_settings()
  for _, client in ipairs(vim.lsp.get_clients({ name = util.name })) do
    client.settings = { codellama = settings }
    client:notify("workspace/didChangeConfiguration", { settings = { codellama = settings } })
  end
end

--- Sets the plugin up; safe to call again (new settings reach running servers).
---@param opts? table see README.md / lua/codellama/config.lua
function M.setup(opts)
  if vim.fn.has("nvim-0.11") ~= 1 then
    vim.notify("codellama: Neovim 0.11 or newer is needed", vim.log.levels.ERROR)
    return
  end
  local old_settings = did_setup and vim.deepcopy(config.server_settings()) or nil
  config.set(opts)
  define_highlights()
  vim.lsp.config(util.name, lsp_config())

  if not did_setup then
    did_setup = true
    local group = api.nvim_create_augroup("codellama", { clear = true })
    api.nvim_create_autocmd("LspAttach", { group = group, callback = on_attach })
    api.nvim_create_autocmd("LspDetach", { group = group, callback = on_detach })
    api.nvim_create_autocmd("ColorScheme", { group = group, callback = define_highlights })
    api.nvim_create_autocmd("LspDetach", {
      group = group,
      callback = function()
        vim.schedule(function()
          if not util.any_client() then
            require("codellama.status").reset()
          end
        end)
      end,
    })
    local commands = require("codellama.commands")
    commands.create_user_commands()
    commands.register_lsp_commands()
  elseif not vim.deep_equal(old_settings, config.server_settings()) then
    push_settings()
  end
  vim.lsp.enable(util.name)
end

--- Statusline component: "🦙 ready <model>", "🦙 downloading 42%", "🦙 loading",
--- "🦙 error"; "" when no codellama server runs.
function M.status()
  return require("codellama.status").text()
end

--- The last codellama/status object from the server (nil before the first).
function M.status_object()
  return require("codellama.status").current
end

-- Actions, for users who map them themselves.
function M.accept()
  return require("codellama.ghost").accept("all")
end
function M.accept_word()
  return require("codellama.ghost").accept("word")
end
function M.accept_line()
  return require("codellama.ghost").accept("line")
end
function M.dismiss()
  return require("codellama.ghost").dismiss()
end
function M.next()
  return require("codellama.ghost").cycle(1)
end
function M.prev()
  return require("codellama.ghost").cycle(-1)
end
function M.visible()
  return require("codellama.ghost").visible()
end

return M
