"""fimble/dirs.py: the user's directories from platformdirs, each overridable from the environment."""

from __future__ import annotations

import os
import stat

import pytest

from fimble import dirs

VARIABLES = ("FIMBLE_CACHE_DIR", "FIMBLE_CONFIG", "FIMBLE_DATA_DIR", "FIMBLE_RUNTIME_DIR")


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("CACHE", "CONFIG", "DATA", "RUNTIME"):
        monkeypatch.setenv(f"XDG_{name}_HOME" if name != "RUNTIME" else "XDG_RUNTIME_DIR", str(tmp_path / name.lower()))
    return tmp_path


def test_the_defaults_follow_the_platform(xdg):
    assert dirs.cache_dir() == xdg / "cache" / "fimble"
    assert dirs.config_file() == xdg / "config" / "fimble" / "config.toml"
    assert dirs.data_dir() == xdg / "data" / "fimble"
    assert dirs.runtime_dir() == xdg / "runtime" / "fimble"


def test_each_directory_can_be_moved(xdg, monkeypatch):
    for name in VARIABLES:
        monkeypatch.setenv(name, str(xdg / "moved" / name))
    assert dirs.cache_dir() == xdg / "moved" / "FIMBLE_CACHE_DIR"
    assert dirs.config_file() == xdg / "moved" / "FIMBLE_CONFIG"
    assert dirs.data_dir() == xdg / "moved" / "FIMBLE_DATA_DIR"
    assert dirs.runtime_dir() == xdg / "moved" / "FIMBLE_RUNTIME_DIR"


def test_the_runtime_dir_is_private(xdg):
    path = dirs.runtime_dir()
    os.chmod(path, 0o755)  # loosened by someone: put back
    assert stat.S_IMODE(dirs.runtime_dir().stat().st_mode) == 0o700


def test_a_runtime_dir_of_another_user_is_refused(xdg, monkeypatch):
    path = dirs.runtime_dir()
    monkeypatch.setattr(os, "getuid", lambda: path.stat().st_uid + 1)
    with pytest.raises(PermissionError, match="FIMBLE_RUNTIME_DIR"):
        dirs.runtime_dir()


def test_the_test_run_uses_none_of_the_users_directories():
    # tests/conftest.py points every one into a temporary folder before any test starts.
    home = os.path.expanduser("~")
    for path in (dirs.cache_dir(), dirs.config_file(), dirs.data_dir(), dirs.runtime_dir()):
        assert not str(path).startswith(home + os.sep), path
