"""Which files may enter the index: ignore files with git's semantics, secrets that no ignore file
can bring back, binary / non-UTF-8 / oversize files, and symlinks. Real files in tmp dirs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fimble.context.files import (
    FileLimits,
    IgnoreRules,
    SkipKind,
    Skipped,
    UnindexableFile,
    iter_workspace_files,
    path_reason,
    read_source,
)


def write(root: Path, relative: str, content: str | bytes = "x = 1\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def content_reason(path: Path, limits: FileLimits) -> str | None:
    """Why read_source refuses a file, or None when it reads it."""
    try:
        read_source(path, limits)
    except UnindexableFile as refused:
        return refused.reason
    return None


def walk(root: Path, limits: FileLimits = FileLimits()) -> tuple[set[str], dict[str, str]]:
    """(indexed relative paths, {skipped relative path: reason})."""
    skipped: dict[str, str] = {}

    def record(item: Skipped) -> None:
        skipped[item.path.relative_to(root.resolve()).as_posix()] = item.reason

    kept = {p.relative_to(root.resolve()).as_posix() for p in iter_workspace_files(root, limits, on_skip=record)}
    return kept, skipped


# --- ignore files -----------------------------------------------------------------------------


def test_nested_gitignore_negation_directory_and_anchored_patterns(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.log\nbuild/\n/top_only.py\n")
    write(tmp_path, "app.log")
    write(tmp_path, "top_only.py")
    write(tmp_path, "build/out.py")
    write(tmp_path, "build.py")  # `build/` is a directory pattern: a file named build.py stays
    write(tmp_path, "pkg/top_only.py")  # `/top_only.py` is anchored to the root
    write(tmp_path, "pkg/keep.log")
    write(tmp_path, "pkg/other.log")
    write(tmp_path, "pkg/build/gen.py")  # unanchored directory pattern applies at any depth
    # A nested .gitignore applies to its subtree only and can negate its parent's pattern.
    write(tmp_path, "pkg/.gitignore", "!keep.log\n/local.py\n")
    write(tmp_path, "pkg/local.py")
    write(tmp_path, "pkg/sub/local.py")  # anchored to pkg/, so pkg/sub/local.py stays
    write(tmp_path, "other/local.py")  # pkg's rules don't reach here

    kept, skipped = walk(tmp_path)

    assert {"build.py", "pkg/top_only.py", "pkg/keep.log", "pkg/sub/local.py", "other/local.py"} <= kept
    for ignored in ("app.log", "top_only.py", "pkg/other.log", "pkg/local.py"):
        assert ignored not in kept
        assert skipped[ignored].startswith(SkipKind.IGNORED)
    # Ignored directories are pruned and reported once, not file by file.
    assert skipped["build"].startswith(SkipKind.IGNORED) and "build/out.py" not in skipped
    assert skipped["pkg/build"].startswith(SkipKind.IGNORED)


def test_a_file_under_an_ignored_directory_cannot_be_re_included(tmp_path: Path) -> None:
    # git: "It is not possible to re-include a file if a parent directory of that file is excluded."
    write(tmp_path, ".gitignore", "generated/\n!generated/keep.py\n")
    write(tmp_path, "generated/keep.py")
    kept, _ = walk(tmp_path)
    assert "generated/keep.py" not in kept
    assert path_reason(tmp_path, tmp_path / "generated/keep.py").startswith(SkipKind.IGNORED)


def test_fimbleignore_and_ignore_override_gitignore_in_the_same_directory(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "vendor/\n")
    write(tmp_path, ".ignore", "*.gen.py\n")
    write(tmp_path, ".fimbleignore", "!vendor/\nfixtures/\n")
    write(tmp_path, "vendor/lib.py")
    write(tmp_path, "a.gen.py")
    write(tmp_path, "fixtures/big.py")
    write(tmp_path, "main.py")
    kept, skipped = walk(tmp_path)
    assert kept >= {"vendor/lib.py", "main.py"}
    assert "a.gen.py" not in kept and "fixtures/big.py" not in kept
    assert skipped["fixtures"].startswith(SkipKind.IGNORED)


def test_git_info_exclude_is_applied_below_every_gitignore(tmp_path: Path) -> None:
    write(tmp_path, ".git/info/exclude", "scratch.py\nnotes.py\n")
    write(tmp_path, ".gitignore", "!notes.py\n")  # a .gitignore outranks info/exclude
    write(tmp_path, "scratch.py")
    write(tmp_path, "notes.py")
    kept, skipped = walk(tmp_path)
    assert "scratch.py" not in kept and "notes.py" in kept
    assert skipped[".git"].startswith(SkipKind.PRUNED_DIR)


def test_vcs_dirs_node_modules_and_virtualenvs_are_pruned_but_build_dirs_need_an_ignore_file(
    tmp_path: Path,
) -> None:
    write(tmp_path, "node_modules/left-pad/index.js")
    write(tmp_path, ".git/config")
    write(tmp_path, "env/pyvenv.cfg", "home = /usr/bin\n")
    write(tmp_path, "env/lib/site.py")
    write(tmp_path, "build/real_source.py")
    kept, skipped = walk(tmp_path)
    assert kept == {"build/real_source.py"}
    assert skipped["node_modules"].startswith(SkipKind.PRUNED_DIR)
    assert skipped["env"].startswith(SkipKind.PRUNED_DIR) and "pyvenv.cfg" in skipped["env"]


def test_ignore_rules_match_a_single_path_like_the_walk(tmp_path: Path) -> None:
    write(tmp_path, "a/.gitignore", "*.tmp\n")
    write(tmp_path, "a/x.tmp")
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored(tmp_path / "a" / "x.tmp", is_dir=False)
    assert not rules.is_ignored(tmp_path / "x.tmp", is_dir=False)
    assert path_reason(tmp_path, Path("a/x.tmp"), rules).startswith(SkipKind.IGNORED)


# --- secrets ----------------------------------------------------------------------------------

SECRET_NAMES = [
    ".env", ".env.local", ".env.production", "prod.env", ".envrc",
    "server.pem", "tls.key", "ca.crt", "cert.p12", "cert.pfx", "release.keystore", "app.jks",
    "id_rsa", "id_rsa.pub", "id_ed25519", "id_ecdsa", "id_dsa",
    ".netrc", ".pgpass", ".git-credentials", ".npmrc", ".pypirc",
    "credentials", "credentials.json", "Credentials.yml", "vault.kdbx",
    "secrets.yaml", "secrets.toml", "SERVER.PEM", "terraform.tfstate",
]  # fmt: skip

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n"
)
SECRET_CONTENTS = {
    "rsa_key_in_code.py": 'KEY = """-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAwJ3b8cD4pE2kq7Lz0u5gT1yV9nR4sXqPj3m\n"""\n',
    "openssh.txt": PRIVATE_KEY,
    "aws.py": 'AWS_ACCESS_KEY_ID = "AKIA' + "ABCDEFGHIJKLMNOP" + '"\n',
    "github.sh": "export GH_TOKEN=ghp_" + "a1B2" * 9 + "\n",
    "slack.json": '{"token": "xoxb-' + "123456789012-abcdefghij" + '"}\n',
    # Beyond the first 4 KB: the whole file is scanned.
    "late.py": "x = 1\n" * 2000 + 'token = "ghs_' + "Z9" * 18 + '"\n',
}


@pytest.fixture
def negating_ignore_files(tmp_path: Path) -> Path:
    """A workspace whose ignore files try hard to bring every secret back."""
    negations = "\n".join(["!*", "!.*", "!**/*"] + [f"!{name}" for name in SECRET_NAMES + list(SECRET_CONTENTS)])
    write(tmp_path, ".gitignore", negations + "\n")
    write(tmp_path, ".fimbleignore", negations + "\n")
    return tmp_path


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_file_names_are_never_indexed_even_when_negated(negating_ignore_files: Path, name: str) -> None:
    root = negating_ignore_files
    write(root, name, "harmless = 1\n")
    write(root, f"deep/er/{name}", "harmless = 1\n")
    write(root, "ok.py")
    kept, skipped = walk(root)
    assert "ok.py" in kept
    assert name not in kept and f"deep/er/{name}" not in kept
    assert skipped[name].startswith(SkipKind.SECRET_NAME)
    assert path_reason(root, root / name).startswith(SkipKind.SECRET_NAME)


@pytest.mark.parametrize("name", sorted(SECRET_CONTENTS))
def test_files_holding_credentials_are_never_indexed_even_when_negated(
    negating_ignore_files: Path, name: str
) -> None:
    root = negating_ignore_files
    path = write(root, name, SECRET_CONTENTS[name])
    with pytest.raises(UnindexableFile) as caught:
        read_source(path)
    assert caught.value.kind is SkipKind.SECRET_CONTENT


def test_secret_directories_are_pruned_even_when_negated(negating_ignore_files: Path) -> None:
    write(negating_ignore_files, ".ssh/config", "Host *\n")
    write(negating_ignore_files, ".aws/config", "[default]\n")
    kept, skipped = walk(negating_ignore_files)
    assert not any(p.startswith((".ssh/", ".aws/")) for p in kept)
    assert skipped[".ssh"].startswith(SkipKind.SECRET_NAME)


def test_ordinary_code_mentioning_keys_is_indexed(tmp_path: Path) -> None:
    # Near-misses: the rules must not swallow normal code about keys and tokens.
    text = 'api_key = os.environ["KEY"]\nAKIA = "short"\nprefix = "ghp_"\n# BEGIN PUBLIC KEY\n'
    path = write(tmp_path, "keys.py", text)
    write(tmp_path, "environment.py")
    assert read_source(path) == text
    kept, _ = walk(tmp_path)
    assert kept == {"keys.py", "environment.py"}


# --- contents ---------------------------------------------------------------------------------


def test_binary_non_utf8_and_oversize_files_are_skipped_with_their_reasons(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = FileLimits(max_bytes=1000)
    write(tmp_path, "image.py", b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    write(tmp_path, "latin1.py", "caf\xe9 = 1\n".encode("latin-1"))
    write(tmp_path, "huge.py", "x = 1\n" * 200)
    write(tmp_path, "ok.py", "y = 'caf\u00e9'\n")
    caplog.set_level(logging.INFO, logger="fimble.context.files")

    kept, skipped = walk(tmp_path, limits)
    # The size cap is applied from stat alone, before the file is read.
    assert skipped["huge.py"].startswith(SkipKind.TOO_LARGE)
    reasons = {name: content_reason(tmp_path / name, limits) for name in sorted(kept)}

    assert reasons["image.py"].startswith(SkipKind.BINARY)
    assert reasons["latin1.py"].startswith(SkipKind.NOT_UTF8)
    assert reasons["ok.py"] is None
    assert read_source(tmp_path / "ok.py", limits) == "y = 'caf\u00e9'\n"
    # The default reporter logs each skip at INFO.
    list(iter_workspace_files(tmp_path, limits))
    assert any("huge.py" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_read_source_enforces_the_size_cap_even_if_the_file_grew_after_the_walk(tmp_path: Path) -> None:
    path = write(tmp_path, "grows.py", "x" * 11)
    with pytest.raises(UnindexableFile) as caught:
        read_source(path, FileLimits(max_bytes=10))
    assert caught.value.kind is SkipKind.TOO_LARGE


def test_fifos_are_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.py")
    kept, skipped = walk(tmp_path)
    assert kept == set() and skipped["pipe.py"].startswith(SkipKind.NOT_REGULAR)
    # read_source opens without blocking and refuses it too (a test hang would mean it blocked).
    with pytest.raises(UnindexableFile) as caught:
        read_source(tmp_path / "pipe.py")
    assert caught.value.kind is SkipKind.NOT_REGULAR


# --- symlinks ---------------------------------------------------------------------------------


def test_symlink_loops_and_links_out_of_the_workspace_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    write(outside, "stolen.py", "password = 'hunter2'\n")
    write(root, "src/a.py")
    (root / "src" / "loop").symlink_to(root, target_is_directory=True)  # src/loop -> ws
    (root / "self").symlink_to(root / "self")  # a link to itself
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "innocent.py").symlink_to(outside / "stolen.py")

    kept, skipped = walk(root)

    assert kept == {"src/a.py"}
    for link in ("src/loop", "self", "out", "innocent.py"):
        assert skipped[link].startswith(SkipKind.SYMLINK)
    # One path at a time (the watcher's and the editor's view) gets the same answers as the walk.
    assert path_reason(root, root / "out" / "stolen.py").startswith(SkipKind.SYMLINK)
    assert path_reason(root, root / "src" / "loop" / "src" / "a.py").startswith(SkipKind.SYMLINK)
    assert path_reason(root, Path("../outside/stolen.py")).startswith(SkipKind.OUTSIDE_WORKSPACE)
    assert path_reason(root, outside / "stolen.py").startswith(SkipKind.OUTSIDE_WORKSPACE)
    assert path_reason(root, Path("src/a.py")) is None
    with pytest.raises(UnindexableFile) as caught:
        read_source(root / "innocent.py")
    assert caught.value.kind is SkipKind.SYMLINK


def test_a_workspace_opened_through_a_symlink_accepts_both_spellings(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write(real, "src/a.py")
    alias = tmp_path / "alias"
    alias.symlink_to(real, target_is_directory=True)
    assert path_reason(alias, alias / "src" / "a.py") is None
    assert path_reason(alias, real / "src" / "a.py") is None
    assert [p.name for p in iter_workspace_files(alias)] == ["a.py"]
