"""Which files of a workspace may enter the index: ignore files, secrets, binary and huge files.

Security-critical: the index feeds prompts, and prompts can end up in logs, crash reports or a
remote model later. A secret that enters the index has leaked, so secret rules are checked before
and independently of ignore files, and no ignore-file negation can bring a secret back.

Two stages, so that a restart with nothing changed reads no file contents:
- `iter_workspace_files` decides from names and `stat` alone (ignore files, secret names, the
  size cap, symlinks, non-regular files);
- `read_source` decides from contents (binary, non-UTF-8, private keys and tokens) when a file is
  actually read, raising `UnindexableFile`.

Directory choices: only VCS internals (`.git`, `.hg`, `.svn`) and `node_modules` are pruned by
name, because they are never the user's source and are huge. `__pycache__`, `dist`, `build`,
`venv` are left to ignore files: a project may really keep source in `build/` or `dist/`, and the
usual `.gitignore` already lists them. Two exceptions that need no name: a directory holding
`pyvenv.cfg` is a Python environment (third-party code, tens of thousands of files; venv,
virtualenv and uv all write that file), and `.ssh`, `.gnupg`, `.aws`, `.kube` directories are
secret stores (a user may open their home directory as a workspace).
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pathspec import GitIgnoreSpec

logger = logging.getLogger(__name__)

# Per directory, read in this order and concatenated: a later file's patterns win over an earlier
# one's, as ripgrep gives `.ignore` precedence over `.gitignore`; ours comes last so users can
# override both.
IGNORE_FILE_NAMES = (".gitignore", ".ignore", ".fimbleignore")
ALWAYS_PRUNED_DIRS = frozenset({".git", ".hg", ".svn", "node_modules"})
SECRET_DIRS = frozenset({".ssh", ".gnupg", ".aws", ".kube"})
VENV_MARKER = "pyvenv.cfg"

# Matched case-insensitively against the file name alone, so a `.fimbleignore` negation or an
# unusual directory cannot change the outcome.
SECRET_NAME_PATTERNS = (
    ".env", ".env.*", "*.env", ".envrc",
    "*.pem", "*.key", "*.crt", "*.cer", "*.der", "*.ppk",
    "*.p12", "*.pfx", "*.keystore", "*.jks", "*.kdbx",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    ".netrc", "_netrc", ".pgpass", ".git-credentials", ".npmrc", ".pypirc", ".htpasswd",
    "*.kubeconfig",
    "*.tfstate", "*.tfstate.*",
)  # fmt: skip
# Names that hold credentials as data (`credentials`, `credentials.json`, `secrets.toml`) but name
# ordinary code as source files (google-auth's `credentials.py`, the standard library's
# `secrets.py`): these apply only when the extension is not a source language's, and a source
# file's contents go through the content rules like any other's. Applied to every name, they
# refused 15 source files of the installed packages and the standard library, none a secret
# (benchmarks/secrets_audit.py).
SECRET_DATA_NAME_PATTERNS = ("credentials*", "secrets.*", "kubeconfig*")
SOURCE_SUFFIXES = frozenset(
    ".py .pyi .js .mjs .cjs .jsx .ts .mts .cts .tsx .go .rs .java .kt .scala .rb .php .c .h .cc .cpp .hpp "
    ".cs .swift .dart .lua .ex .exs".split()
)  # shell scripts are not here: `credentials.sh` is usually a list of exports
_SECRET_NAME_RES = tuple((p, re.compile(fnmatch.translate(p))) for p in SECRET_NAME_PATTERNS)
_SECRET_DATA_NAME_RES = tuple((p, re.compile(fnmatch.translate(p))) for p in SECRET_DATA_NAME_PATTERNS)


@dataclass(frozen=True)
class _ContentRule:
    name: str
    # A cheap substring pre-check: a single regex with alternatives scans at ~13 MB/s in CPython,
    # substring tests first bring a whole-file scan to ~120 MB/s (measured on the stdlib sources).
    triggers: tuple[str, ...]
    pattern: re.Pattern[str]
    # A match holding this is a documented example, not a credential: AWS's documentation and SDKs
    # spell theirs AKIAIOSFODNN7EXAMPLE (42 files of awscli, boto3 and moto were refused for them).
    example_marker: str | None = None

    def finds(self, text: str) -> bool:
        if not any(trigger in text for trigger in self.triggers):
            return False
        if self.example_marker is None:
            return self.pattern.search(text) is not None
        return any(self.example_marker not in match.group() for match in self.pattern.finditer(text))


# A private key's armour, then its base64 (after the RFC 1421 header lines of an encrypted key or
# PGP's "Version:"). Line breaks may be real or escaped inside a string literal (a service
# account's JSON, a key pasted into code). The base64 is required: code that only names the armour
# (`_PKCS8_MARKER = "-----BEGIN PRIVATE KEY-----"`, a regex, a docs placeholder "XXXX") is no key;
# the armour alone refused 21 such files of installed packages and the npm CLI, none a key.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:\s|\\[rn]|[\"'`+,])+"
    r"(?:[A-Za-z-]+:[^\n\\]*(?:\s|\\[rn])+)*"
    r"[A-Za-z0-9+/=]{24,}(?=\s|\\[rn]|[\"'`]|$)"  # a whole line of it: an elided example ("MIIE...") is none
)
# A kubeconfig (`kind: Config`) with a user's credential in it; the base64 of `client-key-data`
# hides the private key's armour from the rule above.
_KUBECONFIG_CREDENTIAL = re.compile(
    r"\A(?=.*^kind:\s*Config\s*$)(?=.*^\s*-?\s*(?:client-key-data|token|password):\s*[\"']?[A-Za-z0-9+/=._~-]{8,})",
    re.MULTILINE | re.DOTALL,
)

SECRET_CONTENT_RULES = (
    _ContentRule("private key", ("PRIVATE KEY",), _PRIVATE_KEY),
    _ContentRule("AWS access key id", ("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "EXAMPLE"),
    _ContentRule(
        "AWS secret access key",
        ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        re.compile(r"(?i)aws_secret_access_key[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
        "EXAMPLEKEY",
    ),
    _ContentRule(
        "GitHub token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b")
    ),
    _ContentRule("GitHub token", ("github_pat_",), re.compile(r"\bgithub_pat_[A-Za-z0-9_]{82}\b")),
    _ContentRule(
        "Slack token", ("xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"), re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}")
    ),
    _ContentRule(
        "Stripe key",
        ("sk_live_", "rk_live_", "sk_test_", "rk_test_", "sk_prod_", "rk_prod_"),
        re.compile(r"\b[rs]k_(?:live|test|prod)_[A-Za-z0-9]{24,}\b"),
    ),
    _ContentRule("npm token", ("npm_",), re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),
    _ContentRule("PyPI token", ("pypi-AgE",), re.compile(r"\bpypi-AgE[A-Za-z0-9_-]{50,}")),
    # header.payload.signature, both JSON objects ("eyJ" is the base64 of '{"'); an unsigned token
    # (empty signature) authenticates nothing.
    _ContentRule(
        "JSON web token", ("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
    ),
    _ContentRule("kubeconfig credential", ("kind: Config",), _KUBECONFIG_CREDENTIAL),
)


class SkipKind(StrEnum):
    """Why a file stays out of the index; every reason string starts with one of these."""

    IGNORED = "ignored"
    SECRET_NAME = "secret name"
    SECRET_CONTENT = "secret content"
    TOO_LARGE = "too large"
    BINARY = "binary"
    NOT_UTF8 = "not UTF-8"
    SYMLINK = "symlink"
    NOT_REGULAR = "not a regular file"
    PRUNED_DIR = "pruned directory"
    OUTSIDE_WORKSPACE = "outside the workspace"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class FileLimits:
    max_bytes: int = 1024 * 1024
    # NUL within this many leading bytes marks a file binary (git's heuristic uses 8000).
    binary_sniff_bytes: int = 8192


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"not indexed: {self.path} ({self.reason})"


class UnindexableFile(Exception):
    """A file that must stay out of the index. `reason` says why; `kind` is its `SkipKind`, taken
    from the reason's leading word when not given (None for a reason from outside this module)."""

    def __init__(self, reason: str, kind: SkipKind | None = None) -> None:
        self.reason = reason
        self.kind = kind if kind is not None else _kind_of(reason)
        super().__init__(reason)


