-- Chat with Fimble (docs/chat-protocol.md): :FimbleChat asks in the current session and streams the
-- answer into the chat buffer (fimble.chat.view), :FimbleChatApply puts a code block into the
-- source buffer through the server's fimble.applyCodeBlock, :FimbleChatStop stops the answer,
-- :FimbleChatSessions continues an earlier session.
local blocks = require("fimble.chat.blocks")
local view = require("fimble.chat.view")

local M = {}

-- The buffer a question was about: Apply puts code there, over `range` (the attached selection)
-- or, without one, at the cursor line.
---@class fimble.ChatSource
---@field bufnr integer
---@field range? lsp.Range

---@class fimble.ChatRequest
---@field client vim.lsp.Client
---@field id integer
---@field session_id? string known from the first chunk when the session is new
---@field answer_row integer 0-based row of the chat buffer where the answer starts
---@field text string the answer so far
---@field finished? boolean

---@class fimble.ChatState
---@field session_id? string
---@field source? fimble.ChatSource
---@field request? fimble.ChatRequest
---@field last? table the last fimble/chat result (ChatResult)
M.state = {}

local CANCELLED = -32800 -- LSP RequestCancelled: the answer to $/cancelRequest

local function tell(message, level)
  vim.notify("Fimble: " .. message, level or vim.log.levels.INFO)
end

---@param bufnr? integer
---@return vim.lsp.Client?
local function find_client(bufnr)
  local attached = bufnr and vim.lsp.get_clients({ name = "fimble", bufnr = bufnr })[1]
  return attached or vim.lsp.get_clients({ name = "fimble" })[1]
end

local function no_client()
  tell("the fimble language server is not running; open a file so that it starts (:checkhealth vim.lsp shows why not)", vim.log.levels.ERROR)
end

local function is_file_buffer(bufnr)
  return vim.bo[bufnr].buftype == "" and vim.api.nvim_buf_get_name(bufnr) ~= ""
end

-- Lines line1..line2 (1-based, inclusive) of a buffer as an LSP range, end of the last line included.
local function line_range(bufnr, line1, line2, encoding)
  local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, true)[1]
  return {
    start = { line = line1 - 1, character = 0 },
    ["end"] = { line = line2 - 1, character = vim.str_utfindex(last, encoding) },
  }
end

local function relative_name(uri)
  return vim.fn.fnamemodify(vim.uri_to_fname(uri), ":~:.")
end

local function describe(attachment)
  if attachment.kind == "selection" then
    local range = attachment.range
    return ("`%s` lines %d-%d"):format(relative_name(attachment.uri), range.start.line + 1, range["end"].line + 1)
  elseif attachment.kind == "file" then
    return ("`%s`"):format(relative_name(attachment.uri))
  end
  return ("`%s`"):format(attachment.name or attachment.kind)
end

--- Where an answer's code goes: the selection attached to the question, if any.
---@param attachments table[]
---@return fimble.ChatSource?
local function source_of(attachments)
  for _, attachment in ipairs(attachments) do
    if attachment.uri and (attachment.kind == "selection" or attachment.kind == "file") then
      local bufnr = vim.uri_to_bufnr(attachment.uri)
      return { bufnr = bufnr, range = attachment.range }
    end
  end
end

local function finish(request, err, result)
  if request.finished then
    return -- stopped before its first piece, and the server's answer came after all
  end
  request.finished = true
  M.state.request = nil
  if err then
    result = err.code == CANCELLED and { text = request.text, finishReason = "cancelled" }
      or { text = request.text, finishReason = "error", notice = err.message }
  end
  result = result or { text = request.text, finishReason = "error", notice = "the server sent no answer" }
  result.sessionId = result.sessionId or request.session_id
  M.state.last = result
  M.state.session_id = result.sessionId or M.state.session_id
  -- The chunks should add up to the result; if some were lost, the result is the truth.
  if result.text and result.text ~= request.text then
    view.replace_from(request.answer_row, result.text)
  end
  local footer = {}
  if result.finishReason == "cancelled" then
    table.insert(footer, "*(stopped)*")
  elseif result.finishReason == "length" then
    table.insert(footer, "*(cut off at the length limit)*")
  elseif result.finishReason == "error" then
    table.insert(footer, "*(error: " .. (result.notice or "unknown") .. ")*")
  end
  -- A stopped answer's notice only repeats "(stopped)".
  if result.notice and result.notice ~= "" and result.finishReason ~= "error" and result.finishReason ~= "cancelled" then
    table.insert(footer, "> " .. result.notice)
  end
  if #footer > 0 then
    view.append_lines({ "", unpack(footer) })
  end
  if result.finishReason == "error" then
    tell(result.notice or "the answer failed", vim.log.levels.ERROR)
  end
  vim.api.nvim_exec_autocmds("User", { pattern = "FimbleChatDone", data = result })
