"""Position encodings applied to queries and keys: rotary (RoPE) and XPos.

Rotary follows Llama's convention: frequencies ``θ^(-2i/d)`` for ``i < d/2``; the two halves
of each head vector are rotated against each other (``rotate_half``), not interleaved pairs.
This is the one convention the library uses for every mixer (attention, sliding window,
retention, cross-attention); it differs from the official YOCO/torchscale code's
``1/θ^linspace(0, 1, d/2)`` interleaved form, which only matters when importing checkpoints.

XPos (Sun et al. 2022, "A Length-Extrapolatable Transformer") is rotary plus a per-dimension
exponential scale: queries at position n are multiplied by ``ζ_i^(n/B)``, keys by
``ζ_i^(-n/B)``, with ``ζ_i = (2i + 0.4d) / (1.4d)`` and B the scale base (512), so that
``q_n·k_m`` decays like ``ζ^((n-m)/B)`` with distance. Only n - m matters, so positions are
shifted by a fixed centre (half of max_position_embeddings) to keep ``ζ^(±n/B)`` within
floating-point range; a fixed centre (not torchscale's per-call ``-length/2``) keeps cached
decoding identical to the full forward.

Log-n query scaling (:class:`LogNScaledQueries`; Chiang & Cholak 2022, the "logn attention" of
Qwen) keeps softmax attention as sharp beyond the training length as within it: a query that
sees n keys is multiplied by ``max(1, log n / log base)``. Spread over n keys, the same scores
put less weight on the one key that matters as n grows; scaling the logits by log n offsets
that. Below ``base`` keys nothing changes, so a model trained at lengths <= base trains and
scores exactly as without it.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Rope:
    """Per-position tables, (B, N, head_dim) each; ``scale`` is None for plain rotary."""

    cos: torch.Tensor
    sin: torch.Tensor
    scale: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # (B, N), the position ids the tables were made for

    def rotate_queries(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (and for XPos, scale up) ``x`` of shape (B, heads, N, d)."""
        out = apply_rotary(x, self.cos, self.sin)
        return out if self.scale is None else out * self.scale.unsqueeze(1)

    def rotate_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (and for XPos, scale down) ``x`` of shape (B, heads, N, d)."""
        out = apply_rotary(x, self.cos, self.sin)
        return out if self.scale is None else out / self.scale.unsqueeze(1)

    def last(self, keep_last: int | None) -> "Rope":
        """The tables of the last ``keep_last`` positions (all when None)."""
        if keep_last is None:
            return self
        n = self.cos.shape[1]
        pick = lambda t: None if t is None else t[:, n - keep_last :]  # noqa: E731
        return Rope(pick(self.cos), pick(self.sin), pick(self.scale), pick(self.positions))


class NoPositions:
    """Stands in for a :class:`Rope` where attention sees no positions (NoPE): queries and keys
    pass unchanged, so scores depend on content alone and the causal mask is the only order."""

    def rotate_queries(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def rotate_keys(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def last(self, keep_last: int | None) -> "NoPositions":
        return self


NO_POSITIONS = NoPositions()


def logn_query_scale(positions: torch.Tensor, base: int) -> torch.Tensor:
    """(B, N) position ids -> (B, N) factors ``max(1, log(p + 1) / log(base))``: the query at
    position p sees p + 1 keys (positions count from 0 in every row)."""
    if base < 2:  # (the config refuses it too; this guards a config edited after its check)
        raise ValueError(f"cross_decoder_logn_base must be a length >= 2, got {base!r}")
    return (torch.log1p(positions.double()) / math.log(base)).clamp(min=1.0)


@dataclass
class LogNScaledQueries:
    """Wraps the position encoding of an attention (a :class:`Rope` or ``NO_POSITIONS``) and
    multiplies its queries by per-position factors (:func:`logn_query_scale`); keys pass as
    the wrapped encoding leaves them."""

    encoding: Rope | NoPositions
    factors: torch.Tensor  # (B, N), float64

    def rotate_queries(self, x: torch.Tensor) -> torch.Tensor:
        rotated = self.encoding.rotate_queries(x)  # (its dtype: fp32 tables under autocast)
        return rotated * self.factors[:, None, :, None].to(rotated.dtype)

    def rotate_keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding.rotate_keys(x)

    def last(self, keep_last: int | None) -> "LogNScaledQueries":
        if keep_last is None:
            return self
        n = self.factors.shape[1]
        return LogNScaledQueries(self.encoding.last(keep_last), self.factors[:, n - keep_last :])


class RotaryEmbedding(nn.Module):
    """Turns position ids into the :class:`Rope` tables the mixers consume.

    ``xpos_scale_base`` switches rotary to XPos; ``xpos_center`` is the position whose scale
    is 1 (any fixed value gives the same attention scores).
    """

    def __init__(
        self,
        head_dim: int,
        theta: float = 10000.0,
        xpos_scale_base: float | None = None,
        xpos_center: int = 0,
    ) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        # Computed on the fly rather than kept as a buffer: a d/2-vector costs nothing, and no
        # loading path (meta-device init, dtype casts) can leave it stale or in bf16.
        self.head_dim, self.theta = head_dim, theta
        self.xpos_scale_base, self.xpos_center = xpos_scale_base, xpos_center

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> Rope:
        """position_ids: (B, N) integers -> tables of shape (B, N, head_dim) in ``dtype``."""
        exponents = torch.arange(0, self.head_dim, 2, device=position_ids.device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents.float())  # (d/2,)
        freqs = position_ids[..., None].float() * inv_freq  # (B, N, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, N, d)
        scale = None
        if self.xpos_scale_base is not None:
            zeta = (exponents.float() + 0.4) / 1.4  # (2i + 0.4d) / 1.4d
            power = (position_ids[..., None].float() - self.xpos_center) / self.xpos_scale_base
            scale = torch.cat((zeta, zeta)) ** power  # (B, N, d)
            scale = scale.to(dtype)
        return Rope(angles.cos().to(dtype), angles.sin().to(dtype), scale, position_ids)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape (B, heads, N, d) by tables of shape (B, N, d)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return x * cos + rotate_half(x) * sin
