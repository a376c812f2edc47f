"""Blocked sliding-window attention against the dense masked reference."""

import math

import pytest
import torch

from yoco.ops.sliding_window import (
    sliding_window_attention,
    sliding_window_attention_reference,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def qkv(n, heads=4, kv_heads=2, d=8, seed=0, prefix=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, n, d, generator=gen)
    k = torch.randn(2, kv_heads, n + prefix, d, generator=gen)
    v = torch.randn(2, kv_heads, n + prefix, d, generator=gen)
    return q, k, v


@pytest.mark.parametrize("window", [1, 2, 5, 8, 16])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 29, 53])
def test_blocked_equals_masked_reference(n, window):
    q, k, v = qkv(n)
    torch.testing.assert_close(
        sliding_window_attention(q, k, v, window),
        sliding_window_attention_reference(q, k, v, window),
        **TOL,
    )


@pytest.mark.parametrize("block", [1, 3, 8, 13])
def test_any_query_block_size_gives_the_same_result(block):
    q, k, v = qkv(41)
    torch.testing.assert_close(
        sliding_window_attention(q, k, v, 6, block=block),
        sliding_window_attention_reference(q, k, v, 6),
        **TOL,
    )


@pytest.mark.parametrize("prefix", [1, 4, 7])
def test_keys_before_the_first_query(prefix):
    """A cached prefix of up to W - 1 keys (decoding / chunked prefill)."""
    window = 8
    q, k, v = qkv(19, prefix=prefix)
    args = (k[:, :, prefix:], v[:, :, prefix:], window, k[:, :, :prefix], v[:, :, :prefix])
    torch.testing.assert_close(
        sliding_window_attention(q, *args), sliding_window_attention_reference(q, *args), **TOL
    )


def test_window_counts_the_current_token():
    """Query i sees key i - W + 1 but not key i - W: exactly W keys, itself included."""
    window, n, i = 4, 12, 9
    q, k, v = qkv(n, heads=1, kv_heads=1)
    base = sliding_window_attention(q, k, v, window)[:, :, i]
    for j, should_matter in ((i - window, False), (i - window + 1, True), (i, True)):
        v2 = v.clone()
        v2[:, :, j] += 10.0
        changed = not torch.allclose(sliding_window_attention(q, k, v2, window)[:, :, i], base)
        assert changed == should_matter, f"key {j} for query {i}, window {window}"


def test_window_one_is_the_identity_on_values():
    q, k, v = qkv(10, heads=2, kv_heads=2)
    torch.testing.assert_close(sliding_window_attention(q, k, v, 1), v, **TOL)


def test_long_sequence_small_window_by_direct_computation():
    """At N = 20000 a dense mask would be 400M entries per head; check sampled rows directly."""
    window, n = 16, 20_000
    q, k, v = qkv(n, heads=2, kv_heads=1, d=8)
    out = sliding_window_attention(q, k, v, window)
    for i in (0, 5, 15, 16, 9_999, n - 1):
        lo = max(0, i - window + 1)
        scores = q[:, :, i : i + 1] @ k[:, :, lo : i + 1].transpose(-1, -2) / math.sqrt(8)
        expected = (scores.softmax(-1) @ v[:, :, lo : i + 1])[:, :, 0]
        torch.testing.assert_close(out[:, :, i], expected, **TOL)


def test_rejects_bad_window_and_oversized_prefix():
    q, k, v = qkv(5)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="k_prefix"):
        sliding_window_attention(q, k, v, 3, k[:, :, :3], v[:, :, :3])
