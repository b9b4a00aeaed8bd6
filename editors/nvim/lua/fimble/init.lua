-- Fimble for Neovim 0.12: starts `fimble lsp` through vim.lsp.config / vim.lsp.enable (defaults in
-- lsp/fimble.lua on the same runtimepath) and shows its completions with vim.lsp.inline_completion.
-- The chat commands (:FimbleChat and friends) live in fimble.chat.
local M = {}

---@class fimble.Opts
---@field cmd? string[] The server command (default: { "fimble", "lsp" }).
---@field settings? table Server settings: enable, multiLine, abstainBelowLogprob, maxDebounceMs.
---@field filetypes? string[] Filetypes to complete in (default: all).
---@field accept_key? string|false Insert-mode key that accepts a visible suggestion (default: "<Tab>").

---@param opts? fimble.Opts
function M.setup(opts)
  opts = opts or {}
  local settings = opts.settings or {}
  if next(settings) == nil then
    settings = vim.empty_dict() -- an empty Lua table goes out as [], which the server refuses
  end
  vim.lsp.config("fimble", {
    cmd = opts.cmd,
    filetypes = opts.filetypes,
    -- The server reads its settings at initialize and from workspace/didChangeConfiguration.
    init_options = settings,
    settings = { fimble = settings },
    -- The chat's notifications: answer pieces and the chat code actions.
    handlers = require("fimble.chat").handlers,
  })
  vim.lsp.enable("fimble")
  vim.lsp.inline_completion.enable()
  require("fimble.chat").create_commands()

  local key = opts.accept_key == nil and "<Tab>" or opts.accept_key
  if key then
    -- get() accepts the suggestion on screen and returns false when there is none: then the key
    -- does what it did before.
    vim.keymap.set("i", key, function()
      if not vim.lsp.inline_completion.get() then
        return key
      end
    end, { expr = true, desc = "Fimble: accept the inline completion" })
  end
end

return M
