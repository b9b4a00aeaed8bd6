"""Fimble's model configuration: a TOML file mapping roles to model specs.

    # ~/.config/fimble/config.toml
    [models.multi_line]
    source = "Qwen/Qwen2.5-Coder-1.5B"    # hub id (from the local hub cache) or a local directory
    quantization = "bnb-nf4"

    [models.chat]
    source = "https://llm.example.com/v1"  # an OpenAI-compatible server (vLLM, SGLang, TGI, ...)
    model = "Qwen/Qwen2.5-Coder-32B-Instruct"
    api_key_env = "FIMBLE_CHAT_KEY"       # the key itself stays in the environment

Roles left out use the embedded default. A bad file is an error that names the key to fix.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from fimble import dirs
from fimble.models.conversion import ConversionError, structure
from fimble.models.families import UnknownFamilyError, family_named
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
    """A role's table as a ModelSpec; ConfigError naming each key that is unknown or of a wrong
    type or value (`known keys` lists the right spellings)."""
    try:
        spec = structure(table, ModelSpec, where)
    except ConversionError as error:
        hint = f" (known keys: {', '.join(f.name for f in dataclasses.fields(ModelSpec))})" if "unknown key" in str(error) else ""
        raise ConfigError(f"{error}{hint}") from None
    if spec.family:
        try:
            family_named(spec.family)
        except UnknownFamilyError as error:
            raise ConfigError(f"{where}: {error}") from None
    return spec
