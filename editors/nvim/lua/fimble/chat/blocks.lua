-- Fenced code blocks (``` or ~~~) in the lines of a Markdown buffer.
local M = {}

---@class fimble.CodeBlock
---@field first integer 1-based line of the opening fence
---@field last integer 1-based line of the closing fence (the last line when the block is unclosed)
---@field lang string
---@field code string the lines between the fences, joined with "\n"

---@param lines string[]
---@return fimble.CodeBlock[]
function M.find(lines)
  local blocks, open = {}, nil
  for i, line in ipairs(lines) do
    local indent, fence, info = line:match("^(%s*)([`~][`~][`~]+)%s*(.-)%s*$")
    if fence and fence:sub(1, 1):rep(#fence) ~= fence then
      fence = nil -- a mix such as ``~ is no fence
    end
    if open == nil and fence then
      open = { first = i, fence = fence, indent = #indent, lang = info:match("^(%S*)") }
    elseif open and fence and info == "" and fence:sub(1, 1) == open.fence:sub(1, 1) and #fence >= #open.fence then
      table.insert(blocks, M._close(open, lines, i))
      open = nil
    end
  end
  if open then -- an answer still streaming, or cut off by the length limit
    table.insert(blocks, M._close(open, lines, #lines + 1))
  end
  return blocks
end

function M._close(open, lines, closing)
  local body = {}
  for j = open.first + 1, closing - 1 do
    -- CommonMark: the fence's indentation is removed from the lines inside it.
    local line = lines[j]
    local strip = math.min(open.indent, #(line:match("^ *")))
    table.insert(body, line:sub(strip + 1))
  end
  return { first = open.first, last = math.min(closing, #lines), lang = open.lang, code = table.concat(body, "\n") }
end

--- The block that holds `row` (1-based), else the last block, else nil.
---@param lines string[]
---@param row integer?
---@return fimble.CodeBlock?
function M.pick(lines, row)
  local blocks = M.find(lines)
  if row then
    for _, block in ipairs(blocks) do
      if block.first <= row and row <= block.last then
        return block
      end
    end
  end
  return blocks[#blocks]
end

return M
