-- luacheck configuration for the Neovim plugin (LuaJIT, Neovim's `vim` global).
std = "luajit"
globals = { "vim" }
max_line_length = 120
-- Callbacks often ignore leading arguments (err, result, ctx).
unused_args = false
exclude_files = { ".luarocks", "lua_modules" }
