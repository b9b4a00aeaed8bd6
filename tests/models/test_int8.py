"""The int8 weight-only cache: a model loaded from it computes exactly what the freshly quantized
one does, and a stale, corrupt or unwritable cache costs time, never a wrong or failed load."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fimble.models import int8
from fimble.models.loading import load_if_kept_quantized, load_model
from fimble.models.spec import ModelSpec

PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    """A copy of the tiny checkpoint (its files' times are part of the cache key) and an empty cache."""
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(tmp_path / "cache"))
    return shutil.copytree(tiny_checkpoint, tmp_path / "tiny")


def int8_spec(checkpoint) -> ModelSpec:
    return ModelSpec(source=str(checkpoint), quantization="int8-weight-only", device="cpu", threads=1)


def logits(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(PROMPT).logits


def cache_entries(tmp_path) -> list:
    return sorted((tmp_path / "cache" / "int8").glob("*.safetensors"))


def test_a_model_from_the_cache_computes_exactly_what_the_quantized_one_does(checkpoint, tmp_path):
    quantized = load_model(int8_spec(checkpoint))
    assert len(cache_entries(tmp_path)) == 1
    cached = load_model(int8_spec(checkpoint))
    assert torch.equal(logits(cached), logits(quantized))
    assert sum(isinstance(m, int8.Int8WeightOnlyLinear) for m in cached.model.modules()) == 2 * 7 + 1
    for name, tensor in quantized.model.state_dict().items():
        assert torch.equal(cached.model.state_dict()[name], tensor), name
    # The decode path (one row, the int8 kernel) agrees too, not only prefill.
    with torch.no_grad():
        assert torch.equal(cached.model(PROMPT[:, :1]).logits, quantized.model(PROMPT[:, :1]).logits)


def test_a_changed_checkpoint_gets_a_new_entry_and_the_old_one_goes(checkpoint, tmp_path):
    load_model(int8_spec(checkpoint))
    (old,) = cache_entries(tmp_path)
    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    load_model(int8_spec(checkpoint))
    (new,) = cache_entries(tmp_path)
    assert new != old


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(checkpoint, tmp_path, caplog):
    expected = logits(load_model(int8_spec(checkpoint)))
    (entry,) = cache_entries(tmp_path)
    entry.write_bytes(entry.read_bytes()[:1000])  # cut short, as by a crash mid-write elsewhere
    with caplog.at_level(logging.WARNING, logger="fimble.models.int8"):
        again = load_model(int8_spec(checkpoint))
    assert "unusable" in caplog.text
    assert torch.equal(logits(again), expected)
    assert cache_entries(tmp_path)[0].stat().st_size > 1000


def test_an_unwritable_cache_still_loads_the_model(checkpoint, tmp_path, caplog):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "int8").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="fimble.models.int8"):
        loaded = load_model(int8_spec(checkpoint))
    assert "could not keep the quantized model" in caplog.text
    assert torch.isfinite(logits(loaded)).all()


def test_a_failed_write_still_loads_the_model(checkpoint, tmp_path):
    # A file-size limit makes the cache's write fail part-way, as a full disk does ("No space left
    # on device" in CI): safetensors raises its own error type for it, not an OSError. The limit
    # would stop pytest's own files too, so the load runs in a process of its own.
    script = f"""
import resource, signal, torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
from fimble.models.loading import load_model
from fimble.models.spec import ModelSpec
loaded = load_model(ModelSpec(source={str(checkpoint)!r}, quantization="int8-weight-only", device="cpu", threads=1))
print(bool(torch.isfinite(loaded.model(torch.tensor([[5, 6, 7]])).logits).all()))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=os.environ)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"
    assert "could not keep the quantized model" in run.stderr and "File too large" in run.stderr
    assert cache_entries(tmp_path) == [] and not list((tmp_path / "cache" / "int8").glob("*.tmp-*"))


def test_two_checkpoints_of_one_name_keep_their_own_entries(checkpoint, tmp_path):
    other = shutil.copytree(checkpoint, tmp_path / "elsewhere" / checkpoint.name)
    load_model(int8_spec(checkpoint))
    load_model(int8_spec(other))
    assert len(cache_entries(tmp_path)) == 2


def test_the_standby_loads_a_model_only_from_the_cache_and_it_computes_what_a_full_load_does(checkpoint, tmp_path):
    spec = int8_spec(checkpoint)
    # Nothing cached yet: the standby must not quantize (the serving daemon may be doing it).
    assert load_if_kept_quantized(spec) is None
    assert cache_entries(tmp_path) == []
    loaded = load_model(spec)
    preloaded = load_if_kept_quantized(spec)
    assert preloaded is not None and preloaded.spec == spec
    assert torch.equal(logits(preloaded), logits(loaded))
    # Models a cache can't hold are never preloaded: unquantized, remote.
    assert load_if_kept_quantized(ModelSpec(source=str(checkpoint), quantization="none", device="cpu")) is None
    assert load_if_kept_quantized(ModelSpec(source="http://127.0.0.1:9/v1")) is None
    assert load_if_kept_quantized(ModelSpec(source=str(tmp_path / "no-such-checkpoint"), quantization="int8-weight-only", device="cpu")) is None
