"""Causal sliding-window attention in O(N·W) time and memory.

Convention: the window ``W`` *counts the current token*. Query at position i sees keys at
positions ``i - W + 1 .. i``: exactly W keys once i >= W - 1. (The official YOCO code once
subtracted one from the window twice; tests pin both edges of ours.)

Shapes: q (B, H, N, d); k, v (B, H_kv, N, d). ``k_prefix``/``v_prefix`` (B, H_kv, P, d) are keys
that come *before* the first query (a decoding cache of at most W - 1 positions).

:func:`sliding_window_attention` gives the first queries (whose windows reach back past the
first key) plain causal attention, and splits the rest into blocks of ``block`` queries; each
block attends to its own keys plus the W - 1 keys before it under one shared band mask, so
nothing of size N × N is ever built: O(N·(W + block)) time and memory.
:func:`sliding_window_attention_reference` does build it, and is the reference in tests.
"""

import torch
import torch.nn.functional as F

from yoco.ops.attention import attention_reference, causal_attention

DEFAULT_BLOCK = 256  # queries per block: each block computes blk x (blk + W - 1) scores


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
    scale: float | None = None,
) -> torch.Tensor:
    """Blocked sliding-window attention; returns (B, H, N, d). ``scale`` replaces 1/√d."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = q.shape[2]
    prefix_len = 0 if k_prefix is None else k_prefix.shape[-2]
    if prefix_len > window - 1:
        raise ValueError(f"k_prefix holds {prefix_len} positions; a window of {window} needs <= {window - 1}")
    # The first `head` queries have windows reaching before the first key we hold: they see
    # every key up to themselves, which is plain causal attention over at most W positions.
    head = min(n, max(0, window - 1 - prefix_len))
    keys, values, _ = _with_prefix(k, v, k_prefix, v_prefix)
    parts = []
    if head:
        parts.append(
            causal_attention(
                q[:, :, :head],
                keys[:, :, : prefix_len + head],
                values[:, :, : prefix_len + head],
                scale=scale,
            )
        )
    if head < n:
        parts.append(
            _banded(
                q[:, :, head:],
                keys,
                values,
                window,
                first_key=prefix_len + head - (window - 1),
                block=block,
                scale=scale,
            )
        )
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def _banded(
    q, keys, values, window: int, first_key: int, block: int | None, scale: float | None
) -> torch.Tensor:
    """Queries whose windows lie wholly inside ``keys``: query i sees keys
    ``first_key + i .. first_key + i + W - 1``. Blocks of queries share one band mask."""
    b, h, n, d = q.shape
    h_kv = keys.shape[1]
    blk = min(block or DEFAULT_BLOCK, n)
    n_blocks = -(-n // blk)
    pad = n_blocks * blk - n
    span = blk + window - 1  # keys one block of queries can see
    # Keys from first_key on, zero-padded at the end so the last block has a full span; only
    # padded queries can see the padding.
    needed = first_key + n_blocks * blk + window - 1 - keys.shape[2]
    keys = F.pad(keys[:, :, first_key:], (0, 0, 0, max(needed, 0) + pad))
    values = F.pad(values[:, :, first_key:], (0, 0, 0, max(needed, 0) + pad))
    # Block j sees key slots [j*blk, j*blk + span): unfold (a view) then fold blocks into the
    # batch dimension. SDPA on CPU takes its fused kernel for 4-D inputs only.
    k_blocks = (
        keys.unfold(2, span, blk)[:, :, :n_blocks].permute(0, 2, 1, 4, 3).reshape(b * n_blocks, h_kv, span, d)
    )
    v_blocks = (
        values.unfold(2, span, blk)[:, :, :n_blocks]
        .permute(0, 2, 1, 4, 3)
        .reshape(b * n_blocks, h_kv, span, d)
    )
    q_blocks = (
        F.pad(q, (0, 0, 0, pad)).view(b, h, n_blocks, blk, d).transpose(1, 2).reshape(b * n_blocks, h, blk, d)
    )
    a = torch.arange(blk, device=q.device)[:, None]
    c = torch.arange(span, device=q.device)[None, :]
    band = (c >= a) & (c <= a + window - 1)  # (blk, span): query a of a block sees slots a .. a+W-1
    out = F.scaled_dot_product_attention(
        q_blocks, k_blocks, v_blocks, attn_mask=band, scale=scale, enable_gqa=h != h_kv
    )
    out = out.view(b, n_blocks, h, blk, d).transpose(1, 2).reshape(b, h, n_blocks * blk, d)
    return out[:, :, :n]
