"""Causal sliding-window attention in O(N·W) time and memory.

Convention: the window ``W`` *counts the current token*. Query at position i sees keys at
positions ``i - W + 1 .. i``: exactly W keys once i >= W - 1. (The official YOCO code once
subtracted one from the window twice; tests pin both edges of ours.)

Shapes: q (B, H, N, d); k, v (B, H_kv, N, d). ``k_prefix``/``v_prefix`` (B, H_kv, P, d) are keys
that come *before* the first query (a decoding cache of at most W - 1 positions).

:func:`sliding_window_attention` splits queries into blocks of ``block`` positions; each block
attends to its own keys plus the W - 1 keys before it, so no N × N mask is ever built.
:func:`sliding_window_attention_reference` does build it, and is the reference in tests.
"""

import torch
import torch.nn.functional as F

from yoco.ops.attention import attention_reference, causal_attention


def _with_prefix(k, v, k_prefix, v_prefix):
    if k_prefix is None:
        return k, v, 0
    return torch.cat([k_prefix, k], dim=-2), torch.cat([v_prefix, v], dim=-2), k_prefix.shape[-2]


def sliding_window_mask(n_queries: int, n_keys: int, window: int, device) -> torch.Tensor:
    """Bool (Nq, Nk): query i at position Nk - Nq + i sees key j iff i_pos - W < j <= i_pos."""
    q_pos = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
    k_pos = torch.arange(n_keys, device=device)[None, :]
    return (k_pos <= q_pos) & (k_pos > q_pos - window)


def sliding_window_attention_reference(q, k, v, window: int, k_prefix=None, v_prefix=None):
    """Dense masked reference: builds the full (N, P + N) mask."""
    k, v, _ = _with_prefix(k, v, k_prefix, v_prefix)
    mask = sliding_window_mask(q.shape[-2], k.shape[-2], window, q.device)
    return attention_reference(q, k, v, mask)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    k_prefix: torch.Tensor | None = None,
    v_prefix: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Blocked sliding-window attention; returns (B, H, N, d)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    b, h, n, d = q.shape
    h_kv = k.shape[1]
    prefix_len = 0 if k_prefix is None else k_prefix.shape[-2]
    if prefix_len > window - 1:
        raise ValueError(f"k_prefix holds {prefix_len} positions; a window of {window} needs <= {window - 1}")
    if prefix_len + n <= window:
        # Every query sees every key: plain causal attention is the same thing, and faster.
        k, v, _ = _with_prefix(k, v, k_prefix, v_prefix)
        return causal_attention(q, k, v)

    blk = min(block or window, n)
    n_blocks = -(-n // blk)
    pad = n_blocks * blk - n
    span = blk + window - 1  # keys one block of queries can see
    # Keys laid out so that block i's keys are positions [i*blk, i*blk + span): the W - 1 slots
    # before the first query hold the prefix, left-filled with zeros that the mask hides.
    front = window - 1 - prefix_len
    zeros = k.new_zeros(b, h_kv, front, d)
    tail = k.new_zeros(b, h_kv, pad, d)
    parts_k = [zeros] + ([k_prefix] if prefix_len else []) + [k, tail]
    parts_v = [zeros] + ([v_prefix] if prefix_len else []) + [v, tail]
    k_all, v_all = (
        torch.cat(parts_k, dim=-2),
        torch.cat(parts_v, dim=-2),
    )  # (B, H_kv, W-1+nb*blk, d)
    # unfold -> (B, H_kv, nb, d, span) -> (B, nb, H_kv, span, d): heads at dim -3 for enable_gqa
    k_blocks = k_all.unfold(2, span, blk).permute(0, 2, 1, 4, 3)
    v_blocks = v_all.unfold(2, span, blk).permute(0, 2, 1, 4, 3)
    q_blocks = F.pad(q, (0, 0, 0, pad)).view(b, h, n_blocks, blk, d).transpose(1, 2)  # (B, nb, H, blk, d)

    # Query a of a block sees key slots a .. a + W - 1 (the band), minus the zero filler.
    a = torch.arange(blk, device=q.device)[:, None]
    c = torch.arange(span, device=q.device)[None, :]
    band = (c >= a) & (c <= a + window - 1)  # (blk, span)
    slot_pos = torch.arange(n_blocks, device=q.device)[:, None] * blk + c - front  # (nb, span)
    real = slot_pos >= 0  # False on the zero filler
    mask = (band[None] & real[:, None, :])[:, None]  # (nb, 1, blk, span)

    out = F.scaled_dot_product_attention(
        q_blocks, k_blocks, v_blocks, attn_mask=mask, enable_gqa=h != h_kv
    )  # (B, nb, H, blk, d)
    return out.transpose(1, 2).reshape(b, h, n_blocks * blk, d)[:, :, :n]
