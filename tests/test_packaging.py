"""The installed package: one top-level `fimble`, imported by that name everywhere, and runnable as
`python -m fimble`."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("lsp_server", "completion", "chat", "context", "models")
ROOT_MODULES = ("__main__.py", "dirs.py")


def test_no_code_imports_a_folder_by_its_bare_name():
    # From the repository root, `import models` would still work (the current directory is on
    # sys.path); installed, only `fimble.models` exists.
    offenders = []
    for path in sorted(REPO.rglob("*.py")):
        if any(part in (".git", "node_modules", "build") or part.startswith(".") for part in path.relative_to(REPO).parts[:-1]):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {name}" for name in names if name.split(".")[0] in PACKAGE_DIRS]
    assert offenders == []


def test_the_wheel_holds_only_the_fimble_package(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *ROOT_MODULES):
        shutil.copy(REPO / name, source / name)
    for name in PACKAGE_DIRS:
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheels"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("fimble-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(name for name in names if name.endswith(".dist-info/top_level.txt"))
        assert archive.read(top_level).decode().split() == ["fimble"]
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"fimble"}
    assert {f"fimble/{package}/__init__.py" for package in PACKAGE_DIRS} | {"fimble/__main__.py", "fimble/dirs.py"} <= set(names)


def test_python_m_fimble_runs_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fimble", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: fimble" in done.stdout
    script = Path(sys.executable).with_name("fimble")
    done = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: fimble" in done.stdout
