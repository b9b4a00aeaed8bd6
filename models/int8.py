"""Int8 weight-only quantization, the CPU default, and a cache of quantized models on disk.

Quantizing is most of a load: of the embedded 0.5B model's 9.1 s, 5.3 s went to rounding the
weights, 2.2 s to reading and converting the checkpoint (cProfile). The cache keeps the
quantized weights, the bf16 prefill copy included, in one safetensors file per checkpoint: a
later load builds the model's skeleton without initializing it and takes the tensors from the
file's memory map, in ~0.2 s. That makes a restarted daemon serve again within seconds
(benchmarks/fault_recovery.py). The mapped pages are clean and file-backed, so the kernel may
drop them under memory pressure and read them back, rather than swap them.

A checkpoint is known by its path and its files' names, sizes and modification times; a changed
checkpoint gets a new entry and the old one is removed. A cache file that cannot be read is
rebuilt with a warning. One that cannot be written (a full disk, a read-only cache) costs
nothing but the next load's time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from fimble import dirs

log = logging.getLogger(__name__)

# Bump when the quantization or the file's layout changes: old entries are then never read.
CACHE_FORMAT = 1


# A request with up to this many rows in a forward pass (a decoding one has 1) goes through the
# int8 kernel, a longer one through the bf16 copy. On the 0.5B model's layer shapes, streamed cold
# from memory, the kernel takes as long for 4 rows as for 1 (4864x896: 0.14 ms against 0.31 ms in
# bf16), is still faster at 8 (0.27 against 0.36 ms) and slower from 16 (0.51 against 0.43 ms;
# 132 rows: 3.7 against 1.5 ms, which made a keystroke's prefill 0.31 s -> 0.50 s). It computes
# each row on its own, the same bits whatever the rows beside it, so a request that shares a
# continuous batch's forward pass gets the numbers it gets alone (see `RowRouting`).
INT8_KERNEL_MAX_ROWS = 8


@dataclass(frozen=True)
class RowRouting:
    """Which rows of a continuous batch's forward pass take the int8 kernel: those of requests with
    at most INT8_KERNEL_MAX_ROWS rows, as each would alone. `requests` is how many there are, the
    rows the output head sees (one per request)."""

    rows: int
    requests: int
    int8_rows: torch.Tensor  # indices
    bf16_rows: torch.Tensor

    @classmethod
    def of_batch(cls, cu_seq_lens_q: torch.Tensor) -> RowRouting:
        lengths = cu_seq_lens_q.diff().long()
        few = torch.repeat_interleave(lengths <= INT8_KERNEL_MAX_ROWS, lengths)
        return cls(int(lengths.sum()), int((lengths > 0).sum()), few.nonzero().squeeze(1), (~few).nonzero().squeeze(1))


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights and their bf16 scales, one per output channel (row), as the int8 kernel takes them."""
    weight = weight.float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
    weight_int8 = torch.round(weight / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return weight_int8, scales.to(torch.bfloat16)


# The forward pass under way in this thread (the generation loop's): set by a pre-hook on the model.
_routing = threading.local()


class Int8WeightOnlyLinear(torch.nn.Module):
    """int8 weights with one scale per output channel, multiplied in bf16 (gpt-fast's int8
    weight-only scheme).

    Decoding rows (of requests with `INT8_KERNEL_MAX_ROWS` rows at most) read the int8 weights
    through torch's `_weight_int8pack_mm` kernel: half the bytes of bf16, and memory bandwidth is what bounds
    decode. That kernel is slower than bf16's for many rows, so prefill multiplies by a bf16 copy
    of the weights, kept beside the int8 one: 1 GB more RAM for the 0.5B model.
    """

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, weight_bf16: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self.register_buffer("weight_bf16", weight_bf16)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    @classmethod
    def quantize(cls, linear: torch.nn.Linear) -> Int8WeightOnlyLinear:
        weight_int8, scales = quantize_per_channel(linear.weight.detach())
        # The bf16 copy used for prefill is rebuilt from the int8 weights, so both paths agree.
        weight_bf16 = weight_int8.to(torch.bfloat16) * scales[:, None]
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        return cls(weight_int8, scales, weight_bf16, bias)

    @classmethod
    def placeholder(cls, linear: torch.nn.Linear) -> Int8WeightOnlyLinear:
        """Uninitialized tensors of the right shapes, for load_state_dict(assign=True) to replace."""
        rows, columns = linear.weight.shape
        bias = None if linear.bias is None else torch.empty(rows, dtype=torch.bfloat16)
        weight_int8, weight_bf16 = torch.empty(rows, columns, dtype=torch.int8), torch.empty(rows, columns, dtype=torch.bfloat16)
        return cls(weight_int8, torch.empty(rows, dtype=torch.bfloat16), weight_bf16, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        rows = x.to(torch.bfloat16).reshape(-1, x.shape[-1])
        routing: RowRouting | None = getattr(_routing, "batch", None)
        if routing is None or len(rows) not in (routing.rows, routing.requests):  # no batch: a plain forward, or one request
            out = self._int8(rows) if len(rows) <= INT8_KERNEL_MAX_ROWS else self._bf16(rows)
        elif len(rows) == routing.requests or not len(routing.bf16_rows):  # the output head (a row per request), or only short requests
            out = self._int8(rows)
        elif not len(routing.int8_rows):
            out = self._bf16(rows)
        else:
            out = rows.new_empty(len(rows), self.weight_int8.shape[0])
            out[routing.int8_rows] = self._int8(rows[routing.int8_rows])
            out[routing.bf16_rows] = self._bf16(rows[routing.bf16_rows])
        return out.reshape(*x.shape[:-1], -1).to(dtype)

    def _int8(self, rows: torch.Tensor) -> torch.Tensor:
        # The kernel crashes (SIGSEGV) on rows that start off a 32-byte line, as a view into a
        # bigger tensor can (seen at a 16-byte offset); a copy starts on the allocator's 64.
        rows = rows if rows.is_contiguous() and rows.data_ptr() % 64 == 0 else rows.clone(memory_format=torch.contiguous_format)
        out = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales)
        return out if self.bias is None else out + self.bias

    def _bf16(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(rows, self.weight_bf16, self.bias)


def _note_batch_rows(module, args, kwargs) -> None:
    cu_seq_lens_q = kwargs.get("cu_seq_lens_q")
    _routing.batch = RowRouting.of_batch(cu_seq_lens_q) if isinstance(cu_seq_lens_q, torch.Tensor) and len(cu_seq_lens_q) > 2 else None


def _forget_batch_rows(module, args, kwargs, output) -> None:
    _routing.batch = None


def quantize_int8_weight_only(model: PreTrainedModel) -> PreTrainedModel:
    """Every Linear becomes an Int8WeightOnlyLinear; the model runs in bf16."""
    return _replace_linears(model, Int8WeightOnlyLinear.quantize)


def _replace_linears(model: PreTrainedModel, make) -> PreTrainedModel:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, make(child))
    # Continuous batching passes each request's bounds to the model's forward (`cu_seq_lens_q`).
    model.register_forward_pre_hook(_note_batch_rows, with_kwargs=True)
    model.register_forward_hook(_forget_batch_rows, with_kwargs=True, always_call=True)
    return model


# --- the cache ------------------------------------------------------------------------------------


def cache_file(source: Path, name: str) -> Path:
    """Where the quantized form of the checkpoint at `source` is kept."""
    files = sorted(p for p in source.iterdir() if p.suffix in (".json", ".safetensors", ".bin") and p.is_file())
    identity = [CACHE_FORMAT, torch.__version__.split("+")[0], str(source.resolve())]
    identity += [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    # The name and path come first, so a new version of the checkpoint replaces only its own entry.
    return dirs.cache_dir() / "int8" / f"{_slug(name)}-{_place(source)}-{digest}.safetensors"


def load_cached(path: Path, source: Path, attention: str) -> PreTrainedModel | None:
    """The quantized model from the cache, or None when there is no usable entry."""
    if not path.exists():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers.initialization import no_init_weights

    try:
        tensors = load_file(path)  # memory-mapped: pages are read as the model touches them
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.bfloat16, attn_implementation=attention)
        _replace_linears(model, Int8WeightOnlyLinear.placeholder)
        model.load_state_dict(tensors, strict=True, assign=True)
        _align_decode_weights(model)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        log.warning("the quantized model cache %s is unusable (%s); quantizing again", path, error)
        _remove(path)
        return None
    _load_generation_config(model, source)
    return model


def _align_decode_weights(model: PreTrainedModel) -> None:
    """`_weight_int8pack_mm` reads its operands with aligned vector loads and crashes (SIGSEGV) on a
    tensor that starts mid-line, which is where the file's layout puts most of them. Copies are
    aligned; the int8 weights and scales are a third of the file, and copying them takes ~0.1 s."""
    for module in model.modules():
        if isinstance(module, Int8WeightOnlyLinear):
            for name in ("weight_int8", "scales"):
                tensor = getattr(module, name)
                if tensor.data_ptr() % 64:
                    setattr(module, name, tensor.clone())


def save_to_cache(model: PreTrainedModel, path: Path) -> None:
    """Write atomically (a reader sees the whole file or none), and remove the entries of earlier
    versions of the same checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    temporary = path.with_suffix(f".tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: tensor.contiguous() for key, tensor in model.state_dict().items()}, temporary)
        os.replace(temporary, path)
    # safetensors reports a failed write (a full disk: "No space left on device") as its own
    # SafetensorError, not as an OSError.
    except (OSError, SafetensorError) as error:
        _remove(temporary)
        log.warning("could not keep the quantized model in %s (%s): the next load quantizes again", path.parent, error)
        return
    for older in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.safetensors"):  # same name and path
        if older != path:
            _remove(older)


def remove_entries_of(source: Path) -> None:
    """Remove the cache entries of the checkpoint at `source`, whatever its files were."""
    for entry in (dirs.cache_dir() / "int8").glob(f"*-{_place(source)}-*.safetensors"):
        _remove(entry)


def _place(source: Path) -> str:
    return hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:  # a read-only cache, say: the entry is only never read
        log.info("could not remove %s: %s", path, error)


def _load_generation_config(model: PreTrainedModel, source: Path) -> None:
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:
        pass  # the checkpoint has none; the engine sets what it uses on each request


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")[:60] or "model"
