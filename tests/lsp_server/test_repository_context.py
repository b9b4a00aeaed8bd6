"""Repository context through the LSP: the server indexes the workspace with progress shown, and a
completion in one file is prompted with a definition that exists only in another file."""

from __future__ import annotations

import asyncio


from tests.lsp_server.conftest import inline_at, open_document, start_client

LEDGER = '''def summon_quarterly_ledger(region, quarter):
    """Totals per account for one region and quarter."""
    return {"region": region, "quarter": quarter, "totals": {}}
'''
# The file imports a function it does not use yet: the cursor may be about to, so its definition
# is worth a place in the prompt (context.retrieve.names_the_file_lacks).
REPORT = "from ledger import summon_quarterly_ledger\n\n\ndef report(region):\n    ledger = {}\n    return sorted(le\n"


async def test_a_completion_uses_a_definition_from_another_file(fimble_env, tmp_path):
    workspace = tmp_path / "books"
    workspace.mkdir()
    (workspace / "ledger.py").write_text(LEDGER)
    (workspace / "report.py").write_text(REPORT)
    (workspace / ".env").write_text("LEDGER_PASSWORD=hunter2\n")
    client = await start_client(fimble_env, root=workspace)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while not any(getattr(value, "kind", None) == "end" for value in client.progress_reports.get("fimble-index", [])):
            assert asyncio.get_running_loop().time() < deadline, client.progress_reports
            await asyncio.sleep(0.05)
        end = client.progress_reports["fimble-index"][-1]
        assert end.message.startswith("2 files")  # ledger.py and report.py; never .env

        uri = (workspace / "report.py").as_uri()
        open_document(client, uri, REPORT)
        answer = await inline_at(client, uri, 5, 18, invoked=True)
        assert answer.items, "the tiny model's completion at this cursor is not empty"
        assert answer.items[0].command.arguments[0]["contextFiles"] == ["ledger.py"]
    finally:
        await client.shutdown_session()
        await client.stop()
