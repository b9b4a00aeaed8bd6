"""The index over a real little repository, and retrieval through it: a completion in one file
gets the definitions it uses from another."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fimble.context.indexer import WorkspaceIndex
from fimble.context.retrieve import repository_context
from fimble.models.families import QWEN25_CODER

REPO_NAME, FILE_SEP = QWEN25_CODER.repo.repo_marker, QWEN25_CODER.repo.file_marker
from fimble.context.store import IndexStore

CLIENT = textwrap.dedent(
    '''\
    """HTTP client for the shop API."""


    class Client:
        def __init__(self, base_url: str, session) -> None:
            self.base_url = base_url
            self.session = session

        def fetch_orders(self, customer_id: int, limit: int = 50) -> list[dict]:
            url = f"{self.base_url}/customers/{customer_id}/orders"
            response = self.session.get(url, params={"limit": limit})
            response.raise_for_status()
            return response.json()

        def cancel_order(self, order_id: int, reason: str) -> None:
            response = self.session.post(f"{self.base_url}/orders/{order_id}/cancel", json={"reason": reason})
            response.raise_for_status()


    def default_client() -> Client:
        return Client("https://shop.example", None)
    '''
)
MAIN = "from shop.api.client import Client, default_client\n\n\ndef report(customer_id):\n    client = default_client()\n    orders = client.\n"


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "shop-repo"
    (root / "shop" / "api").mkdir(parents=True)
    (root / "shop" / "api" / "client.py").write_text(CLIENT)
    (root / "shop" / "main.py").write_text(MAIN)
    (root / ".env").write_text("SHOP_TOKEN=ghp_" + "a" * 36 + "\n")
    (root / ".gitignore").write_text("build/\n")
    (root / "build").mkdir()
    (root / "build" / "generated.py").write_text("def generated():\n    pass\n")
    return root


def make_index(root: Path, tmp_path: Path) -> WorkspaceIndex:
    return WorkspaceIndex(root, IndexStore(root, cache_dir=tmp_path / "cache"))


def test_build_indexes_code_and_never_secrets_or_ignored_files(repo, tmp_path):
    index = make_index(repo, tmp_path)
    report = index.build()
    assert set(index.entries) == {"shop/api/client.py", "shop/main.py"}
    assert report.parsed == 2 and report.reused == 0
    assert [d.path for d in index.definitions("fetch_orders")] == ["shop/api/client.py"]
    assert index.definitions("generated") == []


def test_a_restart_with_nothing_changed_parses_nothing(repo, tmp_path):
    make_index(repo, tmp_path).build()
    again = make_index(repo, tmp_path).build()
    assert again.parsed == 0 and again.reused == 2


def test_unsaved_text_wins_over_the_disk_until_the_document_closes(repo, tmp_path):
    index = make_index(repo, tmp_path)
    index.build()
    client = repo / "shop" / "api" / "client.py"
    index.open_document(client, CLIENT + "\n\ndef refund(order_id):\n    pass\n")
    assert index.definitions("refund")
    index.update_file(client)  # a disk event for the open file is ignored
    assert index.definitions("refund")
    index.close_document(client)
    assert index.definitions("refund") == []


def test_retrieval_brings_the_class_from_another_file(repo, tmp_path):
    index = make_index(repo, tmp_path)
    index.build()
    prefix = MAIN
    context = repository_context(
        index,
        "shop/main.py",
        prefix,
        "",
        recent_files={},
        count_tokens=lambda text: len(text.split()),
        budget_tokens=400,
        read_text=lambda path: (repo / path).read_text(),
    )
    assert context.startswith(f"{REPO_NAME}shop-repo\n{FILE_SEP}shop/api/client.py\n")
    assert "def fetch_orders(self, customer_id: int, limit: int = 50) -> list[dict]:" in context
    assert "def cancel_order(self, order_id: int, reason: str) -> None:" in context
    assert context.endswith(f"{FILE_SEP}shop/main.py\n")


def test_an_open_buffer_with_a_secret_or_a_secret_name_never_enters_the_index(repo, tmp_path):
    index = make_index(repo, tmp_path)
    index.build()
    settings = repo / "shop" / "settings.py"
    index.open_document(settings, 'API_KEY = "AKIA' + "A" * 16 + '"\ndef configure():\n    pass\n')
    assert "shop/settings.py" not in index.entries and index.definitions("configure") == []
    index.open_document(repo / "shop" / "id_rsa.py", "def vault():\n    pass\n")
    assert index.definitions("vault") == []
    # A source file named like a credential store is judged by its contents (secret_name_pattern).
    index.open_document(repo / "shop" / "secrets.py", "def token_hex(nbytes):\n    pass\n")
    assert [d.path for d in index.definitions("token_hex")] == ["shop/secrets.py"]


def test_a_huge_workspace_is_indexed_up_to_the_file_cap(repo, tmp_path, caplog):
    index = WorkspaceIndex(repo, IndexStore(repo, cache_dir=tmp_path / "cache"), max_files=1)
    report = index.build()
    assert report.files == 1 and len(index.entries) == 1
    assert "indexing the first 1" in caplog.text


def test_the_imports_definitions_come_first_and_stay_put_as_the_cursor_moves(repo, tmp_path):
    """Definitions of the file's imports are the same anywhere in the file, so they lead the
    context; definitions of the names near the cursor follow them."""
    (repo / "shop" / "money.py").write_text("class Money:\n    def cents(self) -> int:\n        return 0\n")
    main = "from shop.api.client import default_client\n\n\ndef report(customer_id):\n    client = default_client()\n"
    index = make_index(repo, tmp_path)
    index.build()

    def context_at(prefix: str) -> str:
        return repository_context(
            index, "shop/main.py", prefix, "", {}, lambda text: len(text.split()), 400, lambda path: (repo / path).read_text()
        )

    here = context_at(main + "    money = ")
    there = context_at(main + "    total: Money = ")
    imports_block = here[: here.index(f"{FILE_SEP}shop/money.py")] if "shop/money.py" in here else here
    assert "def default_client() -> Client:" in imports_block
    assert there.startswith(imports_block)  # the cursor moved: the leading text is unchanged
    assert "class Money:" in there and there.index("shop/api/client.py") < there.index("shop/money.py")


@pytest.mark.parametrize(
    "code_before_cursor, needs_context",
    [
        ("    orders = client.", True),  # `client` holds a Client (its constructor's file is elsewhere)
        ("    orders = default_client().", True),  # a function another file defines
        ("    total = len(", False),  # a builtin
        ("    total = report(", False),  # defined in this file
        ("    ", False),  # nothing typed on the line yet, and every import is used
    ],
)
def test_context_comes_only_when_the_line_names_what_another_file_defines(repo, tmp_path, code_before_cursor, needs_context):
    main = "from shop.api.client import Client, default_client\n\n\ndef report(customer_id):\n    client = Client('x', None)\n    other = default_client()\n"
    (repo / "shop" / "main.py").write_text(main)
    index = make_index(repo, tmp_path)
    index.build()
    context = repository_context(
        index, "shop/main.py", main + code_before_cursor, "\n", {}, lambda text: len(text.split()), 400, lambda path: (repo / path).read_text()
    )
    assert ("shop/api/client.py" in context) is needs_context, context


def test_an_import_not_used_yet_brings_its_definition_to_an_empty_line(repo, tmp_path):
    """The file imports a name it never uses: the cursor may be about to write its first use."""
    main = "from shop.api.client import default_client\n\n\ndef report(customer_id):\n    "
    index = make_index(repo, tmp_path)
    index.build()
    context = repository_context(index, "shop/main.py", main, "\n", {}, lambda text: len(text.split()), 400, lambda path: (repo / path).read_text())
    assert "def default_client() -> Client:" in context
