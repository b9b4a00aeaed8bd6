"""The user's directories: where Fimble keeps its cache, config, data and runtime files.

| what                                  | default (Linux, from platformdirs) | override            |
|---------------------------------------|------------------------------------|---------------------|
| cache: converted models, index stores | ~/.cache/fimble                    | FIMBLE_CACHE_DIR    |
| config file                           | ~/.config/fimble/config.toml       | FIMBLE_CONFIG       |
| data: chat sessions                   | ~/.local/share/fimble              | FIMBLE_DATA_DIR     |
| runtime: daemon socket, locks, log    | $XDG_RUNTIME_DIR/fimble            | FIMBLE_RUNTIME_DIR  |

This is the only module that asks platformdirs or reads these variables.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import platformdirs

APP_NAME = "fimble"


def cache_dir() -> Path:
    return Path(os.environ.get("FIMBLE_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))


def config_file() -> Path:
    return Path(os.environ.get("FIMBLE_CONFIG") or Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml")


def data_dir() -> Path:
    return Path(os.environ.get("FIMBLE_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))


def runtime_dir() -> Path:
    """The user's private runtime directory, created 0700.

    Without XDG_RUNTIME_DIR, platformdirs falls back to /tmp/runtime-<uid>, which anyone could
    create first: a directory we don't own is refused rather than trusted."""
    if os.environ.get("FIMBLE_RUNTIME_DIR"):
        path = Path(os.environ["FIMBLE_RUNTIME_DIR"])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback is fine once ownership is checked below
            path = Path(platformdirs.user_runtime_dir(APP_NAME))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; set FIMBLE_RUNTIME_DIR to a private directory")
    os.chmod(path, 0o700)
    return path
