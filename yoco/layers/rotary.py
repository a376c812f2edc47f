"""Rotary position embedding, in Llama's convention.

Frequencies ``θ^(-2i/d)`` for ``i < d/2``; the two halves of each head vector are rotated
against each other (``rotate_half``), not interleaved pairs. This is the one convention the
library uses for every mixer (attention, sliding window, gated retention, cross-attention);
it differs from the official YOCO code's ``1/θ^linspace(0, 1, d/2)`` interleaved form, which
only matters when importing its checkpoints.
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Turns position ids into the ``(cos, sin)`` tables that :func:`apply_rotary` consumes."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        # Computed on the fly rather than kept as a buffer: a d/2-vector costs nothing, and no
        # loading path (meta-device init, dtype casts) can leave it stale or in bf16.
        self.head_dim, self.theta = head_dim, theta

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: (B, N) integers -> cos, sin: (B, N, head_dim) in ``dtype``."""
        exponents = torch.arange(0, self.head_dim, 2, device=position_ids.device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents.float())  # (d/2,)
        freqs = position_ids[..., None].float() * inv_freq  # (B, N, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, N, d)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape (B, heads, N, d) by tables of shape (B, N, d)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return x * cos + rotate_half(x) * sin
