"""Suggestions that survive typing, through the real server and daemon (tiny random-weight model):
typing into a suggestion or partly accepting it shows the rest with no model call, an accepted
suggestion prefetches the next one, a keystroke that agrees with the answer being written waits for
it, and the statistics of what was shown and accepted land in the data dir."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from benchmarks.lsp_text import utf16_length  # LSP positions count UTF-16 units; the random model writes beyond the BMP
from fimble.completion.service import CompletionRequest, complete
from fimble.completion.syntax import indentation_after_enter
from fimble.lsp_server.settings import Settings, parse_settings
from fimble.models.backend import EngineBackend
from tests.lsp_server.test_inline_completion import expected_completion
from tests.lsp_server.conftest import (
    EMPTY_BODY,
    FIMBLE,
    QUIET,
    inline_at,
    multi_line_request,
    multi_line_status,
    open_document,
    role_status,
    start_client,
    wait_until,
)

SOURCE = "import os\n\ndef list_files(path):\n    names = os.listdir(path)\n    return sorted(na\n"
URI = "file:///work/typing.py"
LINE, CHARACTER = 4, len("    return sorted(na")


async def model_requests(daemon) -> int:
    return (await role_status(daemon, "single_line"))["requests"]


def insert(client, uri: str, version: int, line: int, character: int, text: str) -> None:
    here = types.Range(start=types.Position(line, character), end=types.Position(line, character))
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=here, text=text)],
        )
    )


async def first_suggestion(client, uri: str = URI) -> types.InlineCompletionItem:
    open_document(client, uri, SOURCE)
    answer = await inline_at(client, uri, LINE, CHARACTER)
    assert answer.items and len(answer.items[0].insert_text) >= 3, "the tiny model's suggestion here has 3 characters or more"
    return answer.items[0]


async def test_typing_into_a_suggestion_shows_its_rest_with_no_model_call(lsp, daemon):
    suggestion = (await first_suggestion(lsp)).insert_text
    before = await model_requests(daemon)
    for typed in range(1, 3):
        insert(lsp, URI, typed + 1, LINE, CHARACTER + utf16_length(suggestion[: typed - 1]), suggestion[typed - 1])
        answer = await inline_at(lsp, URI, LINE, CHARACTER + utf16_length(suggestion[:typed]))
        assert [item.insert_text for item in answer.items] == [suggestion[typed:]]
    assert await model_requests(daemon) == before


class CountingBackend:
    """The in-process backend, counting generations: how many one completion takes."""

    def __init__(self, backend):
        self.backend, self.generations = backend, 0

    async def model(self, role):
        return await self.backend.model(role)

    async def generate(self, request, on_chunk=None):
        self.generations += 1
        return await self.backend.generate(request, on_chunk)


async def test_an_accepted_suggestion_prefetches_the_next_one(lsp, daemon, local_pool):
    uri = "file:///work/prefetch.py"
    item = await first_suggestion(lsp, uri)
    before = await model_requests(daemon)
    insert(lsp, uri, 2, LINE, CHARACTER, item.insert_text)
    await lsp.workspace_execute_command_async(types.ExecuteCommandParams(command=item.command.command, arguments=item.command.arguments))
    # The suggestion finished its line: the prefetch is for the next one, where Enter goes.
    line = SOURCE.split("\n")[LINE] + item.insert_text
    enter = "\n" + indentation_after_enter(line, "python")
    accepted_end = SOURCE.index("sorted(na") + len("sorted(na") + len(item.insert_text)
    accepted = SOURCE[: accepted_end - len(item.insert_text)] + item.insert_text + SOURCE[accepted_end - len(item.insert_text) :]
    # How many generations that completion takes (line-start healing may ask twice).
    counting = CountingBackend(EngineBackend(local_pool))
    settings = parse_settings(QUIET, Settings())[0].completion()
    next_line = CompletionRequest(accepted[:accepted_end] + enter + accepted[accepted_end:], accepted_end + len(enter), "python")
    await complete(next_line, settings, counting)
    assert counting.generations >= 1

    await wait_until(lambda s: s["requests"] > before, daemon, timeout_s=30, role="single_line")  # the prefetch ran
    insert(lsp, uri, 3, LINE, utf16_length(line), enter)
    answer = await inline_at(lsp, uri, LINE + 1, len(enter) - 1)
    assert answer is not None
    # Only the prefetch's generations ran: the editor's request at the next line made none.
    status = await wait_until(lambda s: s["running"] == 0, daemon, timeout_s=30, role="single_line")
    assert status["requests"] == before + counting.generations


@pytest.mark.parametrize("client_cancels_first", [False, True], ids=["server-supersedes", "client-cancels-first"])
async def test_a_keystroke_that_agrees_with_the_answer_being_written_waits_for_it(fimble_env, daemon, client_cancels_first):
    """The never-stopping multi-line model writes "xxx…": typing "x" while it writes asks for the
    same answer, so the second request waits for the first's generation instead of a new one. VS
    Code sends $/cancelRequest for the older request before the newer request; the generation
    outlives that cancel long enough for the newer request to take it over."""
    client = await start_client(fimble_env, {**QUIET, "maxMultiLineTokens": 400})
    try:
        # How many daemon requests one such completion takes alone (line-start healing may ask
        # twice). Another text: the same one would be answered from the cache.
        alone = f"file:///work/alone-{client_cancels_first}.py"
        open_document(client, alone, EMPTY_BODY + "\n# alone\n")
        before = await multi_line_status(daemon)
        await client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request(alone))
        requests_alone = (await multi_line_status(daemon))["requests"] - before["requests"]

        uri = f"file:///work/inflight-{client_cancels_first}.py"
        before = await multi_line_status(daemon)
        open_document(client, uri, EMPTY_BODY)
        first_id = f"first-{client_cancels_first}"
        first = asyncio.ensure_future(client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, multi_line_request(uri), msg_id=first_id))
        await wait_until(lambda s: s["running"] == 1, daemon)
        insert(client, uri, 2, 1, 4, "x")
        if client_cancels_first:
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=first_id))
            await asyncio.sleep(0.05)  # the editor's own debounce before its next request
        second = await inline_at(client, uri, 1, 5)
        with pytest.raises(JsonRpcRequestCancelled):  # its cursor moved on
            await first
        after = await multi_line_status(daemon)
        assert after["requests"] == before["requests"] + requests_alone and after["cancelled"] == before["cancelled"]
        assert second.items and set(second.items[0].insert_text) == {"x"}
        # The first request was cancelled before it showed anything: this is the answer's first
        # showing, not a cached one (the acceptance statistics count it as shown).
        assert not second.items[0].command.arguments[0]["fromCache"]
    finally:
        await client.shutdown_session()
        await client.stop()


def python_single_line_tally(fimble_env) -> dict:
    """The session's saved acceptance counts for single-line Python suggestions (other tests of
    the session add to them, so the tests check at-least counts)."""
    saved = json.loads((Path(fimble_env["FIMBLE_DATA_DIR"]) / "acceptance.json").read_text())
    tallies = [tally for tally in saved["tallies"] if tally["language"] == "python" and tally["mode"] == "single_line"]
    assert tallies, saved
    return tallies[0]


async def test_shown_and_accepted_are_counted_in_the_data_dir_and_fimble_stats_prints_them(fimble_env):
    client = await start_client(fimble_env)
    try:
        item = await first_suggestion(client, "file:///work/stats.py")
        insert(client, "file:///work/stats.py", 2, LINE, CHARACTER, item.insert_text)
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command=item.command.command, arguments=item.command.arguments))
    finally:
        await client.shutdown_session()  # saves the statistics
        await client.stop()
    tally = python_single_line_tally(fimble_env)
    assert tally["shown"] >= 1 and tally["accepted"] >= 1
    printed = subprocess.run([*FIMBLE, "stats"], env=fimble_env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and "python" in printed.stdout and "single_line" in printed.stdout


async def test_past_the_latency_budget_a_draft_is_shown_and_the_whole_line_follows_from_the_cache(fimble_env, daemon, local_pool):
    expected = (await expected_completion(local_pool, SOURCE, SOURCE.index("sorted(na") + len("sorted(na"))).text
    client = await start_client(fimble_env, {**QUIET, "maxLatencyMs": 1})
    try:
        uri = "file:///work/budget.py"
        open_document(client, uri, SOURCE)
        before = await model_requests(daemon)
        draft = await inline_at(client, uri, LINE, CHARACTER)
        shown = draft.items[0].insert_text if draft.items else ""
        assert expected.startswith(shown) and shown != expected
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # the generation runs on; asked again, its whole line comes back
            again = await inline_at(client, uri, LINE, CHARACTER)
            if again.items and again.items[0].insert_text == expected:
                break
            assert asyncio.get_running_loop().time() < deadline, "the whole line never came"
            await asyncio.sleep(0.05)
        assert await model_requests(daemon) == before + 1
    finally:
        await client.shutdown_session()
        await client.stop()


async def test_a_word_of_the_suggestion_inserted_at_once_counts_as_partly_accepted(fimble_env):
    client = await start_client(fimble_env)
    try:
        item = await first_suggestion(client, "file:///work/partly.py")
        insert(client, "file:///work/partly.py", 2, LINE, CHARACTER, item.insert_text[:2])
    finally:
        await client.shutdown_session()
        await client.stop()
    assert python_single_line_tally(fimble_env)["partly_accepted"] >= 1