def _kind_of(reason: str) -> SkipKind | None:
    prefix = reason.split(":", 1)[0]
    return SkipKind(prefix) if prefix in SkipKind._value2member_map_ else None


def _unindexable(kind: SkipKind, detail: str) -> UnindexableFile:
    return UnindexableFile(f"{kind}: {detail}", kind)


SkipCallback = Callable[[Skipped], None]


def _log_skip(skipped: Skipped) -> None:
    logger.info("%s", skipped)


# ---------------------------------------------------------------------------------------------
# Secrets


def secret_name_pattern(name: str) -> str | None:
    """The secret pattern a file name matches, or None."""
    lowered = name.lower()
    for pattern, regex in _SECRET_NAME_RES:
        if regex.match(lowered):
            return pattern
    if os.path.splitext(lowered)[1] not in SOURCE_SUFFIXES:
        for pattern, regex in _SECRET_DATA_NAME_RES:
            if regex.match(lowered):
                return pattern
    return None


def secret_path_reason(path: Path) -> str | None:
    """Why a file is a secret from its path alone: its name, or a credentials directory (`.ssh`,
    ...) anywhere above it; None otherwise. For a file wherever it lies, ignore files aside."""
    if (pattern := secret_name_pattern(path.name)) is not None:
        return f"{SkipKind.SECRET_NAME}: matches {pattern!r}"
    for parent in path.parts[:-1]:
        if parent.lower() in SECRET_DIRS:
            return f"{SkipKind.SECRET_NAME}: {parent} holds credentials"
    return None


