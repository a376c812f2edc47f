"""The prefix cache on its own: snapshots view the growing K/V instead of copying it, count each
buffer once, restore exactly, and free a buffer when its last snapshot is evicted."""

import torch

from tests.helpers import tiny_model
from yoco.cache import GrowingKV
from yoco.serve.prefix import PrefixCache


def state_bytes(cache) -> int:
    return sum(
        t.numel() * t.element_size()
        for store in cache.stores()
        if not isinstance(store, GrowingKV)
        for t in store.tensors().values()
    )


def buffer_bytes(cache) -> int:
    return sum(store.allocated_nbytes() for store in cache.stores() if isinstance(store, GrowingKV))


@torch.no_grad()
def test_snapshots_view_the_kv_once_copy_the_state_and_restore_exactly():
    model = tiny_model("yoco-gret")
    prompt = torch.randint(
        0, model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    prefixes = PrefixCache(max_bytes=2**30, block=16)
    cache = model.new_cache(1, 64)
    snapshots_at = {}
    for start in (0, 16, 32):
        model(torch.tensor([prompt[start : start + 16]]), cache=cache)
        prefixes.put(prompt, start + 16, cache)
        snapshots_at[start + 16] = [{n: t.clone() for n, t in s.tensors().items()} for s in cache.stores()]
    # Three snapshots: the shared K/V buffers once, three copies of the self-decoder's state.
    assert prefixes.bytes == buffer_bytes(cache) + 3 * state_bytes(cache)
    for length, query in [(48, prompt), (32, prompt[:40]), (16, prompt[:32])]:
        reused, restored = prefixes.restore(model, query, capacity=64)
        assert reused == length  # the longest proper prefix kept
        for kept, store in zip(snapshots_at[length], restored.stores(), strict=True):
            for name, tensor in store.tensors().items():
                torch.testing.assert_close(tensor, kept[name], atol=0, rtol=0)
    # A bound of the buffers and one state: the second snapshot evicts the first, whose buffers
    # it views itself, so they stay counted once; evicting it too frees everything.
    small = PrefixCache(max_bytes=buffer_bytes(cache) + state_bytes(cache), block=16)
    cache = model.new_cache(1, 64)
    for start in (0, 16):
        model(torch.tensor([prompt[start : start + 16]]), cache=cache)
        small.put(prompt, start + 16, cache)
    assert list(small.entries) == [tuple(prompt[:32])]
    assert small.bytes == buffer_bytes(cache) + state_bytes(cache)
    small._evict_oldest()
    assert small.bytes == 0 and not small.buffers