end

--- Asks `message` in the current session (a new one when `opts.new`), with `attachments`.
---@param message string
---@param attachments table[]
---@param opts { client: vim.lsp.Client, new?: boolean }
function M.ask(message, attachments, opts)
  if M.state.request then
    return tell("still answering; :FimbleChatStop stops it", vim.log.levels.WARN)
  end
  if opts.new then
    M.state.session_id = nil
    view.clear()
  end
  M.state.source = source_of(attachments) or M.state.source
  view.show()
  local lines = vim.split(message, "\n", { plain = true })
  if #attachments > 0 then
    local names = vim.tbl_map(describe, attachments)
    vim.list_extend(lines, { "", "> attached: " .. table.concat(names, ", ") })
  end
  view.start_turn("You", lines)
  local answer_row = view.start_turn("Fimble", { "" })

  local params = { sessionId = M.state.session_id, message = message, attachments = attachments }
  local request = { client = opts.client, session_id = M.state.session_id, answer_row = answer_row, text = "" }
  local ok, id = opts.client:request("fimble/chat", params, function(err, result)
    finish(request, err, result)
  end)
  if not ok then
    return finish(request, { message = "the server is not running" }, nil)
  end
  request.id = id
  M.state.request = request
end

--- fimble/chatChunk: the next piece of the answer.
function M.on_chunk(_, params)
  local request = M.state.request
  if not request or (request.session_id and request.session_id ~= params.sessionId) then
    return -- a late piece of an answer that has already ended
  end
  request.session_id = params.sessionId
  request.text = request.text .. params.text
  view.append_text(params.text)
end

--- fimble/openChat: a chat code action (Explain, Fix, Write tests) ran; ask in a new session.
function M.on_open_chat(_, params, ctx)
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  if client then
    M.ask(params.prompt, params.attachments or {}, { client = client, new = true })
  end
end

M.handlers = {
  ["fimble/chatChunk"] = M.on_chunk,
  ["fimble/openChat"] = M.on_open_chat,
}

--- :[range]FimbleChat[!] [question]. With a range the selected lines are attached, otherwise the
--- current file; from the chat buffer nothing new is attached. ! starts a new session.
function M.chat_command(args)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = find_client(bufnr)
  if not client then
    return no_client()
  end
  local attachments = {}
  if is_file_buffer(bufnr) then
    local uri = vim.uri_from_bufnr(bufnr)
    if args.range > 0 then
      local range = line_range(bufnr, args.line1, args.line2, client.offset_encoding)
      attachments = { { kind = "selection", uri = uri, range = range } }
    else
      attachments = { { kind = "file", uri = uri } }
    end
    -- A new question about a buffer makes it the target of Apply, even without a selection.
    M.state.source = { bufnr = bufnr }
  end
  local function send(message)
    if message and vim.trim(message) ~= "" then
      M.ask(message, attachments, { client = client, new = args.bang })
    end
  end
  if args.args ~= "" then
    send(args.args)
  else
    vim.ui.input({ prompt = "Ask Fimble: " }, send)
  end
end

