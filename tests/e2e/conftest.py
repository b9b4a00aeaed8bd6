"""Fixtures for driving real editors against `fimble lsp`: every role served by the tiny random-weight
model, and the daemon's socket, cache and log in a temporary directory, so a test never talks to a
user's daemon. The daemon is stopped after each test."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

FIMBLE = [sys.executable, "-m", "fimble"]


@pytest.fixture
def fimble_env(tmp_path, tiny_checkpoint) -> Iterator[dict[str, str]]:
    config = tmp_path / "config.toml"
    config.write_text(
        "".join(
            f'[models.{role}]\nsource = "{tiny_checkpoint}"\nquantization = "none"\ndevice = "cpu"\n\n'
            for role in ("single_line", "multi_line", "chat")
        )
    )
    # A short directory of its own: the socket path must stay under the 108-byte limit of AF_UNIX.
    with tempfile.TemporaryDirectory(prefix="fimble-e2e-") as runtime_dir:
        env = dict(
            os.environ,
            FIMBLE_CONFIG=str(config),
            FIMBLE_RUNTIME_DIR=runtime_dir,
            FIMBLE_CACHE_DIR=str(tmp_path / "cache"),
            FIMBLE_DATA_DIR=str(tmp_path / "data"),  # chat sessions stay out of the user's
        )
        yield env
        subprocess.run([*FIMBLE, "daemon", "stop"], env=env, capture_output=True, timeout=30)
