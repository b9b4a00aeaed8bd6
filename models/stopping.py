"""Stop rules applied to generated text, by whoever generates it: the engine's router thread, or the
remote backend reading a server's stream. Completion's postprocess shares the block rules, so a
generation stops where postprocess would cut it anyway.

    first_stop(text, rules)         where the text must end (a stop string, or the block's end)
    streamable_length(text, rules)  how much may be streamed before the next token shows more
"""

from __future__ import annotations

import re

from fimble.models.generation import BlockEnd, StopRules


def first_stop(text: str, rules: StopRules) -> int | None:
    """The length to cut `text` to, or None while the generation may go on."""
    positions = []
    start = len(text) - len(text.lstrip()) if rules.after_text else 0
    if not (rules.after_text and start == len(text)):  # nothing but whitespace yet
        positions = [i for stop in rules.strings if (i := text.find(stop, start)) >= 0]
    if rules.block_end is not None and block_has_ended(text, rules.block_end):
        positions.append(len(text))
    return min(positions) if positions else None


def streamable_length(text: str, rules: StopRules) -> int:
    """How much of `text` can be streamed: a tail that could be the start of a stop string is held
    back until the next token shows whether it is one."""
    held = 0
    for stop in rules.strings:
        for length in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:length]):
                held = length
                break
    return len(text) - held


# --- line-start healing ---------------------------------------------------------------------------

_LEADING_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def strip_healed(generated: str, healed: str) -> str:
    """The part of the model's output that goes at the cursor.

    The model was asked to write `healed` (a line break and the indentation typed so far) first.
    Deeper indentation keeps its extra part. Shallower indentation, or no line break at all, cannot
    be shown as text inserted at the cursor, so it gives nothing (completion.service asks again
    without healing when the line break is missing).
    """
    if healed:
        # Blank lines first ("\n\n    return x"): the cursor is already on a fresh line, so the
        # line of code is what belongs there. Of 67 empty answers on HumanEval single-line
        # (1,033 tasks), this gave 13 a line, and 9 of those pass.
        while (blank := _LEADING_BLANK_LINE.match(generated)) is not None:
            generated = generated[blank.end() - 1 :]
    if not healed or generated.startswith(healed):
        return generated[len(healed) :]
    return ""


# --- the end of a multi-line block ----------------------------------------------------------------


def cut_where_code_below_resumes(lines: list[str], next_code_line: str) -> list[str]:
    """Stop a multi-line completion at its first line (after the first) that is the next line of
    code below the cursor, same indentation included: from there on the model is re-typing code
    that is already there, usually with small differences. On HumanEval multi-line infilling the
    0.5B model wrote on to the end of the function in most failed tasks."""
    if not next_code_line:
        return lines
    for index, line in enumerate(lines[1:], start=1):
        if line.rstrip() == next_code_line:
            return lines[:index]
    return lines


def block_has_ended(generated: str, rule: BlockEnd) -> bool:
    """Whether a multi-line generation has left its block, so decoding can stop early.

    A line that starts less indented than the first generated line ends the block (the indentation
    rule postprocess cuts at); so do two blank lines in a row, and a line that repeats the next line
    of code below the cursor. Postprocess does the exact trimming; this only saves decoding what
    would be trimmed (up to max_multi_line_tokens at ~16 tok/s on CPU).
    """
    lines = strip_healed(generated, rule.healed).split("\n")
    if len(cut_where_code_below_resumes(lines[:-1], rule.next_code_line)) < len(lines[:-1]):
        return True
    body_indent = None
    for number, line in enumerate(lines[:-1] if len(lines) > 1 else []):
        if number > 0 and line.strip():
            indent = len(line) - len(line.lstrip(" \t"))
            if body_indent is not None and indent < body_indent:
                return True
        if line.strip() and body_indent is None:
            body_indent = (rule.typed_indent if number == 0 else 0) + len(line) - len(line.lstrip(" \t"))
    # The line being written counts as soon as it shows its first character.
    last = lines[-1] if len(lines) > 1 else ""
    if body_indent is not None and last.strip():
        return len(last) - len(last.lstrip(" \t")) < body_indent
    return "\n\n\n" in generated


def block_end_for(healed: str, prefix: str, suffix: str) -> BlockEnd:
    """The block-end rule of a multi-line request at the cursor between `prefix` and `suffix`."""
    below = next((line.rstrip() for line in suffix.split("\n")[1:] if line.strip()), "")
    at_line_start = prefix.rstrip(" \t").endswith("\n") or not prefix.strip()
    typed_indent = len(prefix) - len(prefix.rstrip(" \t")) if at_line_start else 0
    return BlockEnd(healed, typed_indent, below)
