"""Secrets audit: does any secret reach a prompt, and how many ordinary files do the secret rules
refuse?

    python benchmarks/secrets_audit.py      # the "secrets" part of benchmarks/results/reliability.json

1. `secret_files`, `secrets_leaked`: the corpus of tests/context/secrets_corpus.py (realistic keys
   and tokens, by name and inside ordinary source files, next to code that uses their names) goes
   through each path by which file text reaches a prompt, with the prompt builders run directly:
   the index and a completion's repository context (every secret also open as an editor buffer,
   through lsp_server.workspace_context as in `fimble lsp`), the check that keeps a secret buffer's
   own text from being a completion prompt (lsp_server.server), `@file:`, file and selection
   attachments, and chat retrieval. A secret file counts as leaked when any of its values is in any
   of that text. (tests/lsp_server/test_secrets_never_reach_a_model.py drives the same paths, and
   code actions, through the real `fimble lsp` and a recording proxy in front of a llama.cpp
   server, in about 45 s; this script needs no server.)
2. `false_positive_files`: every text file of the real source trees on this machine (the venv's
   site-packages, the standard library, google-auth's wheel, npm, the test tools' node_modules)
   checked by the rules as the index and chat check them (name, then contents). A file refused by
   name that holds a private key or token (test keys: CPython's certdata, moto's proxy CA) is a true
   positive; every other refused file is a false positive (CA bundles, and documentation examples
   refused by their contents, each inspected). The rules before this audit are measured on the same
   files for comparison.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reliability_results import record  # noqa: E402
from fimble.chat.retrieve import SymbolSearch, retrieved_context  # noqa: E402
from fimble.chat.service import AttachmentError, AttachmentRequest, ChatRequest, ChatWorkspace, resolve_attachments  # noqa: E402
from fimble.context import files  # noqa: E402
from fimble.context.indexer import WorkspaceIndex  # noqa: E402
from fimble.context.store import IndexStore  # noqa: E402
from fimble.lsp_server.workspace_context import WorkspaceContext  # noqa: E402
from fimble.models.backend import ApproximateTokenizer  # noqa: E402
from fimble.models.families import QWEN25_CODER  # noqa: E402
from tests.context.secrets_corpus import SecretsCorpus, build_secrets_corpus  # noqa: E402

# The rules before this audit, for the comparison: every name pattern on every file, and a private
# key's armour enough without its base64.
ARMOUR_ONLY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
ALL_NAME_PATTERNS = tuple((p, re.compile(fnmatch.translate(p))) for p in files.SECRET_NAME_PATTERNS + files.SECRET_DATA_NAME_PATTERNS)
RULES_BEFORE = ("AWS access key id", "GitHub token", "Slack token")  # and the private key's armour


# ---------------------------------------------------------------------------------------------
# 1. The corpus through every path to a prompt


def completion_texts(corpus: SecretsCorpus, cache: Path) -> dict[str, list[str]]:
    """What completions would send: the repository context of each ordinary file with every
    secret open as a buffer, and each secret buffer's own text unless the server's check refuses it."""
    context = WorkspaceContext(corpus.root, WorkspaceIndex(corpus.root, IndexStore(corpus.root, cache_dir=cache)))
    context.build()
    try:
        for sequence, secret in enumerate(corpus.secrets):
            path = corpus.root / secret.path
            context.document_changed(path, path.read_text(), sequence)
        prompts = []
        for relative in corpus.ordinary:
            text = (corpus.root / relative).read_text()
            middle = len(text) // 2
            source = context.context_source(corpus.root / relative, text[:middle], text[middle:])
            prompts.append(source(ApproximateTokenizer(), 100_000, QWEN25_CODER.repo) + text)
        buffers = [(corpus.root / s.path).read_text() for s in corpus.secrets if files.secret_reason(corpus.root / s.path, (corpus.root / s.path).read_text()) is None]
        return {"index and repository context": prompts, "a secret's own buffer": buffers, "indexed files": list(context.index.entries)}
    finally:
        context.stop()


def chat_texts(corpus: SecretsCorpus, index: WorkspaceIndex) -> dict[str, list[str]]:
    """What chat would send: each secret as `@file:`, as a file attachment and as a selection of
    its open buffer (whatever is not refused), and retrieval for a question naming their contents."""
    buffers = {corpus.root / s.path: (corpus.root / s.path).read_text() for s in corpus.secrets}
    workspace = ChatWorkspace(corpus.root, index, lambda path: buffers.get(path))
    sent: dict[str, list[str]] = collections.defaultdict(list)
    for secret in corpus.secrets:
        path = corpus.root / secret.path
        requests = {
            "@file": ChatRequest(f"Explain @file:{secret.path}"),
            "file attachment": ChatRequest("Explain", attachments=(AttachmentRequest("file", path=path),)),
            "selection attachment": ChatRequest("Explain", attachments=(AttachmentRequest("selection", path=path, start_line=0, end_line=5, text=buffers[path]),)),
        }
        for kind, request in requests.items():
            try:
                sent[kind] += [attachment.text for attachment in resolve_attachments(request, workspace)]
            except AttachmentError:
                continue  # refused: nothing of it is sent
    question = "charge_customer STRIPE_API_KEY GITHUB_PAT release_headers DEPLOY_KEY SigningKey postSlackMessage publishPackage token key password"
    snippets = SymbolSearch(index, workspace.read_relative).search(question, k=50)
    sent["chat retrieval"] = [retrieved_context(snippets, len, 1_000_000)]
    return sent


def leak_audit(corpus: SecretsCorpus, cache: Path) -> dict:
    texts = completion_texts(corpus, cache / "completion")
    indexed = texts.pop("indexed files")
    index = WorkspaceIndex(corpus.root, IndexStore(corpus.root, cache_dir=cache / "chat"))
    index.build()
    texts.update(chat_texts(corpus, index))
    leaked_by_path = {path: sorted({secret for secret, _ in corpus.leaks_in("\n".join(sent))}) for path, sent in texts.items()}
    leaked = sorted({secret for secrets in leaked_by_path.values() for secret in secrets})
    secret_paths = {secret.path for secret in corpus.secrets}
    return {
        "secret_files": len(corpus.secrets),
        "secrets_leaked": len(leaked),
        "leaked": leaked,
        "leaked_by_path": leaked_by_path,
        "texts_checked_by_path": {path: len(sent) for path, sent in texts.items()},
        "secrets_indexed": sorted(secret_paths & set(indexed)),
        "kinds": sorted({secret.kind for secret in corpus.secrets}),
    }


# ---------------------------------------------------------------------------------------------
# 2. False positives on real source trees


@dataclass(frozen=True)
class Verdict:
    path: Path
    tree: str  # which of source_trees()
    rule: str  # "name 'credentials*'", "content: private key", ...
    # For a file refused by name, what the content rules find in it: a `*.pem` holding a private
    # key is a true positive, a CA bundle is not.
    holds: str | None = None


def google_auth_tree(work: Path) -> Path:
    """google-auth's sources (its credentials.py files), from the installed package or its wheel."""
    try:
        import google.auth

        return Path(google.auth.__file__).parents[1]
    except ImportError:
        pass
    target = work / "google-auth"
    if not target.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(work), "google-auth"], check=True, timeout=300)
        with zipfile.ZipFile(next(work.glob("google_auth-*.whl"))) as wheel:
            wheel.extractall(target)
    return target


