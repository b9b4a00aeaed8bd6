"""textDocument/inlineCompletion through the real server and daemon, checked against the same
completion path run in this process on the same tiny model."""

from __future__ import annotations

import pytest
from lsprotocol import types

from fimble.models.backend import EngineBackend
from fimble.completion.service import CompletionRequest, complete
from fimble.lsp_server.settings import Settings, parse_settings
from tests.lsp_server.conftest import QUIET, inline_at, open_document, start_client

SOURCE = "import os\n\ndef list_files(path):\n    names = os.listdir(path)\n    return sorted(na\n"


async def expected_completion(pool, text: str, offset: int, explicit: bool = False, options: dict | None = None):
    settings = parse_settings({**QUIET, **(options or {})}, Settings())[0].completion()
    return await complete(CompletionRequest(text, offset, "python", explicit), settings, EngineBackend(pool))


async def test_inline_completion_matches_the_in_process_path(lsp, local_pool):
    open_document(lsp, "file:///work/files.py", SOURCE)
    answer = await inline_at(lsp, "file:///work/files.py", 4, 20)
    expected = await expected_completion(local_pool, SOURCE, SOURCE.index("sorted(na") + len("sorted(na"))
    assert expected.text, "the tiny model's completion at this cursor is not empty"
    assert [item.insert_text for item in answer.items] == [expected.text]
    item = answer.items[0]
    assert item.range == types.Range(start=types.Position(4, 20), end=types.Position(4, 20))
    assert item.command.command == "fimble.accepted"
    assert item.command.arguments[0]["meanLogprob"] == pytest.approx(expected.mean_logprob, abs=1e-3)


async def test_positions_are_utf16_code_units(lsp, local_pool):
    # "😀" is one code point and two UTF-16 code units; "é" is one of each.
    text = 'greeting = "héllo 😀"; label = gree\n'
    open_document(lsp, "file:///work/unicode.py", text)
    utf16_column = len(text.split("\n")[0].encode("utf-16-le")) // 2
    answer = await inline_at(lsp, "file:///work/unicode.py", 0, utf16_column)
    expected = await expected_completion(local_pool, text, text.index("\n"))
    assert expected.text
    assert [item.insert_text for item in answer.items] == [expected.text]
    assert answer.items[0].range.start == types.Position(0, utf16_column)


async def test_incremental_changes_are_applied(lsp, local_pool):
    uri = "file:///work/edited.py"
    open_document(lsp, uri, "def total(xs):\n    return \n")
    lsp.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(types.Position(1, 11), types.Position(1, 11)), text="sum(")],
        )
    )
    answer = await inline_at(lsp, uri, 1, 15)
    text = "def total(xs):\n    return sum(\n"
    expected = await expected_completion(local_pool, text, text.index("sum(") + 4)
    assert [item.insert_text for item in answer.items] == ([expected.text] if expected.text else [])


async def test_nothing_is_offered_inside_a_comment(lsp):
    open_document(lsp, "file:///work/comment.py", "# a note about th\nx = 1\n")
    answer = await inline_at(lsp, "file:///work/comment.py", 0, 17)
    assert list(answer.items) == []


async def test_a_document_never_opened_and_not_on_disk_gets_nothing(lsp):
    answer = await inline_at(lsp, "file:///nowhere/missing.py", 0, 0)
    assert list(answer.items) == []
    open_document(lsp, "file:///work/after.py", SOURCE)
    assert (await inline_at(lsp, "file:///work/after.py", 4, 20)).items  # the server lives on


async def test_candidates_follow_the_same_first_suggestion(fimble_env, local_pool):
    """`candidates` 3: the first item is the one suggestion `candidates` 1 gives, and the others
    are the branches' answers, distinct, each with its own accept command."""
    offset = SOURCE.index("sorted(na") + len("sorted(na")
    alone = await expected_completion(local_pool, SOURCE, offset)
    expected = await expected_completion(local_pool, SOURCE, offset, options={"candidates": 3})
    assert expected.text == alone.text and expected.alternatives, "the tiny model's branches here give other suggestions"
    client = await start_client(fimble_env, {**QUIET, "candidates": 3})
    try:
        open_document(client, "file:///work/candidates.py", SOURCE)
        answer = await inline_at(client, "file:///work/candidates.py", 4, 20)
    finally:
        await client.shutdown_session()
        await client.stop()
    texts = [item.insert_text for item in answer.items]
    assert texts == [alone.text, *expected.alternatives] and len(set(texts)) == len(texts)
    assert [item.command.arguments[0]["text"] for item in answer.items] == texts
