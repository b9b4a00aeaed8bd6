-- Fimble's LSP server: local AI code completion, shown as inline (ghost text) completions.
-- Without the plugin, copy this file to ~/.config/nvim/lsp/fimble.lua and add to your init.lua:
--   vim.lsp.enable("fimble")
--   vim.lsp.inline_completion.enable()
---@type vim.lsp.Config
return {
  cmd = { "fimble", "lsp" },
  -- No `filetypes`: Fimble completes any file. One server per project root.
  root_markers = { ".git" },
  -- Server settings (all optional; the server has defaults), for example:
  -- init_options = { enable = true, multiLine = true, abstainBelowLogprob = vim.NIL, maxDebounceMs = 120 },
}