def source_trees(work: Path) -> dict[str, Path]:
    trees = {
        "site-packages": Path(sysconfig.get_paths()["purelib"]),
        # The base interpreter's lib folder: the standard library and that interpreter's own packages.
        "base Python (stdlib and its site-packages)": Path(sysconfig.get_paths()["stdlib"]),
        "google-auth": google_auth_tree(work),
        "npm": Path("/usr/lib/node_modules"),
        "test tools (code-server, playwright-core)": Path(os.environ.get("FIMBLE_TEST_TOOLS") or Path.home() / ".cache" / "fimble-test-tools"),
    }
    return {name: path for name, path in trees.items() if path.is_dir()}


def text_files(root: Path):
    """Regular files under `root` that the index or chat could read as text (the secret rules
    aside): at most 1 MiB, no NUL in the first 8 KiB, UTF-8."""
    limits = files.FileLimits()
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file() or path.stat().st_size > limits.max_bytes:
                continue
            data = path.read_bytes()
            if b"\0" in data[: limits.binary_sniff_bytes]:
                continue
            try:
                yield path, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


def verdict_now(path: Path, text: str) -> str | None:
    if (pattern := files.secret_name_pattern(path.name)) is not None:
        return f"name {pattern!r}"
    if (kind := files.secret_content_kind(text)) is not None:
        return f"content: {kind}"
    return None


