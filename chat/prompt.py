"""The chat prompt: a session rendered with the model's own chat template, trimmed to the context.

    system   SYSTEM_PROMPT, then the session's attachments (path + fenced code, cut to a budget)
    user     [retrieved definitions for this turn] + the question          oldest turn
    assistant the answer as stored (also a cancelled or cut one)
    ...
    user     the new question                                               never left out
    <|im_start|>assistant\n                                                 the generation prompt

When the whole does not fit `context_tokens - answer_tokens`, the oldest turns (a question with its
answer) are left out first, and the result says so.

Prefix property: as long as nothing is left out and no attachment is added, turn N+1's prompt
token ids start with turn N's, so the daemon's prefix cache serves the whole conversation so far.
Tokenizing the rendered text in one piece would break it: turn N ends with "assistant\n", and in
turn N+1 an answer that starts with "\n" or spaces follows it, and Qwen's BPE merges "\n\n" into
one token. So the text is encoded in pieces split around each generation prompt, which is also
how the model saw it: it generated the answer after the generation prompt's own tokens.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from fimble.chat.session import Attachment, ChatSession, Message
from fimble.context.languages import language_id_for_path
from fimble.models.generation import ChatMessage

SYSTEM_PROMPT = (
    "You are Fimble, a coding assistant inside the user's code editor. "
    "Answer concisely in Markdown. Put code in fenced code blocks that name the language, "
    "and refer to files by their workspace paths."
)
ATTACHMENTS_HEADER = "The user attached this code from their workspace:"
RETRIEVED_HEADER = "Code from the workspace that may help with the question below:"


# For a server that applies the model's template itself (models/remote.py), the prompt is sent as
# messages and this ChatML template only counts tokens to fit the context: chat templates differ
# from it by a few tokens per turn.
COUNTING_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class Tokenizer(Protocol):
    """models.backend.ServedTokenizer or a transformers tokenizer."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...


@dataclass(frozen=True)
class ChatBudget:
    context_tokens: int = 8192  # the whole prompt + answer must fit
    answer_tokens: int = 1024  # reserved for the answer
    attachment_tokens: int = 4096  # attachments beyond this are cut (with a marker line)
    retrieved_tokens: int = 768  # per-turn retrieved definitions


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    token_ids: list[int]
    messages: tuple[ChatMessage, ...]  # what `text` renders, for servers that apply the template
    dropped_turns: int  # oldest user/assistant turns left out
    notice: str  # "" or a sentence for the user


class ChatPromptTooLong(ValueError):
    """Even the newest question alone (with the system prompt and attachments) leaves no room for
    the answer."""

    def __init__(self, prompt_tokens: int, budget: ChatBudget):
        available = budget.context_tokens - budget.answer_tokens
        super().__init__(
            f"The question and its attachments take {prompt_tokens} tokens, but the model's context holds "
            f"{available} besides the answer. Shorten the question or select less code."
        )
        self.prompt_tokens = prompt_tokens
        self.available = available


# ---------------------------------------------------------------------------------------------
# The chat template
#
# Rendered with jinja2 directly, set up as transformers' `_cached_compile_jinja_template` does
# (transformers 5.24): importing transformers.utils.chat_template_utils costs 0.9 s and the LSP
# process starts in 0.44 s without it; jinja2.sandbox costs 0.05 s, paid on the first chat.


