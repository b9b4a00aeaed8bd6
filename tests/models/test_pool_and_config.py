"""Roles to engines: equal specs share one model and one cache; the config file maps roles."""

from __future__ import annotations

import pytest

from fimble.models.config import ConfigError, load_role_config
from fimble.models.engine import EngineConfig
from fimble.models.pool import EnginePool
from fimble.models.spec import ModelSpec, Role, RoleConfig


def test_roles_with_equal_specs_share_one_engine(tiny_spec, tiny_checkpoint):
    other = ModelSpec(source=str(tiny_checkpoint), quantization="none", device="cpu", context_length=1024)
    pool = EnginePool(RoleConfig(single_line=tiny_spec, multi_line=tiny_spec, chat=other), EngineConfig(cache_tokens=512))
    try:
        assert pool.engine_for(Role.SINGLE_LINE) is pool.engine_for(Role.MULTI_LINE)
        assert pool.engine_for(Role.CHAT) is not pool.engine_for(Role.SINGLE_LINE)
        assert len(pool.loaded()) == 2
    finally:
        pool.close()


def test_config_file_maps_roles(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[models.multi_line]\nsource = "Qwen/Qwen2.5-Coder-1.5B"\nquantization = "bnb-nf4"\ncontext_length = 8192\n')
    roles = load_role_config(path)
    assert roles.multi_line == ModelSpec(source="Qwen/Qwen2.5-Coder-1.5B", quantization="bnb-nf4", context_length=8192)
    assert roles.single_line == roles.chat == ModelSpec()


def test_missing_config_means_the_embedded_default(tmp_path):
    assert load_role_config(tmp_path / "nope.toml") == RoleConfig()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[models.autocomplete]\nsource = 'x'\n", "unknown role"),
        ("[models.chat]\nsorce = 'x'\n", r"unknown key\(s\) 'sorce' \(known keys: source, "),
        ("[models.chat]\ncontext_length = 10\n", "context_length must be at least 64"),
        ("[models.chat]\ncontext_length = '4k'\n", "context_length: expected int, got str '4k'"),
        ("[models.chat]\nfamily = 'gpt'\n", "unknown model family 'gpt'; known families are qwen2.5-coder"),
        ("[models.chat]\nsource = 'https://x/v1'\napi_key_env = 'sk-123'\n", "api_key_env names an environment variable"),
        ("[models.chat\n", "not valid TOML"),
    ],
)
def test_config_errors_say_what_to_fix(tmp_path, text, message):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_role_config(path)
