-- :checkhealth codellama
local M = {}

local health = vim.health

local function check_neovim()
  health.start("codellama: Neovim")
  local v = vim.version()
  local version = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  if vim.fn.has("nvim-0.11") == 1 then
    health.ok("Neovim " .. version)
  else
    health.error("Neovim " .. version .. " is too old", { "Neovim 0.11 or newer is needed (vim.lsp.config)" })
  end
  if vim.lsp.inline_completion then
    local native = require("codellama").uses_native()
    health.info(
      native and "Ghost text: Neovim's own inline completion (0.12+)"
        or "Ghost text: the plugin's extmarks (native = false)"
    )
  else
    health.info("Ghost text: the plugin's extmarks (Neovim 0.11 has no vim.lsp.inline_completion)")
  end
end

local function check_binary(opts)
  health.start("codellama: server binary")
  local cmd = opts.cmd
  if type(cmd) ~= "table" or type(cmd[1]) ~= "string" then
    health.info("cmd is a function: cannot check the binary")
    return
  end
  local exe = vim.fn.exepath(cmd[1])
  if exe == "" then
    health.error(("`%s` not found or not executable"):format(cmd[1]), {
      "Install it from the repository with `cargo install --path .` (puts codellama-lsp on ~/.cargo/bin)",
      "or set cmd = { '/path/to/codellama-lsp' } in require('codellama').setup()",
    })
    return
  end
  local ok, out = pcall(function()
    return vim.system({ exe, "--version" }, { text = true }):wait(5000)
  end)
  if ok and out.code == 0 then
    health.ok(("%s: %s"):format(exe, vim.trim(out.stdout or "")))
  else
    health.warn(("%s --version failed: %s"):format(exe, ok and vim.trim(out.stderr or "") or tostring(out)), {
      "Rebuild or reinstall it: `cargo install --path .`",
    })
  end
end

local function advice_for(status)
  local msg = (status.message or ""):lower()
  local advice = {}
  if msg:find("download") or msg:find("offline") or msg:find("network") then
    table.insert(advice, "Download the model with network access once, or set settings.model to a local GGUF file")
  end
  table.insert(
    advice,
    "Set settings.model to a GGUF file (a path or owner/repo:file.gguf) in require('codellama').setup()"
  )
  table.insert(advice, "See :LspLog for the server's log")
  return advice
end

local function check_server()
  health.start("codellama: server")
  local util = require("codellama.util")
  local clients = vim.lsp.get_clients({ name = util.name })
  if #clients == 0 then
    local enabled = vim.lsp.is_enabled and vim.lsp.is_enabled(util.name)
    health.warn("No codellama server is running", {
      enabled and "Open a file of one of the configured filetypes to start it"
        or "Call require('codellama').setup() in your config",
    })
    return
  end
  local client = clients[1]
  local attached = vim.tbl_keys(client.attached_buffers or {})
  health.ok(
    ("Client %d running (%s %s), attached to %d buffer(s)"):format(
      client.id,
      client.server_info and client.server_info.name or "codellama-lsp",
      client.server_info and client.server_info.version or "",
      #attached
    )
  )
  if client.server_capabilities and client.server_capabilities.inlineCompletionProvider then
    health.ok("The server offers inline completions")
  else
    health.warn("The server does not advertise inlineCompletionProvider", { "Update codellama-lsp" })
  end
  health.info("Position encoding: " .. tostring(client.offset_encoding))

  local response, err = client:request_sync("codellama/status", {}, 2000)
  local status
  if response and not response.err and type(response.result) == "table" then
    status = response.result
    require("codellama.status").update(status)
  else
    status = require("codellama.status").current
    health.warn(
      "codellama/status did not answer: " .. tostring(err or (response and response.err and response.err.message)),
      { "Update codellama-lsp (older versions lack codellama/status)" }
    )
  end
  if not status then
    return
  end
  if status.encoding and status.encoding ~= client.offset_encoding then
    health.error(
      ("The server uses %s positions but the client %s"):format(status.encoding, tostring(client.offset_encoding)),
      { "Report this as a bug" }
    )
  end
  if status.state == "ready" then
    health.ok(("Model ready: %s"):format(status.model or "?"))
    if status.infill == false then
      health.warn("This model cannot fill in the middle: no inline completions", {
        "Use a Code Llama base or Instruct 7B/13B GGUF (they have infilling tokens)",
      })
    end
  elseif status.state == "error" then
    health.error("Model error: " .. (status.message or ""), advice_for(status))
  elseif status.state == "downloading" then
    health.info(("Downloading the model: %s"):format(status.message or ""))
  else
    health.info(("Model %s: %s"):format(status.state, status.message or ""))
  end
end

function M.check()
  local opts = require("codellama.config").options
  check_neovim()
  check_binary(opts)
  check_server()
end

return M
