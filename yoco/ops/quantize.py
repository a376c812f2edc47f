"""Int8 keys and values: one float32 scale per vector, the cache format of ``kv_cache_dtype="int8"``.

Each key or value vector x (one token, one head: the last axis) is stored as
``q = round(x / s)`` in int8 with ``s = max|x| / 127``, and read back as ``q · s``: the error
of every element is at most ``s / 2``, half a step of its own vector's grid. With 64-wide heads
that is 64 + 4 bytes per vector against 128 in bfloat16 (0.53x). The format is the one of
llama.cpp's q8_0 cache and transformers' quantized cache, with one scale per whole head vector.

:class:`QuantizedKV` stands in for the (B, H, N, d) tensor it stores: it is indexed, written
and concatenated along the leading axes like a tensor. A decoding step reads the int8 values
as they are (:func:`yoco.ops.decode_attention.int8_decode_attention`); other attention
dequantizes what it reads (:func:`dequantized`).

A store may keep its int8 values **positions last** (``QuantizedKV.zeros(..., positions_last=True)``):
the memory is (..., d, N) and ``values`` is its transposed view, so everything that indexes,
writes or saves it sees the usual (..., N, d) shape. The weighted sum of a decoding step,
Σ_j w_j·v̂_j, is then a product whose reduction runs along contiguous memory, which PyTorch's
int8 product computes straight from the int8 bytes.
"""

import torch

QMAX = 127


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) -> (int8 values (..., d), float32 scales (..., 1)) with x ≈ values · scales."""
    x = x.float()
    scales = x.abs().amax(-1, keepdim=True) / QMAX
    # An all-zero vector has scale 0: divide by 1 instead, its values are 0 either way.
    values = torch.round(x / torch.where(scales > 0, scales, 1.0)).clamp(-QMAX, QMAX)
    return values.to(torch.int8), scales


def dequantize_int8(values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """values · scales in float32, rounded once to ``dtype``, in the usual (…, N, d) memory layout
    whatever the values' layout (fused attention kernels expect it)."""
    out = torch.empty(values.shape, dtype=dtype, device=values.device)
    return torch.mul(values, scales, out=out)  # computed in float32 (the scales' dtype)


class QuantizedKV:
    """A (..., N, d) tensor of keys or values held as int8 values and float32 scales (..., N, 1).

    Indexing with leading-axis indices (rows, heads, positions; never the last axis) gives a
    QuantizedKV of the selection (views where a tensor would give views); assigning a float
    tensor quantizes it, assigning a QuantizedKV copies its values and scales as they are.
    ``dtype`` is the dtype it dequantizes to, the model's."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype):
        self.values, self.scales, self.dtype = values, scales, dtype

    @classmethod
    def zeros(cls, shape, dtype: torch.dtype, device, positions_last: bool = False) -> "QuantizedKV":
        if positions_last:
            memory = torch.zeros((*shape[:-2], shape[-1], shape[-2]), dtype=torch.int8, device=device)
            values = memory.transpose(-1, -2)
        else:
            values = torch.zeros(shape, dtype=torch.int8, device=device)
        return cls(values, torch.zeros((*shape[:-1], 1), dtype=torch.float32, device=device), dtype)

    @property
    def positions_last(self) -> bool:
        """Whether the values' memory runs along positions (see the module's docstring)."""
        return self.values.shape[-2] > 1 and self.values.stride(-2) == 1

    @classmethod
    def cat(cls, parts: list["QuantizedKV"], dim: int) -> "QuantizedKV":
        """Concatenated along a leading axis; positions last if any part is (an empty one cannot tell)."""
        ndim = parts[0].values.dim()
        if dim in (-1, ndim - 1):
            raise ValueError("QuantizedKV concatenates along leading axes only")
        # Positions last: concatenate the (..., d, N) memory, a layout torch.cat would not keep.
        if any(p.positions_last for p in parts):
            memory_dim = -1 if dim in (-2, ndim - 2) else dim
            values = torch.cat([p.values.transpose(-1, -2) for p in parts], dim=memory_dim).transpose(-1, -2)
        else:
            values = torch.cat([p.values for p in parts], dim=dim)
        return cls(values, torch.cat([p.scales for p in parts], dim=dim), parts[0].dtype)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def device(self) -> torch.device:
        return self.values.device

    def __getitem__(self, index) -> "QuantizedKV":
        return QuantizedKV(self.values[index], self.scales[index], self.dtype)

    def __setitem__(self, index, x) -> None:
        if isinstance(x, QuantizedKV):
            values, scales = x.values, x.scales
        else:
            values, scales = quantize_int8(x)
        self.values[index] = values
        self.scales[index] = scales

    def nbytes(self) -> int:
        return self.values.numel() + 4 * self.scales.numel()

    def dequantize(self) -> torch.Tensor:
        return dequantize_int8(self.values, self.scales, self.dtype)


def dequantized(x: "torch.Tensor | QuantizedKV") -> torch.Tensor:
    """The floating-point tensor ``x`` stands for (``x`` itself unless it is quantized)."""
    return x.dequantize() if isinstance(x, QuantizedKV) else x