def verdict_before(path: Path, text: str) -> str | None:
    lowered = path.name.lower()
    for pattern, regex in ALL_NAME_PATTERNS:
        if regex.match(lowered):
            return f"name {pattern!r}"
    if "PRIVATE KEY" in text and ARMOUR_ONLY.search(text):
        return "content: private key"
    for rule in files.SECRET_CONTENT_RULES:
        if rule.name in RULES_BEFORE and rule.pattern.search(text):
            return f"content: {rule.name}"
    return None


def true_positive(verdict: Verdict) -> str | None:
    """What real secret a refused file holds, or None (a false positive)."""
    if verdict.rule.startswith("name") and verdict.holds is not None:
        return f"named like a secret and holds a {verdict.holds}"
    return None  # refused by its contents alone: each such file was inspected, all are documentation examples


def refusal_report(verdicts: list[Verdict]) -> dict:
    false_positives = [v for v in verdicts if true_positive(v) is None]
    by_rule: dict[str, list[str]] = collections.defaultdict(list)
    for verdict in false_positives:
        by_rule[verdict.rule].append(str(verdict.path))
    return {
        "refused": len(verdicts),
        "false_positive_files": len(false_positives),
        "false_positive_source_files": sum(v.path.suffix in files.SOURCE_SUFFIXES for v in false_positives),
        "false_positives_by_tree": dict(collections.Counter(v.tree for v in false_positives)),
        "false_positives_by_rule": {rule: {"files": len(paths), "examples": paths[:6]} for rule, paths in sorted(by_rule.items())},
        "true_positives": {str(v.path): why for v in verdicts if (why := true_positive(v)) is not None},
    }


def false_positive_audit(work: Path) -> dict:
    trees = source_trees(work)
    now: list[Verdict] = []
    before: list[Verdict] = []
    scanned: dict[str, int] = {}
    for name, root in trees.items():
        count = 0
        for path, text in text_files(root):
            count += 1
            if (rule := verdict_now(path, text)) is not None:
                now.append(Verdict(path, name, rule, files.secret_content_kind(text)))
            if (rule := verdict_before(path, text)) is not None:
                before.append(Verdict(path, name, rule, files.secret_content_kind(text)))
        scanned[name] = count
    return {"trees": {name: str(path) for name, path in trees.items()}, "text_files_scanned": scanned, "now": refusal_report(now), "before": refusal_report(before)}


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fimble-secrets-audit", help="where google-auth's wheel is unpacked")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fimble-secrets-") as scratch:
        corpus = build_secrets_corpus(Path(scratch) / "shop")
        leaks = leak_audit(corpus, Path(scratch) / "cache")
    fp = false_positive_audit(args.work)
    figures = {"secret_files": leaks["secret_files"], "secrets_leaked": leaks["secrets_leaked"], "false_positive_files": fp["now"]["false_positive_files"]}
    details = {
        "leak_method": "prompt builders run directly on the corpus (index, repository context with open buffers, the server's buffer check, @file, attachments, chat retrieval); the LSP end to end is tests/lsp_server/test_secrets_never_reach_a_model.py",
        "leaks": leaks,
        "false_positives": fp,
        "false_positive_files_before_tuning": fp["before"]["false_positive_files"],
        "rule_decision": (
            "credentials* and secrets.* refuse a file by name only when its extension is not a source language's "
            "(google-auth's credentials.py, the stdlib's secrets.py are code; their contents still go through the content rules); "
            "a private key needs its base64 after the armour (code naming the armour is no key). Certificate files (*.pem, *.crt) "
            "stay refused by name: the false positives left are CA bundles and a test certificate, which no prompt needs, "
            "while *.pem is where private keys are most often kept."
        ),
    }
    record("secrets", figures, command="python benchmarks/secrets_audit.py", details=details)
    print(f"secret_files {figures['secret_files']}, secrets_leaked {figures['secrets_leaked']} {leaks['leaked']}")
    print(f"text files scanned: {fp['text_files_scanned']}")
    for label in ("before", "now"):
        report = fp[label]
        print(f"{label}: refused {report['refused']}, false positives {report['false_positive_files']} ({report['false_positive_source_files']} source files)")
        for rule, entry in report["false_positives_by_rule"].items():
            print(f"    {entry['files']:4d}  {rule}: {', '.join(entry['examples'][:3])}")
    return 0 if figures["secrets_leaked"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
