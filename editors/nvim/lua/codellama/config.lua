-- Options of require("codellama").setup() and their defaults.
local M = {}

M.defaults = {
  -- The server command; the first word must be an executable.
  cmd = { "codellama-lsp" },
  filetypes = {
    "python",
    "rust",
    "lua",
    "go",
    "javascript",
    "javascriptreact",
    "typescript",
    "typescriptreact",
    "c",
    "cpp",
    "java",
  },
  -- The workspace root is the nearest folder holding one of these; without one the
  -- server still runs on the single file.
  root_markers = { ".git", ".hg", ".jj", ".svn" },
  -- The server's own settings (model, device, kvType, maxTokens, contextTokens, temperature,
  -- fimOrder, prefixShare, deadlineMs, firstAnswerMs, workspaceContext, backend, tokenizer).
  -- Only keys set here are sent, so the server's defaults apply to the rest.
  settings = {},
  -- Extra environment for the server process (e.g. { HF_HUB_OFFLINE = "1" }).
  cmd_env = nil,
  -- Ghost text: wait this long after the last keystroke before asking the server.
  debounce_ms = 150,
  -- Ask for a suggestion on entering Insert mode too (not only while typing).
  trigger_on_insert_enter = true,
  -- Insert-mode keys; set one to false to leave that key alone. Each key does its
  -- normal job (or runs the mapping it had before) when no suggestion is shown.
  keys = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-Down>",
    dismiss = "<C-]>",
    next = "<M-]>",
    prev = "<M-[>",
  },
  -- Highlight group of the ghost text (linked to Comment unless defined by the user).
  hl_group = "CodellamaSuggestion",
  -- vim.notify() when the model becomes ready or fails (once per change).
  notify = true,
  -- Use Neovim's own inline completion (0.12+) when it exists; false forces the
  -- plugin's ghost text (the only choice on 0.11).
  native = true,
  -- Merged into the vim.lsp.config('codellama', ...) table as is (capabilities,
  -- on_attach, handlers, ...). For special needs; most users leave it empty.
  lsp = {},
}

M.options = vim.deepcopy(M.defaults)

--- Merges user options over the defaults. Lists (cmd, filetypes, root_markers) are
--- replaced, not merged.
function M.set(opts)
  opts = opts or {}
  local merged = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts)
  for _, list in ipairs({ "cmd", "filetypes", "root_markers" }) do
    if opts[list] ~= nil then
      merged[list] = opts[list]
    end
  end
  -- Keys: false disables one key; a table merges over the default keys.
  merged.keys = vim.tbl_extend("force", vim.deepcopy(M.defaults.keys), opts.keys or {})
  M.options = merged
  return merged
end

--- The server settings without null-like values, so that the server's defaults apply.
function M.server_settings()
  local out = {}
  for k, v in pairs(M.options.settings or {}) do
    if v ~= nil and v ~= vim.NIL then
      out[k] = v
    end
  end
  return out
end

return M
