"""Where a decode step's time goes on this CPU, and how fast each CPU kernel reads the real layer
shapes: the profile behind `keystroke_replay.json`'s decode figure.

    python benchmarks/decode_profile.py     # about 3 minutes; writes benchmarks/results/decode_profile.{json,png}

Measured side by side in one process, on the embedded model (Qwen2.5-Coder-0.5B):
1. **Memory read bandwidth**, the bound on decode: each token reads every weight once.
2. **Kernels on the model's layer shapes**, with random weights, streamed cold as a forward pass
   streams them (every layer its own weights, far more than the L3 cache holds), one row at a time:
   - int8 weight-only, `_weight_int8pack_mm` (the CPU default);
   - dynamic int8 (W8A8), fbgemm's `quantized::linear_dynamic`, which SmoothQuant would need;
   - bf16, `linear`;
   - int4 weight-only, groups of 128, `_weight_int4pack_mm_for_cpu`.
3. **The engine's decode step** at a keystroke's context (1,500 prompt tokens from the replay's
   file, 64 new tokens, twice over the cached prompt). Timers around the int8 Linears, the
   attention kernel, the paged KV cache's write and gather, and the whole forward pass, counted on
   decode rows only. The step's time outside the forward pass is continuous batching's
   bookkeeping, the logits processors and sampling. The same Linears, called back to back with
   nothing between them, give the time the kernels alone need.
4. **The router's text**: the engine decodes a request's whole text at every step, so the cost
   grows with the square of its length. Measured for a keystroke's, a chat answer's and a long
   answer's length, against the time their generation takes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.keystroke_replay import RESULTS, typed_file  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from fimble.models.engine import Engine, EngineConfig  # noqa: E402
from fimble.models.generation import GenerationRequest  # noqa: E402
from fimble.models.int8 import Int8WeightOnlyLinear, quantize_per_channel  # noqa: E402
from fimble.models.loading import default_threads  # noqa: E402
from fimble.models.pool import start_engine  # noqa: E402
from fimble.models.spec import ModelSpec, Role  # noqa: E402

PROMPT_TOKENS = 1500
DECODE_TOKENS = 64
INT4_GROUP = 128


def median_time(run: Callable[[], object], repeats: int) -> float:
    run()  # first touch: page faults and the kernels' one-time setup
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_read_gb_s(megabytes: int = 512) -> float:
    data = torch.ones(megabytes * 2**20 // 4)
    return data.numel() * 4 / median_time(data.sum, 9) / 1e9


# --- kernels --------------------------------------------------------------------------------------


def layer_shapes(config) -> list[tuple[int, int]]:
    """(out_features, in_features) of one decoder layer's Linears: q, k, v, o, gate, up, down."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden, kv = config.hidden_size, config.num_key_value_heads * head_dim
    return [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden),
            (config.intermediate_size, hidden), (config.intermediate_size, hidden), (hidden, config.intermediate_size)]  # fmt: skip


def int8_weight_only(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    quantized, scales = quantize_per_channel(weight)  # the engine's own quantization
    return lambda x: torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), quantized, scales)


