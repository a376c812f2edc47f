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

from yoco.ops.fused import Fused
from yoco.ops.int8_attention import native_int8_attention
from yoco.ops.quantize import QuantizedKV, dequantized, quantize_int8

KEY_BLOCK = 4096  # keys per block (2048 to 8192 measured within 5% of each other)
# Blocks per kernel call: the reference dequantizes an int8 cache one call's keys at a time, so
# the floating-point copy never exceeds this many blocks.
BLOCKS_PER_CALL = 16
# An int8 cache's values are converted to float32 this many keys at a time: the copy stays in
# the CPU's cache (4096 to 16384 measured within 20%; 128K keys, 7x slower).
VALUE_CHUNK = 8192
# The int8 path handles this many keys of every row and head at a time between its products:
# their scores (4 bytes a key and query head) stay within the CPU's cache.
KEY_CHUNK = 65536
_FUSED = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# Any reference at or above the largest score gives the same softmax; one that trails it by at
# most this much keeps exp(score - reference) <= e^16 ≈ 9e6, far from float32's range limits
# even summed over millions of keys and multiplied by int8 values.
SCORE_MARGIN = 16.0
_INT8_MM = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
# That product reduces in steps of 16: other reduction lengths crashed it or gave wrong sums
# (torch 2.13, lengths 8, 24, 1000), so it is only given whole steps.
_INT8_MM_STEP = 16


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
    (B, 1, 1, N), True on real keys -> (B, H, 1, d_v) in q's dtype. An int8 cache takes
    :func:`int8_decode_attention`. The fused and int8 kernels are CPU only; elsewhere this is
    :func:`decode_attention_reference` (an int8 cache's blocks dequantized)."""
    on_cpu = q.device.type == "cpu"
    if on_cpu and isinstance(k, QuantizedKV):
        return int8_decode_attention(q, k, v, key_mask, scale)
    if not on_cpu or _FUSED is None:
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


def _chunks(n: int, size: int):
    """(start, end) of consecutive pieces of ``size`` (the last one shorter) covering 0 .. n."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _whole_memory_rows(values: torch.Tensor) -> torch.Tensor | None:
    """The (d, capacity) int8 memory behind (n, d) values kept positions last, when the int8
    product can read it (capacity a multiple of its step); None otherwise."""
    rows = values.transpose(0, 1)  # (d, n), each row a run of contiguous positions
    d, capacity = rows.shape[0], rows.stride(0)
    if rows.stride(1) != 1 or capacity < rows.shape[1] or capacity % _INT8_MM_STEP:
        return None
    if rows.storage_offset() + d * capacity > rows.untyped_storage().nbytes():
        return None  # the last row's tail lies outside the memory: not a whole buffer row
    return rows.as_strided((d, capacity), (capacity, 1))


@Fused
def weigh_int8_chunk(products, key_scales, coefficients, value_scales, running, key_mask, out):
    """One chunk of the int8 path's softmax: scores from the int32 products and both scales,
    the running reference (a maximum, see below) updated with them, exp(score - reference) ·
    value scale written to ``out``. Returns (the reference, Σ exp(score - reference)).

    Eagerly this is about nine passes over the chunk's scores; compiled (:class:`Fused`), a few
    loops that read the products and scales once each. Whole chunks of ``KEY_CHUNK`` keys have
    one shape at every step and take the compiled kernel; a context's shorter last chunk runs
    eagerly (its length changes every step, and compiling per length would never end)."""
    # (a conversion, then float32 products: twice as fast eagerly as one mixed-dtype product)
    scores = products.float().mul_(key_scales).mul_(coefficients)
    if key_mask is not None:
        scores.masked_fill_(~key_mask, float("-inf"))
    # The reference moves up only when a score exceeds it by more than SCORE_MARGIN, so the
    # weights stay at most exp(SCORE_MARGIN) and earlier chunks rarely need rescaling.
    maximum = scores.amax(-1, keepdim=True)
    running = torch.where(maximum > running + SCORE_MARGIN, maximum, running)
    # A row with no visible key yet has weights 0 here whatever it subtracts.
    scores.sub_(running.nan_to_num(neginf=0.0)).exp_()
    chunk_sum = scores.sum(-1, keepdim=True)
    out.copy_(scores.mul_(value_scales))
    return running, chunk_sum


def int8_decode_attention(
    q: torch.Tensor,
    k: QuantizedKV,
    v: QuantizedKV,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    native: bool = True,
) -> torch.Tensor:
    """:func:`decode_attention` over an int8 cache, reading the int8 keys and values as they are.

    Where it applies (AVX-512 VNNI, a C compiler; ``native``), one pass of a C kernel does the
    whole step (:mod:`yoco.ops.int8_attention`); the PyTorch path below is its fallback and
    reference, three passes over the cache.

    Dequantizing a block and handing it to the fused kernel writes and reads every key again in
    floating point, three times the int8 bytes. Neither keys nor values need a copy:

    * **Scores.** The query is rounded to int8 like a key (one scale per vector, as llama.cpp
      does for its q8_0 cache), and ``torch._int_mm`` gives the exact int32 products q̂·k̂_j
      with every key from the int8 bytes; the two scales turn them into float32 scores.
    * **Weighted sum.** The value scales fold into the attention weights,
      Σ_j p_j·v_j = Σ_j (p_j·s_j)·v̂_j. With the values kept positions last
      (:mod:`yoco.ops.quantize`) that sum is ``_weight_int8pack_mm`` (PyTorch's weight-only int8
      product, which reduces along contiguous int8 memory) over the buffer's whole capacity, the
      weights rounded to q's dtype and zero past the filled positions. In float32 that product
      is slower than converting the values (~2.5 against ~6 GiB/s here), so float32 models, and
      values kept positions first, convert them ``VALUE_CHUNK`` keys at a time instead.

    Against attention over the dequantized cache and the int8-rounded query this is exact up to
    float32 rounding in float32 models, and up to the weights' rounding otherwise. CPU only:
    elsewhere :func:`decode_attention_reference`."""
    _check(q, k)
    b, h, _, d = q.shape
    h_kv, n = k.shape[1], k.shape[2]
    rep = h // h_kv
    scale = d**-0.5 if scale is None else scale
    if native:
        out = native_int8_attention(q, k, v, key_mask, scale)
        if out is not None:
            return out
    q_values, q_scales = quantize_int8(q.reshape(b, h_kv, rep, d))
    unit = torch.ones(v.shape[-1], dtype=q.dtype)
    coefficients = q_scales * scale  # (B, H_kv, rep, 1)
    key_scales, value_scales = k.scales.transpose(-1, -2), v.scales.transpose(-1, -2)  # (B, H_kv, 1, n)
    converted = q.dtype == torch.float32 or _INT8_MM is None
    memory = [
        [None if converted else _whole_memory_rows(v.values[row, head]) for head in range(h_kv)]
        for row in range(b)
    ]
    summed_by_product = all(m is not None for rows in memory for m in rows)  # else: converted
    if summed_by_product:  # the weights in q's dtype, zero past the filled positions
        weights = torch.empty(b, h_kv, rep, memory[0][0].shape[1], dtype=q.dtype)
        weights[..., n:] = 0
    else:
        weights = torch.empty(b, h_kv, rep, n, dtype=torch.float32)
    # One pass over the keys, KEY_CHUNK at a time for all rows and heads at once, so that the
    # element-wise work between the products stays in the CPU's cache: each chunk's weights are
    # exp(score - reference) · value scale, the reference being the largest score so far give or
    # take SCORE_MARGIN. Chunks weighed against a reference that a later chunk moved up are
    # scaled down to the final one after the pass (a second rounding of those weights; none
    # unless a score rises more than SCORE_MARGIN above every earlier one).
    # float32 accumulators whatever torch's default dtype
    running = torch.full((b, h_kv, rep, 1), float("-inf"), dtype=torch.float32)
    maxima, sums = [], []
    for start, end in _chunks(n, KEY_CHUNK):
        products = torch.empty(b, h_kv, rep, end - start, dtype=torch.int32)
        for row in range(b):
            for head in range(h_kv):
                keys = k.values[row, head, start:end].contiguous()  # a view unless sliced oddly
                torch._int_mm(q_values[row, head], keys.transpose(0, 1), out=products[row, head])
        weigh = weigh_int8_chunk if end - start == KEY_CHUNK else weigh_int8_chunk.eager
        running, chunk_sum = weigh(
            products,
            key_scales[..., start:end],
            coefficients,
            value_scales[..., start:end],
            running,
            None if key_mask is None else key_mask[..., start:end],
            weights[..., start:end],
        )
        maxima.append(running)
        sums.append(chunk_sum)
    total = torch.zeros(b, h_kv, rep, 1, dtype=torch.float32)
    for (start, end), maximum, chunk_sum in zip(_chunks(n, KEY_CHUNK), maxima, sums, strict=True):
        factor = torch.exp(maximum - running)  # 1 where the chunk used the final reference, 0 for -inf
        total += chunk_sum * factor
        if (factor != 1).any():
            weights[..., start:end] *= factor
    out = torch.zeros(b, h_kv, rep, v.shape[-1], dtype=torch.float32)
    for row in range(b):
        for head in range(h_kv):
            if summed_by_product:
                out[row, head] = _INT8_MM(weights[row, head], memory[row][head], unit)
                continue
            for start, end in _chunks(n, VALUE_CHUNK):
                out[row, head] += weights[row, head, :, start:end] @ v.values[row, head, start:end].float()
    out /= total
    return out.reshape(b, h, 1, -1).to(q.dtype)


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
