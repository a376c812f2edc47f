"""Cache sizes and growth: one K/V for YOCO, one per layer for the Transformer, no copies."""

import pytest
import torch

import yoco
from tests.helpers import TINY, tiny_model
from yoco.cache import GROWTH_BLOCK, MAX_GROWTH, GrowingKV
from yoco.inference.engine import REPLY_ROOM


def per_token_kv_bytes(model) -> int:
    config = model.config
    return 2 * config.num_key_value_heads * config.head_dim * model.dtype.itemsize


@pytest.mark.parametrize("kind", ["yoco-swa", "yoco-gret"])
def test_self_decoder_state_does_not_grow_with_the_prompt(kind):
    model = tiny_model(kind)
    sizes = {
        n: yoco.prefill(model, [t % 99 for t in range(n)])[1].self_decoder_nbytes() for n in (3, 40, 200)
    }
    assert len(set(sizes.values())) == 1, sizes


def test_cache_growth_per_token(model_kind):
    model = tiny_model(model_kind)
    _, short = yoco.prefill(model, list(range(10)))
    _, long = yoco.prefill(model, list(range(60)))
    per_token = (long.nbytes() - short.nbytes()) / 50
    # YOCO caches one K/V, the Transformer one per layer, RetNet none (constant-size state).
    layers_with_kv = {"transformer": TINY["num_hidden_layers"], "retnet": 0}.get(model_kind, 1)
    assert per_token == layers_with_kv * per_token_kv_bytes(model)


def test_appending_writes_in_place_between_block_growths():
    store = GrowingKV(1, 2, 4, torch.float32, "cpu")
    pointers = []
    for _ in range(3 * GROWTH_BLOCK + 5):
        store.append(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
        pointers.append(store.keys.data_ptr())
    moves = sum(a != b for a, b in zip(pointers, pointers[1:], strict=False))
    # capacity 256 -> 512 -> 1024: two moves in 773 appends, never one per token.
    assert moves == 2
    assert store.capacity == 4 * GROWTH_BLOCK


def test_capacity_reserved_up_front_never_moves():
    model = tiny_model("yoco-gret")
    _, cache = yoco.prefill(model, list(range(20)), capacity=60)
    pointer = cache.shared_kv.keys.data_ptr()
    for token in range(40):
        model(torch.tensor([[token]]), cache=cache)
    assert cache.shared_kv.keys.data_ptr() == pointer
    assert cache.lengths == [60]


def test_a_large_cache_grows_by_a_bounded_block():
    # One head of width 1 keeps this at a few MB while the capacities are those of a long context.
    store = GrowingKV(1, 1, 1, torch.float32, "cpu", capacity=3 * MAX_GROWTH)
    store.append(torch.zeros(1, 1, 3 * MAX_GROWTH, 1), torch.zeros(1, 1, 3 * MAX_GROWTH, 1))
    store.append(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1))  # one past capacity
    assert store.capacity == 4 * MAX_GROWTH  # not doubled to 6x
    assert store.keys[0, 0, 3 * MAX_GROWTH, 0] == 1 and store.lengths == [3 * MAX_GROWTH + 1]


@pytest.mark.parametrize("kind", ["yoco-gret", "transformer"])
def test_steps_after_a_default_prefill_write_in_place(kind):
    model = tiny_model(kind)
    _, cache = yoco.prefill(model, [t % 99 for t in range(300)], chunk_size=128)
    store = cache.shared_kv if kind == "yoco-gret" else cache.kv[0]
    pointer = store.keys.data_ptr()
    for token in range(REPLY_ROOM // 8):
        model(torch.tensor([[token % 99]]), cache=cache)
    assert store.keys.data_ptr() == pointer and cache.lengths == [300 + REPLY_ROOM // 8]


def test_growing_kv_returns_what_was_appended():
    store = GrowingKV(2, 1, 3, torch.float32, "cpu")
    chunks = [torch.randn(2, 1, n, 3) for n in (5, 1, 300)]
    for chunk in chunks:
        keys, values, mask = store.append(chunk, -chunk)
    expected = torch.cat(chunks, dim=2)
    torch.testing.assert_close(keys, expected)
    torch.testing.assert_close(values, -expected)
    assert mask is None


def test_int8_values_stay_positions_last_through_growth_rows_stacking_and_loading():
    """An int8 cache's values are kept positions last (the layout the decoding step reads) after
    every operation that makes new storage, and are saved in the usual layout, equal to what was
    written."""
    x = [torch.randn(2, 2, n, 16) for n in (5, 300)]
    store = GrowingKV(2, 2, 16, torch.float32, "cpu", capacity=5, kv_cache_dtype="int8")
    assert store.capacity == 16  # capacities are multiples of the int8 product's step
    for part in x:
        store.append(part, part)  # the second append grows the storage
    assert store.values.positions_last and not store.keys.positions_last
    written = store.values.dequantize()[:, :, :305]
    saved = store.tensors()
    assert saved["values"].is_contiguous() and saved["values"].shape == (2, 2, 305, 16)
    loaded = GrowingKV(2, 2, 16, torch.float32, "cpu", kv_cache_dtype="int8")
    loaded.load_tensors(saved, [305, 305])
    stacked = GrowingKV.stack([store, loaded])
    store.select_rows(torch.tensor([1, 0]))
    for other in (loaded, stacked, store):
        assert other.values.positions_last and other.capacity % 16 == 0
    torch.testing.assert_close(loaded.values.dequantize()[:, :, :305], written, atol=0, rtol=0)
    torch.testing.assert_close(stacked.values.dequantize()[2:, :, :305], written, atol=0, rtol=0)
    torch.testing.assert_close(store.values.dequantize()[:, :, :305], written.flip(0), atol=0, rtol=0)