def int8_dynamic(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    rows, columns = weight.shape
    linear = torch.ao.nn.quantized.dynamic.Linear(columns, rows, bias_=False, dtype=torch.qint8)
    scales = (weight.abs().amax(dim=1) / 127).double()
    linear.set_weight_bias(torch.quantize_per_channel(weight, scales, torch.zeros(rows, dtype=torch.long), 0, torch.qint8), None)
    return lambda x: linear(x.float())


def bf16(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    weight = weight.to(torch.bfloat16)
    return lambda x: torch.nn.functional.linear(x.to(torch.bfloat16), weight)


def int4_weight_only(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    rows, columns = weight.shape
    groups = weight.reshape(rows, columns // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    scales = ((high - low) / 15).clamp(min=1e-8)
    # The kernel's convention: w = (q - 8) * scale + zero, with q in 0..15.
    zeros = low + 8 * scales
    quantized = torch.round((groups - low) / scales).clamp(0, 15).to(torch.int32).reshape(rows, columns)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(quantized, 1)
    scales_and_zeros = torch.stack([scales.squeeze(-1).t(), zeros.squeeze(-1).t()], dim=-1).to(torch.bfloat16).contiguous()
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, INT4_GROUP, scales_and_zeros)


KERNELS = {
    "int8_weight_only": (int8_weight_only, 1.0),  # bytes read per weight
    "int8_dynamic_w8a8": (int8_dynamic, 1.0),
    "bf16": (bf16, 2.0),
    "int4_weight_only_g128": (int4_weight_only, 0.5),
}


def relative_error(kernel: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor, x: torch.Tensor) -> float:
    expected = x @ weight.t()
    return float((kernel(x).float() - expected).norm() / expected.norm())


def kernel_figures(make: Callable, bytes_per_weight: float, shapes: list[tuple[int, int]], layers: int, head: tuple[int, int]) -> dict:
    """One token through `layers` layers of distinct weights, then the output head, for one kernel:
    the time per token and the bytes of weights read per second."""
    generator = torch.Generator().manual_seed(0)
    stream = []
    for _ in range(layers):
        for rows, columns in shapes:
            stream.append((make(torch.randn(rows, columns, generator=generator)), columns))
    inputs = {columns: torch.randn(1, columns, generator=generator) for _, columns in shapes}
    weights = sum(rows * columns for rows, columns in shapes) * layers
    layers_s = median_time(lambda: [kernel(inputs[columns]) for kernel, columns in stream], 7)
    stream.clear()  # frees the layers before the head is made
    head_weight = torch.randn(*head, generator=generator)
    head_kernel = make(head_weight)
    head_input = torch.randn(1, head[1], generator=generator)
    head_s = median_time(lambda: head_kernel(head_input), 7)
    return {
        "layers_ms": round(layers_s * 1e3, 2),
        "layers_gb_s": round(weights * bytes_per_weight / layers_s / 1e9, 1),
        "head_ms": round(head_s * 1e3, 2),
        "head_gb_s": round(head[0] * head[1] * bytes_per_weight / head_s / 1e9, 1),
        "token_ms": round((layers_s + head_s) * 1e3, 2),
        # Against the fp32 product, on the head's shape: the kernel computes what it should.
        "relative_error": round(relative_error(head_kernel, head_weight, head_input), 4),
    }


# --- the engine's step ----------------------------------------------------------------------------


@contextlib.contextmanager
def wrapped(owner, name: str, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def timing(into: dict[str, float], key: str, is_decode_row: Callable[..., bool]) -> Callable[[Callable], Callable]:
    def wrap(call: Callable) -> Callable:
        def timed(*args, **kwargs):
            if not is_decode_row(*args, **kwargs):
                return call(*args, **kwargs)
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                into[key] += time.perf_counter() - start
                into[f"{key}_calls"] += 1

        return timed

    return wrap


def _one_row(module, x, *args, **kwargs) -> bool:
    return x.numel() == x.shape[-1]


def _one_query(module, query, *args, **kwargs) -> bool:
    return query.shape[2] == 1  # [batch, heads, queries, head_dim]


def _one_new_token(allocator, key_states, *args, **kwargs) -> bool:
    return key_states.shape[0] == 1  # [new tokens, kv heads, head_dim]


def _one_token_forward(model, *args, **kwargs) -> bool:
    ids = kwargs.get("input_ids", args[0] if args else None)
    return ids is not None and ids.shape[-1] == 1


def step_breakdown(engine: Engine, prompt: list[int]) -> dict:
    """A decode step's milliseconds, and the parts of it the timers see (decode rows only)."""
    from transformers import AttentionInterface
    from transformers.generation.continuous_batching.cache_allocators.full_attention import FullAttentionCacheAllocator

    model = engine.loaded.model
    request = GenerationRequest(Role.SINGLE_LINE, DECODE_TOKENS, tuple(prompt))  # no stop rule: all 64 tokens
    engine.generate(request)  # the prompt is then cached: later runs prefill at most a page
    untimed = [1 / engine.generate(request).stats.decode_tok_s for _ in range(2)]
    totals: dict[str, float] = defaultdict(float)
    attention = AttentionInterface._global_mapping["sdpa"]
    steps = []
    with contextlib.ExitStack() as patches:
        patches.enter_context(wrapped(Int8WeightOnlyLinear, "forward", timing(totals, "linears", _one_row)))
        patches.enter_context(wrapped(FullAttentionCacheAllocator, "update", timing(totals, "kv_write_and_gather", _one_new_token)))
        patches.enter_context(wrapped(type(model), "forward", timing(totals, "forward", _one_token_forward)))
        AttentionInterface.register("sdpa", timing(totals, "attention", _one_query)(attention))
        patches.callback(AttentionInterface.register, "sdpa", attention)
        for _ in range(2):
            result = engine.generate(request)
            steps.append(1 / result.stats.decode_tok_s)
    forwards = totals["forward_calls"]
    per_step = {key: totals[key] / forwards for key in ("forward", "linears", "attention", "kv_write_and_gather")}
    step_s = statistics.mean(steps)
    return {
        "step_ms": round(step_s * 1e3, 2),
        "decode_tok_s": round(1 / step_s, 2),
        # The same requests without the timers: what they add to a step.
        "untimed_step_ms": round(statistics.mean(untimed) * 1e3, 2),
        "forward_ms": round(per_step["forward"] * 1e3, 2),
        "linears_ms": round(per_step["linears"] * 1e3, 2),
        "attention_ms": round(per_step["attention"] * 1e3, 2),
        "kv_write_and_gather_ms": round(per_step["kv_write_and_gather"] * 1e3, 2),
        "other_forward_ms": round((per_step["forward"] - per_step["linears"] - per_step["attention"] - per_step["kv_write_and_gather"]) * 1e3, 2),
        "outside_forward_ms": round((step_s - per_step["forward"]) * 1e3, 2),
        "linears_alone_ms": round(linears_alone_s(model) * 1e3, 2),
        "decode_forwards_timed": int(forwards),
        "prompt_tokens": len(prompt),
    }


def linears_alone_s(model) -> float:
    """The model's own int8 Linears, called back to back with one row each: the kernels' time with
    nothing between them."""
    linears = [module for module in model.modules() if isinstance(module, Int8WeightOnlyLinear)]
    inputs = {columns: torch.randn(1, columns, dtype=torch.bfloat16) for columns in {m.weight_int8.shape[1] for m in linears}}
    with torch.inference_mode():
        return median_time(lambda: [linear(inputs[linear.weight_int8.shape[1]]) for linear in linears], 9)


# --- the router's text ----------------------------------------------------------------------------


def redecode_cost(tokenizer, ids: list[int], lengths: tuple[int, ...], step_s: float) -> dict:
    """Decoding the whole text at every step, as the router does, for answers of each length: the
    time in all, and its share of the time their generation takes at `step_s` a token."""
    figures = {}
    for length in lengths:
        start = time.perf_counter()
        for end in range(1, length + 1):
            tokenizer.decode(ids[:end], skip_special_tokens=False)
        total = time.perf_counter() - start
        figures[str(length)] = {"total_ms": round(total * 1e3, 1), "share_of_generation": round(total / (length * step_s), 4)}
    return figures


# --- the run --------------------------------------------------------------------------------------


def plot(path: Path, step: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {
        "int8 Linears": step["linears_ms"],
        "attention": step["attention_ms"],
        "KV write + gather": step["kv_write_and_gather_ms"],
        "rest of the forward pass": step["other_forward_ms"],
        "outside it: batching, sampling": step["outside_forward_ms"],
    }
    figure, axes = plt.subplots(figsize=(9, 2.6))
    left = 0.0
    for label, ms in parts.items():
        axes.barh([0], [ms], left=left, label=f"{label} {ms:.1f} ms")
        left += ms
    axes.axvline(step["linears_alone_ms"], color="black", linestyle="--", label=f"the Linears alone {step['linears_alone_ms']:.1f} ms")
    axes.set_yticks([])
    axes.set_xlabel("ms per decode step")
    axes.set_title(f"Decode step, embedded 0.5B, {step['prompt_tokens']} prompt tokens: {step['step_ms']:.1f} ms")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    result: dict = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__}
    result["memory_read_gb_s"] = round(memory_read_gb_s(), 1)
    print(f"memory read: {result['memory_read_gb_s']} GB/s", flush=True)

    with start_engine(ModelSpec(threads=args.threads), EngineConfig()) as engine:
        config = engine.loaded.model.config
        prompt = engine.tokenizer.encode(typed_file().read_text(), add_special_tokens=False)[:PROMPT_TOKENS]
        result["step"] = step_breakdown(engine, prompt)
        print(f"decode step: {json.dumps(result['step'])}", flush=True)
        result["router_redecode"] = redecode_cost(engine.tokenizer, prompt, (24, 400, 1500), result["step"]["step_ms"] / 1e3)
        print(f"router re-decode: {json.dumps(result['router_redecode'])}", flush=True)

    shapes, head = layer_shapes(config), (config.vocab_size, config.hidden_size)
    result["model_shapes"] = {"layers": config.num_hidden_layers, "layer": shapes, "head": head}
    result["kernels"] = {}
    for name, (make, bytes_per_weight) in KERNELS.items():
        result["kernels"][name] = kernel_figures(make, bytes_per_weight, shapes, config.num_hidden_layers, head)
        print(f"{name}: {json.dumps(result['kernels'][name])}", flush=True)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(RESULTS / "decode_profile.png", result["step"])
    print(f"wrote {RESULTS / 'decode_profile.json'}")


if __name__ == "__main__":
    main()
