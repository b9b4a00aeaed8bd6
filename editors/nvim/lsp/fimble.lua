-- Fimble's LSP server: local AI code completion, shown as inline (ghost text) completions.
-- Without the plugin, copy this file to ~/.config/nvim/lsp/fimble.lua and add to your init.lua:
--   vim.lsp.enable("fimble")
--   vim.lsp.inline_completion.enable()
---@type vim.lsp.Config
return {
  cmd = { "fimble", "lsp" },
  -- No `filetypes`: Fimble completes any file. One server per project root.
  root_markers = { ".git" },
  -- Server settings: enable, multiLine, abstainBelowLogprob, maxDebounceMs; a key left out keeps the
  -- server's default. For example:
  -- init_options = { multiLine = false, maxDebounceMs = 60 },
}
