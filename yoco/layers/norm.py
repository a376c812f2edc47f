"""RMSNorm, computed the way Llama computes it so that our Transformer matches it bit for bit."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension.

    The statistics are taken in float32 whatever the input dtype (as Llama does), and the
    result is cast back before the learned scale is applied. ``elementwise_affine=False`` gives
    the weightless per-head norm used inside gated retention.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        out = x32.to(input_dtype)
        return out if self.weight is None else self.weight * out

    def extra_repr(self) -> str:
        shape = None if self.weight is None else tuple(self.weight.shape)
        return f"{shape}, eps={self.eps}"
