"""The server's workspace context without an editor: a file saved on disk reaches the index
through the watcher, and a deleted one leaves it."""

from __future__ import annotations

from fimble.lsp_server.workspace_context import WorkspaceContext
from tests.waiting import wait_for


def test_a_saved_file_reaches_the_index_and_a_deleted_one_leaves(tmp_path, monkeypatch):
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "project"
    root.mkdir()
    (root / "first.py").write_text("def first():\n    pass\n")
    context = WorkspaceContext(root)
    try:
        report = context.build()
        assert report.files == 1 and context.index.definitions("first")
        (root / "tax.py").write_text("def compute_vat(amount, rate):\n    return amount * rate\n")
        assert wait_for(lambda: context.index.definitions("compute_vat")), "the save never reached the index"
        (root / "first.py").unlink()
        assert wait_for(lambda: not context.index.definitions("first")), "the deleted file stayed in the index"
    finally:
        context.stop()


def test_an_older_edit_arriving_late_does_not_undo_a_newer_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "project"
    root.mkdir()
    path = root / "draft.py"
    path.write_text("")
    context = WorkspaceContext(root)
    try:
        context.build()
        context.document_changed(path, "def newest():\n    pass\n", sequence=2)
        context.document_changed(path, "def older():\n    pass\n", sequence=1)  # a slow worker
        assert context.index.definitions("newest") and not context.index.definitions("older")
    finally:
        context.stop()
