"""Fixtures for driving real editors against `fimble lsp`: every role served by the tiny random-weight
model, and the daemon's socket, cache and log in a temporary directory, so a test never talks to a
user's daemon. The daemon is stopped after each test (each class, for the VS Code tests, which
share one VS Code per class). For VS Code: the install of code-server and its browser, once per
machine, and the extension built from a fresh copy, once per run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.vscode.install import Installed, SetupError, install
from tests.e2e.vscode.workbench import VSCode, WorkbenchError

FIMBLE = [sys.executable, "-m", "fimble"]
EXTENSION_SOURCE = Path(__file__).resolve().parents[2] / "editors" / "vscode"


@contextmanager
def fimble_environment(root: Path, model: Path | None, cache: Path | None = None) -> Iterator[dict[str, str]]:
    """The environment for a `fimble lsp` whose every role is `model` (None: the embedded model),
    with a daemon of its own that is stopped at the end."""
    config = root / "config.toml"
    if model is not None:
        config.write_text(
            "".join(
                f'[models.{role}]\nsource = "{model}"\nquantization = "none"\ndevice = "cpu"\n\n'
                for role in ("single_line", "multi_line", "chat")
            )
        )
    # A short directory of its own: the socket path must stay under the 108-byte limit of AF_UNIX.
    with tempfile.TemporaryDirectory(prefix="fimble-e2e-") as runtime_dir:
        env = dict(
            os.environ,
            FIMBLE_CONFIG=str(config),  # absent: every role is the embedded model
            FIMBLE_RUNTIME_DIR=runtime_dir,
            FIMBLE_CACHE_DIR=str(cache or root / "cache"),
            FIMBLE_DATA_DIR=str(root / "data"),  # chat sessions stay out of the user's
        )
        try:
            yield env
        finally:
            subprocess.run([*FIMBLE, "daemon", "stop"], env=env, capture_output=True, timeout=30)


@pytest.fixture
def fimble_env(tmp_path, tiny_checkpoint) -> Iterator[dict[str, str]]:
    with fimble_environment(tmp_path, tiny_checkpoint) as env:
        yield env


@pytest.fixture(scope="session")
def vscode_installed(pytestconfig: pytest.Config) -> Installed:
    """code-server, playwright-core and Chromium (tests/e2e/vscode/install.py), in the machine's
    cache, not the run's: installed by the first run (one to two minutes, printed as it goes),
    found in place by later ones."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        try:
            return install(say=lambda line: print(f"\n[VS Code setup] {line}", end="", flush=True))
        except SetupError as error:
            pytest.fail(f"the VS Code tests cannot run here: {error}", pytrace=False)


@pytest.fixture(scope="session")
def vscode_extension(tmp_path_factory) -> Path:
    """editors/vscode built from a fresh copy (`npm ci && npm run compile`), as a user builds it."""
    npm = shutil.which("npm")
    assert npm, "npm is needed to build the VS Code extension (Node.js 20)"
    copy = tmp_path_factory.mktemp("vscode-extension") / "fimble"
    shutil.copytree(EXTENSION_SOURCE, copy, ignore=shutil.ignore_patterns("node_modules", "out"))
    for step in (["ci", "--no-audit", "--no-fund"], ["run", "compile"]):
        done = subprocess.run([npm, *step], cwd=copy, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm {' '.join(step)} failed:\n{done.stdout}\n{done.stderr}"
    return copy


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """A failed VS Code test leaves the page as it was and the extension's output channel behind,
    in a folder named in the report: VS Code's own folders are gone once its fixture ends."""
    report = yield
    vscode = getattr(item, "funcargs", {}).get("vscode")
    if report.failed and report.when == "call" and isinstance(vscode, VSCode):
        evidence = Path(tempfile.mkdtemp(prefix=f"fimble-vscode-failed-{item.name[:40]}-"))
        (evidence / "Fimble-output.log").write_text(vscode.server.extension_output())
        try:
            vscode.workbench.page.screenshot(evidence / "page.png")
        except (WorkbenchError, OSError) as error:
            (evidence / "no-screenshot.txt").write_text(str(error))
        try:
            shown = vscode.workbench.describe()
        except (WorkbenchError, OSError) as error:
            shown = f"not read: {error}"
        # The folder stays on the machine that ran the tests; what was shown goes into the log too.
        report.sections.append(("VS Code at the failure", f"{shown}\nthe page and the output channel: {evidence}"))
    return report
