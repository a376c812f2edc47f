"""Differential attention (Ye et al. 2024, "Differential Transformer", arXiv 2410.05258).

Each head computes two softmax attention maps and subtracts one from the other, so that the
attention both maps give to irrelevant context (the "noise") cancels:

    DiffAttn(X) = (softmax(Q1 K1ᵀ/√d) − λ softmax(Q2 K2ᵀ/√d)) V
    λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init,      λ_init = 0.8 − 0.6·exp(−0.3·(l − 1))

with l the 1-based layer index and λq1, λk1, λq2, λk2 learned vectors of size d shared by the
heads of a layer. Each head's output (width 2d) goes through an RMSNorm without weights and is
multiplied by (1 − λ_init), which keeps the gradient scale of softmax attention. (The official
code gives that norm a learned scale of width 2d; DiffLlama, and we, do not.)

**Heads and parameters.** With a baseline of H heads of width d = hidden/H and H_kv key/value
heads, a differential layer has H/2 heads and H_kv/2 key/value heads; the projections keep
the baseline's shapes, viewed as sub-heads of width d split into two halves:

* q_proj -> H sub-heads: Q1 = sub-heads [0, H/2), Q2 = sub-heads [H/2, H);
* k_proj -> H_kv sub-heads: K1 = [0, H_kv/2), K2 = [H_kv/2, H_kv);
* v_proj -> H_kv sub-heads: head j's value is [V_j | V_{j + H_kv/2}], width 2d;
* o_proj reads H/2 heads of width 2d = hidden.

So a layer has the baseline's parameters plus 4·d (the λ vectors). This is the layout of
transformers' DiffLlama, whose weights load unchanged; the official code pairs *adjacent*
sub-heads (2j, 2j + 1) instead, a fixed permutation of the projection rows (and with grouped K/V it lets both maps of a head
read the same key sub-head, which we do not reproduce).

**Computing and caching.** K is packed as [K1_j | K2_j] per key/value head and V as
[V_j | V_{j+H_kv/2}]: both (B, H_kv/2, N, 2d), so the ordinary GrowingKV / WindowKV hold them
(exactly the baseline's bytes). Q1 is zero-padded on the right to [Q1 | 0] and Q2 on the left
to [0 | Q2], so that [Q1 | 0]·[K1 | K2] = Q1·K1 and [0 | Q2]·[K1 | K2] = Q2·K2 (the softmax scale
stays 1/√d). The two maps are then the library's ordinary attention functions (full, sliding
window, cached, cross) called twice on the same K and V. Queries, keys and values of one width
keep SDPA on its fused CPU kernel; a value wider than the key sends it to the math path, which
builds the N×N matrix (4.5× slower in fp32, 13× in bf16 at N = 2048 on this machine); the
padding costs a third more flops.
:func:`kv_cache_shape` gives the (heads, width) a model's caches must be built with.
"""

import math

import torch
from torch import nn

from yoco.cache import GrowingKV, WindowKV
from yoco.layers.cross_attention import SharedKV
from yoco.layers.linear import Linear
from yoco.layers.norm import RMSNorm
from yoco.layers.rotary import Rope
from yoco.ops.attention import causal_attention, causal_mask, repeat_kv
from yoco.ops.sliding_window import sliding_window_attention

LAMBDA_STD = 0.1  # the paper's initialisation of the λ vectors: N(0, 0.1)


def lambda_init(layer: int) -> float:
    """λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)) for the 1-based layer number ``layer``."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))


def check_heads(num_heads: int | None = None, num_kv_heads: int | None = None) -> None:
    """Raise ValueError unless the baseline's head counts (those given) split into pairs."""
    if num_heads is not None and num_heads % 2:
        raise ValueError(
            f"differential attention pairs the baseline's heads: num_attention_heads must be even, "
            f"got {num_heads}"
        )
    if num_kv_heads is not None and num_kv_heads % 2:
        raise ValueError(
            f"differential attention pairs the baseline's key/value heads: num_key_value_heads must be "
            f"even, got {num_kv_heads}"
        )


