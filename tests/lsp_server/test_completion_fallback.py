"""textDocument/completion for clients without inline completion (the same text as one item), and
nothing from it for clients that have inline completion, so the suggestion isn't shown twice."""

from __future__ import annotations

from lsprotocol import types

from tests.lsp_server.conftest import open_document, start_client
from tests.lsp_server.test_inline_completion import SOURCE, expected_completion


def completion_params(uri: str, line: int, character: int) -> types.CompletionParams:
    return types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
    )


async def test_clients_without_inline_completion_get_a_completion_item(fimble_env, local_pool):
    client = await start_client(fimble_env, inline_completion=False)
    try:
        open_document(client, "file:///work/fallback.py", SOURCE)
        answer = await client.text_document_completion_async(completion_params("file:///work/fallback.py", 4, 20))
        expected = await expected_completion(local_pool, SOURCE, SOURCE.index("sorted(na") + len("sorted(na"), explicit=True)
        assert expected.text
        assert [item.text_edit.new_text for item in answer.items] == [expected.text]
        item = answer.items[0]
        assert item.text_edit.range == types.Range(types.Position(4, 20), types.Position(4, 20))
        assert item.label == expected.text.strip().splitlines()[0][:60]
        assert answer.is_incomplete  # the client asks again as the user types
    finally:
        await client.shutdown_session()
        await client.stop()


async def test_clients_with_inline_completion_get_no_duplicate(lsp):
    open_document(lsp, "file:///work/no-duplicate.py", SOURCE)
    answer = await lsp.text_document_completion_async(completion_params("file:///work/no-duplicate.py", 4, 20))
    assert list(answer.items) == []
