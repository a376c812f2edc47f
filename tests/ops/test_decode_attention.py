"""Split-K decode attention against SDPA and the dense reference: lengths of one key, one block,
a block and one more, several blocks with a tail; rows of unequal length; grouped heads; an
explicit scale; bfloat16 storage."""

import math

import pytest
import torch
import torch.nn.functional as F

import yoco.ops.decode_attention as decode_attention_module
from yoco.ops.attention import attention_reference
from yoco.ops.decode_attention import (
    _whole_memory_rows,
    decode_attention,
    decode_attention_reference,
    int8_decode_attention,
)
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
@pytest.mark.parametrize("width", [16, 8])
def test_int8_path_equals_the_reference_over_the_dequantized_cache(n_keys, kv_heads, width):
    """The int8 path rounds the query to int8, takes exact integer products with the int8 keys
    and folds the value scales into the weights; in float32 that is attention over the
    dequantized cache and the dequantized query, up to float32 rounding, at any head width."""
    q, k, v = qkv(n_keys, kv_heads=kv_heads, d=width)
    lengths = [n_keys, max(1, n_keys - 3)]
    key_mask = (torch.arange(n_keys)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    for mask in (None, key_mask):
        out = int8_decode_attention(q, int8(k), int8(v), mask)
        exact = attention_reference(int8(q).dequantize(), int8(k).dequantize(), int8(v).dequantize(), mask)
        torch.testing.assert_close(out, exact, **TOL)
        torch.testing.assert_close(decode_attention(q, int8(k), int8(v), mask), out, atol=0, rtol=0)


def test_int8_path_in_bfloat16_stays_within_bfloat16_rounding():
    q, k, v = qkv(5000, dtype=torch.bfloat16, d=64)
    qk, qv = int8(k, torch.bfloat16), int8(v, torch.bfloat16)
    out = int8_decode_attention(q, qk, qv, native=False)
    assert out.dtype == torch.bfloat16
    keys, values = qk.dequantize(), qv.dequantize()  # what the cache stands for, in bfloat16
    exact = attention_reference(q.float(), keys.float(), values.float())
    # The query's int8 rounding (relative 2^-8 of its largest element) moves the scores about as
    # much as eager attention's bfloat16 scores (q @ kᵀ in bfloat16, softmax in float32, weights
    # rounded) do: the bound is twice that eager attention's error over the same dequantized keys.
    error = (out.float() - exact).abs().max().item()
    scores = (q @ keys.repeat_interleave(2, dim=1).transpose(-1, -2)) * 64**-0.5
    eager = torch.softmax(scores.float(), dim=-1).to(torch.bfloat16) @ values.repeat_interleave(2, dim=1)
    eager_error = (eager.float() - exact).abs().max().item()
    assert error < 0.05 and error < 2 * eager_error, (error, eager_error)


def int8_in_a_cache_buffer(x: torch.Tensor, capacity: int, dtype=torch.bfloat16) -> QuantizedKV:
    """x quantized into the first positions of a positions-last buffer of ``capacity`` positions,
    as a cache holds its values; the positions past x hold leftover int8 bytes (never zero)."""
    buffer = QuantizedKV.zeros((*x.shape[:2], capacity, x.shape[-1]), dtype, x.device, positions_last=True)
    buffer.values.copy_(torch.randint(-127, 128, buffer.shape, generator=torch.Generator().manual_seed(1)))
    buffer[:, :, : x.shape[2]] = x
    return buffer[:, :, : x.shape[2]]


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_int8_values_kept_positions_last_are_summed_by_the_int8_product(kv_heads, monkeypatch):
    """Values kept positions last go through the int8 product over the buffer's whole capacity,
    the weights zero past each row's length: the same attention, within bfloat16 rounding, as the
    dense reference, whatever the leftover bytes past the length and with rows of unequal length."""
    n_keys, capacity = 3000, 3008
    q, k, v = qkv(n_keys, kv_heads=kv_heads, dtype=torch.bfloat16, d=64)
    products = []
    product = decode_attention_module._INT8_MM
    monkeypatch.setattr(
        decode_attention_module, "_INT8_MM", lambda a, b, s: products.append(b.shape) or product(a, b, s)
    )
    qk, qv = int8(k, torch.bfloat16), int8_in_a_cache_buffer(v, capacity)
    assert qv.positions_last and not int8(v).positions_last
    lengths = [n_keys, n_keys - 777]
    key_mask = (torch.arange(n_keys)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    for mask in (None, key_mask):
        products.clear()
        out = int8_decode_attention(q, qk, qv, mask, native=False)  # the PyTorch path, not the C kernel
        assert products.count((64, capacity)) == 2 * kv_heads  # one value sum per row and K/V head
        exact = attention_reference(q.float(), qk.dequantize().float(), qv.dequantize().float(), mask)
        first = int8_decode_attention(q, qk, int8(v, torch.bfloat16), mask, native=False)  # values converted
        bound = 2 * (first.float() - exact).abs().max().item()  # measured: 0.015 against 0.013-0.015
        assert (out.float() - exact).abs().max().item() < bound


def test_only_whole_aligned_buffer_rows_are_read_past_the_length():
    """The product reads the capacity only when it is a multiple of the product's step and the
    view's rows are whole rows of the buffer; otherwise the values are converted."""
    values = int8_in_a_cache_buffer(torch.randn(1, 1, 10, 16), capacity=32).values[0, 0]
    assert _whole_memory_rows(values).shape == (16, 32)
    assert _whole_memory_rows(int8_in_a_cache_buffer(torch.randn(1, 1, 10, 16), 30).values[0, 0]) is None
    assert _whole_memory_rows(int8(torch.randn(1, 1, 10, 16)).values[0, 0]) is None  # positions first


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("jump", [True, False])
def test_int8_path_over_several_key_chunks_rescales_to_the_final_maximum(dtype, jump, monkeypatch):
    """Chunks are weighed against a reference within SCORE_MARGIN of the largest score seen so
    far; a later score beyond that (``jump``: one planted key, about 70 above the rest) must scale
    the earlier chunks down. Keys chunked by 16 (whole chunks through the compiled kernel), the
    planted key in the last chunk of a full row; the shorter row's last chunks are fully hidden."""
    monkeypatch.setattr(decode_attention_module, "KEY_CHUNK", BLOCK)
    q, k, v = qkv(3 * BLOCK + 5, kv_heads=2, d=16)
    if jump:
        k[:, :, -2] = 4 * q[:, ::2, 0]  # aligned with the first query head of each K/V head
        scores = (q[:, ::2, 0] * k[:, :, -2]).sum(-1) / 4
        assert (scores > decode_attention_module.SCORE_MARGIN + 20).all()
    lengths = [3 * BLOCK + 5, BLOCK + 3]
    mask = (torch.arange(k.shape[2])[None] < torch.tensor(lengths)[:, None])[:, None, None, :]
    qk, qv = int8(k.to(dtype), dtype), int8_in_a_cache_buffer(v, 64, dtype)
    q = q.to(dtype)
    exact = attention_reference(
        int8(q.float()).dequantize(), qk.dequantize().float(), qv.dequantize().float(), mask
    )
    out = int8_decode_attention(q, qk, qv, mask)
    if dtype == torch.float32:
        torch.testing.assert_close(out, exact, **TOL)
    else:  # weights rounded to bfloat16 (twice in rescaled chunks) against once in one chunk
        monkeypatch.setattr(decode_attention_module, "KEY_CHUNK", 4 * BLOCK)
        one_chunk = int8_decode_attention(q, qk, qv, mask)
        error, one_chunk_error = ((x.float() - exact).abs().max().item() for x in (out, one_chunk))
        assert error < 2 * one_chunk_error, (error, one_chunk_error)
