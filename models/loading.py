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

from models.embedded import EMBEDDED_MODEL_NAME, ensure_embedded_checkpoint
from models.spec import EMBEDDED, ModelSpec, Quantization

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
    quantization = spec.quantization or ("int8-dynamic" if device.type == "cpu" else "none")
    if quantization.startswith("bnb-"):
        if device.type != "cuda":
            raise ModelLoadError(f"quantization = {quantization} needs a GPU; on CPU use int8-dynamic.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"quantization = {quantization} needs bitsandbytes: pip install -e '.[gpu]'.")
    if quantization == "int8-dynamic" and device.type != "cpu":
        raise ModelLoadError("int8-dynamic is the CPU quantization; on a GPU use bnb-int8 or bnb-nf4.")
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
    if spec.source == EMBEDDED:
        return str(ensure_embedded_checkpoint()), EMBEDDED_MODEL_NAME
    if spec.source.startswith(("http://", "https://")):
        raise ModelLoadError(
            f"{spec.source} is an OpenAI-compatible server, which the openai backend serves; it is not loaded locally."
        )
    path = Path(spec.source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: point source at a transformers checkpoint directory.")
        return str(path), path.name
    return spec.source, spec.source  # a hub id


def torch_dtype(spec: ModelSpec, device: torch.device, quantization: Quantization) -> torch.dtype:
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    # Dynamic int8 quantizes fp32 Linear layers; everything on CPU stays fp32 around it.
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def load_model(spec: ModelSpec) -> LoadedModel:
    device = resolve_device(spec)
    quantization = resolve_quantization(spec, device)
    attention = resolve_attention(spec)
    if device.type == "cpu":
        torch.set_num_threads(spec.threads or default_threads())
    source, name = resolve_source(spec)
    kwargs: dict = {"dtype": torch_dtype(spec, device, quantization), "attn_implementation": attention}
    if quantization.startswith("bnb-"):
        kwargs["quantization_config"] = _bnb_config(quantization)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as error:
        raise ModelLoadError(
            f"Could not load {source!r}: {error}. Use a local checkpoint directory, a hub id that is already in the "
            "hub cache (this works offline), or the embedded default."
        ) from error
    if not quantization.startswith("bnb-"):
        model = model.to(device)
    model.eval()
    if quantization == "int8-dynamic":
        model = quantize_int8_dynamic(model)
    return LoadedModel(model, tokenizer, spec, name, device, quantization, attention)


def quantize_int8_dynamic(model: PreTrainedModel) -> PreTrainedModel:
    """int8 weights with activations quantized per call for every decoder Linear; the output head
    runs in bf16.

    Per-tensor int8 on the head broke the embedded model: the fibonacci FIM prompt answered
    "```python" instead of "fibonacci(n - 1) + fibonacci(n - 2)". One scale for 151,936 vocabulary
    rows drowns the logits in rounding noise. Per-channel int8 (torch's per_channel_dynamic_qconfig)
    was still wrong and several times slower. bf16 keeps the fp32 answer at half the fp32 bytes.
    """
    torch.ao.quantization.quantize_dynamic(model.get_decoder(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear):
        model.set_output_embeddings(Bf16Linear(head))
    return model


class Bf16Linear(torch.nn.Module):
    """A Linear computed in bf16 (AVX-512 BF16 on current x86 CPUs) that returns fp32."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        # A copy, so a weight tied to the input embeddings stays fp32 there.
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16).clone(), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(torch.bfloat16).clone(), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.to(torch.bfloat16), self.weight, self.bias).float()


def _bnb_config(quantization: Quantization):
    from transformers import BitsAndBytesConfig

    if quantization == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
