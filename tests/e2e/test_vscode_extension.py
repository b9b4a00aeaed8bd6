"""The VS Code extension builds from the npm registry on a fresh copy: `npm ci && npm run compile`."""

from __future__ import annotations


def test_the_vscode_extension_compiles(vscode_extension):
    compiled = (vscode_extension / "out" / "extension.js").read_text()
    assert "vscode-languageclient" in compiled and "registerProposedFeatures" in compiled
    assert (vscode_extension / "out" / "status.js").is_file()
