"""The chat prompt with the real Qwen2.5-Coder tokenizer and chat template: rendering identical to
transformers', token ids that only grow from turn to turn (the prefix cache's premise), trimming
of the oldest turns, and attachments cut to their budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from fimble.chat.prompt import (
    ATTACHMENTS_HEADER,
    ChatBudget,
    ChatPromptTooLong,
    build_chat_prompt,
    encode_chat_text,
    fenced_code,
    generation_prompt,
    render_chat_template,
)
from fimble.chat.session import Attachment, ChatSession, Message
from fimble.models.backend import ServedTokenizer

@pytest.fixture(scope="module")
def checkpoint(embedded_model_cache: Path) -> Path:
    """The embedded model's files (converted from the GGUF once, about 2 minutes, then cached);
    the tests that use it are marked slow."""
    from fimble.models.embedded import ensure_embedded_checkpoint

    return ensure_embedded_checkpoint(embedded_model_cache)


@pytest.fixture(scope="module")
def template(checkpoint: Path) -> str:
    return (checkpoint / "chat_template.jinja").read_text()


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path) -> ServedTokenizer:
    """What the LSP process uses: tokenizer.json rebuilt with the `tokenizers` library."""
    return ServedTokenizer((checkpoint / "tokenizer.json").read_text())


@pytest.fixture(scope="module")
def hf_tokenizer(checkpoint: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def session_with(*messages: Message, attachments: list[Attachment] | None = None) -> ChatSession:
    return ChatSession("0" * 32, "", 0.0, 0.0, list(messages), attachments or [])


CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are Fimble.\n\nsrc/a.py\n```python\ndef f():\n    return 1\n```"},
        {"role": "user", "content": "Explain `f`."},
        {"role": "assistant", "content": "It returns 1.\n"},
        {"role": "user", "content": "Et en français ? «ça» — 🙂"},
    ],
    [{"role": "user", "content": "no system message"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "{{ not jinja }}"}],
]


@pytest.mark.slow
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["short", "code-and-unicode", "default-system"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_matches_transformers(template, hf_tokenizer, messages, add_generation_prompt) -> None:
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert render_chat_template(template, messages, add_generation_prompt) == expected


@pytest.mark.slow
def test_token_ids_match_transformers_when_no_answer_starts_with_whitespace(template, tokenizer, hf_tokenizer) -> None:
    session = session_with(
        Message("user", "Explain `f`.", context="src/a.py\n```python\ndef f():\n    return 1\n```"),
        Message("assistant", "It returns 1.", finish_reason="stop"),
        Message("user", "Why?"),
    )
    prompt = build_chat_prompt(session, tokenizer, template)
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert prompt.token_ids == hf_tokenizer.encode(prompt.text, add_special_tokens=False)
    assert build_chat_prompt(session, hf_tokenizer, template).token_ids == prompt.token_ids


ANSWERS = [
    "\nThe retry loop sleeps `2 ** attempt` seconds.\n",  # starts with a line break
    "   Indented, then text  ",  # starts and ends with spaces
    "```python\ndef backoff(attempt):\n    return 2 ** attempt\n```\n",  # starts with a code fence
    "\n\n  It was cancell",  # a cancelled answer, cut mid-word
]


@pytest.mark.slow
def test_each_turn_prompt_starts_with_the_previous_turn_prompt(template, tokenizer) -> None:
    session = session_with(attachments=[Attachment("file", "src/retry.py", "def backoff(attempt):\n    return 2 ** attempt\n")])
    previous: list[int] | None = None
    for turn, answer in enumerate(ANSWERS):
        context = f"src/other{turn}.py\n```python\nx = {turn}\n```" if turn % 2 else ""
        session.messages.append(Message("user", f"Question {turn}?", context=context))
        prompt = build_chat_prompt(session, tokenizer, template)
        assert prompt.dropped_turns == 0 and prompt.notice == ""
        if previous is not None:
            assert prompt.token_ids[: len(previous)] == previous, f"turn {turn} does not extend turn {turn - 1}"
        previous = prompt.token_ids
        finish = "cancelled" if turn == len(ANSWERS) - 1 else "stop"
        session.messages.append(Message("assistant", answer, finish_reason=finish))
    session.messages.append(Message("user", "Last question"))
    assert build_chat_prompt(session, tokenizer, template).token_ids[: len(previous)] == previous


@pytest.mark.slow
def test_one_piece_tokenization_would_break_the_prefix(template, tokenizer) -> None:
    """Why the text is encoded in pieces: "assistant\\n" + "\\n..." merges into "\\n\\n"."""
    session = session_with(Message("user", "Hi"))
    first = build_chat_prompt(session, tokenizer, template)
    session.messages += [Message("assistant", "\nHello", finish_reason="stop"), Message("user", "Bye")]
    second = build_chat_prompt(session, tokenizer, template)
    whole = tokenizer.encode(second.text)
    assert whole[: len(first.token_ids)] != first.token_ids
    assert second.token_ids[: len(first.token_ids)] == first.token_ids
    assert encode_chat_text(first.text, tokenizer, template) == first.token_ids
    assert generation_prompt(template) == "<|im_start|>assistant\n"


@pytest.mark.slow
def test_retrieved_context_goes_inside_the_user_message_before_the_question(template, tokenizer) -> None:
    context = "src/retry.py\n```python\ndef compute_backoff(attempt):\n    return 2 ** attempt\n```"
    session = session_with(Message("user", "How does backoff work?", context=context))
    text = build_chat_prompt(session, tokenizer, template).text
    user_block = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user_block.index("def compute_backoff") < user_block.index("How does backoff work?")


def make_long_chat(turns: int) -> ChatSession:
    session = session_with()
    for turn in range(turns):
        session.messages += [
            Message("user", f"Question number {turn}: " + "why " * 60),
            Message("assistant", f"Answer number {turn}: " + "because " * 60, finish_reason="stop"),
        ]
    session.messages.append(Message("user", "The newest question"))
    return session


@pytest.mark.slow
def test_the_oldest_turns_are_left_out_first(template, tokenizer) -> None:
    session = make_long_chat(8)
    budget = ChatBudget(context_tokens=900, answer_tokens=200)
    prompt = build_chat_prompt(session, tokenizer, template, budget)
    assert len(prompt.token_ids) <= 700
    assert 0 < prompt.dropped_turns < 8
    kept = range(prompt.dropped_turns, 8)
    assert all(f"Question number {turn}:" in prompt.text for turn in kept)
    assert not any(f"Question number {turn}:" in prompt.text for turn in range(prompt.dropped_turns))
    assert prompt.text.endswith("The newest question<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.notice == f"The {prompt.dropped_turns} oldest turns of this chat were left out to fit the model's context."
    # The fewest: keeping one more turn would not fit.
    one_more = make_long_chat(8)
    del one_more.messages[: 2 * (prompt.dropped_turns - 1)]
    assert len(build_chat_prompt(one_more, tokenizer, template, ChatBudget(context_tokens=10**6)).token_ids) > 700


@pytest.mark.slow
def test_a_question_that_cannot_fit_is_a_clear_error(template, tokenizer) -> None:
    session = session_with(Message("user", "word " * 2000))
    with pytest.raises(ChatPromptTooLong, match="Shorten the question"):
        build_chat_prompt(session, tokenizer, template, ChatBudget(context_tokens=1500, answer_tokens=500))


@pytest.mark.slow
def test_a_huge_attachment_is_cut_with_a_marker(template, tokenizer) -> None:
    big = "".join(f"value_{n} = compute({n})\n" for n in range(5000))
    session = session_with(
        Message("user", "Summarize"),
        attachments=[
            Attachment("selection", "src/small.py", "x = 1\n", start_line=0, end_line=0),
            Attachment("file", "src/big.py", big),
            Attachment("symbol", "src/late.py", "def late(): pass\n", 3, 3, name="late"),
        ],
    )
    budget = ChatBudget(context_tokens=8192, attachment_tokens=1000)
    prompt = build_chat_prompt(session, tokenizer, template, budget)
    system = prompt.text.split("<|im_end|>", 1)[0]
    attachments = system[system.index(ATTACHMENTS_HEADER) :]
    assert len(tokenizer.encode(attachments)) <= 1000
    assert "src/small.py, lines 1-1\n```python\nx = 1\n```" in attachments
    assert "value_10 = compute(10)" in attachments and "value_4999" not in attachments
    assert "more lines of src/big.py were cut to fit the model's context." in attachments
    assert "Left out to fit the model's context: `late` in src/late.py, lines 4-4." in attachments
    assert "src/big.py (the last" in prompt.notice and "`late` in src/late.py, lines 4-4 (left out)" in prompt.notice
    assert prompt.dropped_turns == 0


def test_fences_outlast_backticks_inside() -> None:
    text = "# Notes\n```python\nprint(1)\n```\n"
    assert fenced_code("README.md", text) == f"````markdown\n{text}````"
    assert fenced_code("web/app.tsx", "let x = 1") == "```tsx\nlet x = 1\n```"
    assert fenced_code("Makefile", "all:\n") == "```\nall:\n```"


FEATURES_TEMPLATE = (
    "{% set ns = namespace(count=0) %}{% for m in messages %}{% set ns.count = ns.count + 1 %}"
    "{% generation %}{{ m.role }}: {{ m.content | tojson }}{% endgeneration %}\n{% endfor %}"
    "{{ ns.count }} {{ dict(a=1).a }}{% if add_generation_prompt %}>{% endif %}"
)


def test_template_features_render_as_in_transformers() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "user", "content": "<é> & \"quotes\""}, {"role": "assistant", "content": "ok"}]
    (expected,), _ = render_jinja_template([messages], chat_template=FEATURES_TEMPLATE, add_generation_prompt=True)
    assert render_chat_template(FEATURES_TEMPLATE, messages, True) == expected


def test_templates_stay_in_their_sandbox() -> None:
    import jinja2

    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{% set ns = namespace(_secret=1) %}", [])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ messages.__class__.__mro__ }}", [])
    with pytest.raises(jinja2.exceptions.TemplateError, match="roles must alternate"):
        render_chat_template("{{ raise_exception('roles must alternate') }}", [])
