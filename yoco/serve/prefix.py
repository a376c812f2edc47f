"""Prefix reuse: requests that begin with the same tokens share the work of prefilling them.

While a prompt is prefilled, the cache is snapshotted at every multiple of ``block`` tokens (the
engine's prefill chunk, so a restored cache continues on exactly the chunk boundaries an
unshared prefill would take, and its outputs are identical). A new prompt starts from the
longest snapshot that is a proper prefix of it.

A snapshot costs little. Keys and values that grow by position (YOCO's shared K/V, the
Transformer's layers) are only ever appended to, so a snapshot keeps *views* of the request's
own buffers up to the boundary: positions before it are never written again, and a buffer that
grows is reallocated, leaving the old one to the views. Only the state that is rewritten in
place (the self-decoder's constant-size state: gated-retention states, the sliding-window ring,
convolution inputs) is copied. So a prompt's snapshots at every boundary hold its K/V once plus
one small state per block, and the LRU, bounded by ``max_bytes``, counts each underlying buffer
once, however many snapshots view it.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch

from yoco.cache import GrowingKV


@dataclass
class Snapshot:
    tensors: list[dict[str, torch.Tensor]]  # per cache store, as ``store.tensors()`` gives them
    copied_bytes: int  # the state copies this snapshot owns
    buffers: list[int]  # the K/V buffers its views keep alive (storage addresses)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class PrefixCache:
    def __init__(self, max_bytes: int, block: int):
        self.max_bytes, self.block = max_bytes, block
        self.entries: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self.buffers: dict[int, list[int]] = {}  # storage address -> [bytes, snapshots viewing it]
        self.bytes = 0
        self.hits = self.reused_tokens = 0

    def put(self, prompt: list[int], length: int, cache) -> None:
        """Keep a snapshot of ``cache``, which holds exactly the first ``length`` tokens of
        ``prompt`` (one row, ``length`` a multiple of the block)."""
        key = tuple(prompt[:length])
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        if self.max_bytes <= 0:
            return
        tensors, copied, views = [], 0, {}
        for store in cache.stores():
            if isinstance(store, GrowingKV):
                kept = store.tensors(contiguous=False)
                views |= {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept.values()}
            else:
                kept = {name: t.clone() for name, t in store.tensors().items()}
                copied += sum(_nbytes(t) for t in kept.values())
            tensors.append(kept)

        def added() -> int:  # what keeping it costs: its copies and the buffers not yet counted
            return copied + sum(size for address, size in views.items() if address not in self.buffers)

        if added() > self.max_bytes:
            return
        while self.bytes + added() > self.max_bytes:
            self._evict_oldest()
        self.bytes += added()
        for address, size in views.items():
            self.buffers.setdefault(address, [size, 0])[1] += 1
        self.entries[key] = Snapshot(tensors, copied, list(views))

    def _evict_oldest(self) -> None:
        _, snapshot = self.entries.popitem(last=False)
        self.bytes -= snapshot.copied_bytes
        for address in snapshot.buffers:
            record = self.buffers[address]
            record[1] -= 1
            if record[1] == 0:
                self.bytes -= record[0]
                del self.buffers[address]

    def restore(self, model, prompt: list[int], capacity: int, kv_cache_dtype: str = "auto"):
        """(tokens reused, a cache holding them) for the longest kept proper prefix of
        ``prompt``, or (0, None)."""
        if self.max_bytes <= 0:
            return 0, None
        for length in range((len(prompt) - 1) // self.block * self.block, 0, -self.block):
            snapshot = self.entries.get(tuple(prompt[:length]))
            if snapshot is None:
                continue
            self.entries.move_to_end(tuple(prompt[:length]))
            cache = model.new_cache(1, capacity, kv_cache_dtype)
            for store, tensors in zip(cache.stores(), snapshot.tensors, strict=True):
                store.load_tensors(tensors, [length])  # copies them into the new cache
            self.hits += 1
            self.reused_tokens += length
            return length, cache
        return 0, None
