"""Prefix reuse: requests that begin with the same tokens share the work of prefilling them.

While a prompt is prefilled, the cache is snapshotted at multiples of ``block`` tokens (the
engine's prefill chunk, so a restored cache continues on exactly the chunk boundaries an
unshared prefill would take, and its outputs are identical): at 1, 2, 4, 8 ... blocks and at the
last boundary before the prompt's end. A snapshot at every boundary would copy the growing
cache once per chunk, work quadratic in the prompt; these copies add up to at most about three
times the prompt's cache. A new prompt starts from the
longest snapshot that is a proper prefix of it. For YOCO a snapshot is small: the
self-decoder's constant-size state plus the shared K/V up to the prefix; for the Transformer it
is every layer's K/V up to the prefix. Snapshots are copies of the filled positions only (the
same tensors a saved cache keeps), held in an LRU bounded by ``max_bytes``.
"""

from collections import OrderedDict

import torch


class PrefixCache:
    def __init__(self, max_bytes: int, block: int):
        self.max_bytes, self.block = max_bytes, block
        self.entries: OrderedDict[tuple[int, ...], tuple[list[dict[str, torch.Tensor]], int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.reused_tokens = 0

    def put(self, prompt: list[int], length: int, cache) -> None:
        """Keep a copy of ``cache``, which holds exactly the first ``length`` tokens of ``prompt``
        (one row, ``length`` a multiple of the block), if ``length`` is a boundary worth keeping."""
        blocks = length // self.block
        if blocks & (blocks - 1) and length != (len(prompt) - 1) // self.block * self.block:
            return
        key = tuple(prompt[:length])
        if self.max_bytes <= 0 or key in self.entries:
            if key in self.entries:
                self.entries.move_to_end(key)
            return
        tensors = [{name: t.clone() for name, t in store.tensors().items()} for store in cache.stores()]
        size = sum(t.numel() * t.element_size() for store in tensors for t in store.values())
        if size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes:
            _, (_, freed) = self.entries.popitem(last=False)
            self.bytes -= freed
        self.entries[key] = (tensors, size)
        self.bytes += size

    def restore(self, model, prompt: list[int], capacity: int, kv_cache_dtype: str = "auto"):
        """(tokens reused, a cache holding them) for the longest kept proper prefix of
        ``prompt``, or (0, None)."""
        if self.max_bytes <= 0:
            return 0, None
        for length in range((len(prompt) - 1) // self.block * self.block, 0, -self.block):
            entry = self.entries.get(tuple(prompt[:length]))
            if entry is None:
                continue
            self.entries.move_to_end(tuple(prompt[:length]))
            cache = model.new_cache(1, capacity, kv_cache_dtype)
            for store, tensors in zip(cache.stores(), entry[0], strict=True):
                store.load_tensors(tensors, [length])  # copies them into the new cache
            self.hits += 1
            self.reused_tokens += length
            return length, cache
        return 0, None
