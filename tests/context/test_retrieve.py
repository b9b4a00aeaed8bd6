"""Retrieval's plain parts on real-looking code: similar chunks, dedupe, budget and the
repository-level prompt format."""

from __future__ import annotations

from fimble.context.retrieve import (
    Snippet,
    dedupe,
    format_repo_context,
    identifiers,
    jaccard,
    similar_chunks,
)
from fimble.models.families import QWEN25_CODER

REPO_NAME, FILE_SEP = QWEN25_CODER.repo.repo_marker, QWEN25_CODER.repo.file_marker

CLIENT = '''class Client:
    def __init__(self, base_url, session):
        self.base_url = base_url
        self.session = session

    def get_user(self, user_id):
        return self.session.request("GET", f"{self.base_url}/users/{user_id}")

    def delete_user(self, user_id):
        return self.session.request("DELETE", f"{self.base_url}/users/{user_id}")
'''
UNRELATED = "import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n"


def count_words(text: str) -> int:
    return len(text.split())


def test_identifiers_skip_keywords_and_single_letters():
    assert identifiers("def get_user(self, x):\n    return self.session") == {"get_user", "session"}


def test_jaccard():
    assert jaccard(frozenset({"a", "b"}), frozenset({"b", "c"})) == 1 / 3
    assert jaccard(frozenset(), frozenset({"b"})) == 0.0


def test_the_most_similar_chunk_comes_from_the_related_file():
    cursor_code = "client = Client(base_url, session)\nuser = client.get_user(user_id)\nclient."
    found = similar_chunks(cursor_code, {"api/client.py": CLIENT, "geometry.py": UNRELATED})
    assert found and found[0].path == "api/client.py"
    assert all(snippet.path != "geometry.py" for snippet in found)


def test_dedupe_drops_text_contained_in_a_better_snippet():
    whole = Snippet("a.py", CLIENT, 0.9)
    part = Snippet("a.py", "    def get_user(self, user_id):\n", 0.5)
    other = Snippet("b.py", UNRELATED, 0.4)
    assert dedupe([whole, part, other]) == [whole, other]


def test_format_keeps_the_best_snippets_within_budget_in_stable_order():
    snippets = [
        Snippet("zeta.py", "def zeta():\n    pass\n", 0.2, stability=0),
        Snippet("alpha.py", "def alpha():\n    pass\n", 0.9, stability=1),
        Snippet("big.py", "word " * 500, 0.5, stability=0),
    ]
    context = format_repo_context("shop", snippets, "app/main.py", count_words, budget_tokens=40)
    assert context.startswith(f"{REPO_NAME}shop\n{FILE_SEP}zeta.py\ndef zeta():")
    assert f"{FILE_SEP}alpha.py\n" in context and "big.py" not in context  # over budget
    assert context.endswith(f"{FILE_SEP}app/main.py\n")
    assert count_words(context) <= 40
    assert format_repo_context("shop", [], "app/main.py", count_words, 40) == ""


def test_a_variable_brings_the_class_it_holds():
    from fimble.context.retrieve import declared_types, names_near_cursor, types_of

    prefix = "session = make_session()\nprepared_request = build(url)\nconsole: Console = get_console()\nworker = Pool(4)\n"
    declared = declared_types(prefix)
    assert types_of("prepared_request", declared) == ["PreparedRequest"]
    assert types_of("console", declared) == ["Console"]  # its annotation; its CamelCase name is the same
    assert types_of("worker", declared) == ["Pool", "Worker"]  # the constructor first
    assert types_of("Console", declared) == []  # a class is its own type
    # self.client = ..., an annotation in quotes, and a later assignment first.
    later = declared_types("self.client = Client(a)\nother: 'Session'\nclient = Proxy(b)\n")
    assert types_of("client", later) == ["Proxy", "Client"] and types_of("other", later) == ["Session", "Other"]
    near = names_near_cursor(prefix + "worker.", "")
    assert near[:3] == ["worker", "Pool", "Worker"]


def test_imports_are_grouped_by_where_the_file_uses_them():
    from fimble.context.retrieve import imports_by_use

    text = "from .utils import quote, unquote, rewind_body\n\nx = quote(url)\n\ny = unquote(x)\n"
    cursor = text.index("y = ")
    assert imports_by_use(text, text[:cursor]) == (["rewind_body"], ["unquote"], ["quote"])
