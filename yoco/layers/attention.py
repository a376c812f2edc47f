"""Grouped-query self-attention: full causal (the Transformer) or sliding-window (YOCO-SWA)."""

import torch
from torch import nn

from yoco.cache import GrowingKV, WindowKV
from yoco.layers.linear import Linear
from yoco.layers.rotary import Rope
from yoco.ops.attention import causal_attention
from yoco.ops.sliding_window import sliding_window_attention


class SelfAttention(nn.Module):
    """Llama's attention block: q/k/v projections, rotary on q and k, SDPA, output projection.

    With ``window`` set, each token attends only to the last ``window`` positions (itself
    included) through the blocked O(N·W) kernel; parameters are identical either way.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, num_kv_heads: int, window: int | None = None
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.window = window
        self.q_proj = Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = Linear(num_heads * self.head_dim, hidden_size, bias=False)

    def split_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        cache: GrowingKV | WindowKV | None = None,
    ) -> torch.Tensor:
        """x: (B, N, hidden); rope: position tables for those N positions -> (B, N, hidden).

        With a cache, x holds the N positions that follow what the cache has seen; the cache
        is updated in place.
        """
        q = rope.rotate_queries(self.split_heads(self.q_proj(x), self.num_heads))
        k = rope.rotate_keys(self.split_heads(self.k_proj(x), self.num_kv_heads))
        v = self.split_heads(self.v_proj(x), self.num_kv_heads)
        if self.window is None:
            out = self.full_attention(q, k, v, cache)
        else:
            out = self.window_attention(q, k, v, cache)
        b, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))

    def full_attention(self, q, k, v, cache: GrowingKV | None) -> torch.Tensor:
        if cache is None:
            return causal_attention(q, k, v)
        k_all, v_all, key_mask = cache.append(k, v)
        return causal_attention(q, k_all, v_all, key_mask)

    def window_attention(self, q, k, v, cache: WindowKV | None) -> torch.Tensor:
        if cache is None:
            return sliding_window_attention(q, k, v, self.window)
        if q.shape[2] == 1:
            # One query: store its key in the ring, then attend to the whole ring.
            keys, values, filled = cache.append_one(k, v)
            return causal_attention(q, keys, values, filled)
        prefix_k, prefix_v = cache.ordered_prefix()
        out = sliding_window_attention(q, k, v, self.window, prefix_k, prefix_v)
        cache.push(k, v)
        return out
