"""Inference state: one object per model, built from small per-layer stores.

* :class:`GrowingKV`: keys/values that grow with the sequence (the Transformer's per-layer
  cache, YOCO's single global cache). Storage is preallocated and grown in amortised blocks,
  so appending a token writes in place and never copies the whole cache.
* :class:`WindowKV`: a ring buffer of the last ``W`` keys/values for sliding-window layers,
  constant size.
* :class:`RecurrentState`: the ``(H, d_k, d_v)`` gated-retention state, constant size, float32.

:class:`YocoCache` holds one constant-size store per self-decoder layer plus **one**
GrowingKV; :class:`TransformerCache` holds one GrowingKV per layer. Both subclass
``transformers.Cache`` so ``model.generate()`` carries them between steps.

Rows of a batch may hold different lengths (prompts of unequal length decoded together):
each store keeps per-row lengths and hands attention a key mask when they differ.

Keys and values are kept in the model's dtype (``kv_cache_dtype="auto"``) or in int8 with a
scale per vector (``"int8"``, :mod:`yoco.ops.quantize`), which attention dequantizes as it
reads. Recurrent states stay float32 either way.
"""

import torch
from transformers.cache_utils import Cache

from yoco.ops.quantize import QuantizedKV, dequantized

KV_CACHE_DTYPES = ("auto", "int8")

# Growth past capacity, in tokens: to the next multiple of max(GROWTH_BLOCK, capacity) while
# the cache is small (amortised doubling), but never by more than MAX_GROWTH at once, so a
# large cache wastes at most MAX_GROWTH tokens of memory (2 GiB more for one token at 1M
# tokens, otherwise). Growing copies the cache: prefill reserves room for a reply up front.
GROWTH_BLOCK = 256
MAX_GROWTH = 65536
# Capacities are whole multiples of this many tokens: an int8 cache's decoding step sums the
# values over the whole capacity with PyTorch's int8 product, which reduces in steps of 16.
CAPACITY_ALIGN = 16


def check_kv_cache_dtype(kv_cache_dtype: str) -> None:
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")


def _buffer(
    shape, kv_cache_dtype: str, dtype, device, positions_last: bool = False
) -> torch.Tensor | QuantizedKV:
    """Zeroed storage for keys or values of ``shape`` in the cache's storage format
    (``positions_last``: int8 values laid out for the decoding step, :mod:`yoco.ops.quantize`)."""
    check_kv_cache_dtype(kv_cache_dtype)
    if kv_cache_dtype == "int8":
        return QuantizedKV.zeros(shape, dtype, device, positions_last)
    return torch.zeros(shape, dtype=dtype, device=device)


def _cat(parts: list, dim: int) -> torch.Tensor | QuantizedKV:
    return QuantizedKV.cat(parts, dim) if isinstance(parts[0], QuantizedKV) else torch.cat(parts, dim)


def _nbytes(buffer: torch.Tensor | QuantizedKV) -> int:
    if isinstance(buffer, QuantizedKV):
        return buffer.nbytes()
    return buffer.numel() * buffer.element_size()


def _kv_cache_dtype(buffer: torch.Tensor | QuantizedKV) -> str:
    return "int8" if isinstance(buffer, QuantizedKV) else "auto"


def _saved(name: str, buffer: torch.Tensor | QuantizedKV, contiguous: bool = True) -> dict[str, torch.Tensor]:
    """The tensors a saved cache keeps of one buffer (an int8 buffer: values and scales);
    ``contiguous=False``: views of the buffer, in the same format."""
    parts = (
        {name: buffer}
        if isinstance(buffer, torch.Tensor)
        else {name: buffer.values, f"{name}_scale": buffer.scales}
    )
    return {key: t.contiguous() for key, t in parts.items()} if contiguous else parts


