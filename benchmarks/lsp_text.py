"""Text edits in LSP coordinates: 0-based lines, and characters counted in UTF-16 code units (the
protocol's default position encoding), which differ from Python's code points outside the BMP."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    line: int
    character: int  # UTF-16 code units


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def code_points_in(line_text: str, utf16_units: int) -> int:
    """How many code points of `line_text` the first `utf16_units` UTF-16 units cover (clamped to the
    line; a position inside a surrogate pair counts as after it)."""
    units = 0
    for index, char in enumerate(line_text):
        if units >= utf16_units:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
    return len(line_text)


def offset_of(document: str, position: Position) -> int:
    """The string index of an LSP position; a line past the end maps to the end of the document."""
    lines = document.split("\n")
    if position.line >= len(lines):
        return len(document)
    line_start = sum(len(line) + 1 for line in lines[: position.line])
    return line_start + code_points_in(lines[position.line], position.character)


def position_of(document: str, offset: int) -> Position:
    before = document[:offset]
    line_start = before.rfind("\n") + 1
    return Position(before.count("\n"), utf16_length(before[line_start:]))


def replace_range(document: str, start: Position, end: Position, text: str) -> str:
    return document[: offset_of(document, start)] + text + document[offset_of(document, end) :]
