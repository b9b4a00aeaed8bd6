"""The batched-decode benchmark's parts: each mode runs the batch the way it names, on a real
engine, and leaves the engine's own way in place afterwards."""

from __future__ import annotations

import torch
from transformers import AttentionInterface

from benchmarks import batch_decode
from fimble.models import cpu_attention, int8
from fimble.models.pool import start_engine
from fimble.models.spec import ModelSpec


def test_each_mode_measures_every_batch_size_and_restores_the_engines_way(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(batch_decode, "SHARED_TOKENS", 40)
    monkeypatch.setattr(batch_decode, "NEW_TOKENS", 6)
    spec = ModelSpec(source=str(tiny_checkpoint), quantization="int8-weight-only", device="cpu", threads=1, context_length=2048)
    prompt = [(7 * i) % 300 + 5 for i in range(40 + 2 * max(batch_decode.BATCH_SIZES))]
    with start_engine(spec) as engine:
        for mode in batch_decode.MODES:
            figures = batch_decode.measure(engine, prompt, mode, repeats=1)
            assert sorted(figures, key=int) == [str(count) for count in batch_decode.BATCH_SIZES]
            assert all(f["tok_s"] > 0 and 0 <= f["answers_equal_alone"] <= int(count) for count, f in figures.items())
            assert AttentionInterface._global_mapping["sdpa"] is cpu_attention.sdpa_fp32_on_cpu
            assert int8.INT8_KERNEL_MAX_ROWS == 8
            assert int8.RowRouting.of_batch(torch.tensor([0, 1, 3])).rows == 3


def test_the_requests_share_the_prefix_and_differ_after_it():
    prompt = list(range(batch_decode.SHARED_TOKENS + 16))
    requests = batch_decode.requests_for(prompt, 8)
    assert len({r.prompt_ids for r in requests}) == 8
    assert all(r.prompt_ids[: batch_decode.SHARED_TOKENS] == tuple(prompt[: batch_decode.SHARED_TOKENS]) for r in requests)
