"""BM25 over a real workspace index: a question in words finds the definition it is about, in
another file; the BM25 index is rebuilt only for what changed; the context fits its budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from fimble.chat.retrieve import SymbolSearch, code_tokens, retrieved_context
from fimble.context.indexer import WorkspaceIndex
from fimble.context.retrieve import Snippet
from fimble.context.store import IndexStore

RETRY = '''"""Retrying failed requests."""

import random


def compute_backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before the next retry: exponential in the attempt, capped, with jitter."""
    delay = min(cap, base * 2**attempt)
    return delay * random.uniform(0.5, 1.0)


class RetryPolicy:
    def __init__(self, attempts: int = 3):
        self.attempts = attempts

    def should_retry(self, status: int) -> bool:
        return status >= 500
'''

CLIENT = '''import time

from net.retry import RetryPolicy, compute_backoff


class HttpClient:
    def __init__(self, session, policy: RetryPolicy | None = None):
        self.session = session
        self.policy = policy or RetryPolicy()

    def get(self, url: str):
        for attempt in range(self.policy.attempts):
            response = self.session.request("GET", url)
            if not self.policy.should_retry(response.status):
                return response
            time.sleep(compute_backoff(attempt))
        return response
'''

MAIN = '''from net.client import HttpClient


def parse_arguments(argv):
    return {"url": argv[1]}


def main(argv):
    arguments = parse_arguments(argv)
    print(HttpClient(None).get(arguments["url"]))
'''


class Workspace:
    def __init__(self, root: Path, cache: Path):
        self.root = root
        self.index = WorkspaceIndex(root, IndexStore(root, cache_dir=cache))
        self.reads: list[str] = []

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def read_text(self, relative: str) -> str | None:
        self.reads.append(relative)
        try:
            return (self.root / relative).read_text()
        except OSError:
            return None


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    workspace = Workspace(tmp_path / "project", tmp_path / "cache")
    workspace.write("net/retry.py", RETRY)
    workspace.write("net/client.py", CLIENT)
    workspace.write("app/main.py", MAIN)
    workspace.index.build()
    return workspace


def test_a_question_in_words_finds_the_definition(workspace: Workspace) -> None:
    search = SymbolSearch(workspace.index, workspace.read_text)
    snippets = search.search("how does the retry backoff work")
    best = snippets[0]
    assert best.path == "net/retry.py"
    assert best.text.startswith("def compute_backoff(") and "random.uniform" in best.text
    assert best.stability == 0  # a definition, not a chunk
    assert [s.score for s in snippets] == sorted((s.score for s in snippets), reverse=True)

    arguments = search.search("where are the command line arguments parsed?")
    assert arguments[0].path == "app/main.py" and arguments[0].text.startswith("def parse_arguments(")


def test_snippets_never_show_the_same_lines_twice(workspace: Workspace) -> None:
    snippets = SymbolSearch(workspace.index, workspace.read_text).search("compute_backoff", k=10)
    definition = "def compute_backoff("
    assert sum(definition in snippet.text for snippet in snippets) == 1
    assert any(snippet.path == "net/client.py" for snippet in snippets)  # its caller, shown once


def test_the_bm25_index_is_rebuilt_only_for_changed_files(workspace: Workspace) -> None:
    search = SymbolSearch(workspace.index, workspace.read_text)
    assert search.search("jitter")[0].path == "net/retry.py"
    assert sorted(workspace.reads) == ["app/main.py", "net/client.py", "net/retry.py"]
    search.search("backoff")
    assert len(workspace.reads) == 3  # unchanged index: nothing read again

    workspace.write("app/main.py", MAIN + "\n\ndef print_banner(version):\n    print('Fimble ' + version)\n")
    workspace.index.update_file(workspace.root / "app/main.py")
    banner = search.search("banner")
    assert banner[0].path == "app/main.py" and "def print_banner(version)" in banner[0].text
    assert workspace.reads[3:] == ["app/main.py"]

    workspace.index.remove_file(workspace.root / "net/retry.py")
    assert all(snippet.path != "net/retry.py" for snippet in search.search("jitter backoff"))


def test_an_empty_index_gives_no_context(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    index = WorkspaceIndex(tmp_path / "empty", IndexStore(tmp_path / "empty", cache_dir=tmp_path / "cache"))
    index.build()
    snippets = SymbolSearch(index, lambda relative: None).search("how does the retry backoff work")
    assert snippets == []
    assert retrieved_context(snippets, len, 768) == ""


def test_a_question_of_only_common_words_finds_nothing(workspace: Workspace) -> None:
    assert SymbolSearch(workspace.index, workspace.read_text).search("how does this work?") == []


def test_retrieved_context_keeps_the_best_that_fit() -> None:
    def count_tokens(text: str) -> int:  # about four characters a token, as for code
        return len(text) // 4

    snippets = [
        Snippet("net/retry.py", "def compute_backoff(attempt):\n    return 2 ** attempt\n", 9.0),
        Snippet("big.py", "x = 1\n" * 400, 8.0),
        Snippet("web/app.tsx", "export const App = () => <div/>;", 7.0),
    ]
    context = retrieved_context(snippets, count_tokens, 60)
    assert context == (
        "net/retry.py\n```python\ndef compute_backoff(attempt):\n    return 2 ** attempt\n```\n\n"
        "web/app.tsx\n```tsx\nexport const App = () => <div/>;\n```"
    )
    assert count_tokens(context) <= 60
    assert retrieved_context(snippets, count_tokens, 5) == ""


def test_code_tokens_split_identifiers_and_keep_them_whole() -> None:
    assert code_tokens("parseHTTPResponse") == ["parsehttprespons", "pars", "http", "respons"]
    assert code_tokens("MAX_RETRIES") == ["max_retry", "max", "retry"]
    assert code_tokens("How does the retry work?") == ["retry"]
    assert code_tokens("retries") == code_tokens("retry")