def secret_reason(path: Path | None, text: str) -> str | None:
    """Why text must never reach a model: the path it comes from (`secret_path_reason`) or what it
    holds (`secret_content_kind`); None when neither marks it. For an editor's buffer, which may be
    outside the workspace and is never checked against ignore files: completing in an ignored file
    is fine, in a secret one it is not."""
    if path is not None and (reason := secret_path_reason(path)) is not None:
        return reason
    if (credential := secret_content_kind(text)) is not None:
        return f"{SkipKind.SECRET_CONTENT}: looks like a {credential}"
    return None


def secret_content_kind(text: str) -> str | None:
    """What kind of credential the text holds ("private key", ...), or None. Scans the whole text,
    not only its start: a token on line 300 is as secret as one on line 3, and the substring
    pre-check keeps it cheap."""
    for rule in SECRET_CONTENT_RULES:
        if rule.finds(text):
            return rule.name
    return None


# ---------------------------------------------------------------------------------------------
# Ignore files


@dataclass(frozen=True)
class _IgnoreLayer:
    base: Path  # patterns are relative to this directory, as in git
    spec: GitIgnoreSpec


def _read_patterns(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("cannot read ignore file %s (%s); its patterns are not applied", path, exc)
        return []


class IgnoreRules:
    """The ignore files of one workspace, loaded lazily per directory and cached for the life of
    the object: make a new one after an ignore file changes.

    Git's precedence: the ignore files nearest to a path win (a nested `.gitignore` can negate its
    parent's pattern); within one directory the last matching pattern wins; `.git/info/exclude`
    ranks below every `.gitignore`. A path under an ignored directory is ignored whatever its own
    patterns say, which the walk gets by not descending and `path_reason` by checking parents.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._layers: dict[Path, tuple[_IgnoreLayer, ...]] = {}

    def _own_layer(self, directory: Path) -> _IgnoreLayer | None:
        lines = [line for name in IGNORE_FILE_NAMES for line in _read_patterns(directory / name)]
        return _IgnoreLayer(directory, GitIgnoreSpec.from_lines(lines)) if lines else None

    def layers(self, directory: Path) -> tuple[_IgnoreLayer, ...]:
        """Layers that apply inside `directory`, outermost (lowest precedence) first."""
        cached = self._layers.get(directory)
        if cached is not None:
            return cached
        if directory == self.root:
            exclude = _read_patterns(self.root / ".git" / "info" / "exclude")
            inherited = (_IgnoreLayer(self.root, GitIgnoreSpec.from_lines(exclude)),) if exclude else ()
        else:
            inherited = self.layers(directory.parent)
        own = self._own_layer(directory)
        result = inherited + (own,) if own else inherited
        self._layers[directory] = result
        return result

    def is_ignored(self, path: Path, is_dir: bool) -> bool:
        """Whether ignore files exclude `path` itself (its parent directories not considered)."""
        for layer in reversed(self.layers(path.parent)):
            relative = path.relative_to(layer.base).as_posix() + ("/" if is_dir else "")
            verdict = layer.spec.check_file(relative).include
            if verdict is not None:
                return verdict
        return False


# ---------------------------------------------------------------------------------------------
# Name and stat rules (no content read)


def _stat_reason(mode: int, size: int, limits: FileLimits) -> str | None:
    if stat.S_ISLNK(mode):
        # Never followed: a target inside the root is indexed under its own path, one outside
        # is not the workspace (and might be ~/.ssh). This also makes link loops impossible.
        return f"{SkipKind.SYMLINK}: not followed"
    if not stat.S_ISREG(mode):
        return f"{SkipKind.NOT_REGULAR}: a FIFO or device could block or never end"
    if size > limits.max_bytes:
        return f"{SkipKind.TOO_LARGE}: {size} bytes > {limits.max_bytes}"
    return None


def _file_name_reason(rules: IgnoreRules, path: Path) -> str | None:
    """Reasons known from the name alone; secrets come first so their reason is logged even when
    an ignore file also excludes the file."""
    pattern = secret_name_pattern(path.name)
    if pattern is not None:
        return f"{SkipKind.SECRET_NAME}: matches {pattern!r}"
    if rules.is_ignored(path, is_dir=False):
        return f"{SkipKind.IGNORED}: by an ignore file"
    return None


def _dir_reason(rules: IgnoreRules, path: Path) -> str | None:
    """Why the walk must not descend into `path`, or None."""
    if path.name in ALWAYS_PRUNED_DIRS:
        return f"{SkipKind.PRUNED_DIR}: {path.name} is never source"
    if path.name.lower() in SECRET_DIRS:
        return f"{SkipKind.SECRET_NAME}: {path.name} holds credentials"
    if (path / VENV_MARKER).exists():  # one stat per directory, negligible next to scandir
        return f"{SkipKind.PRUNED_DIR}: a Python environment ({VENV_MARKER})"
    if rules.is_ignored(path, is_dir=True):
        return f"{SkipKind.IGNORED}: directory excluded by an ignore file"
    return None


# ---------------------------------------------------------------------------------------------
# The walk


def _scan_sorted(directory: Path) -> list[os.DirEntry[str]]:
    # Sorted so the index is built in the same order every run (stable logs and tests).
    with os.scandir(directory) as it:
        return sorted(it, key=lambda entry: entry.name)


def iter_workspace_files(
    root: Path, limits: FileLimits = FileLimits(), on_skip: SkipCallback | None = None
) -> Iterator[Path]:
    """Files under `root` that may be indexed, by name and stat; contents go through `read_source`.

    Every file or directory left out is reported to `on_skip` (default: an INFO log line), except
    files inside a pruned or ignored directory, which is reported once.
    """
    report = on_skip or _log_skip
    root = root.resolve()
    rules = IgnoreRules(root)
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = _scan_sorted(directory)
        except OSError as exc:
            report(Skipped(directory, f"{SkipKind.UNREADABLE}: {exc.strerror}"))
            continue
        subdirs: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                report(Skipped(path, f"{SkipKind.UNREADABLE}: {exc.strerror}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                reason = _dir_reason(rules, path)
                if reason is None:
                    subdirs.append(path)
            else:
                reason = _file_name_reason(rules, path) or _stat_reason(st.st_mode, st.st_size, limits)
                if reason is None:
                    yield path
            if reason is not None:
                report(Skipped(path, reason))
        pending.extend(reversed(subdirs))  # depth-first, in name order


# ---------------------------------------------------------------------------------------------
# Contents


def read_source(path: Path, limits: FileLimits = FileLimits()) -> str:
    """The file's text, or `UnindexableFile` when it is too large, binary, not UTF-8 or holds a
    credential. Opened without following a symlink and without blocking on a FIFO, then checked
    to be a regular file, so a file swapped since the walk cannot slip through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        kind = SkipKind.SYMLINK if exc.errno == errno.ELOOP else SkipKind.UNREADABLE
        raise _unindexable(kind, exc.strerror or str(exc)) from exc
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _unindexable(SkipKind.NOT_REGULAR, "a FIFO or device could block or never end")
        data = handle.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise _unindexable(SkipKind.TOO_LARGE, f"more than {limits.max_bytes} bytes")
    if b"\0" in data[: limits.binary_sniff_bytes]:
        raise _unindexable(SkipKind.BINARY, f"NUL byte in the first {limits.binary_sniff_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _unindexable(SkipKind.NOT_UTF8, f"invalid byte at offset {exc.start}") from exc
    credential = secret_content_kind(text)
    if credential is not None:
        raise _unindexable(SkipKind.SECRET_CONTENT, f"looks like a {credential}")
    return text


def _workspace_relative(root: Path, path: Path) -> Path | None:
    """`path` relative to `root`, lexically (`..` collapsed, symlinks kept so the caller can refuse
    them); None when outside. Tries the root as given, then resolved, so both spellings work."""
    candidate = Path(os.path.abspath(root / path))
    for base in (Path(os.path.abspath(root)), root.resolve()):
        if candidate.is_relative_to(base):
            return candidate.relative_to(base)
    return None


def path_reason(root: Path, path: Path, rules: IgnoreRules | None = None) -> str | None:
    """Why a path must not be indexed, from its name and directories alone (ignore files, secret
    names, symlinked directories, outside the workspace); None when its contents decide. For text
    that does not come from the disk, such as an editor's unsaved buffer."""
    relative = _workspace_relative(root, path)
    root = root.resolve()
    if relative is None:
        return f"{SkipKind.OUTSIDE_WORKSPACE}: not under {root}"
    path = root / relative
    rules = rules or IgnoreRules(root)
    for parent in reversed(list(relative.parents)[:-1]):  # from the top down, without "." itself
        directory = root / parent
        # The walk never descends through a directory symlink, so neither may a single path.
        reason = f"{SkipKind.SYMLINK}: {parent} is not followed" if directory.is_symlink() else None
        reason = reason or _dir_reason(rules, directory)
        if reason is not None:
            return reason
    return _file_name_reason(rules, path)
