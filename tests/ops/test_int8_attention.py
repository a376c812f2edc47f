"""The int8 decode attention kernel (C, AVX-512 VNNI) against attention over the dequantized
cache, and against the PyTorch path it replaces; its fallbacks where it cannot be built."""

import shutil

import pytest
import torch

import yoco.ops.native as native
from tests.helpers import int8_kernel_expected
from yoco.ops.attention import attention_reference
from yoco.ops.decode_attention import int8_decode_attention
from yoco.ops.int8_attention import BLOCK, KERNEL, SOURCE, native_int8_attention
from yoco.ops.native import NativeKernel
from yoco.ops.quantize import QuantizedKV, quantize_int8


@pytest.fixture
def attend():
    """The kernel, required wherever this machine can build it; elsewhere the PyTorch path,
    which every bound below holds for as well (it is the kernel's reference)."""
    if int8_kernel_expected():
        assert KERNEL.function() is not None, KERNEL.failure
        return native_int8_attention
    assert KERNEL.function() is None
    return lambda q, k, v, mask, scale: int8_decode_attention(q, k, v, mask, scale, native=False)


def cache_like(
    x: torch.Tensor, capacity: int, dtype=torch.float32, positions_last: bool = False
) -> QuantizedKV:
    """x quantized into the first positions of a cache buffer of ``capacity`` positions whose
    other positions hold leftover bytes, as the cache keeps keys (positions first) and values
    (positions last)."""
    buffer = QuantizedKV.zeros(
        (*x.shape[:2], capacity, x.shape[-1]), dtype, x.device, positions_last=positions_last
    )
    buffer.values.copy_(torch.randint(-127, 128, buffer.shape, generator=torch.Generator().manual_seed(1)))
    buffer[:, :, : x.shape[2]] = x
    return buffer[:, :, : x.shape[2]]