def _loaded(name: str, tensors: dict[str, torch.Tensor], like: torch.Tensor | QuantizedKV):
    """One buffer's saved tensors, in ``like``'s format (what ``_saved`` wrote)."""
    if isinstance(like, QuantizedKV):
        return QuantizedKV(tensors[name], tensors[f"{name}_scale"], like.dtype)
    return tensors[name]


def _key_mask(lengths: list[int], n_keys: int, device) -> torch.Tensor | None:
    """Bool (B, 1, 1, n_keys), True on real keys; None when every row is full-length."""
    if all(n == n_keys for n in lengths):
        return None
    lengths_t = torch.tensor(lengths, device=device)
    return (torch.arange(n_keys, device=device)[None, :] < lengths_t[:, None])[:, None, None, :]


class GrowingKV:
    """Keys and values (B, H_kv, capacity, d), rows left-aligned, per-row lengths. Int8 values
    are kept positions last, the layout a decoding step reads them in."""

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        head_dim: int,
        dtype,
        device,
        capacity: int = 0,
        kv_cache_dtype: str = "auto",
    ):
        capacity = -(-max(capacity, 0) // CAPACITY_ALIGN) * CAPACITY_ALIGN
        shape = (batch, kv_heads, capacity, head_dim)
        self.keys = _buffer(shape, kv_cache_dtype, dtype, device)
        self.values = _buffer(shape, kv_cache_dtype, dtype, device, positions_last=True)
        self.lengths = [0] * batch

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def _reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        step = min(max(GROWTH_BLOCK, self.capacity), MAX_GROWTH)
        new_capacity = -(-needed // step) * step
        shape = (*self.keys.shape[:2], new_capacity - self.capacity, self.keys.shape[-1])
        kind, dtype, device = _kv_cache_dtype(self.keys), self.keys.dtype, self.keys.device
        self.keys = _cat([self.keys, _buffer(shape, kind, dtype, device)], dim=2)
        self.values = _cat([self.values, _buffer(shape, kind, dtype, device, positions_last=True)], dim=2)

    def append(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write k, v (B, H_kv, n, d) after each row's end; return all keys, values, key mask."""
        n = k.shape[2]
        self._reserve(max(self.lengths) + n)
        if len(set(self.lengths)) == 1:
            start = self.lengths[0]
            self.keys[:, :, start : start + n] = k
            self.values[:, :, start : start + n] = v
        else:
            for row, start in enumerate(self.lengths):
                self.keys[row, :, start : start + n] = k[row]
                self.values[row, :, start : start + n] = v[row]
        self.lengths = [length + n for length in self.lengths]
        end = max(self.lengths)
        return self.keys[:, :, :end], self.values[:, :, :end], _key_mask(self.lengths, end, k.device)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep (and reorder) the given batch rows, e.g. the surviving beams."""
        self.keys, self.values = self.keys[rows], self.values[rows]
        self.lengths = [self.lengths[i] for i in rows.tolist()]

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` positions (transformers' convention: <= 0)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes the negative number of tokens to remove, got {tokens_to_remove}")
        self.lengths = [max(0, n + tokens_to_remove) for n in self.lengths]

    def nbytes(self) -> int:
        """Bytes of keys and values held (per-token accounting; allocation is in blocks)."""
        per_token = 2 * _nbytes(self.keys[:1, :, :1])  # one token of one row, keys and values
        return per_token * sum(self.lengths)

    def allocated_nbytes(self) -> int:
        return _nbytes(self.keys) + _nbytes(self.values)

    def tensors(self, contiguous: bool = True) -> dict[str, torch.Tensor]:
        """What a saved cache keeps of this store: the filled positions only (``contiguous=False``:
        as views of the buffers, which later steps only append to)."""
        end = max(self.lengths)
        keys, values = self.keys[:, :, :end], self.values[:, :, :end]
        return {**_saved("keys", keys, contiguous), **_saved("values", values, contiguous)}

    def load_tensors(self, tensors: dict[str, torch.Tensor], lengths: list[int]) -> None:
        end = tensors["keys"].shape[2]
        self._reserve(end)
        self.keys[:, :, :end] = _loaded("keys", tensors, self.keys)
        self.values[:, :, :end] = _loaded("values", tensors, self.values)
        self.lengths = list(lengths)

    @classmethod
    def stack(cls, stores: list["GrowingKV"]) -> "GrowingKV":
        """Rows of several stores as one batch (capacity of the largest)."""
        first = stores[0]
        capacity = max(s.capacity for s in stores)
        batch = sum(s.keys.shape[0] for s in stores)
        keys = first.keys
        out = cls(
            batch, keys.shape[1], keys.shape[3], keys.dtype, keys.device, capacity, _kv_cache_dtype(keys)
        )
        row = 0
        for s in stores:
            rows = s.keys.shape[0]
            out.keys[row : row + rows, :, : s.capacity] = s.keys
            out.values[row : row + rows, :, : s.capacity] = s.values
            row += rows
        out.lengths = [n for s in stores for n in s.lengths]
        return out


class WindowKV:
    """Ring buffer of the last ``window`` keys/values: position p lives in slot p % W.

    W slots rather than W - 1: a one-token step writes its own key first and then attends to
    the whole ring, so decoding never concatenates (copies) the window.
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        head_dim: int,
        window: int,
        dtype,
        device,
        kv_cache_dtype: str = "auto",
    ):
        self.window = window
        shape = (batch, kv_heads, window, head_dim)
        self.keys = _buffer(shape, kv_cache_dtype, dtype, device)
        self.values = _buffer(shape, kv_cache_dtype, dtype, device)
        self.lengths = [0] * batch  # tokens seen so far, per row

    def ordered_prefix(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """The last min(length, W-1) keys/values in position order, i.e. what the first of
        several new tokens can see; rows must share a length."""
        if len(set(self.lengths)) != 1:
            raise ValueError("a multi-token step needs every row of the batch at the same length")
        length = self.lengths[0]
        held = min(length, self.window - 1)
        if held == 0:
            return None, None
        order = torch.arange(length - held, length, device=self.keys.device) % self.window
        return dequantized(self.keys[:, :, order]), dequantized(self.values[:, :, order])

    def push(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Remember the last W of the n new positions (B, H_kv, n, d)."""
        n = k.shape[2]
        keep = min(n, self.window)
        if len(set(self.lengths)) == 1:
            end = self.lengths[0] + n
            slots = torch.arange(end - keep, end, device=k.device) % self.window
            self.keys[:, :, slots] = k[:, :, n - keep :]
            self.values[:, :, slots] = v[:, :, n - keep :]
        else:
            for row, length in enumerate(self.lengths):
                slots = torch.arange(length + n - keep, length + n, device=k.device) % self.window
                self.keys[row, :, slots] = k[row, :, n - keep :]
                self.values[row, :, slots] = v[row, :, n - keep :]
        self.lengths = [length + n for length in self.lengths]

    def append_one(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One new position per row (B, H_kv, 1, d): store it, then return the ring (unordered:
        order does not matter to a single query) and a mask of its filled slots."""
        self.push(k, v)
        filled = [min(n, self.window) for n in self.lengths]
        return self.keys, self.values, _key_mask(filled, self.window, self.keys.device)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.keys, self.values = self.keys[rows], self.values[rows]
        self.lengths = [self.lengths[i] for i in rows.tolist()]

    def nbytes(self) -> int:
        return _nbytes(self.keys) + _nbytes(self.values)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**_saved("keys", self.keys), **_saved("values", self.values)}

    def load_tensors(self, tensors: dict[str, torch.Tensor], lengths: list[int]) -> None:
        self.keys[:] = _loaded("keys", tensors, self.keys)
        self.values[:] = _loaded("values", tensors, self.values)
        self.lengths = list(lengths)

    @classmethod
    def stack(cls, stores: list["WindowKV"]) -> "WindowKV":
        first = stores[0]
        out = cls.__new__(cls)
        out.window = first.window
        out.keys = _cat([s.keys for s in stores], dim=0)
        out.values = _cat([s.values for s in stores], dim=0)
        out.lengths = [n for s in stores for n in s.lengths]
        return out


class RecurrentState:
    """Gated-retention state (B, H, d_k, d_v), always float32."""

    def __init__(self, batch: int, heads: int, head_dim: int, device):
        self.state = torch.zeros(batch, heads, head_dim, head_dim, dtype=torch.float32, device=device)
        self.lengths = [0] * batch

    def select_rows(self, rows: torch.Tensor) -> None:
        self.state = self.state[rows]
        self.lengths = [self.lengths[i] for i in rows.tolist()]

    def nbytes(self) -> int:
        return self.state.numel() * self.state.element_size()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"state": self.state}

    def load_tensors(self, tensors: dict[str, torch.Tensor], lengths: list[int]) -> None:
        self.state.copy_(tensors["state"])
        self.lengths = list(lengths)

    @classmethod
    def stack(cls, stores: list["RecurrentState"]) -> "RecurrentState":
        out = cls.__new__(cls)
        out.state = torch.cat([s.state for s in stores])
        out.lengths = [n for s in stores for n in s.lengths]
        return out


class ConvState:
    """The last K-1 inputs (B, K-1, C) of a short convolution (yoco.ops.short_conv), per row;
    zeros before a row's first token, which is what the convolution pads with."""

    def __init__(self, batch: int, kernel: int, channels: int, dtype, device):
        self.past = torch.zeros(batch, kernel - 1, channels, dtype=dtype, device=device)
        self.lengths = [0] * batch

    def push(self, past: torch.Tensor, n: int) -> None:
        """Keep the new last inputs after a step of ``n`` tokens per row."""
        self.past = past.to(self.past.dtype)
        self.lengths = [length + n for length in self.lengths]

    def select_rows(self, rows: torch.Tensor) -> None:
        self.past = self.past[rows]
        self.lengths = [self.lengths[i] for i in rows.tolist()]

    def nbytes(self) -> int:
        return self.past.numel() * self.past.element_size()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"past": self.past}

    def load_tensors(self, tensors: dict[str, torch.Tensor], lengths: list[int]) -> None:
        self.past.copy_(tensors["past"])
        self.lengths = list(lengths)

    @classmethod
    def stack(cls, stores: list["ConvState"]) -> "ConvState":
        out = cls.__new__(cls)
        out.past = torch.cat([s.past for s in stores])
        out.lengths = [n for s in stores for n in s.lengths]
        return out


class ModelCache(Cache):
    """What both model caches share: per-row lengths, byte counts, batching, HF plumbing."""

    is_compileable = False

    def __init__(self, dtype: torch.dtype):
        super().__init__(layers=[])
        # The dtype the model runs in, which every step must match (recurrent states are
        # float32 whatever it is, so it cannot be read off the stores).
        self.model_dtype = dtype

    def stores(self) -> list:
        raise NotImplementedError

    @property
    def lengths(self) -> list[int]:
        return self.stores()[0].lengths

    @property
    def dtype(self) -> torch.dtype:
        return self.model_dtype

    @property
    def kv_cache_dtype(self) -> str:
        """How keys and values are stored: "auto" (the model's dtype) or "int8"."""
        kv_stores = [store for store in self.stores() if hasattr(store, "keys")]
        return _kv_cache_dtype(kv_stores[0].keys) if kv_stores else "auto"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the result is row ``beam_idx[i]`` of the cache."""
        for store in self.stores():
            store.select_rows(beam_idx.to("cpu"))

    def check_step(self, batch_size: int, n_tokens: int, dtype: torch.dtype) -> None:
        """Raise ValueError, before anything is written, if a step of ``n_tokens`` tokens for
        ``batch_size`` rows cannot extend this cache."""
        if batch_size != len(self.lengths):
            raise ValueError(
                f"input has batch size {batch_size} but the cache holds {len(self.lengths)} rows"
            )
        if n_tokens > 1 and len(set(self.lengths)) > 1:
            raise ValueError(
                f"rows hold different lengths {self.lengths}: only one-token steps can extend them"
            )
        if dtype != self.dtype:
            raise ValueError(f"cache holds {self.dtype} but the model runs {dtype}: make a new cache")

    def nbytes(self) -> int:
        return sum(store.nbytes() for store in self.stores())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch={len(self.lengths)}, lengths={self.lengths}, nbytes={self.nbytes()})"


class TransformerCache(ModelCache):
    def __init__(self, layers: list[GrowingKV], dtype: torch.dtype):
        super().__init__(dtype)
        self.kv = layers

    def stores(self) -> list:
        return self.kv

    def crop(self, tokens_to_remove: int) -> None:
        """Undo the last tokens (assisted / prompt-lookup decoding in ``generate()``)."""
        for store in self.kv:
            store.crop(tokens_to_remove)

    @classmethod
    def stack(cls, caches: list["TransformerCache"]) -> "TransformerCache":
        per_layer = zip(*(c.kv for c in caches), strict=True)
        return cls([GrowingKV.stack(list(stores)) for stores in per_layer], caches[0].model_dtype)


def refuse_rollback(tokens_to_remove: int) -> None:
    """``crop`` for caches holding recurrent state, which cannot be rolled back."""
    if tokens_to_remove == 0:
        return
    raise ValueError(
        "this cache cannot be rolled back (its state is recurrent): "
        "assisted and prompt-lookup decoding are not supported"
    )


class RecurrentCache(ModelCache):
    """One RecurrentState per layer (RetNet)."""

    def __init__(self, states: list[RecurrentState], dtype: torch.dtype):
        super().__init__(dtype)
        self.states = states

    def stores(self) -> list:
        return self.states

    def crop(self, tokens_to_remove: int) -> None:
        refuse_rollback(tokens_to_remove)

    @classmethod
    def stack(cls, caches: list["RecurrentCache"]) -> "RecurrentCache":
        per_layer = zip(*(c.states for c in caches), strict=True)
        return cls([RecurrentState.stack(list(stores)) for stores in per_layer], caches[0].model_dtype)


class YocoCache(ModelCache):
    def __init__(
        self,
        self_decoder: list,
        shared_kv: GrowingKV | None,
        dtype: torch.dtype,
        convs: list[ConvState] | None = None,
    ):
        super().__init__(dtype)
        # One store per self-decoder layer: WindowKV (SWA), RecurrentState (gRet, retention) or
        # GrowingKV (dilated attention).
        self.self_decoder = self_decoder
        # The one global cache every cross-decoder layer reads (None in a model without a
        # cross-decoder, YocoConfig.cross_decoder=False).
        self.shared_kv = shared_kv
        # Each self-decoder layer's short-convolution inputs (YocoConfig.short_conv_size > 0).
        self.convs = convs or []

    def stores(self) -> list:
        return [*self.self_decoder, *([self.shared_kv] if self.shared_kv is not None else []), *self.convs]

    def crop(self, tokens_to_remove: int) -> None:
        refuse_rollback(tokens_to_remove)

    def self_decoder_nbytes(self) -> int:
        return sum(store.nbytes() for store in [*self.self_decoder, *self.convs])

    @classmethod
    def stack(cls, caches: list["YocoCache"]) -> "YocoCache":
        per_layer = zip(*(c.self_decoder for c in caches), strict=True)
        shared = [c.shared_kv for c in caches]
        return cls(
            [type(stores[0]).stack(list(stores)) for stores in per_layer],
            GrowingKV.stack(shared) if shared[0] is not None else None,
            caches[0].model_dtype,
            [ConvState.stack(list(stores)) for stores in zip(*(c.convs for c in caches), strict=True)],
        )
