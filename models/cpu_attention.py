"""Attention in fp32 for bf16 models on CPU.

torch's CPU attention kernel is ~8x slower in bf16 than in fp32: one decode query over 600 keys
took 510 us against 63 us here, 15 ms of a 63 ms decode step for the 0.5B model. Prefill kept
bf16 weights fast (307 tok/s against 191 with the whole model in fp32, where every Linear pays
two casts of its activations). So the model stays bf16 and only decode attention is upcast.

This replaces the "sdpa" entry of transformers' attention registry (`AttentionInterface.register`,
its documented extension point), so the continuous-batching path, which only accepts "sdpa",
"paged|eager" or flash, uses it too. It changes nothing off the CPU or for other dtypes.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


# Decode batches have one query per request; only they are upcast. For prefill the flash kernel's
# bf16 cost is spread over many queries, and in keystroke replays with and without the upcast the
# warm TTFT differed less than the run-to-run noise (0.55-0.70 s), so prefill keeps bf16.
MAX_UPCAST_QUERIES = 16


def sdpa_fp32_on_cpu(module, query, key, value, attention_mask, *args, **kwargs):
    if query.device.type != "cpu" or query.dtype != torch.bfloat16 or query.shape[2] > MAX_UPCAST_QUERIES:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
    return output.to(torch.bfloat16), weights


AttentionInterface.register("sdpa", sdpa_fp32_on_cpu)
