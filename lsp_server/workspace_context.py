"""The workspace's repository context inside `fimble lsp`: the index built in the background, kept
current from the disk (watcher) and the editor (open documents), and asked for a cursor's context.

Index work runs in worker threads, never on the event loop that answers keystrokes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from fimble.context.files import UnindexableFile, read_source, secret_reason
from fimble.context.indexer import IndexReport, WorkspaceIndex
from fimble.context.retrieve import repository_context
from fimble.models.families import RepoFormat
from fimble.context.watch import ChangeBatch, WorkspaceWatcher

log = logging.getLogger(__name__)

# Open or recently edited documents kept for the similar-chunks source of context.
RECENT_DOCUMENTS = 8


class WorkspaceContext:
    def __init__(self, root: Path, index: WorkspaceIndex | None = None):
        self.root = root.resolve()
        self.index = index or WorkspaceIndex(self.root)
        self.ready = threading.Event()
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._watcher: WorkspaceWatcher | None = None
        self._cancel = threading.Event()
        # Edits are applied in worker threads: one at a time, and an older edit that arrives after
        # a newer one of the same document is dropped.
        self._edits = threading.Lock()
        self._applied: dict[Path, int] = {}

    def build(self, progress: Callable[[int, int], None] | None = None) -> IndexReport:
        """Index the workspace (reusing the stored index), then follow changes on disk."""
        report = self.index.build(progress, self._cancel)
        if not report.cancelled:
            self._watcher = WorkspaceWatcher(self.root, self._apply_batch)
            self._watcher.start()
            self.ready.set()
        return report

    def stop(self) -> None:
        self._cancel.set()
        if self._watcher is not None:
            self._watcher.stop()

    def contains(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    # --- the editor's documents (called from worker threads) ------------------------------------------

    def document_changed(self, path: Path, text: str, sequence: int) -> None:
        """An editor buffer's text; `sequence` grows with every edit the server receives."""
        with self._edits:
            if sequence < self._applied.get(path, -1):
                return
            self._applied[path] = sequence
            relative = self.index.relative(path)
            if secret_reason(path, text) is None:
                self._recent[relative] = text
                self._recent.move_to_end(relative)
                while len(self._recent) > RECENT_DOCUMENTS:
                    self._recent.popitem(last=False)
            else:  # a buffer with secrets is no context for other files (it may have just got one)
                self._recent.pop(relative, None)
            if self.ready.is_set():  # the index refuses it, and drops what it held of it
                self.index.open_document(path, text)

    def document_closed(self, path: Path, sequence: int) -> None:
        with self._edits:
            if sequence < self._applied.get(path, -1):
                return
            self._applied[path] = sequence
            if self.ready.is_set():
                self.index.close_document(path)

    # --- asking --------------------------------------------------------------------------------------

    def context_source(self, path: Path, prefix: str, suffix: str):
        """A completion.service.ContextSource for the cursor between `prefix` and `suffix`."""
        current = self.index.relative(path)

        def source(tokenizer, budget_tokens: int, repo: RepoFormat) -> str:
            if not self.ready.is_set():
                return ""  # still indexing: complete without context rather than wait
            return repository_context(
                self.index,
                current,
                prefix,
                suffix,
                recent_files=self._recent_snapshot(),
                count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
                budget_tokens=budget_tokens,
                read_text=self._read_text,
                repo=repo,
            )

        return source

    def _recent_snapshot(self) -> dict[str, str]:
        with self._edits:
            return dict(self._recent)

    def _read_text(self, relative: str) -> str | None:
        """A file of the index, for its definitions' text; None when it cannot be read or holds a
        secret now (it was checked when indexed, but may have changed since)."""
        if relative in self.index.open_documents:
            text = self.index.open_documents[relative]
            return text if secret_reason(self.root / relative, text) is None else None
        try:
            return read_source(self.root / relative, self.index.limits)
        except UnindexableFile:
            return None

    def _apply_batch(self, batch: ChangeBatch) -> None:
        for path in batch.deleted:
            self.index.remove_file(path, save=False)
        for path in batch.changed:
            if path.is_file():
                self.index.update_file(path, save=False)
        self.index.store.save(self.index.entries)
