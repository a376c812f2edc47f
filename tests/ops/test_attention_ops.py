"""Causal softmax attention: the fast SDPA path against the dense reference, in every branch it
takes, and the reference itself against the formula written out query by query."""

import math

import pytest
import torch

import yoco.ops.attention as attention_ops
from yoco.ops.attention import SPLIT_K_FROM, attention_reference, causal_attention
from yoco.ops.decode_attention import decode_attention

HEADS, D = 4, 8
# Sharp scores (q, k ~ 3 N(0, 1): the largest weight of a row averages 0.91), so that one key
# too many or too few moves the output by O(1). Measured against the float64 formula: at most
# 1.7e-6 over every case below (outputs are O(1)); tolerance 3x that.
TOL = dict(atol=5e-6, rtol=0)


def qkv(n_queries: int, n_keys: int, kv_heads: int, seed: int = 0, batch: int = 2):
    gen = torch.Generator().manual_seed(seed)
    q = 3 * torch.randn(batch, HEADS, n_queries, D, generator=gen)
    k = 3 * torch.randn(batch, kv_heads, n_keys, D, generator=gen)
    v = torch.randn(batch, kv_heads, n_keys, D, generator=gen)
    return q, k, v


def attention_by_formula(q, k, v, visible) -> torch.Tensor:
    """o_i = Σ_j softmax_j(q_i·k_j / √d) v_j over the keys ``visible(b, i, j)`` lets query i see;
    query head h reads key/value head h // (H / H_kv)."""
    batch, heads, n_queries, d = q.shape
    group = heads // k.shape[1]
    out = torch.zeros_like(q, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(n_queries):
                keys = [j for j in range(k.shape[2]) if visible(b, i, j)]
                scores = torch.stack([q[b, h, i].double() @ k[b, h // group, j].double() for j in keys])
                weights = (scores / math.sqrt(d)).softmax(0)
                out[b, h, i] = sum(
                    w * v[b, h // group, j].double() for w, j in zip(weights, keys, strict=True)
                )
    return out.to(q.dtype)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize(
    "n_queries, n_keys",
    [(9, 9), (1, 9), (1, 1), (4, 9)],  # full forward, one decode step, a chunk after a cache
)
def test_causal_attention_equals_the_reference_and_the_formula(kv_heads, n_queries, n_keys):
    q, k, v = qkv(n_queries, n_keys, kv_heads)
    first = n_keys - n_queries  # queries are the last positions (bottom-right alignment)
    by_formula = attention_by_formula(q, k, v, lambda b, i, j: j <= first + i)
    torch.testing.assert_close(attention_reference(q, k, v), by_formula, **TOL)
    torch.testing.assert_close(causal_attention(q, k, v), by_formula, **TOL)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_key_mask_hides_each_rows_unused_tail(kv_heads):
    q, k, v = qkv(1, 7, kv_heads)
    lengths = [7, 4]
    key_mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    by_formula = attention_by_formula(q, k, v, lambda b, i, j: j < lengths[b])
    torch.testing.assert_close(causal_attention(q, k, v, key_mask=key_mask), by_formula, **TOL)
    torch.testing.assert_close(attention_reference(q, k, v, key_mask), by_formula, **TOL)
    with pytest.raises(ValueError, match="one-token steps"):
        causal_attention(*qkv(2, 7, kv_heads), key_mask=key_mask)


@pytest.mark.parametrize("n_queries", [9, 1, 4])
def test_an_explicit_scale_replaces_one_over_root_d(n_queries):
    q, k, v = qkv(n_queries, 9, 2)
    scale = 0.21  # softmax(s q·k) = softmax((s √d q)·k / √d)
    torch.testing.assert_close(
        causal_attention(q, k, v, scale=scale), attention_reference(q * scale * math.sqrt(D), k, v), **TOL
    )


def test_one_query_over_a_long_cache_takes_split_k_and_still_equals_the_reference(monkeypatch):
    calls = []

    def counted(*args):
        calls.append(args[1].shape[2])
        return decode_attention(*args)

    monkeypatch.setattr(attention_ops, "decode_attention", counted)
    n_keys = SPLIT_K_FROM + 3  # whole blocks of keys and a tail of 3
    q, k, v = qkv(1, n_keys, 2)
    lengths = [n_keys, SPLIT_K_FROM // 2 + 1]  # the second row's tail is whole blocks of padding
    key_mask = (torch.arange(n_keys)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    for mask in (None, key_mask):
        torch.testing.assert_close(
            causal_attention(q, k, v, key_mask=mask), attention_reference(q, k, v, mask), **TOL
        )
    causal_attention(*qkv(1, SPLIT_K_FROM - 1, 2))  # shorter: SDPA
    assert calls == [n_keys, n_keys]
