-- Small helpers shared by the modules: the client, positions, messages.
local M = {}

M.name = "codellama"

--- The codellama client attached to `bufnr` (default: current buffer), or nil.
function M.client(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  return vim.lsp.get_clients({ bufnr = bufnr, name = M.name })[1]
end

--- Any running codellama client (for status and health, which are not per buffer).
function M.any_client()
  return vim.lsp.get_clients({ name = M.name })[1]
end

--- vim.notify with the plugin's title, safe to call from any context.
function M.notify(msg, level)
  level = level or vim.log.levels.INFO
  vim.schedule(function()
    vim.notify(msg, level, { title = "codellama" })
  end)
end

--- An LSP position for a 0-based row and byte column in `bufnr`.
function M.lsp_position(bufnr, row, col, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  col = math.min(col, #line)
  local character = col
  if encoding ~= "utf-8" then
    character = vim.str_utfindex(line, encoding or "utf-16", col, false)
  end
  return { line = row, character = character }
end

--- The 0-based row and byte column of an LSP position in `bufnr`.
function M.byte_position(bufnr, pos, encoding)
  local row = pos.line
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1]
  if not line then
    -- Past the last line: the end of the buffer.
    local last = vim.api.nvim_buf_line_count(bufnr) - 1
    local text = vim.api.nvim_buf_get_lines(bufnr, last, last + 1, false)[1] or ""
    return last, #text
  end
  if encoding == "utf-8" then
    return row, math.min(pos.character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, encoding or "utf-16", pos.character, false)
  return row, ok and col or #line
end

--- The cursor of the current window as 0-based row and byte column.
function M.cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

--- `range` given by a command (line numbers) or the last visual selection, as an LSP
--- range. Charwise when the command came from a charwise visual selection.
function M.command_range(bufnr, line1, line2, encoding)
  local vstart = vim.api.nvim_buf_get_mark(bufnr, "<")
  local vend = vim.api.nvim_buf_get_mark(bufnr, ">")
  if vim.fn.visualmode() == "v" and vstart[1] == line1 and vend[1] == line2 then
    -- '> points at the last selected byte: include that whole character.
    local last = vim.api.nvim_buf_get_lines(bufnr, vend[1] - 1, vend[1], false)[1] or ""
    local end_col = math.min(vend[2], #last)
    if end_col < #last then
      end_col = end_col + #vim.fn.strcharpart(last:sub(end_col + 1), 0, 1)
    end
    return {
      start = M.lsp_position(bufnr, vstart[1] - 1, vstart[2], encoding),
      ["end"] = M.lsp_position(bufnr, vend[1] - 1, end_col, encoding),
    }
  end
  local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, false)[1] or ""
  return {
    start = { line = line1 - 1, character = 0 },
    ["end"] = M.lsp_position(bufnr, line2 - 1, #last, encoding),
  }
end

--- An LSP error as one line.
function M.error_text(err)
  if type(err) == "table" then
    return err.message or vim.inspect(err)
  end
  return tostring(err)
end

--- Sends workspace/executeCommand directly to the server. (client:exec_cmd would first
--- look in vim.lsp.commands, where this plugin registers client-side handlers for
--- some of the same command names.)
function M.execute(client, bufnr, command, args, on_result)
  return client:request("workspace/executeCommand", {
    command = command,
    arguments = { args },
  }, function(err, result)
    if err then
      M.notify(("%s failed: %s"):format(command, M.error_text(err)), vim.log.levels.ERROR)
      return
    end
    if on_result then
      on_result(result)
    end
  end, bufnr)
end

return M
