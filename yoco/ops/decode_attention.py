"""One decoding step's attention over a long K/V: split-K ("flash decoding").

A decode step has one query per head and many keys: the work is one read of the whole K/V, and
the fastest step reads it at memory speed. ``scaled_dot_product_attention`` with one query
per head leaves most of that on the table on CPU: its kernel parallelises over batch, heads
and blocks of *queries*, so a single query runs on few threads, and grouped heads repeat K/V.
Here the key axis is cut into blocks and each (K/V head, block) is a separate unit of work:

    for each block b:  o_b = softmax(q·K_bᵀ·scale)·V_b,   lse_b = log Σ exp(q·K_bᵀ·scale)
    merged:            out = Σ_b exp(lse_b - LSE)·o_b,     LSE = log Σ_b exp(lse_b)

(the log-sum-exp merge, exact up to rounding). The query heads that share a K/V head are the
"queries" of one call, so K/V are never repeated. Blocks run through PyTorch's fused CPU
attention kernel, which returns each block's log-sum-exp and keeps scores and sums in float32
whatever the storage dtype; the merge is float32. Splitting the key axis is a view: nothing
is copied. :func:`decode_attention_reference` is the same merge written with plain products,
the fallback for other devices; both are tested against SDPA and the dense reference.
"""

import torch

from yoco.ops.quantize import QuantizedKV, dequantized

KEY_BLOCK = 4096  # keys per block (2048 to 8192 measured within 5% of each other)
# Blocks per kernel call: an int8 cache is dequantized one call's keys at a time, so the
# floating-point copy never exceeds this many blocks.
BLOCKS_PER_CALL = 16
_FUSED = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _check(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.shape[2] != 1:
        raise ValueError(f"decode attention takes one query per head, got {q.shape[2]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")


def _blocks(x: torch.Tensor | QuantizedKV, start: int, count: int, size: int) -> torch.Tensor:
    """Keys start .. start + count·size of (B, H_kv, N, d) as (B·H_kv, count, size, d): a view
    (an int8 cache: those keys dequantized)."""
    b, h_kv = x.shape[:2]
    piece = dequantized(x[:, :, start : start + count * size])
    return piece.unflatten(2, (count, size)).reshape(b * h_kv, count, size, piece.shape[-1])


def _block_ranges(n: int, block: int):
    """(start, count, size) per kernel call: whole blocks, at most BLOCKS_PER_CALL at a time,
    then the shorter tail block if any."""
    full, tail = divmod(n, block)
    for first in range(0, full, BLOCKS_PER_CALL):
        yield first * block, min(BLOCKS_PER_CALL, full - first), block
    if tail:
        yield full * block, 1, tail


def _visible(key_mask: torch.Tensor, h_kv: int, start: int, count: int, size: int) -> torch.Tensor:
    """The key mask (B, 1, 1, N) of those blocks, per K/V head: (B·H_kv, count, 1, size)."""
    b = key_mask.shape[0]
    visible = key_mask[..., start : start + count * size].reshape(b, 1, count, 1, size)
    return visible.expand(b, h_kv, count, 1, size).reshape(b * h_kv, count, 1, size)


def _split_k(q, k, v, key_mask, block: int, attend) -> torch.Tensor:
    """The blocking and the merge both paths share: ``attend(queries, keys, values, visible)``
    gives one call's blocks' (outputs (B·H_kv, S, rep, d_v), log-sum-exps (B·H_kv, S, rep)),
    -inf for a block with no visible key; ``visible`` is None without a key mask."""
    _check(q, k)
    b, h, _, d = q.shape
    h_kv = k.shape[1]
    grouped = q.reshape(b * h_kv, 1, h // h_kv, d)  # the query heads of each K/V head, as its queries
    outs, lses = [], []
    for start, count, size in _block_ranges(k.shape[2], block):
        visible = None if key_mask is None else _visible(key_mask, h_kv, start, count, size)
        out, lse = attend(grouped, _blocks(k, start, count, size), _blocks(v, start, count, size), visible)
        outs.append(out)
        lses.append(lse)
    weights = torch.softmax(torch.cat(lses, dim=1), dim=1).unsqueeze(-1)  # exp(lse_b - LSE)
    merged = (torch.cat(outs, dim=1).float() * weights).sum(1)  # (B·H_kv, rep, d_v)
    return merged.reshape(b, h, 1, -1).to(q.dtype)


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor | QuantizedKV,
    v: torch.Tensor | QuantizedKV,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block: int = KEY_BLOCK,
) -> torch.Tensor:
    """Attention of one query per head to every key: q (B, H, 1, d); k, v (B, H_kv, N, d) with
    ``H % H_kv == 0``, or int8 (:class:`~yoco.ops.quantize.QuantizedKV`); ``key_mask``
    (B, 1, 1, N), True on real keys -> (B, H, 1, d_v) in q's dtype. The fused kernel is CPU
    only; elsewhere this is :func:`decode_attention_reference`."""
    if _FUSED is None or q.device.type != "cpu":
        return decode_attention_reference(q, k, v, key_mask, scale, block)

    def attend(queries, keys, values, visible):
        mask = None
        if visible is not None:
            mask = torch.zeros(visible.shape, dtype=q.dtype).masked_fill(~visible, float("-inf"))
        queries = queries.expand(-1, keys.shape[1], -1, -1)
        out, lse = _FUSED(queries, keys, values, 0.0, False, attn_mask=mask, scale=scale)
        if visible is not None:  # a block with no visible key returns lse 0: weigh it 0
            lse = lse.masked_fill(~visible.any(-1), float("-inf"))
        return out, lse

    return _split_k(q, k, v, key_mask, block, attend)


def decode_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor | QuantizedKV,
    v: torch.Tensor | QuantizedKV,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block: int = KEY_BLOCK,
) -> torch.Tensor:
    """The same split-K merge with plain float32 products per block: obviously correct, slow."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def attend(queries, keys, values, visible):
        scores = queries.float() @ keys.float().transpose(-1, -2) * scale
        if visible is not None:
            scores = scores.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # -inf for a block with no visible key
        weights = torch.exp(scores - lse.masked_fill(lse == float("-inf"), 0.0).unsqueeze(-1))
        return weights @ values.float(), lse

    return _split_k(q, k, v, key_mask, block, attend)
