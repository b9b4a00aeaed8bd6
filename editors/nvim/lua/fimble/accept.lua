-- Partial accept of the inline completion on screen: its next word, or its text up to the end of
-- its first line, like VS Code's Accept Next Word / Accept Next Line. Used as the on_accept of
-- vim.lsp.inline_completion.get().
local M = {}

--- The next word of `text`: leading whitespace, then a run of word characters or else a run of
--- punctuation. Word characters are letters, digits, `_` and, as in VS Code's default word
--- definition, every non-ASCII character (so a run never splits a UTF-8 character). Simpler than
--- VS Code's acceptNextWord, which follows the language's word definition and stops after a
--- leading whitespace run: here the leading whitespace, line breaks too, goes with the word. Text
--- that is only whitespace is one word.
---@param text string
---@return string
function M.next_word(text)
  return text:match("^%s*[%w_\128-\255]+") or text:match("^%s*[^%w_%s\128-\255]+") or text
end

--- `text` up to the end of its first line: with the line break when there is one, so the cursor
--- lands at the start of the next line.
---@param text string
---@return string
function M.through_line_end(text)
  local line_break = text:find("\n", 1, true)
  return line_break and text:sub(1, line_break) or text
end

--- The part of the suggestion Neovim shows at the cursor. An item with a range is text for the
--- range's start, and Neovim hides what was typed since then, up to the cursor. An item without a
--- range shows whole at the cursor.
---@param item vim.lsp.inline_completion.Item
---@param cursor integer[] (1-based row, 0-based byte column)
---@return string
local function text_after_cursor(item, cursor)
  local text = item.insert_text --[[@as string]]
  local range = item.range
  if not range then
    return text
  end
  local row, col = cursor[1] - 1, cursor[2]
  if row < range.start.row or (row == range.start.row and col < range.start.col) then
    return text
  end
  local typed = vim.api.nvim_buf_get_text(0, range.start.row, range.start.col, row, col, {})
  return text:sub(#table.concat(typed, "\n") + 1)
end

--- Inserts `text` at the cursor and moves the cursor to its end.
---@param text string
---@param cursor integer[]
local function insert_at_cursor(text, cursor)
  local row, col = cursor[1] - 1, cursor[2]
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(0, row, col, row, col, lines)
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + #lines, end_col })
end

--- Runs the item's command, as Neovim's own accept does after inserting the whole item.
---@param item vim.lsp.inline_completion.Item
local function run_command(item)
  if item.command then
    local client = assert(vim.lsp.get_client_by_id(item.client_id))
    client:exec_cmd(item.command, { bufnr = vim.api.nvim_get_current_buf() })
  end
end

--- An on_accept for vim.lsp.inline_completion.get() that inserts `part(text after the cursor)`.
--- The item's command (Fimble's acceptance record) runs only when that part is the whole rest of
--- the suggestion: the server tells a partial accept from the document change itself.
---@param part fun(text: string): string
---@return fun(item: vim.lsp.inline_completion.Item)
function M.on_accept(part)
  return function(item)
    if type(item.insert_text) ~= "string" then
      -- A snippet (Fimble sends none) has no plain text to split: expand it whole.
      vim.snippet.expand(item.insert_text.value)
      return run_command(item)
    end
    local cursor = vim.api.nvim_win_get_cursor(0)
    local rest = text_after_cursor(item, cursor)
    local accepted = part(rest)
    insert_at_cursor(accepted, cursor)
    if accepted == rest then
      run_command(item)
    end
  end
end

return M
