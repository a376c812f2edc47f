"""Gated retention layer (gRet), YOCO's recurrent self-decoder mixer.

Per head: q and k are rotated (rotary), k is scaled by 1/√d; a data-dependent scalar decay
``log γ_t = logsigmoid(x_t W_γ) / 16`` (τ = 16 keeps γ close to 1 at initialisation); the
retention output is normalised per head by an RMSNorm without weights, gated by
``swish(x W_G)`` and projected back.
"""

import torch
import torch.nn.functional as F
from torch import nn

from yoco.cache import RecurrentState
from yoco.layers.linear import Linear
from yoco.layers.norm import RMSNorm
from yoco.layers.rotary import Rope
from yoco.ops.gated_retention import gated_retention_chunkwise, gated_retention_recurrent

GATE_LOGIT_NORMALIZER = 16.0


class GatedRetention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, eps: float = 1e-6, chunk_size: int = 64) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.chunk_size = chunk_size
        self.q_proj = Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = Linear(hidden_size, hidden_size, bias=False)
        self.g_proj = Linear(hidden_size, hidden_size, bias=False)  # output gate
        self.decay_proj = Linear(hidden_size, num_heads, bias=False)  # W_γ
        self.head_norm = RMSNorm(self.head_dim, eps=eps, elementwise_affine=False)
        self.o_proj = Linear(hidden_size, hidden_size, bias=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, d)

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, hidden) -> (B, H, N) float32, each entry log γ <= 0."""
        logits = self.decay_proj(x).float()
        return (F.logsigmoid(logits) / GATE_LOGIT_NORMALIZER).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        cache: RecurrentState | None = None,
    ) -> torch.Tensor:
        """x: (B, N, hidden); rope: position tables for those N positions -> (B, N, hidden).

        With a cache, the retention starts from its state and leaves the new state in it.
        """
        q = rope.rotate_queries(self.split_heads(self.q_proj(x)))
        k = rope.rotate_keys(self.split_heads(self.k_proj(x))) * self.head_dim**-0.5
        v = self.split_heads(self.v_proj(x))
        state = None if cache is None else cache.state
        if cache is not None and x.shape[1] == 1:
            o, state = gated_retention_recurrent(q, k, v, self.log_decay(x), state)
        else:
            o, state = gated_retention_chunkwise(
                q, k, v, self.log_decay(x), state, chunk_size=self.chunk_size
            )
        if cache is not None:
            cache.state = state
            cache.lengths = [length + x.shape[1] for length in cache.lengths]
        o = self.head_norm(o)  # (B, H, N, d)
        b, _, n, _ = o.shape
        o = o.transpose(1, 2).reshape(b, n, -1)
        return self.o_proj(F.silu(self.g_proj(x)) * o)
