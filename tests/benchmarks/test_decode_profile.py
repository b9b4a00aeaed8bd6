"""The decode profile's parts: each kernel computes the product it is timed for, and the step's
timers see the decode rows of a real engine."""

from __future__ import annotations

import pytest
import torch

from benchmarks.decode_profile import KERNELS, layer_shapes, relative_error, step_breakdown
from fimble.models.int8 import Int8WeightOnlyLinear
from fimble.models.pool import start_engine
from fimble.models.spec import ModelSpec


@pytest.mark.parametrize("name, bound", [("int8_weight_only", 0.02), ("int8_dynamic_w8a8", 0.04), ("bf16", 0.01), ("int4_weight_only_g128", 0.15)])
def test_each_kernel_computes_the_product_within_its_precision(name, bound):
    generator = torch.Generator().manual_seed(0)
    weight, x = torch.randn(512, 256, generator=generator), torch.randn(1, 256, generator=generator)
    make, _ = KERNELS[name]
    assert relative_error(make(weight), weight, x) < bound


def test_the_layer_shapes_are_the_models_linears(tiny_loaded):
    layer = tiny_loaded.model.model.layers[0]
    linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
               layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]  # fmt: skip
    assert layer_shapes(tiny_loaded.model.config) == [tuple(linear.weight.shape) for linear in linears]


def test_the_step_breakdown_times_every_decode_forward_and_leaves_the_engine_as_it_was(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FIMBLE_CACHE_DIR", str(tmp_path / "cache"))
    spec = ModelSpec(source=str(tiny_checkpoint), quantization="int8-weight-only", device="cpu", threads=1, context_length=2048)
    original_forward = Int8WeightOnlyLinear.forward
    with start_engine(spec) as engine:
        step = step_breakdown(engine, list(range(5, 105)))
    assert step["decode_forwards_timed"] == 2 * 63  # two runs of 64 tokens: the first of each comes from prefill
    assert step["linears_ms"] > 0 and step["attention_ms"] > 0 and step["kv_write_and_gather_ms"] > 0
    assert step["forward_ms"] >= step["linears_ms"] + step["attention_ms"]
    assert Int8WeightOnlyLinear.forward is original_forward
