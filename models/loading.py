"""Load a `ModelSpec` into a ready model and tokenizer: resolve the source, pick the device,
quantize, and choose an attention implementation that works offline."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fimble.models import cpu_attention  # noqa: F401  (registers fp32 attention for bf16 on CPU)
from fimble.models import int8
from fimble.models.embedded import EMBEDDED_MODELS, checkpoint_dir, ensure_embedded_checkpoint, is_complete_checkpoint
from fimble.models.spec import ModelSpec, Quantization

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to change."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    name: str
    device: torch.device
    quantization: Quantization
    attention: str


def resolve_device(spec: ModelSpec) -> torch.device:
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device = cuda was asked for, but torch sees no GPU. Use device = auto or cpu.")
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec.device)


def resolve_quantization(spec: ModelSpec, device: torch.device) -> Quantization:
    quantization = spec.quantization or ("int8-weight-only" if device.type == "cpu" else "none")
    if quantization.startswith("bnb-"):
        # bitsandbytes runs on CPU too (slower than int8-weight-only there, see README); the
        # tests run this path on CPU so that the GPU's loading code is not untested code.
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"quantization = {quantization} needs bitsandbytes: pip install -e '.[gpu]'.")
    if quantization.startswith("int8-") and device.type != "cpu":
        raise ModelLoadError(f"{quantization} is a CPU quantization; on a GPU use bnb-int8 or bnb-nf4.")
    return quantization


def resolve_attention(spec: ModelSpec) -> str:
    # Asking transformers for flash_attention_2 without the flash_attn package makes it try to fetch a
    # kernel from the hub, which fails offline: only ask for it when the package imports.
    if spec.attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        log.warning("flash_attn is not installed; using sdpa (torch's sdpa uses flash kernels on GPUs).")
        return "sdpa"
    return spec.attention


def default_threads() -> int:
    # Measured on the 2-vCPU dev machine, embedded model at int8-dynamic, decode with a KV cache:
    # 1 thread 22-23 tok/s, 2 threads 28-33 tok/s (prefill 132-199 vs 276-311 tok/s). So use every core
    # the process may run on; more than 8 stopped helping decode, which is memory-bound.
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def resolve_source(spec: ModelSpec) -> tuple[str, str]:
    """Return (what from_pretrained loads, a display name)."""
    if spec.source in EMBEDDED_MODELS:
        model = EMBEDDED_MODELS[spec.source]
        return str(ensure_embedded_checkpoint(model=model)), model.name
    if spec.is_remote:
        raise ModelLoadError(f"{spec.source} is a remote server: `fimble lsp` talks to it directly (models/remote.py), nothing loads here.")
    path = Path(spec.source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: point source at a transformers checkpoint directory.")
        return str(path), path.name
    return spec.source, spec.source  # a hub id


def is_in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def torch_dtype(spec: ModelSpec, device: torch.device, quantization: Quantization) -> torch.dtype:
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    # Dynamic int8 quantizes fp32 Linear layers and keeps fp32 around them; the rest runs in bf16
    # (AVX-512 BF16 on current x86 CPUs), with attention in fp32 on CPU (see cpu_attention).
    return torch.float32 if quantization in ("int8-dynamic", "none") and device.type == "cpu" else torch.bfloat16


def load_model(spec: ModelSpec) -> LoadedModel:
    device = resolve_device(spec)
    quantization = resolve_quantization(spec, device)
    attention = resolve_attention(spec)
    if device.type == "cpu":
        torch.set_num_threads(spec.threads or default_threads())
    source, name = resolve_source(spec)
    kwargs: dict = {"dtype": torch_dtype(spec, device, quantization), "attn_implementation": attention}
    if quantization.startswith("bnb-"):
        if device.type == "cpu":
            log.warning("%s on CPU runs, but slower to load and no faster than int8-weight-only, the CPU default (README, Quantization on CPU)", quantization)
        kwargs["quantization_config"] = _bnb_config(quantization, kwargs["dtype"])
        kwargs["device_map"] = {"": "cpu" if device.type == "cpu" else device.index or 0}
    # A hub id already in the local hub cache loads without asking the hub: offline, that saves
    # ~50 s of connection retries. One that is not cached is downloaded, with progress.
    local_only = not Path(source).exists() and is_in_hub_cache(source)
    # int8 weight-only models of a local checkpoint are kept quantized on disk (models/int8.py).
    keep_quantized = quantization == "int8-weight-only" and device.type == "cpu" and Path(source).is_dir()
    cached = int8.cache_file(Path(source), name) if keep_quantized else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = int8.load_cached(cached, Path(source), attention) if cached else None
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, **kwargs)
            model = _quantize(model.to(device) if not quantization.startswith("bnb-") else model, quantization)
            if cached:
                int8.save_to_cache(model, cached)
    except OSError as error:
        raise ModelLoadError(
            f"Could not load {source!r}: {error}. Use a local checkpoint directory, a hub id that is already in the "
            "hub cache (this works offline), or the embedded default."
        ) from error
    model.eval()
    return LoadedModel(model, tokenizer, spec, name, device, quantization, attention)


def load_if_kept_quantized(spec: ModelSpec) -> LoadedModel | None:
    """The model as `load_model` gives it, when that takes only reading the int8 cache
    (models/int8.py): a CPU int8-weight-only model of a local or embedded checkpoint, converted and
    quantized already. None otherwise, and then nothing is converted, quantized or downloaded: the
    standby daemon (models/standby.py) must never duplicate a load the serving daemon is doing."""
    if spec.is_remote:
        return None
    device = resolve_device(spec)
    if device.type != "cpu" or resolve_quantization(spec, device) != "int8-weight-only":
        return None
    if spec.source in EMBEDDED_MODELS:
        embedded = EMBEDDED_MODELS[spec.source]
        source, name = checkpoint_dir(model=embedded), embedded.name
        if not is_complete_checkpoint(source):
            return None
    else:
        source = Path(spec.source).expanduser()
        if not (source / "config.json").is_file():
            return None
        name = source.name
    if not int8.cache_file(source, name).exists():
        return None
    return load_model(spec)


def _quantize(model: PreTrainedModel, quantization: Quantization) -> PreTrainedModel:
    if quantization == "int8-dynamic":
        return quantize_int8_dynamic(model)
    if quantization == "int8-weight-only":
        return int8.quantize_int8_weight_only(model)
    return model


def quantize_int8_dynamic(model: PreTrainedModel) -> PreTrainedModel:
    """torch's dynamic quantization: int8 weights, activations quantized per tensor at each call.

    Not the CPU default: Qwen2.5's MLP inputs carry outliers (|max| / median over 1,000 in the
    down_proj of layers 2, 3, 21-23), and per-tensor activation scales drown the rest. On the
    fibonacci FIM prompt it answered "```python" instead of "fibonacci(n - 1) + fibonacci(n - 2)",
    and matched fp32 on 0 of 7 real FIM prompts (bf16: 7 of 7).
    """
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _bnb_config(quantization: Quantization, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
