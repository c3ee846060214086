#!/usr/bin/env bash
# Lints the Neovim plugin: formatting (stylua) and static checks (luacheck).
# Install: npm install -g @johnnymorganz/stylua-bin   and   apt-get install -y lua-check
set -euo pipefail
cd "$(dirname "$0")"
stylua --version
stylua --check lua tests
luacheck --version | head -n1
luacheck --no-color lua tests