def kv_cache_shape(config) -> tuple[int, int]:
    """(heads, width) of the keys and values one cached position holds, per attention layer."""
    if config.attention_type == "differential":
        return config.num_key_value_heads // 2, 2 * config.head_dim
    return config.num_key_value_heads, config.head_dim


def pack_halves(x: torch.Tensor) -> torch.Tensor:
    """(B, 2h, N, d) sub-heads -> (B, h, N, 2d): head j is [sub-head j | sub-head j + h]."""
    return torch.cat(x.chunk(2, dim=1), dim=-1)


def differential_attention_reference(
    q1: torch.Tensor,
    k1: torch.Tensor,
    q2: torch.Tensor,
    k2: torch.Tensor,
    v: torch.Tensor,
    lam: float | torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(softmax(Q1 K1ᵀ/√d) − λ softmax(Q2 K2ᵀ/√d)) V in float32, the softmax written out.

    q1, q2 (B, h, Nq, d); k1, k2 (B, h_kv, Nk, d); v (B, h_kv, Nk, d_v); ``mask`` bool (Nq, Nk),
    True where a query may see a key (default: causal, queries being the last Nq positions).
    Returns (B, h, Nq, d_v) float32: before the head norm and the (1 − λ_init) scale.
    """
    if mask is None:
        mask = causal_mask(q1.shape[-2], k1.shape[-2], q1.device)
    n_rep = q1.shape[1] // k1.shape[1]

    def softmax_map(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        k = repeat_kv(k, n_rep).float()
        scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, Nq, Nk)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()
        return weights / weights.sum(dim=-1, keepdim=True)

    maps = softmax_map(q1, k1) - lam * softmax_map(q2, k2)
    return maps @ repeat_kv(v, n_rep).float()


class DifferentialHeads(nn.Module):
    """What every differential layer shares: λ, the head norm and the (1 − λ_init) scale.

    A base class rather than a submodule so the parameters are named ``lambda_q1`` … directly on
    the attention module, as in DiffLlama.
    """

    def __init__(self, head_dim: int, layer_index: int, eps: float) -> None:
        super().__init__()
        self.lambda_init = lambda_init(layer_index + 1)  # layer_index counts from 0
        self.scale = head_dim**-0.5  # the paper's 1/√d, d the width of one sub-head
        self.lambda_q1 = nn.Parameter(torch.randn(head_dim) * LAMBDA_STD)
        self.lambda_k1 = nn.Parameter(torch.randn(head_dim) * LAMBDA_STD)
        self.lambda_q2 = nn.Parameter(torch.randn(head_dim) * LAMBDA_STD)
        self.lambda_k2 = nn.Parameter(torch.randn(head_dim) * LAMBDA_STD)
        self.head_norm = RMSNorm(2 * head_dim, eps=eps, elementwise_affine=False)

    @staticmethod
    def map_queries(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated query sub-heads (B, H, N, d) -> [Q1 | 0] and [0 | Q2], (B, H/2, N, 2d) each:
        against packed keys [K1 | K2] they score Q1·K1 and Q2·K2."""
        q1, q2 = q.chunk(2, dim=1)
        zeros = torch.zeros_like(q1)
        return torch.cat([q1, zeros], dim=-1), torch.cat([zeros, q2], dim=-1)

    def lam(self) -> torch.Tensor:
        """λ as a float32 scalar (exp of a dot product: kept out of bf16)."""
        first = torch.exp(torch.dot(self.lambda_q1.float(), self.lambda_k1.float()))
        second = torch.exp(torch.dot(self.lambda_q2.float(), self.lambda_k2.float()))
        return first - second + self.lambda_init

    def combine(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The two maps' outputs (B, h, N, 2d) -> normalised heads side by side (B, N, h·2d)."""
        out = first - self.lam().to(first.dtype) * second
        out = self.head_norm(out) * (1 - self.lambda_init)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)


class DiffSelfAttention(DifferentialHeads):
    """Causal differential self-attention, full or sliding-window (``window``), with the
    parameters of a softmax :class:`~yoco.layers.attention.SelfAttention` of ``num_heads``
    heads plus the λ vectors."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        layer_index: int,
        eps: float,
        window: int | None = None,
    ) -> None:
        check_heads(num_heads, num_kv_heads)
        head_dim = hidden_size // num_heads  # the width of one sub-head
        super().__init__(head_dim, layer_index, eps)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window = window
        self.q_proj = Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = Linear(num_heads * head_dim, hidden_size, bias=False)

    def sub_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, x: torch.Tensor, rope: Rope, cache: GrowingKV | WindowKV | None = None) -> torch.Tensor:
        """x: (B, N, hidden) -> (B, N, hidden); with a cache, as SelfAttention."""
        queries = self.map_queries(rope.rotate_queries(self.sub_heads(self.q_proj(x), self.num_heads)))
        k = pack_halves(rope.rotate_keys(self.sub_heads(self.k_proj(x), self.num_kv_heads)))
        v = pack_halves(self.sub_heads(self.v_proj(x), self.num_kv_heads))  # (B, H_kv/2, N, 2d)
        if self.window is None:
            first, second = self.full_attention(queries, k, v, cache)
        else:
            first, second = self.window_attention(queries, k, v, cache)
        return self.o_proj(self.combine(first, second))

    def full_attention(self, queries, k, v, cache: GrowingKV | None) -> list[torch.Tensor]:
        key_mask = None
        if cache is not None:
            k, v, key_mask = cache.append(k, v)
        return [causal_attention(q, k, v, key_mask, scale=self.scale) for q in queries]

    def window_attention(self, queries, k, v, cache: WindowKV | None) -> list[torch.Tensor]:
        if cache is None:
            return [sliding_window_attention(q, k, v, self.window, scale=self.scale) for q in queries]
        if k.shape[2] == 1:
            # One query: store its key in the ring, then attend to the whole ring.
            keys, values, filled = cache.append_one(k, v)
            return [causal_attention(q, keys, values, filled, scale=self.scale) for q in queries]
        prefix_k, prefix_v = cache.ordered_prefix()
        out = [
            sliding_window_attention(q, k, v, self.window, prefix_k, prefix_v, scale=self.scale)
            for q in queries
        ]
        cache.push(k, v)
        return out


class DiffSharedKV(SharedKV):
    """YOCO's one K/V projection for a differential cross-decoder ("Diff-YOCO").

    Same parameters as :class:`SharedKV` with ``num_kv_heads`` heads of width ``head_dim``;
    returns keys and values packed for differential heads, (B, num_kv_heads/2, N, 2·head_dim).
    """

    def __init__(self, hidden_size: int, num_kv_heads: int, head_dim: int, eps: float) -> None:
        check_heads(num_kv_heads=num_kv_heads)
        super().__init__(hidden_size, num_kv_heads, head_dim, eps)

    def forward(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        h = self.norm(x)
        k = self.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return pack_halves(rope.rotate_keys(k)), pack_halves(v)


class DiffCrossAttention(DifferentialHeads):
    """A differential cross-decoder layer: queries from its input, packed keys and values from
    :class:`DiffSharedKV`; the parameters of a :class:`~yoco.layers.cross_attention.CrossAttention`
    plus the λ vectors."""

    def __init__(self, hidden_size: int, num_heads: int, layer_index: int, eps: float) -> None:
        check_heads(num_heads)
        head_dim = hidden_size // num_heads
        super().__init__(head_dim, layer_index, eps)
        self.num_heads, self.head_dim = num_heads, head_dim
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
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Nq, d)
        first, second = (
            causal_attention(q_map, *shared_kv, key_mask, scale=self.scale)
            for q_map in self.map_queries(rope.rotate_queries(q))
        )
        return self.o_proj(self.combine(first, second))
