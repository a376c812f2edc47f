"""``nn.Linear`` with a faster path for a decoding step's few-row products in bfloat16 on CPU.

A decoding step multiplies one row (or a few, a batch) by every weight matrix once: it is a
read of the weights, and its speed is the speed of that read. ``F.linear`` reads bfloat16
weights at about half the rate it reads float32 ones on CPU (one row: 15 GiB/s against 27-32,
one thread, Intel Xeon with AVX512-BF16), so bfloat16 decoding, which moves half the bytes, was
no faster than float32. oneDNN's linear on a weight packed once for it (what PyTorch's own
compiler uses on CPU) reads the same bfloat16 weights at 25-30 GiB/s, with results equal bit
for bit. :class:`Linear` takes that path for inputs of at most ``PACKED_ROWS`` rows when no
gradient is needed, and ``F.linear`` otherwise; the packed copy is made on first use and again
whenever the weight changes (its version counter moves), and costs as much memory as the weight.
"""

import torch
import torch.nn.functional as F
from torch import nn

PACKED_ROWS = 16  # measured: 1.9x at 1 row, 1.5x at 4, 1.1x at 32, equal at 512
_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_PACKED_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_AVAILABLE = _PACK is not None and _PACKED_LINEAR is not None and torch.backends.mkldnn.is_available()


class Linear(nn.Linear):
    """``nn.Linear``: same parameters, same state dict, same results."""

    _packed: tuple | None = None  # (weight version, weight data pointer, packed weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packable(x):
            rows = x.reshape(-1, self.in_features)
            out = _PACKED_LINEAR(rows, self._packed_weight(), self.bias, "none", [], "")
            return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def _packable(self, x: torch.Tensor) -> bool:
        weight = self.weight
        return (
            _AVAILABLE
            and x.dtype == torch.bfloat16
            and weight.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and x.numel() <= PACKED_ROWS * self.in_features
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        )

    def _packed_weight(self) -> torch.Tensor:
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[:2] != key:
            self._packed = (*key, _PACK(self.weight.detach(), 1))
        return self._packed[2]
