"""Tree-sitter grammars, and the definitions in a file, for the workspace index.

This is the one place grammars are loaded (`completion/syntax.py` gets them from here). Each comes
from its own PyPI wheel, loaded once per process; nothing is downloaded or compiled at run time:

| languageId                     | wheel                  | extensions                        |
|--------------------------------|------------------------|-----------------------------------|
| python                         | tree-sitter-python     | .py .pyi                          |
| javascript, javascriptreact    | tree-sitter-javascript | .js .mjs .cjs, .jsx               |
| typescript, typescriptreact    | tree-sitter-typescript | .ts .mts .cts, .tsx               |
| go                             | tree-sitter-go         | .go                               |
| rust                           | tree-sitter-rust       | .rs                               |
| java                           | tree-sitter-java       | .java                             |
| c                              | tree-sitter-c          | .c .h                             |
| cpp                            | tree-sitter-cpp        | .cc .cpp .cxx .c++ .hh .hpp .hxx  |
| ruby                           | tree-sitter-ruby       | .rb .rake .gemspec                |

Definitions come from the `queries/tags.scm` that every one of these wheels ships (the same
queries as GitHub's code navigation). Their reference patterns are not used: retrieval finds the
names near the cursor from the text itself (context/retrieve.py). A definition's range is the whole
definition (what retrieval cuts out as a snippet). Lines and columns are 0-based; columns count
code points, not the UTF-8 bytes that tree-sitter counts.
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tree_sitter import Language, Node, Parser, Query, QueryCursor, Tree


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: str  # "function", "class", "method", "module", "interface", "type", "constant", ...
    start_line: int  # 0-based
    start_column: int  # 0-based, code points
    end_line: int
    end_column: int
    signature: str = ""  # the first line of the definition, stripped


@dataclass(frozen=True)
class FileSymbols:
    language_id: str
    definitions: tuple[Symbol, ...]


# ---------------------------------------------------------------------------------------------
# Grammars: LSP languageId -> the wheel's module and the function in it that returns the grammar.
# ---------------------------------------------------------------------------------------------

_GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),  # the JavaScript grammar parses JSX
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "ruby": ("tree_sitter_ruby", "language"),
}

_EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascriptreact",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "typescriptreact",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    # A `.h` may be C or C++; the C grammar reads the common subset, and C++ headers mostly use
    # the extensions below.
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hh": "cpp", ".hpp": "cpp", ".hxx": "cpp",
    ".rb": "ruby", ".rake": "ruby", ".gemspec": "ruby",
}  # fmt: skip


def language_id_for_path(path: str | Path) -> str | None:
    """The languageId of a file by its extension; None for a language we don't parse."""
    return _EXTENSIONS.get(Path(path).suffix.lower())


@cache
def _load_grammar(module_name: str, function_name: str) -> Language | None:
    # A missing wheel (or one built for another tree-sitter ABI) degrades to "no grammar"
    # instead of failing every completion or index run in that language.
    try:
        module = importlib.import_module(module_name)
        return Language(getattr(module, function_name)())
    except (ImportError, AttributeError, ValueError):
        return None


def language_for(language_id: str) -> Language | None:
    """The grammar for an LSP languageId, or None when we ship none for it."""
    grammar = _GRAMMARS.get(language_id)
    return _load_grammar(*grammar) if grammar else None


def parse(text: str, language_id: str) -> Tree | None:
    """Parse a document; None when the language has no grammar."""
    language = language_for(language_id)
    if language is None:
        return None
    # A Parser costs well under a microsecond to make, and one per call is safe across threads.
    parser = Parser(language)
    return parser.parse(text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Tag queries: the wheel's tags.scm.
# ---------------------------------------------------------------------------------------------

# Which wheels' tags.scm a language runs. TypeScript's file only adds the TypeScript-only
# constructs (interfaces, signatures) to JavaScript's, as tree-sitter's own tagging config does.
_TAG_SOURCES: dict[str, tuple[str, ...]] = {
    "typescript": ("tree_sitter_javascript", "tree_sitter_typescript"),
    "typescriptreact": ("tree_sitter_javascript", "tree_sitter_typescript"),
}

def _wheel_tags(module_name: str) -> str:
    """The queries/tags.scm shipped inside a grammar wheel ("" when it has none)."""
    try:
        tags = importlib.resources.files(module_name) / "queries" / "tags.scm"
        return tags.read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError):
        return ""


