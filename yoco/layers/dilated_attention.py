"""LongNet's dilated attention as a token mixer (YOCO self-decoder ``"dilated"``).

Same parameters as :class:`~yoco.layers.attention.SelfAttention` (q/k/v/o projections, rotary
on q and k); only the attention pattern differs: see :mod:`yoco.ops.dilated_attention`.
"""

import torch

from yoco.cache import GrowingKV
from yoco.layers.attention import SelfAttention
from yoco.layers.rotary import Rope
from yoco.ops.dilated_attention import check_patterns, dilated_attention
from yoco.ops.quantize import dequantized


class DilatedAttention(SelfAttention):
    """Grouped-query dilated attention with segment lengths ``segments`` and dilation
    ratios ``ratios`` (one pair per pattern, first ratio 1)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, segments, ratios) -> None:
        super().__init__(hidden_size, num_heads, num_kv_heads)
        check_patterns(segments, ratios)
        self.segments, self.ratios = tuple(segments), tuple(ratios)

    def forward(self, x: torch.Tensor, rope: Rope, cache: GrowingKV | None = None) -> torch.Tensor:
        """x: (B, N, hidden) -> (B, N, hidden). With a cache, x holds the N positions that
        follow what the cache has seen; the cache is updated in place."""
        q = rope.rotate_queries(self.split_heads(self.q_proj(x), self.num_heads))
        k = rope.rotate_keys(self.split_heads(self.k_proj(x), self.num_kv_heads))
        v = self.split_heads(self.v_proj(x), self.num_kv_heads)
        out = self.attend(q, k, v, cache)
        b, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))

    def attend(self, q, k, v, cache: GrowingKV | None) -> torch.Tensor:
        if cache is None:
            return dilated_attention(q, k, v, self.segments, self.ratios)
        # The cache keeps every key, though a query only ever sees keys of its own segment
        # in each pattern: the last max(segments) keys would do. A constant-size store (a
        # ring of max(segments) keys, like WindowKV) is a possible later optimisation; the
        # op already reads only the current segments of the prefix, so decoding costs
        # O(max(segments)) per token either way.
        keys, values, key_mask = cache.append(k, v)
        keys, values = dequantized(keys), dequantized(values)  # an int8 cache: every key, read back
        if key_mask is None:
            return dilated_attention(q, keys, values, self.segments, self.ratios)
        # Rows of unequal length (one-token steps only): segment boundaries depend on each
        # row's own position, so attend row by row over that row's real keys.
        rows = [
            dilated_attention(
                q[i : i + 1], keys[i : i + 1, :, :n], values[i : i + 1, :, :n], self.segments, self.ratios
            )
            for i, n in enumerate(cache.lengths)
        ]
        return torch.cat(rows)
