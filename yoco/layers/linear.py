"""``nn.Linear`` with faster paths for bfloat16 inference on CPU.

**Few rows** (a decoding step). A decoding step multiplies one row (or a few, a batch) by every
weight matrix once: it is a read of the weights, and its speed is the speed of that read.
``F.linear`` reads bfloat16 weights at about half the rate it reads float32 ones on CPU (one
row: 15 GiB/s against 27-32, one thread, Intel Xeon with AVX512-BF16), so bfloat16 decoding,
which moves half the bytes, was no faster than float32. oneDNN's linear on a weight packed once
for it (what PyTorch's own compiler uses on CPU) reads the same bfloat16 weights at 25-30
GiB/s, with results equal bit for bit. :class:`Linear` takes that path for inputs of at most
``PACKED_ROWS`` rows when no gradient is needed; the packed copy is made on first use and again
whenever the weight changes (its version counter moves), and costs as much memory as the weight.

**Many rows** (a prefill). Whether bfloat16 products beat float32 ones depends on the CPU: with
AMX they run several times faster, but with AVX512-BF16 alone we measured them at about half
the float32 rate (161 against 300 GFLOP/s, 4096-square products, 2 cores). A product of
bfloat16 numbers is exact in float32, and bfloat16 kernels accumulate in float32 too, so
multiplying the operands converted to float32 is the same arithmetic in another order: results
differ from ``F.linear`` by the rounding of the sums, within one bfloat16 step. Where float32
products are the faster ones on this CPU (:func:`float32_products_are_faster`, measured once per
process), bfloat16 inputs of at least ``FLOAT32_ROWS`` rows take that path when no gradient is
needed; the converted copies are temporary. Set ``YOCO_BF16_PRODUCTS`` to ``bfloat16`` or
``float32`` to choose instead of measuring.

Everything else, and every product autograd must differentiate, is ``F.linear``.
"""

import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

PACKED_ROWS = 16  # measured: 1.9x at 1 row, 1.5x at 4, 1.1x at 32, equal at 512
# From this many rows the float32 path, which converts the weight at every call, is the faster
# one where it is chosen (a 1376 x 512 weight, no AMX: 1.7x slower at 17 rows, equal at 64,
# 1.4x faster at 128, 1.8x at 2048); in between, batched decoding keeps the bfloat16 kernels.
FLOAT32_ROWS = 128
_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_PACKED_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_AVAILABLE = _PACK is not None and _PACKED_LINEAR is not None and torch.backends.mkldnn.is_available()
BF16_PRODUCTS_CHOICES = ("auto", "bfloat16", "float32")
# float32 is chosen only when it is clearly faster: measured 1.9x on an AVX512-BF16 Xeon without
# AMX, and several times slower than bfloat16 where AMX is present.
FLOAT32_MARGIN = 1.2


def _best_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@functools.cache
def float32_products_are_faster() -> bool:
    """Whether this CPU multiplies bfloat16 matrices faster by converting them to float32 (a
    1024-square product timed both ways, about 0.1 s once per process), or as
    ``YOCO_BF16_PRODUCTS`` says."""
    choice = os.environ.get("YOCO_BF16_PRODUCTS", "auto")
    if choice not in BF16_PRODUCTS_CHOICES:
        raise ValueError(f"YOCO_BF16_PRODUCTS must be one of {BF16_PRODUCTS_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice == "float32"
    # (its own generator: measuring must not move the global random state a sampler may use)
    a = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    native = _best_seconds(lambda: a @ a)
    converted = _best_seconds(lambda: (a.float() @ a.float()).to(torch.bfloat16))
    return native > FLOAT32_MARGIN * converted


def bfloat16_linear_in_float32(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear`` of bfloat16 operands computed in float32 and rounded to bfloat16 once."""
    out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return out.to(torch.bfloat16)


class Linear(nn.Linear):
    """``nn.Linear``: same parameters, same state dict, same results (bit for bit, or within the
    rounding of the sums on the many-rows path)."""

    _packed: tuple | None = None  # (weight version, weight data pointer, packed weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._bfloat16_inference_on_cpu(x):
            if x.numel() <= PACKED_ROWS * self.in_features and _AVAILABLE:
                rows = x.reshape(-1, self.in_features)
                out = _PACKED_LINEAR(rows, self._packed_weight(), self.bias, "none", [], "")
                return out.reshape(*x.shape[:-1], self.out_features)
            if x.numel() >= FLOAT32_ROWS * self.in_features and float32_products_are_faster():
                return bfloat16_linear_in_float32(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def _bfloat16_inference_on_cpu(self, x: torch.Tensor) -> bool:
        weight = self.weight
        return (
            x.dtype == torch.bfloat16
            and weight.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        )

    def _packed_weight(self) -> torch.Tensor:
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[:2] != key:
            self._packed = (*key, _PACK(self.weight.detach(), 1))
        return self._packed[2]
