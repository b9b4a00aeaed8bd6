"""The model tiers summary: each figure comes from the model's own part file, else from the suite's
full run of the same model, and is never taken from another model's run."""

from __future__ import annotations

import json

from benchmarks.model_tiers import config_text, figures
from fimble.models.config import load_role_config
from fimble.models.spec import Role

MODEL = "Qwen2.5-Coder-1.5B-Instruct (embedded GGUF)"


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_the_config_gives_the_model_every_role(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text(config_text("embedded-1.5b"))
    monkeypatch.setenv("FIMBLE_CONFIG", str(config))
    roles = load_role_config()
    assert {roles.spec_for(role).source for role in Role} == {"embedded-1.5b"}


def test_figures_come_from_the_models_own_runs_only(tmp_path):
    write(tmp_path / "model_tiers" / "embedded-1.5b" / "multi_line.json", {"model": MODEL, "multi_line_pass_at_1": 0.4, "multi_line_n": 100, "multi_line_p50_latency_s": 4.1})
    write(tmp_path / "model_tiers" / "embedded-1.5b" / "decode.json", {"model": MODEL, "decode_tok_s": 9.5, "rss_mb": 6000})
    # The suite's full runs: the single-line one is of this model, the chat one of another.
    write(tmp_path / "humaneval_infill.json", {"model": MODEL, "single_line_pass_at_1": 0.8, "single_line_n": 1033, "p50_latency_s": 2.9, "multi_line_pass_at_1": 0.1})
    write(tmp_path / "chat_humaneval.json", {"model": "Qwen2.5-Coder-0.5B-Instruct (embedded GGUF)", "pass_at_1": 0.53, "n": 164})

    entry = figures("embedded-1.5b", MODEL, tmp_path)

    assert (entry["multi_line_pass_at_1"], entry["multi_line_p50_s"]) == (0.4, 4.1)  # its own file, not the full run's 0.1
    assert (entry["single_line_pass_at_1"], entry["single_line_n"], entry["single_line_p50_s"]) == (0.8, 1033, 2.9)
    assert entry["chat_pass_at_1"] is None and entry["chat_p50_s"] is None
    assert (entry["decode_tok_s"], entry["rss_mb"]) == (9.5, 6000)
    assert entry["sources"] == {
        "single_line": "humaneval_infill.json",
        "multi_line": "model_tiers/embedded-1.5b/multi_line.json",
        "decode": "model_tiers/embedded-1.5b/decode.json",
    }
