"""Causal softmax attention with grouped key/value heads.

Shapes: q (B, H, Nq, d); k, v (B, H_kv, Nk, d) with ``H % H_kv == 0``. Queries are the *last*
``Nq`` positions of the ``Nk`` keys (bottom-right alignment), which covers a full forward
(Nq == Nk), one decode step (Nq == 1) and a chunk of prompt after a cache (Nq < Nk) alike.

:func:`causal_attention` is the fast path on ``scaled_dot_product_attention`` (one decoding step
over a long K/V: split-K, :mod:`yoco.ops.decode_attention`);
:func:`attention_reference` is the obviously-correct softmax(QKᵀ/√d + mask)V it is tested against.
"""

import math

import torch
import torch.nn.functional as F

from yoco.ops.decode_attention import decode_attention
from yoco.ops.quantize import QuantizedKV, dequantized

# One-query steps over at least this many keys take split-K decode attention
# (yoco.ops.decode_attention); shorter ones are too small for the split to pay.
SPLIT_K_FROM = 8192


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, N, d) -> (B, H_kv * n_rep, N, d), each kv head repeated for its query group."""
    if n_rep == 1:
        return x
    b, h_kv, n, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, n, d).reshape(b, h_kv * n_rep, n, d)


def causal_mask(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """Bool (Nq, Nk), True where query i (at position Nk - Nq + i) may see key j."""
    q_pos = torch.arange(n_keys - n_queries, n_keys, device=device)
    k_pos = torch.arange(n_keys, device=device)
    return k_pos[None, :] <= q_pos[:, None]


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor | QuantizedKV,
    v: torch.Tensor | QuantizedKV,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal GQA attention; returns (B, H, Nq, d).

    ``key_mask`` (B, 1, 1, Nk), True on real keys, hides the unused tail of rows that are
    shorter than others in a batch (only for one-query decoding steps). ``scale`` replaces the
    default 1/√d (differential attention zero-pads its queries to twice their width).
    """
    n_q, n_k = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if n_q == 1 and (n_k >= SPLIT_K_FROM or isinstance(k, QuantizedKV)):
        return decode_attention(q, k, v, key_mask, scale)  # an int8 cache: read without dequantizing
    k, v = dequantized(k), dequantized(v)  # an int8 cache (kv_cache_dtype="int8")
    if key_mask is not None:
        if n_q != 1:
            raise ValueError("rows of unequal length can only take one-token steps")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale, enable_gqa=gqa)
    if n_q == n_k:
        # No explicit mask: SDPA then takes its fused causal kernel on CPU.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if n_q == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    mask = causal_mask(n_q, n_k, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(QKᵀ/√d) V in float32 with a bool ``mask`` (True = may attend; default causal)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep).float(), repeat_kv(v, n_rep).float()
    if mask is None:
        mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v).to(q.dtype)