@cache
def _tags_query(language_id: str) -> Query | None:
    language = language_for(language_id)
    if language is None:
        return None
    default_module = _GRAMMARS[language_id][0]
    sources = [_wheel_tags(module) for module in _TAG_SOURCES.get(language_id, (default_module,))]
    text = "\n".join(sources)
    # The binding evaluates #eq?/#match?/#any-of? (and their not- forms) itself and ignores the
    # directives it doesn't know (#strip!, #select-adjacent!, #set-adjacent!), which only shape
    # the @doc capture we don't use.
    return Query(language, text) if text.strip() else None


# ---------------------------------------------------------------------------------------------
# Symbols from a tree.
# ---------------------------------------------------------------------------------------------


def extract_symbols(text: str, language_id: str) -> FileSymbols | None:
    """The definitions of a file; None when the language has no grammar.

    A file with syntax errors still yields what parses: tree-sitter recovers around the error.
    """
    tree = parse(text, language_id)
    if tree is None:
        return None
    query = _tags_query(language_id)
    if query is None:
        return FileSymbols(language_id, ())
    lines = text.split("\n")
    definitions: dict[tuple[int, int], Symbol] = {}
    # Matches come in document order; when two patterns tag one name (Rust's method pattern and its
    # function pattern both match a method), the earlier pattern is the more specific one.
    matches = sorted(QueryCursor(query).matches(tree.root_node), key=lambda match: match[0])
    for _, captures in matches:
        names = captures.get("name")
        # Other captures: @doc (unused), reference tags, and helpers such as Ruby's @ignore.
        tag = next((capture for capture in captures if capture.startswith("definition.")), None)
        if not names or tag is None:
            continue
        name_node, kind = names[0], tag.removeprefix("definition.")
        key = (name_node.start_byte, name_node.end_byte)
        definitions.setdefault(key, _definition(name_node, captures[tag][0], kind, lines))
    return FileSymbols(language_id, tuple(symbol for _, symbol in sorted(definitions.items())))


def _definition(name_node: Node, tagged_node: Node, kind: str, lines: list[str]) -> Symbol:
    node = _whole_declaration(tagged_node)
    if kind == "function" and _is_python_method(node):
        kind = "method"  # Python's tags call every `def` a function
    return _symbol(name_node, node, kind, lines)


def _whole_declaration(node: Node) -> Node:
    # C and C++ tag the declarator `add(int a, int b)`; the definition is the node above the
    # declarators (`int add(int a, int b) { ... }`), which holds the return type and the body.
    while node.type.endswith("declarator") and node.parent is not None:
        node = node.parent
    return node


def _is_python_method(node: Node) -> bool:
    # function_definition (or the decorated_definition around it) -> block -> class_definition.
    parent = node.parent
    if parent is not None and parent.type == "decorated_definition":
        parent = parent.parent
    if parent is None or parent.type != "block":
        return False
    return parent.parent is not None and parent.parent.type == "class_definition"


def _symbol(name_node: Node, range_node: Node, kind: str, lines: list[str]) -> Symbol:
    start_line, start_column = _code_point_position(range_node.start_point, lines)
    end_line, end_column = _code_point_position(range_node.end_point, lines)
    signature = _signature_line(start_line, name_node.start_point[0], lines)
    name = (name_node.text or b"").decode("utf-8", errors="replace")
    return Symbol(name, kind, start_line, start_column, end_line, end_column, signature)


def _signature_line(start_row: int, name_row: int, lines: list[str]) -> str:
    """The definition's first line, stripped and cut at 200 characters, skipping the lines of
    annotations and decorators above the name (Java's `@Override`, TypeScript's `@Input()`), which
    tell nothing about what the definition is."""
    for row in range(start_row, name_row):
        if not lines[row].strip().startswith("@"):
            return lines[row].strip()[:200]
    return lines[name_row].strip()[:200]


def _code_point_position(point: tuple[int, int], lines: list[str]) -> tuple[int, int]:
    # Tree-sitter columns are UTF-8 byte offsets into the line; editors and our callers count
    # code points.
    row, byte_column = point
    if row >= len(lines):
        return row, 0
    line_bytes = lines[row].encode("utf-8")
    return row, len(line_bytes[:byte_column].decode("utf-8", errors="ignore"))