def case(n_keys, heads, kv_heads, d, dtype=torch.float32, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = (2 * torch.randn(batch, heads, 1, d, generator=gen)).to(dtype)
    k = 3 * torch.randn(batch, kv_heads, n_keys, d, generator=gen)
    v = torch.randn(batch, kv_heads, n_keys, d, generator=gen)
    keys = cache_like(k.to(dtype), n_keys + 40, dtype)
    values = cache_like(v.to(dtype), n_keys + 40, dtype, positions_last=True)
    return q, keys, values


def exact(q, keys, values, mask):
    """Attention in float64 over the dequantized cache and the query rounded to int8 as the kernel rounds it."""
    rounded = QuantizedKV(*quantize_int8(q), torch.float64).dequantize()
    return attention_reference(rounded, keys.dequantize().double(), values.dequantize().double(), mask)


def prefix_mask(lengths, n):
    return (torch.arange(n)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]


def bound(values: QuantizedKV) -> float:
    """The kernel rounds each block's weights to int16 of the block's largest (steps of 2^-15 of
    it), which moves the output by up to ~2^-15·sqrt(BLOCK)·max|v| for sharp attention; measured
    here, up to 2.2e-4 with max|v| ~4. The cache itself already rounds every value by up to
    max|v|/254: the kernel must stay ten times below that."""
    return values.dequantize().abs().max().item() / 2540


@pytest.mark.parametrize("n_keys", [1, 15, 16, 17, BLOCK, 2 * BLOCK + 77, 5000])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("d", [64, 128])
def test_kernel_equals_attention_over_the_dequantized_cache(n_keys, kv_heads, d, attend):
    """Tails of 16 and 64 keys, whole and partial blocks, grouped heads, two head sizes; rows of
    unequal length, one of them hiding whole blocks; leftover bytes past the length ignored."""
    q, keys, values = case(n_keys, 4, kv_heads, d)
    for mask in (None, prefix_mask([n_keys, max(1, n_keys // 3)], n_keys)):
        out = attend(q, keys, values, mask, d**-0.5)
        assert out is not None and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), exact(q, keys, values, mask), atol=bound(values), rtol=0)


def test_it_is_the_default_int8_path_and_agrees_with_the_pytorch_path(attend):
    q, keys, values = case(3000, 8, 4, 64, torch.bfloat16)
    mask = prefix_mask([3000, 1234], 3000)
    fast = int8_decode_attention(q, keys, values, mask)
    assert torch.equal(fast, attend(q, keys, values, mask, 64**-0.5).to(torch.bfloat16))
    pytorch = int8_decode_attention(q, keys, values, mask, native=False)
    reference = exact(q, keys, values, mask)
    # bfloat16 output: both within a few bfloat16 steps of the reference (outputs below 2).
    for out in (fast, pytorch):
        assert (out.double() - reference).abs().max() < 4 * 2**-7


def test_a_later_block_that_raises_the_maximum_rescales_the_earlier_ones(attend):
    """One key in the third block scores ~70 above the rest: the earlier blocks' sums and
    accumulators must be scaled down by exp(-70), not kept."""
    q, keys, values = case(3 * BLOCK, 2, 1, 64, batch=1)
    k = keys.dequantize().clone()
    k[0, 0, 2 * BLOCK + 5] = 4 * q[0, 0, 0]
    keys = cache_like(k, 3 * BLOCK + 40)
    scores = (q[0, 0, 0] * k[0, 0, 2 * BLOCK + 5]).sum() / 8
    assert scores > 60
    out = attend(q, keys, values, None, 64**-0.5)
    torch.testing.assert_close(out.double(), exact(q, keys, values, None), atol=bound(values), rtol=0)


def test_grouped_queries_views_into_a_batch_a_shared_mask_and_another_default_dtype(attend):
    """Eight query heads per K/V head; the cache's second row taken as a view (a storage
    offset); one mask row broadcast over the batch; torch's default dtype set to bfloat16 (the
    kernel's buffers must stay float32)."""
    q, keys, values = case(3000, 8, 1, 64, batch=3)
    q, keys, values = q[1:], keys[1:], values[1:]
    assert keys.values.storage_offset() > 0
    shared = prefix_mask([2500], 3000)  # (1, 1, 1, n) for both rows
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)
        out = attend(q, keys, values, shared, 64**-0.5)
    finally:
        torch.set_default_dtype(default)
    assert out is not None
    torch.testing.assert_close(
        out.double(), exact(q, keys, values, shared.expand(2, 1, 1, 3000)), atol=bound(values), rtol=0
    )


def test_layouts_and_masks_it_does_not_read_fall_back_to_the_pytorch_path():
    q, keys, values = case(100, 4, 2, 64)
    assert native_int8_attention(q[..., :32], *case(100, 4, 2, 32)[1:], None, 1.0) is None  # head size
    positions_first = QuantizedKV(*quantize_int8(values.dequantize()), torch.float32)
    assert native_int8_attention(q, keys, positions_first, None, 1.0) is None
    per_head = prefix_mask([100, 50], 100).expand(2, 2, 1, 100)
    assert native_int8_attention(q, keys, values, per_head, 1.0) is None
    # ... and int8_decode_attention still answers, through the PyTorch path.
    out = int8_decode_attention(q, keys, positions_first)
    torch.testing.assert_close(out.double(), exact(q, keys, positions_first, None), atol=1e-5, rtol=0)


def test_without_a_compiler_or_when_switched_off_it_warns_once_and_returns_none(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    missing = NativeKernel("test kernel", SOURCE, "yoco_int8_attention", [])
    with pytest.warns(UserWarning, match="no C compiler 'no-such-compiler'"):
        assert missing.function() is None
    assert missing.function() is None and "no-such-compiler" in missing.failure  # no second warning

    monkeypatch.delenv("CC")
    if shutil.which("cc"):  # a source that stops compiling, as the kernel does without VNNI
        broken = NativeKernel("test kernel", '#error "this CPU lacks an instruction"\n', "f", [])
        with pytest.warns(UserWarning, match="this CPU lacks an instruction"):
            assert broken.function() is None

    monkeypatch.setattr(native, "ENABLED", False)
    with pytest.warns(UserWarning, match="YOCO_NATIVE=0"):
        assert NativeKernel("test kernel", SOURCE, "yoco_int8_attention", []).function() is None


def test_loading_the_kernel_leaves_the_process_float_mode_alone(attend):
    """The library is linked without -ffast-math's startup code, which would flush subnormals to
    zero in every later PyTorch operation of the process; the kernel flushes only its own."""
    q, keys, values = case(100, 4, 2, 64)
    attend(q, keys, values, None, 0.125)
    subnormal = torch.tensor([1e-40])
    assert (subnormal * 1.0).item() == pytest.approx(1e-40, rel=1e-3)
