"""YOCO's cross-decoder attention and the one K/V projection it reads.

The self-decoder's output X is normalised and projected **once** into a global key/value pair
(``SharedKV``); rotary is applied to the keys once (or not at all: with
``cross_decoder_positions=False`` the model passes ``NO_POSITIONS`` instead of the rotary
tables, and the cross-decoder is position-free). Every cross-decoder layer then has only
its own query and output projections (``CrossAttention``) and attends causally to that pair.
This is why YOCO caches one K/V for the whole model instead of one per layer.
"""

import torch
from torch import nn

from yoco.layers.linear import Linear
from yoco.layers.norm import RMSNorm
from yoco.layers.rotary import Rope
from yoco.ops.attention import causal_attention


class SharedKV(nn.Module):
    """X (B, N, hidden) -> K, V (B, H_kv, N, d): the global cache's contents."""

    def __init__(self, hidden_size: int, num_kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.norm = RMSNorm(hidden_size, eps=eps)
        self.k_proj = Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = Linear(hidden_size, num_kv_heads * head_dim, bias=False)

    def forward(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        h = self.norm(x)
        k = self.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return rope.rotate_keys(k), v


class CrossAttention(nn.Module):
    """Queries from this layer's input, keys and values from the shared global pair."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = Linear(hidden_size, hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        shared_kv: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, Nq, hidden), the last Nq positions of the Nk in ``shared_kv`` -> (B, Nq, hidden)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        q = rope.rotate_queries(q)
        out = causal_attention(q, *shared_kv, key_mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))
