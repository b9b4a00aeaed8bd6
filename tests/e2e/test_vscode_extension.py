"""The VS Code extension builds from the npm registry on a fresh copy: `npm ci && npm run compile`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

EXTENSION = Path(__file__).resolve().parents[2] / "editors" / "vscode"


def test_the_vscode_extension_compiles(tmp_path):
    npm = shutil.which("npm")
    assert npm, "npm is needed to build the VS Code extension (Node.js 18 or newer)"
    copy = tmp_path / "vscode"
    shutil.copytree(EXTENSION, copy, ignore=shutil.ignore_patterns("node_modules", "out"))
    for step in (["ci", "--no-audit", "--no-fund"], ["run", "compile"]):
        done = subprocess.run([npm, *step], cwd=copy, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm {' '.join(step)} failed:\n{done.stdout}\n{done.stderr}"
    compiled = (copy / "out" / "extension.js").read_text()
    assert "vscode-languageclient" in compiled and "registerProposedFeatures" in compiled
