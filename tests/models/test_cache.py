"""Cache sizes and growth: one K/V for YOCO, one per layer for the Transformer, no copies."""

import pytest
import torch

import yoco
from tests.helpers import TINY, tiny_model
from yoco.cache import GROWTH_BLOCK, GrowingKV


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


def test_growing_kv_returns_what_was_appended():
    store = GrowingKV(2, 1, 3, torch.float32, "cpu")
    chunks = [torch.randn(2, 1, n, 3) for n in (5, 1, 300)]
    for chunk in chunks:
        keys, values, mask = store.append(chunk, -chunk)
    expected = torch.cat(chunks, dim=2)
    torch.testing.assert_close(keys, expected)
    torch.testing.assert_close(values, -expected)
    assert mask is None
