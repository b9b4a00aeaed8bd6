"""Loading: quantization, attention choice and clear errors, on the tiny checkpoint."""

from __future__ import annotations

import pytest
import torch

from fimble.models.engine import Engine, EngineConfig
from fimble.models.generation import GenerationRequest
from fimble.models.int8 import INT8_KERNEL_MAX_ROWS, Int8WeightOnlyLinear
from fimble.models.loading import ModelLoadError, load_model, resolve_attention
from fimble.models.spec import ModelSpec, Role
from tests.models.test_engine_exactness import reference_greedy


def test_int8_weight_only_linear_decode_and_prefill_paths_agree():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    quantized = Int8WeightOnlyLinear.quantize(linear)
    dequantized = quantized.weight_int8.float() * quantized.scales.float()[:, None]
    assert (dequantized - linear.weight).abs().max() <= linear.weight.abs().max() / 127  # half a step, rounded
    rows = torch.randn(1, INT8_KERNEL_MAX_ROWS + 4, 64)
    one_at_a_time = torch.cat([quantized(rows[:, i : i + 1]) for i in range(rows.shape[1])], dim=1)  # decode kernel
    all_at_once = quantized(rows)  # prefill path: more rows than the int8 kernel takes
    expected = torch.nn.functional.linear(rows, dequantized, linear.bias)
    torch.testing.assert_close(one_at_a_time.float(), expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(all_at_once.float(), expected, atol=0.05, rtol=0.02)
    assert one_at_a_time.dtype == rows.dtype


def test_a_few_rows_at_once_give_each_row_exactly_its_decode_result():
    """Requests decoding together are rows of one matrix: each must get the bits it gets alone."""
    torch.manual_seed(1)
    quantized = Int8WeightOnlyLinear.quantize(torch.nn.Linear(64, 48, bias=True))
    rows = torch.randn(1, INT8_KERNEL_MAX_ROWS, 64, dtype=torch.bfloat16)
    one_at_a_time = torch.cat([quantized(rows[:, i : i + 1]) for i in range(rows.shape[1])], dim=1)
    for count in range(2, INT8_KERNEL_MAX_ROWS + 1):
        assert torch.equal(quantized(rows[:, :count]), one_at_a_time[:, :count]), count
    # Rows that are a view off a 32-byte line (the kernel crashes on those) are copied first.
    unaligned = torch.cat([torch.zeros(8, dtype=torch.bfloat16), rows.flatten()])[8:].view(rows.shape)
    assert unaligned.data_ptr() % 32 and torch.equal(quantized(unaligned), one_at_a_time)
    # The bf16 copy, which more rows take, rounds differently: the equality above is not a given.
    assert not torch.equal(torch.nn.functional.linear(rows, quantized.weight_bf16, quantized.bias), one_at_a_time)


def test_int8_weight_only_is_the_cpu_default(tiny_checkpoint):
    loaded = load_model(ModelSpec(source=str(tiny_checkpoint), device="cpu"))
    assert loaded.quantization == "int8-weight-only"
    linears = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [], "every Linear, the output head included, should be quantized"
    assert sum(isinstance(m, Int8WeightOnlyLinear) for m in loaded.model.modules()) == 2 * 7 + 1
    with torch.no_grad():
        logits = loaded.model(torch.tensor([[5, 6, 7, 8]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "spec, message",
    [
        (ModelSpec(device="cuda"), "torch sees no GPU"),
        (ModelSpec(source="http://localhost:8000/v1"), "is a remote server: `fimble lsp` talks to it directly"),
    ],
)
def test_impossible_specs_are_refused_with_a_reason(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


def test_a_directory_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(ModelSpec(source=str(tmp_path)))


def test_flash_attention_falls_back_to_sdpa_without_the_package():
    import importlib.util

    assert importlib.util.find_spec("flash_attn") is None  # CPU machines never have it
    assert resolve_attention(ModelSpec(attention="flash_attention_2")) == "sdpa"


@pytest.mark.parametrize("quantization, layer", [("bnb-int8", "Linear8bitLt"), ("bnb-nf4", "Linear4bit")])
def test_bitsandbytes_loads_and_the_engine_generates_what_the_plain_model_does(tiny_checkpoint, quantization, layer):
    # The GPU's quantized loading path, run on CPU (bitsandbytes has CPU kernels): its layers, and
    # the engine's cached greedy decoding token for token against recomputing without a cache. In
    # fp32: the random model's top logits lie within bf16's rounding of each other.
    loaded = load_model(ModelSpec(source=str(tiny_checkpoint), quantization=quantization, device="cpu", threads=1, dtype="float32"))
    assert loaded.quantization == quantization
    assert {type(module).__name__ for module in loaded.model.modules()} >= {layer}
    prompt = [(7 * i) % 300 + 5 for i in range(40)]
    tokens, _, _ = reference_greedy(loaded.model, prompt, 10)
    engine = Engine(loaded, EngineConfig())
    try:
        result = engine.generate(GenerationRequest(Role.SINGLE_LINE, 10, tuple(prompt)))
        assert result.token_ids == tokens
        again = engine.generate(GenerationRequest(Role.SINGLE_LINE, 10, tuple(prompt)))  # from the prefix cache
        assert again.stats.cached_tokens > 0 and again.token_ids == tokens
    finally:
        engine.close()