--- :[range]FimbleChatApply: the code block under the cursor in the chat (else the last one) goes to
--- the source buffer, over the attached selection or at the cursor line. From a file buffer with a
--- range, it replaces those lines instead.
function M.apply_command(args)
  local current = vim.api.nvim_get_current_buf()
  local row = view.is_chat(current) and vim.api.nvim_win_get_cursor(0)[1] or nil
  local block = blocks.pick(view.lines(), row)
  if not block then
    return tell("no code block in the chat to apply", vim.log.levels.WARN)
  end

  local target, range
  if not view.is_chat(current) and is_file_buffer(current) then
    target = current
    if args.range > 0 then
      range = line_range(current, args.line1, args.line2, (find_client(current) or {}).offset_encoding or "utf-16")
    end
  elseif M.state.source and vim.api.nvim_buf_is_valid(M.state.source.bufnr) then
    target, range = M.state.source.bufnr, M.state.source.range
  else
    return tell("no source buffer: ask with :FimbleChat from a file first", vim.log.levels.WARN)
  end
  local code = block.code
  if not range then
    -- No selection: the block goes in as whole lines above the cursor line of the source window.
    local win = vim.fn.bufwinid(target)
    local line = win ~= -1 and vim.api.nvim_win_get_cursor(win)[1] - 1 or 0
    range = { start = { line = line, character = 0 }, ["end"] = { line = line, character = 0 } }
    code = code .. "\n"
  end

  local client = find_client(target)
  if not client then
    return no_client()
  end
  vim.fn.bufload(target)
  local command = { uri = vim.uri_from_bufnr(target), code = code, range = range }
  client:request("workspace/executeCommand", { command = "fimble.applyCodeBlock", arguments = { command } }, function(err, result)
    if err then
      tell("could not apply the code block: " .. err.message, vim.log.levels.ERROR)
    elseif result and result.applied == false then
      tell("the code block was not applied: " .. (result.reason or "the editor refused the edit"), vim.log.levels.WARN)
    end
    vim.api.nvim_exec_autocmds("User", { pattern = "FimbleChatApplied", data = { err = err, result = result } })
  end, target)
end

--- :FimbleChatStop: stops the running answer; the text so far stays in the session.
function M.stop_command()
  local request = M.state.request
  if not request then
    return tell("no answer is running")
  end
  if request.session_id then
    request.client:request("fimble/chatCancel", { sessionId = request.session_id }, function() end)
  else
    -- No piece yet, so the session id is unknown: $/cancelRequest. Neovim drops the server's
    -- RequestCancelled answer without calling the handler, so the answer ends here.
    request.client:cancel_request(request.id)
    finish(request, { code = CANCELLED, message = "stopped" }, nil)
  end
end

local function show_session(session)
  view.clear()
  for _, message in ipairs(session.messages or {}) do
    local heading = message.role == "user" and "You" or "Fimble"
    view.start_turn(heading, vim.split(message.content or "", "\n", { plain = true }))
  end
  M.state.session_id = session.id
  view.show(true)
end

--- :FimbleChatSessions: pick an earlier session to read and continue (:FimbleChat asks in it).
function M.sessions_command()
  local client = find_client(vim.api.nvim_get_current_buf())
  if not client then
    return no_client()
  end
  client:request("fimble/chatSessions", { action = "list" }, function(err, result)
    if err then
      return tell("could not list the chat sessions: " .. err.message, vim.log.levels.ERROR)
    end
    for _, problem in ipairs(result.problems or {}) do
      tell(problem, vim.log.levels.WARN)
    end
    if #result.sessions == 0 then
      return tell("no chat sessions yet")
    end
    vim.ui.select(result.sessions, {
      prompt = "Fimble chat sessions",
      format_item = function(s)
        local updated = type(s.updated) == "number" and os.date("%Y-%m-%d %H:%M", math.floor(s.updated)) or tostring(s.updated)
        return ("%s  (%s, %s messages)"):format(s.title, updated, tostring(s.messages))
      end,
    }, function(choice)
      if not choice then
        return
      end
      client:request("fimble/chatSessions", { action = "get", sessionId = choice.id }, function(get_err, session)
        if get_err then
          return tell("could not read the session: " .. get_err.message, vim.log.levels.ERROR)
        end
        show_session(session)
      end)
    end)
  end)
end

function M.create_commands()
  local command = vim.api.nvim_create_user_command
  command("FimbleChat", M.chat_command, { nargs = "*", range = true, bang = true, desc = "Fimble: ask in the chat (! starts a new session)" })
  command("FimbleChatApply", M.apply_command, { range = true, desc = "Fimble: apply the chat's code block to the source buffer" })
  command("FimbleChatStop", M.stop_command, { desc = "Fimble: stop the chat's answer" })
  command("FimbleChatSessions", M.sessions_command, { desc = "Fimble: continue an earlier chat session" })
end

return M
