-- The chat buffer: one Markdown scratch buffer per Neovim, shown in a split. Turns are "## You" and
-- "## Fimble" sections; the answer streams onto the end of the buffer.
local M = {}

local NAME = "fimble://chat"
local bufnr = nil ---@type integer?

---@return integer
function M.buffer()
  if bufnr and vim.api.nvim_buf_is_valid(bufnr) then
    return bufnr
  end
  bufnr = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_name(bufnr, NAME)
  -- buftype=nofile also keeps vim.lsp.enable from attaching the server to the chat itself.
  vim.bo[bufnr].buftype = "nofile"
  vim.bo[bufnr].bufhidden = "hide"
  vim.bo[bufnr].swapfile = false
  vim.bo[bufnr].filetype = "markdown"
  return bufnr
end

---@return boolean
function M.is_chat(buf)
  return bufnr ~= nil and buf == bufnr
end

--- Shows the chat buffer in a window (a split to the right when no window shows it) and returns
--- that window; the current window stays where it is unless `focus`.
---@param focus? boolean
---@return integer
function M.show(focus)
  local buf = M.buffer()
  local win = vim.fn.bufwinid(buf)
  if win == -1 then
    local from = vim.api.nvim_get_current_win()
    vim.cmd("botright vsplit")
    win = vim.api.nvim_get_current_win()
    vim.api.nvim_win_set_buf(win, buf)
    vim.wo[win].wrap = true
    vim.wo[win].linebreak = true
    vim.wo[win].conceallevel = 2
    vim.wo[win].number = false
    vim.wo[win].relativenumber = false
    vim.wo[win].signcolumn = "no"
    if not focus then
      vim.api.nvim_set_current_win(from)
    end
  elseif focus then
    vim.api.nvim_set_current_win(win)
  end
  return win
end

--- Windows on the chat whose cursor is on the last line follow the text as it grows.
local function follow(before_count, fn)
  local buf = M.buffer()
  local following = {}
  for _, win in ipairs(vim.fn.win_findbuf(buf)) do
    if vim.api.nvim_win_get_cursor(win)[1] >= before_count then
      table.insert(following, win)
    end
  end
  fn()
  local count = vim.api.nvim_buf_line_count(buf)
  for _, win in ipairs(following) do
    vim.api.nvim_win_set_cursor(win, { count, 0 })
  end
end

local function is_empty()
  local buf = M.buffer()
  return vim.api.nvim_buf_line_count(buf) == 1 and vim.api.nvim_buf_get_lines(buf, 0, 1, true)[1] == ""
end

function M.clear()
  vim.api.nvim_buf_set_lines(M.buffer(), 0, -1, true, {})
end

--- Appends whole lines (the first replaces the buffer's only, empty line).
---@param lines string[]
function M.append_lines(lines)
  local buf = M.buffer()
  local count = vim.api.nvim_buf_line_count(buf)
  follow(count, function()
    if is_empty() then
      vim.api.nvim_buf_set_lines(buf, 0, -1, true, lines)
    else
      vim.api.nvim_buf_set_lines(buf, -1, -1, true, lines)
    end
  end)
end

--- Appends streamed text to the end of the last line; "\n" in it starts new lines.
---@param text string
function M.append_text(text)
  local buf = M.buffer()
  local count = vim.api.nvim_buf_line_count(buf)
  local last = vim.api.nvim_buf_get_lines(buf, count - 1, count, true)[1]
  follow(count, function()
    vim.api.nvim_buf_set_lines(buf, count - 1, count, true, vim.split(last .. text, "\n", { plain = true }))
  end)
end

--- Starts a turn: the heading and its text, then an empty line to stream the next part into.
--- Returns the 0-based row where the text after the heading begins.
---@param heading string
---@param lines string[]
---@return integer
function M.start_turn(heading, lines)
  local turn = is_empty() and {} or { "" }
  vim.list_extend(turn, { "## " .. heading, "" })
  vim.list_extend(turn, lines)
  M.append_lines(turn)
  return vim.api.nvim_buf_line_count(M.buffer()) - #lines
end

--- Replaces everything from `row` (0-based) to the end with `text`.
---@param row integer
---@param text string
function M.replace_from(row, text)
  local buf = M.buffer()
  follow(vim.api.nvim_buf_line_count(buf), function()
    vim.api.nvim_buf_set_lines(buf, row, -1, false, vim.split(text, "\n", { plain = true }))
  end)
end

---@return string[]
function M.lines()
  return vim.api.nvim_buf_get_lines(M.buffer(), 0, -1, true)
end

return M
