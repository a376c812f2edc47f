"""Multi-scale retention (RetNet; Sun et al. 2023, "Retentive Network").

The same layer as gated retention (:mod:`yoco.layers.gated_retention`) with the decay fixed
per head instead of computed from the input: head h decays by ``γ_h = 1 - 2^(-5-h)``, so the
heads see different time scales ("multi-scale"). The rest is shared: rotated q and k, k scaled
by 1/√d, weightless per-head RMSNorm ("group norm"), swish output gate. Parallel, recurrent
and chunkwise forms are the gated-retention ops with a constant log-decay.

Deliberate differences from torchscale's ``MultiScaleRetention`` (checked in the tests):
  * torchscale divides the decay mask by the square root of its row sums and the scores by
    their absolute row sums (clamped at 1); both are per-(head, position) positive scales, which
    the group norm cancels, up to its epsilon. We keep the plain form so that the three
    computation forms are exactly the same function.
  * torchscale rotates interleaved pairs with angles ``1/10000^linspace(0, 1, d/2)``; we use
    the library's rotary (rotate_half, Llama frequencies). The tests map one onto the other
    by permuting q/k rows and feeding torchscale's angles.
  * The value dimension equals the hidden size (torchscale's RetNet doubles it and narrows the
    FFN); pass another width by building torchscale's layer with ``value_dim = embed_dim``.
"""

import math

import torch

from yoco.layers.gated_retention import GatedRetention


def retnet_log_decays(num_heads: int) -> torch.Tensor:
    """log γ_h = log(1 - 2^(-5-h)) for each head, float32 (H,)."""
    return torch.tensor([math.log(1 - 2 ** (-5 - h)) for h in range(num_heads)], dtype=torch.float32)


class MultiScaleRetention(GatedRetention):
    def __init__(self, hidden_size: int, num_heads: int, eps: float = 1e-6, chunk_size: int = 64) -> None:
        super().__init__(hidden_size, num_heads, eps, chunk_size)
        self.decay_proj = None  # the decay is fixed, not learned

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) -> (B, H, N) float32: each head's constant log γ at every position."""
        b, n, _ = x.shape
        return retnet_log_decays(self.num_heads).to(x.device)[None, :, None].expand(b, -1, n)
