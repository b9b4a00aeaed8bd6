"""CPU attention: fp32 for bf16 decoding, and each request of a continuous batch attended on its own,
to the bit what it computes alone."""

from __future__ import annotations

import torch

from fimble.models.cpu_attention import request_bounds, sdpa_fp32_on_cpu

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16


class Attention(torch.nn.Module):
    num_key_value_groups = HEADS // KV_HEADS
    is_causal = True


def test_cpu_attention_runs_bf16_in_fp32():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    out, _ = sdpa_fp32_on_cpu(Attention(), q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.transpose(1, 2), atol=0.03, rtol=0.02)


def request(queries: int, keys: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One request's queries, keys, values and mask: its new tokens are the last of its keys, each
    seeing the keys up to itself."""
    q = torch.randn(1, HEADS, queries, HEAD_DIM, dtype=torch.bfloat16)
    k, v = (torch.randn(1, KV_HEADS, keys, HEAD_DIM, dtype=torch.bfloat16) for _ in range(2))
    allowed = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    mask = torch.zeros(1, 1, queries, keys, dtype=torch.bfloat16).masked_fill(~allowed, torch.finfo(torch.bfloat16).min)
    return q, k, v, mask


def batch_of(requests) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """The requests as transformers' continuous batching passes them: queries side by side, keys
    concatenated, one block-diagonal mask, and the cumulative lengths that bound each request."""
    queries = torch.cat([r[0] for r in requests], dim=2)
    keys, values = torch.cat([r[1] for r in requests], dim=2), torch.cat([r[2] for r in requests], dim=2)
    mask = torch.full((1, 1, queries.shape[2], keys.shape[2]), torch.finfo(torch.bfloat16).min, dtype=torch.bfloat16)
    q_start = k_start = 0
    cu_q, cu_k = [0], [0]
    for q, k, _, own_mask in requests:
        mask[..., q_start : q_start + q.shape[2], k_start : k_start + k.shape[2]] = own_mask
        q_start, k_start = q_start + q.shape[2], k_start + k.shape[2]
        cu_q.append(q_start)
        cu_k.append(k_start)
    lengths = {"cu_seq_lens_q": torch.tensor(cu_q, dtype=torch.int32), "cu_seq_lens_k": torch.tensor(cu_k, dtype=torch.int32)}
    return queries, keys, values, mask, lengths


def test_each_request_of_a_batch_gets_exactly_what_it_computes_alone():
    torch.manual_seed(2)
    # Keys past 512: the kernel works in blocks of 512 keys, which a whole batch would place across requests.
    requests = [request(1, 700), request(1, 530), request(6, 300), request(1, 90)]  # three decoding, one prefilling
    queries, keys, values, mask, lengths = batch_of(requests)
    together, _ = sdpa_fp32_on_cpu(Attention(), queries, keys, values, mask, scaling=HEAD_DIM**-0.5, **lengths)
    start = 0
    for q, k, v, own_mask in requests:
        alone, _ = sdpa_fp32_on_cpu(Attention(), q, k, v, own_mask, scaling=HEAD_DIM**-0.5)
        assert torch.equal(together[:, start : start + q.shape[2]], alone)
        start += q.shape[2]
    # The same attention as the whole batch under its mask, which is what the batch asked for.
    whole, _ = sdpa_fp32_on_cpu(Attention(), queries.float(), keys.float(), values.float(), mask.float(), scaling=HEAD_DIM**-0.5)
    torch.testing.assert_close(together.float(), whole, atol=0.02, rtol=0.02)


def test_a_batch_padded_past_its_requests_attends_at_once():
    torch.manual_seed(3)
    queries, keys, values, mask, lengths = batch_of([request(1, 12), request(1, 7)])
    padded_q = torch.cat([queries, torch.zeros(1, HEADS, 2, HEAD_DIM, dtype=torch.bfloat16)], dim=2)
    padded_mask = torch.cat([mask, torch.zeros(1, 1, 2, keys.shape[2], dtype=torch.bfloat16)], dim=2)
    out, _ = sdpa_fp32_on_cpu(Attention(), padded_q, keys, values, padded_mask, **lengths)
    assert out.shape == (1, 4, HEADS, HEAD_DIM)


def test_request_bounds():
    assert request_bounds(torch.tensor([0, 1, 4]), torch.tensor([0, 30, 52])) == [((0, 1), (0, 30)), ((1, 4), (30, 52))]
    assert request_bounds(torch.tensor([0, 1, 1]), torch.tensor([0, 30, 30])) == [((0, 1), (0, 30))]  # an empty slot
    assert request_bounds(None, None) == []  # outside continuous batching (a plain forward pass)
