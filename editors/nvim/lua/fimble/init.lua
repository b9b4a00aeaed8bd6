-- Fimble for Neovim 0.12: starts `fimble lsp` through vim.lsp.config / vim.lsp.enable (defaults in
-- lsp/fimble.lua on the same runtimepath) and shows its completions with vim.lsp.inline_completion.
-- The chat commands (:FimbleChat and friends) live in fimble.chat.
local M = {}

---@class fimble.Opts
---@field cmd? string[] The server command (default: { "fimble", "lsp" }).
---@field settings? table Server settings: enable, multiLine, abstainBelowLogprob, maxDebounceMs.
---@field filetypes? string[] Filetypes to complete in (default: all).
---@field accept_key? string|false Insert-mode key that accepts a visible suggestion (default: "<Tab>").
---@field accept_word_key? string|false Insert-mode key that accepts the suggestion's next word (default: none).
---@field accept_line_key? string|false Insert-mode key that accepts the suggestion through its first line break (default: none).

-- get() accepts the suggestion on screen (through on_accept, else Neovim's own accept, which
-- inserts it all and runs its command) and returns false when there is none: then the key does
-- what it did before.
---@param key string
---@param desc string
---@param on_accept? fun(item: vim.lsp.inline_completion.Item)
local function map_accept(key, desc, on_accept)
  vim.keymap.set("i", key, function()
    if not vim.lsp.inline_completion.get({ on_accept = on_accept }) then
      return key
    end
  end, { expr = true, desc = desc })
end

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
    map_accept(key, "Fimble: accept the inline completion")
  end
  local accept = require("fimble.accept")
  if opts.accept_word_key then
    local desc = "Fimble: accept the next word of the inline completion"
    map_accept(opts.accept_word_key, desc, accept.on_accept(accept.next_word))
  end
  if opts.accept_line_key then
    local desc = "Fimble: accept the inline completion up to the end of its first line"
    map_accept(opts.accept_line_key, desc, accept.on_accept(accept.through_line_end))
  end
end

return M
