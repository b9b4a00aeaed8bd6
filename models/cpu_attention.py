"""Attention on CPU: each request of a batch on its own, and in fp32 for bf16 decoding.

**Each request on its own.** transformers' continuous batching hands the "sdpa" function every
request of a step at once: their queries side by side, their keys concatenated, and a mask that
keeps each request to its own keys. So each query is scored against every request's keys, a cost
that grows with the square of the batch. Attending request by request (`cu_seq_lens_q` and
`cu_seq_lens_k`, which the batch passes along, bound each one's queries and keys) computes what
each request computes alone, to the bit. On the 0.5B model, 2, 4 and 8 requests decoding together
over 1,400 cached tokens each took 77, 66 and 115 ms a step this way, against 95, 167 and 773 ms
(28 ms for one alone; `benchmarks/batch_decode.py`, which also has the figures with the int8
kernel's rows).

**fp32 for decoding.** torch's CPU attention kernel is ~8x slower in bf16 than in fp32: one decode
query over 600 keys took 510 us against 63 us here, 15 ms of a 63 ms decode step for the 0.5B
model. Prefill kept bf16 weights fast (307 tok/s against 191 with the whole model in fp32, where
every Linear pays two casts of its activations). So the model stays bf16 and only decode
attention is upcast.

This replaces the "sdpa" entry of transformers' attention registry (`AttentionInterface.register`,
its documented extension point), so the continuous-batching path, which only accepts "sdpa",
"paged|eager" or flash, uses it too. It changes nothing off the CPU.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


# Decoding requests have one query each; only they are upcast. For prefill the flash kernel's
# bf16 cost is spread over many queries, and in keystroke replays with and without the upcast the
# warm TTFT differed less than the run-to-run noise (0.55-0.70 s), so prefill keeps bf16.
MAX_UPCAST_QUERIES = 16


def sdpa_fp32_on_cpu(module, query, key, value, attention_mask, *args, **kwargs):
    if query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    bounds = request_bounds(kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k"))
    # One request, or a batch padded past its requests' queries (static shapes), attends at once.
    if len(bounds) < 2 or bounds[-1][0][1] != query.shape[2] or bounds[-1][1][1] > key.shape[2]:
        return _attend(module, query, key, value, attention_mask, *args, **kwargs)
    outputs = []
    for (q_start, q_end), (k_start, k_end) in bounds:
        mask = None if attention_mask is None else attention_mask[..., q_start:q_end, k_start:k_end]
        output, _ = _attend(module, query[:, :, q_start:q_end], key[:, :, k_start:k_end], value[:, :, k_start:k_end], mask, *args, **kwargs)
        outputs.append(output)
    return torch.cat(outputs, dim=1), None  # [batch, queries, heads, head_dim], as sdpa_attention_forward gives


def request_bounds(cu_seq_lens_q: torch.Tensor | None, cu_seq_lens_k: torch.Tensor | None) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Each request's (query start, end) and (key start, end) in a continuous batch; [] outside one."""
    if not isinstance(cu_seq_lens_q, torch.Tensor) or not isinstance(cu_seq_lens_k, torch.Tensor):
        return []
    q, k = cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist()
    if len(q) != len(k):
        return []
    return [((q[i], q[i + 1]), (k[i], k[i + 1])) for i in range(len(q) - 1) if q[i + 1] > q[i]]


def _attend(module, query, key, value, attention_mask, *args, **kwargs):
    if query.dtype != torch.bfloat16 or query.shape[2] > MAX_UPCAST_QUERIES:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
    return output.to(torch.bfloat16), weights


AttentionInterface.register("sdpa", sdpa_fp32_on_cpu)
