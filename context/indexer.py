"""The workspace index: which definitions each file holds, kept current as files change.

    WorkspaceIndex.build()        walk (context.files) -> reuse unchanged entries from the store
                                  -> parse the rest (context.languages) -> save (context.store)
    WorkspaceIndex.update_file()  one file, from the watcher (disk) or the LSP (unsaved text)
    WorkspaceIndex.definitions()  name -> where it is defined, for retrieval

Unsaved text from the editor wins over the disk: a file open in the editor is indexed from its
buffer, and disk events for it are ignored until it is closed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from fimble.context.files import IGNORE_FILE_NAMES, FileLimits, IgnoreRules, UnindexableFile, iter_workspace_files, path_reason, read_source, secret_content_kind
from fimble.context.languages import Symbol, extract_symbols, language_id_for_path
from fimble.context.store import FileEntry, IndexStore, is_unchanged

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (files done, files in all)
# An editor opened on a home folder or `/` must not read the whole disk; beyond this many files
# the rest is left out (in walk order), with a warning.
MAX_INDEXED_FILES = 50_000


@dataclass(frozen=True)
class IndexReport:
    files: int
    parsed: int  # read and parsed again (new or changed)
    reused: int  # unchanged since the stored index
    removed: int  # in the store, gone from the disk
    seconds: float
    cancelled: bool = False


@dataclass(frozen=True)
class Definition:
    path: str
    symbol: Symbol


class WorkspaceIndex:
    def __init__(self, root: Path, store: IndexStore | None = None, limits: FileLimits = FileLimits(), max_files: int = MAX_INDEXED_FILES):
        self.root = root.resolve()
        self.max_files = max_files
        self.store = store or IndexStore(self.root)
        self.limits = limits
        self.entries: dict[str, FileEntry] = {}
        self.open_documents: dict[str, str] = {}  # relative path -> unsaved text
        self._by_name: dict[str, list[Definition]] = defaultdict(list)
        self._ignore_rules = IgnoreRules(self.root)  # loaded once; renewed when an ignore file changes
        self._lock = threading.RLock()

    # --- building ---------------------------------------------------------------------------------

    def build(self, progress: Progress | None = None, cancel: threading.Event | None = None) -> IndexReport:
        """Index the whole workspace; unchanged files (same size and mtime as stored) are not read."""
        started = time.perf_counter()
        stored = self.store.load()
        # Only files in a language we parse carry definitions; the rest would only cost reads.
        paths = [path for path in iter_workspace_files(self.root, self.limits) if language_id_for_path(path)]
        if len(paths) > self.max_files:
            log.warning("%s has %d source files; indexing the first %d", self.root, len(paths), self.max_files)
            paths = paths[: self.max_files]
        fresh: dict[str, FileEntry] = {}
        parsed = reused = 0
        for done, path in enumerate(paths, start=1):
            if cancel is not None and cancel.is_set():
                return IndexReport(len(paths), parsed, reused, 0, time.perf_counter() - started, cancelled=True)
            relative = self.relative(path)
            old = stored.get(relative)
            try:
                if old is not None and is_unchanged(old, path.stat()):
                    fresh[relative], reused = old, reused + 1
                else:
                    fresh[relative], parsed = self._entry_for(path, read_source(path, self.limits), old), parsed + 1
            except (UnindexableFile, OSError) as error:
                log.info("not indexed: %s (%s)", relative, error)
            if progress is not None and (done % 100 == 0 or done == len(paths)):
                progress(done, len(paths))
        removed = len(set(stored) - set(fresh))
        with self._lock:
            self.entries = fresh
            self._rebuild_names()
        self.store.save(fresh)
        return IndexReport(len(fresh), parsed, reused, removed, time.perf_counter() - started)

    # --- single files -----------------------------------------------------------------------------

    def update_file(self, path: Path, text: str | None = None, save: bool = True) -> bool:
        """Re-index one file from `text` (an editor buffer) or from the disk; False if it is not
        indexable (ignored, a secret, binary, too big), in which case it leaves the index."""
        path = path if path.is_absolute() else self.root / path
        relative = self.relative(path)
        if text is None and relative in self.open_documents:
            return True  # the editor's buffer wins over the disk
        try:
            if path.name in IGNORE_FILE_NAMES:
                self._ignore_rules = IgnoreRules(self.root)
            if language_id_for_path(path) is None:
                raise UnindexableFile("not a language Fimble parses")
            if (reason := path_reason(self.root, path, self._ignore_rules)) is not None:
                raise UnindexableFile(reason)
            if text is None:
                text = read_source(path, self.limits)  # size, binary, UTF-8 and credential checks
            elif (credential := secret_content_kind(text)) is not None:
                raise UnindexableFile(f"secret content: looks like a {credential}")
            entry = self._entry_for(path, text, self.entries.get(relative))
        except (UnindexableFile, OSError) as error:
            log.info("not indexed: %s (%s)", relative, error)
            self.remove_file(path, save=save)
            return False
        with self._lock:
            self._forget_names(relative)
            self.entries[relative] = entry
            self._add_names(relative, entry)
        if save:
            self.store.save(self.entries)
        return True

    def remove_file(self, path: Path, save: bool = True) -> None:
        relative = self.relative(path if path.is_absolute() else self.root / path)
        with self._lock:
            if relative not in self.entries:
                return
            self._forget_names(relative)
            del self.entries[relative]
        if save:
            self.store.save(self.entries)

    def open_document(self, path: Path, text: str) -> None:
        self.open_documents[self.relative(path)] = text
        self.update_file(path, text, save=False)

    def close_document(self, path: Path) -> None:
        self.open_documents.pop(self.relative(path), None)
        self.update_file(path)  # back to what is on disk

    # --- lookups ----------------------------------------------------------------------------------

    def definitions(self, name: str) -> list[Definition]:
        with self._lock:
            return list(self._by_name.get(name, ()))

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    # --- helpers ----------------------------------------------------------------------------------

    def _entry_for(self, path: Path, text: str, old: FileEntry | None) -> FileEntry:
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        # The stat after the read: a file changed in between is then read again at the next build.
        try:
            stat = path.stat()
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError:  # an editor buffer not saved yet
            size, mtime_ns = len(data), 0
        if old is not None and old.sha256 == digest:  # touched, not changed: keep the parse
            return FileEntry(old.path, size, mtime_ns, digest, old.language_id, old.symbols)
        language_id = language_id_for_path(path) or ""
        symbols = extract_symbols(text, language_id) if language_id else None
        definitions = [asdict(symbol) for symbol in symbols.definitions] if symbols else []
        return FileEntry(self.relative(path), size, mtime_ns, digest, language_id, definitions)

    def _rebuild_names(self) -> None:
        self._by_name.clear()
        for relative, entry in self.entries.items():
            self._add_names(relative, entry)

    def _add_names(self, relative: str, entry: FileEntry) -> None:
        for fields in entry.symbols:
            symbol = Symbol(**fields)
            self._by_name[symbol.name].append(Definition(relative, symbol))

    def _forget_names(self, relative: str) -> None:
        old = self.entries.get(relative)
        if old is None:
            return
        for fields in old.symbols:
            self._by_name[fields["name"]] = [d for d in self._by_name[fields["name"]] if d.path != relative]