@functools.lru_cache(maxsize=4)
def _compiled_template(template: str):
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which the model never saw in training.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks in
        transformers): rendered as its body, which is all a prompt needs."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    # Templates come with the model: untrusted code, hence the sandbox.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["namespace"] = _TemplateNamespace
    environment.globals["dict"] = _TemplateDict()
    return environment.from_string(template)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the type itself (transformers' way)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _check_namespace_name(name) -> None:
    import jinja2

    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes on a namespace: {name!r}")


class _TemplateNamespace:
    """jinja2's `namespace()` without underscore attributes, as transformers has it: a way out of
    the sandbox otherwise. Built on first use, so importing this module does not import jinja2."""

    _class = None

    def __new__(cls, *args, **kwargs):
        if cls._class is None:
            import jinja2.utils

            class Namespace(jinja2.utils.Namespace):
                def __init__(*args, **kwargs):  # jinja's own signature trick: `namespace(self=...)` works
                    self, args = args[0], args[1:]
                    attributes = dict(*args, **kwargs)
                    for name in attributes:
                        _check_namespace_name(name)
                    jinja2.utils.Namespace.__init__(self, attributes)

                def __setitem__(self, name, value):
                    _check_namespace_name(name)
                    jinja2.utils.Namespace.__setitem__(self, name, value)

            cls._class = Namespace
        return cls._class(*args, **kwargs)


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The template's text for `messages` ({"role", "content"} maps), as transformers'
    `apply_chat_template(..., tokenize=False)` renders it."""
    return _compiled_template(template).render(messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt)


@functools.lru_cache(maxsize=4)
def generation_prompt(template: str) -> str:
    """What the template appends for add_generation_prompt ("<|im_start|>assistant\\n" for Qwen)."""
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    without, with_prompt = render_chat_template(template, probe, False), render_chat_template(template, probe, True)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ValueError("the chat template has no generation prompt that follows the conversation")
    return with_prompt[len(without) :]


def encode_chat_text(text: str, tokenizer: Tokenizer, template: str) -> list[int]:
    """Token ids of a rendered conversation, each generation prompt encoded on its own, so the
    text after it (an answer) never merges with it (see the module docstring)."""
    separator = generation_prompt(template)
    ids: list[int] = []
    for number, piece in enumerate(text.split(separator)):
        if number > 0:
            ids += tokenizer.encode(separator, add_special_tokens=False)
        if piece:
            ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids


# ---------------------------------------------------------------------------------------------
# Code blocks

_FENCE_LANGUAGES = {"javascriptreact": "jsx", "typescriptreact": "tsx"}
_OTHER_LANGUAGES = {
    ".md": "markdown", ".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".sh": "bash",
    ".lua": "lua", ".html": "html", ".css": "css", ".sql": "sql", ".kt": "kotlin", ".swift": "swift",
    ".cs": "csharp", ".php": "php", ".vim": "vim",
}  # fmt: skip
_BACKTICKS = re.compile(r"`{3,}")


def fence_language(path: str) -> str:
    language = language_id_for_path(path)
    if language:
        return _FENCE_LANGUAGES.get(language, language)
    return _OTHER_LANGUAGES.get(PurePosixPath(path).suffix.lower(), "")


def fenced_code(path: str, text: str) -> str:
    """`text` in a Markdown code fence named for `path`'s language, the fence longer than any run
    of backticks inside (a Markdown file with its own fences stays one block)."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{fence}{fence_language(path)}\n{body}{fence}"


def attachment_heading(attachment: Attachment) -> str:
    where = attachment.path or "(no file)"
    if attachment.start_line is not None:
        end = attachment.end_line if attachment.end_line is not None else attachment.start_line
        where += f", lines {attachment.start_line + 1}-{end + 1}"
    if attachment.kind == "symbol" and attachment.name:
        return f"`{attachment.name}` in {where}"
    return where


# ---------------------------------------------------------------------------------------------
# Attachments within their budget


@dataclass(frozen=True)
class _RenderedAttachments:
    text: str  # "" when there are none
    cuts: list[str]  # for the notice: "src/a.py (the last 120 lines)", "b.py (left out)"


def render_attachments(attachments: list[Attachment], count_tokens, budget_tokens: int) -> _RenderedAttachments:
    """The attachments as "heading" + fenced code blocks in order, within `budget_tokens`: the one
    that crosses the budget loses its last lines (with a marker line), the rest are named only."""
    headings = [attachment_heading(attachment) for attachment in attachments]
    blocks: list[str] = []
    cuts: list[str] = []
    left_out: list[str] = []
    used = count_tokens(ATTACHMENTS_HEADER)
    for number, (attachment, heading) in enumerate(zip(attachments, headings)):
        if cuts or left_out:  # once one is cut, the later ones are left out: the order stays as given
            left_out.append(heading)
            continue
        block = f"{heading}\n{fenced_code(attachment.path, attachment.text)}"
        cost = count_tokens(block) + 1  # + the blank line between blocks
        if used + cost <= budget_tokens:
            blocks.append(block)
            used += cost
            continue
        later = headings[number + 1 :]
        room = budget_tokens - used - (count_tokens(_left_out_line(later)) + 1 if later else 0)
        if (cut := _cut_to_fit(attachment, heading, count_tokens, room)) is not None:
            blocks.append(cut[0])
            cuts.append(f"{heading} (the last {cut[1]} lines)")
        else:
            left_out.append(heading)
    if left_out:
        blocks.append(_left_out_line(left_out))
        cuts += [f"{heading} (left out)" for heading in left_out]
    if not blocks:
        return _RenderedAttachments("", [])
    return _RenderedAttachments(ATTACHMENTS_HEADER + "\n\n" + "\n\n".join(blocks), cuts)


def _left_out_line(headings: list[str]) -> str:
    return f"(Left out to fit the model's context: {', '.join(headings)}.)"


def _cut_to_fit(attachment: Attachment, heading: str, count_tokens, room: int) -> tuple[str, int] | None:
    """The attachment's block with as many of its first lines as fit in `room` tokens, and how
    many lines were dropped; None when not even one line fits."""
    lines = attachment.text.splitlines(keepends=True)

    def block(kept: int) -> str:
        marker = f"({len(lines) - kept} more lines of {attachment.path or 'this attachment'} were cut to fit the model's context.)"
        return f"{heading}\n{fenced_code(attachment.path, ''.join(lines[:kept]))}\n{marker}"

    # The most lines that fit lies in [low, high]; a line is at least one token, so at most `room`.
    low, high = 0, min(len(lines) - 1, room)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(block(middle)) + 1 <= room:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        return None
    return block(low), len(lines) - low


# ---------------------------------------------------------------------------------------------
# The prompt


def user_content(message: Message) -> str:
    """A user message as the model sees it: the turn's retrieved definitions, then the question."""
    if not message.context:
        return message.content
    return f"{RETRIEVED_HEADER}\n\n{message.context}\n\n{message.content}"


def _turns(messages: list[Message]) -> list[list[Message]]:
    """Messages grouped into turns, each a user message with the answers that follow it."""
    turns: list[list[Message]] = []
    for message in messages:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def _template_messages(system_text: str, turns: list[list[Message]]) -> list[dict]:
    rendered = [{"role": "system", "content": system_text}]
    for turn in turns:
        for message in turn:
            if message.role == "user":
                rendered.append({"role": "user", "content": user_content(message)})
            elif message.role == "assistant":
                rendered.append({"role": "assistant", "content": message.content})
    return rendered


def dropped_turns_notice(dropped: int) -> str:
    if dropped == 0:
        return ""
    if dropped == 1:
        return "The oldest turn of this chat was left out to fit the model's context."
    return f"The {dropped} oldest turns of this chat were left out to fit the model's context."


def build_chat_prompt(
    session: ChatSession,
    tokenizer: Tokenizer,
    template: str,
    budget: ChatBudget = ChatBudget(),
    system_prompt: str = SYSTEM_PROMPT,
) -> ChatPrompt:
    """The prompt for the session's last message (the user's new question), within the budget.
    Raises ChatPromptTooLong when the question alone does not fit."""
    if not session.messages or session.messages[-1].role != "user":
        raise ValueError("the session's last message must be the user's new question")

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    attachments = render_attachments(session.attachments, count_tokens, budget.attachment_tokens)
    system_text = system_prompt + ("\n\n" + attachments.text if attachments.text else "")
    turns = _turns(session.messages)
    available = budget.context_tokens - budget.answer_tokens

    def prompt_without(dropped: int) -> tuple[str, list[int]]:
        text = render_chat_template(template, _template_messages(system_text, turns[dropped:]), add_generation_prompt=True)
        return text, encode_chat_text(text, tokenizer, template)

    # Most chats fit whole: one render. Otherwise the fewest oldest turns to leave out, by
    # bisection (each try renders and encodes the whole prompt, ~5 ms for 8k tokens).
    text, ids = prompt_without(0)
    dropped = 0
    if len(ids) > available:
        low, high = 1, len(turns) - 1  # the answer lies in [low, high]; high keeps the newest turn
        text, ids = prompt_without(high)
        if len(ids) > available:
            raise ChatPromptTooLong(len(ids), budget)
        while low < high:
            middle = (low + high) // 2
            if len(prompt_without(middle)[1]) <= available:
                high = middle
            else:
                low = middle + 1
        dropped = high
        text, ids = prompt_without(dropped)

    notices = [dropped_turns_notice(dropped)]
    if attachments.cuts:
        notices.append(f"Attachments were cut to fit the model's context: {'; '.join(attachments.cuts)}.")
    messages = tuple(ChatMessage(m["role"], m["content"]) for m in _template_messages(system_text, turns[dropped:]))
    return ChatPrompt(text, ids, messages, dropped, " ".join(notice for notice in notices if notice))
