"""Split-K decode attention against SDPA and the dense reference: lengths of one key, one block,
a block and one more, several blocks with a tail; rows of unequal length; grouped heads; an
explicit scale; bfloat16 storage."""

import math

import pytest
import torch
import torch.nn.functional as F

from yoco.ops.attention import attention_reference
from yoco.ops.decode_attention import decode_attention, decode_attention_reference, int8_decode_attention
from yoco.ops.quantize import QuantizedKV, quantize_int8

BLOCK = 16
# Float32 outputs are O(1); measured against the dense float32 reference the largest difference
# over these cases is about 1e-6 (the merge reorders the sums).
TOL = dict(atol=1e-5, rtol=0)


def qkv(
    n_keys: int,
    heads: int = 4,
    kv_heads: int = 2,
    dtype=torch.float32,
    batch: int = 2,
    seed: int = 0,
    d: int = 8,
):
    gen = torch.Generator().manual_seed(seed)
    q = 3 * torch.randn(batch, heads, 1, d, generator=gen) * (8 / d) ** 0.5  # sharp scores: a wrong key shows
    k = 3 * torch.randn(batch, kv_heads, n_keys, d, generator=gen)
    v = torch.randn(batch, kv_heads, n_keys, d, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("n_keys", [1, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_split_k_equals_sdpa_and_the_reference(n_keys, kv_heads):
    q, k, v = qkv(n_keys, kv_heads=kv_heads)
    sdpa = F.scaled_dot_product_attention(q, k, v, enable_gqa=kv_heads != 4)
    for split_k in (decode_attention, decode_attention_reference):
        out = split_k(q, k, v, block=BLOCK)
        torch.testing.assert_close(out, sdpa, **TOL)
        torch.testing.assert_close(out, attention_reference(q, k, v), **TOL)


@pytest.mark.parametrize("lengths", [[3 * BLOCK + 5, 1], [BLOCK, 2 * BLOCK + 1], [BLOCK + 1, BLOCK + 1]])
def test_a_key_mask_hides_each_rows_tail_even_whole_blocks_of_it(lengths):
    n_keys = max(lengths)
    q, k, v = qkv(n_keys)
    key_mask = (torch.arange(n_keys)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    out = decode_attention(q, k, v, key_mask, block=BLOCK)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attention_reference(q, k, v, key_mask), **TOL)
    torch.testing.assert_close(decode_attention_reference(q, k, v, key_mask, block=BLOCK), out, **TOL)
    for row, length in enumerate(lengths):  # each row alone, cut to its own length
        alone = decode_attention(q[row : row + 1], k[row : row + 1, :, :length], v[row : row + 1, :, :length])
        torch.testing.assert_close(out[row : row + 1], alone, **TOL)


def test_an_explicit_scale_replaces_one_over_root_d():
    q, k, v = qkv(2 * BLOCK + 3)
    scale = 0.21
    torch.testing.assert_close(
        decode_attention(q, k, v, scale=scale, block=BLOCK),
        attention_reference(q * scale * math.sqrt(8), k, v),
        **TOL,
    )


def test_bfloat16_storage_stays_within_bfloat16_rounding_of_the_float32_reference():
    q, k, v = qkv(5000, dtype=torch.bfloat16)
    out = decode_attention(q, k, v, block=1024)
    assert out.dtype == torch.bfloat16
    exact = attention_reference(q.float(), k.float(), v.float())
    # Scores and sums stay float32 in the fused kernel; each block's output is rounded to
    # bfloat16 once before the merge, SDPA's whole output once. Measured: 0.0067 against
    # SDPA's 0.0033 (outputs are O(1)); the bound allows 3x SDPA's error.
    error = (out.float() - exact.float()).abs().max().item()
    sdpa_error = (F.scaled_dot_product_attention(q, k, v, enable_gqa=True).float() - exact).abs().max().item()
    assert error < 0.05 and error < 3 * sdpa_error + 1e-3, (error, sdpa_error)


def test_it_refuses_more_than_one_query_and_ungrouped_heads():
    q, k, v = qkv(9)
    for split_k in (decode_attention, decode_attention_reference):
        with pytest.raises(ValueError, match="one query per head, got 2"):
            split_k(torch.cat([q, q], dim=2), k, v)
        with pytest.raises(
            ValueError, match=r"query heads \(4\) must be a multiple of key/value heads \(3\)"
        ):
            split_k(q, *qkv(9, kv_heads=3)[1:])


def int8(x: torch.Tensor, dtype=torch.float32) -> QuantizedKV:
    return QuantizedKV(*quantize_int8(x), dtype)


@pytest.mark.parametrize("n_keys", [1, 5, 3 * BLOCK + 5])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_int8_path_equals_the_reference_over_the_dequantized_cache(n_keys, kv_heads):
    """The int8 path reads int8 keys through a weight-only int8 product and folds the value
    scales into the weights; in float32 that is the dequantized attention up to rounding."""
    q, k, v = qkv(n_keys, kv_heads=kv_heads, d=16)  # the int8 product takes widths in steps of 16
    lengths = [n_keys, max(1, n_keys - 3)]
    key_mask = (torch.arange(n_keys)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    for mask in (None, key_mask):
        out = int8_decode_attention(q, int8(k), int8(v), mask)
        exact = attention_reference(q, int8(k).dequantize(), int8(v).dequantize(), mask)
        torch.testing.assert_close(out, exact, **TOL)
        torch.testing.assert_close(decode_attention(q, int8(k), int8(v), mask), out, atol=0, rtol=0)


def test_int8_path_in_bfloat16_stays_within_bfloat16_rounding():
    q, k, v = qkv(5000, dtype=torch.bfloat16, d=64)
    qk, qv = int8(k, torch.bfloat16), int8(v, torch.bfloat16)
    out = int8_decode_attention(q, qk, qv)
    assert out.dtype == torch.bfloat16
    keys, values = qk.dequantize(), qv.dequantize()  # what the cache stands for, in bfloat16
    exact = attention_reference(q.float(), keys.float(), values.float())
    # The scores leave the int8 product rounded to bfloat16 (relative 2^-9), as in eager
    # attention computed in bfloat16 (q @ kᵀ in bfloat16, softmax in float32, weights rounded):
    # the bound is twice that eager attention's error over the same dequantized keys. Measured:
    # 0.020 against eager's 0.022 (SDPA, whose scores stay float32: 0.0037; outputs are O(1)).
    error = (out.float() - exact).abs().max().item()
    scores = (q @ keys.repeat_interleave(2, dim=1).transpose(-1, -2)) * 64**-0.5
    eager = torch.softmax(scores.float(), dim=-1).to(torch.bfloat16) @ values.repeat_interleave(2, dim=1)
    eager_error = (eager.float() - exact).abs().max().item()
    assert error < 0.05 and error < 2 * eager_error, (error, eager_error)


def test_int8_heads_narrower_than_the_product_takes_dequantize_instead():
    q, k, v = qkv(40)  # width 8
    with pytest.raises(ValueError, match="multiples of 16, got 8"):
        int8_decode_attention(q, int8(k), int8(v))
    exact = attention_reference(q, int8(k).dequantize(), int8(v).dequantize())
    torch.testing.assert_close(decode_attention(q, int8(k), int8(v), block=BLOCK), exact, **TOL)
