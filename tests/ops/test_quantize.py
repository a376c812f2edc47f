"""Int8 keys and values: the rounding bound, the tensor-like storage, and attention reading it."""

import pytest
import torch

from yoco.ops.attention import SPLIT_K_FROM, causal_attention
from yoco.ops.decode_attention import decode_attention, decode_attention_reference
from yoco.ops.quantize import QuantizedKV, dequantize_int8, dequantized, quantize_int8


def test_every_element_is_within_half_a_step_of_its_vectors_grid():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 50, 16, generator=gen) * torch.logspace(-3, 2, 50)[:, None]  # scales vary
    x[0, 0, 7] = 0.0  # an all-zero vector
    values, scales = quantize_int8(x)
    assert values.dtype == torch.int8 and scales.shape == (3, 2, 50, 1) and scales.dtype == torch.float32
    assert values.abs().max() == 127  # each vector's largest element uses the whole range
    error = (dequantize_int8(values, scales, torch.float32) - x).abs()
    assert (error <= scales / 2 + 1e-7 * x.abs()).all()
    assert (dequantize_int8(values, scales, torch.float32)[0, 0, 7] == 0).all()
    assert dequantize_int8(values, scales, torch.bfloat16).dtype == torch.bfloat16


def test_quantized_storage_indexes_writes_and_concatenates_like_a_tensor():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 10, 8, generator=gen)
    store = QuantizedKV.zeros((2, 3, 12, 8), torch.float32, "cpu")
    store[:, :, 2:12] = x  # a float tensor is quantized as it is written
    assert store.shape == (2, 3, 12, 8) and store.dtype == torch.float32
    assert (dequantized(store[:, :, :2]) == 0).all()
    torch.testing.assert_close(dequantized(store[:, :, 2:]), x, atol=0.05, rtol=0)
    copy = QuantizedKV.zeros((2, 3, 10, 8), torch.float32, "cpu")
    copy[:] = store[:, :, 2:]  # a quantized one is copied as it is: no second rounding
    assert torch.equal(copy.dequantize(), store[:, :, 2:].dequantize())
    rows = store[torch.tensor([1, 0])]
    assert torch.equal(rows.dequantize()[0], store.dequantize()[1])
    both = QuantizedKV.cat([store, copy], dim=2)
    assert both.shape == (2, 3, 22, 8) and torch.equal(both[:, :, 12:].dequantize(), copy.dequantize())
    assert store.nbytes() == 2 * 3 * 12 * (8 + 4)
    with pytest.raises(ValueError, match="leading axes"):
        QuantizedKV.cat([store, store], dim=-1)


@pytest.mark.parametrize("n_keys", [9, SPLIT_K_FROM + 5])
def test_attention_over_int8_keys_equals_attention_over_their_dequantized_values(n_keys):
    gen = torch.Generator().manual_seed(2)
    q = 3 * torch.randn(2, 4, 1, 8, generator=gen)
    k, v = (torch.randn(2, 2, n_keys, 8, generator=gen) for _ in range(2))
    qk, qv = QuantizedKV(*quantize_int8(k), torch.float32), QuantizedKV(*quantize_int8(v), torch.float32)
    exact = causal_attention(q, qk.dequantize(), qv.dequantize())
    torch.testing.assert_close(decode_attention_reference(q, qk, qv, block=4), exact, atol=1e-5, rtol=0)
    # On CPU a one-query step takes the int8 path, which rounds the query to int8 as well.
    q8 = QuantizedKV(*quantize_int8(q), torch.float32).dequantize()
    exact = causal_attention(q8, qk.dequantize(), qv.dequantize())
    torch.testing.assert_close(causal_attention(q, qk, qv), exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(decode_attention(q, qk, qv, block=4), exact, atol=1e-5, rtol=0)
    chunk = 3 * torch.randn(2, 4, 3, 8, generator=gen)  # several queries: a prompt chunk
    torch.testing.assert_close(
        causal_attention(chunk, qk, qv), causal_attention(chunk, qk.dequantize(), qv.dequantize())
    )
