"""Fimble's model configuration: a TOML file mapping roles to model specs.

    # ~/.config/fimble/config.toml
    [models.multi_line]
    source = "Qwen/Qwen2.5-Coder-1.5B"    # hub id (from the local hub cache) or a local directory
    quantization = "bnb-nf4"

Roles left out use the embedded default. A bad file is an error that names the key to fix.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

from fimble import dirs
from fimble.models.spec import ModelSpec, Role, RoleConfig


class ConfigError(ValueError):
    """The config file is invalid; the message names the file and key."""


def load_role_config(path: Path | None = None) -> RoleConfig:
    path = path or dirs.config_file()
    if not path.is_file():
        return RoleConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    models = data.get("models", {})
    unknown = set(models) - {role.config_name for role in Role}
    if unknown:
        raise ConfigError(f"{path}: unknown role(s) {sorted(unknown)}; use single_line, multi_line or chat")
    specs = {name: parse_spec(table, f"{path}: [models.{name}]") for name, table in models.items()}
    return RoleConfig(**specs)


def parse_spec(table: dict, where: str) -> ModelSpec:
    fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
    hints = typing.get_type_hints(ModelSpec)
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys are {sorted(fields)}")
        allowed = _allowed_values(hints[key])
        if allowed and value not in allowed:
            raise ConfigError(f"{where}: {key} = {value!r} is not one of {sorted(str(a) for a in allowed)}")
    try:
        return ModelSpec(**table)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def _allowed_values(hint) -> set | None:
    """The literal values a field accepts, or None when it is free-form (str, int)."""
    values: set = set()
    for arg in typing.get_args(hint) or ():
        if typing.get_origin(arg) is typing.Literal:
            values.update(typing.get_args(arg))
        elif arg is type(None):
            values.add(None)
        elif isinstance(arg, str):
            values.add(arg)
    return values or None
