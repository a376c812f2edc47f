"""LongNet's dilated attention (Ding et al. 2023, arXiv 2307.02486), causal form.

A mixture of m sparse patterns, pattern i given by a segment length w_i and a dilation ratio
r_i (geometric in the paper, e.g. w = (64, 256, 1024), r = (1, 4, 16)). Pattern i splits the
sequence into segments of w_i positions; inside a segment only the positions whose offset
within the segment is ≡ s_h (mod r_i) take part, with the offset shifted across heads,
s_h = h mod r_i, so that together the heads cover every position. A participating query
attends causally to the participating keys of its own segment, which gives an output O_i and
a softmax denominator lse_i = log Σ_j exp(q·k_j/√d). The patterns covering a query are mixed
by their denominators:

    O = Σ_i exp(lse_i) O_i / Σ_i exp(lse_i)

which is the dense softmax over the union of the patterns' keys, each key counted once per
pattern that holds it. With r_1 = 1, pattern 1 covers every query, so the mixture is never
empty; :func:`check_patterns` insists on it.

Shapes: q (B, H, Nq, d); k, v (B, H_kv, Nk, d), ``H % H_kv == 0``. As in
:mod:`yoco.ops.attention`, queries are the *last* Nq of the Nk positions, so a full forward
(Nq == Nk), a decoding step (Nq == 1) and a chunk after a cached prefix are one call. Segment
boundaries are absolute: position p lies in segment p // w_i of pattern i.

:func:`dilated_attention` gathers each pattern's participating positions into a compact
(segments, w/r) layout and attends there: O(N·w/r) per pattern, nothing N × N.
:func:`dilated_attention_reference` builds the dense per-pattern masks and is the reference in
tests.
"""

import math

import torch
import torch.nn.functional as F

from yoco.ops.attention import causal_mask, repeat_kv


def check_patterns(segments, ratios, names: tuple[str, str] = ("segments", "ratios")) -> None:
    """Raise ValueError unless (segments, ratios) describe a valid mixture of patterns."""
    seg_name, ratio_name = names
    if len(segments) == 0 or len(segments) != len(ratios):
        raise ValueError(
            f"{seg_name} and {ratio_name} must be non-empty and of equal length, "
            f"got {list(segments)} and {list(ratios)}"
        )
    for w, r in zip(segments, ratios, strict=True):
        if w < 1 or r < 1:
            raise ValueError(f"{seg_name} and {ratio_name} must be >= 1, got segment {w}, ratio {r}")
        if w % r:
            raise ValueError(f"each of {seg_name} must be divisible by its ratio, got segment {w}, ratio {r}")
    if ratios[0] != 1:
        raise ValueError(
            f"the first of {ratio_name} must be 1 so that every query is covered, got {list(ratios)}"
        )


# ---------------------------------------------------------------------------------------------
# Reference: dense masks, one per pattern, and the mixture written out.


def dilated_masks(n_queries: int, n_keys: int, heads: int, segments, ratios, device) -> torch.Tensor:
    """Bool (m, H, Nq, Nk): True where, in pattern i and head h, query row q (at position
    Nk - Nq + q) attends to key j. Written the way the paper describes it."""
    q_pos = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
    k_pos = torch.arange(n_keys, device=device)[None, :]
    causal = causal_mask(n_queries, n_keys, device)
    masks = []
    for w, r in zip(segments, ratios, strict=True):
        offset = (torch.arange(heads, device=device) % r)[:, None, None]  # s_h = h mod r
        same_segment = q_pos // w == k_pos // w
        query_takes_part = (q_pos % w) % r == offset
        key_takes_part = (k_pos % w) % r == offset
        masks.append(causal & same_segment & query_takes_part & key_takes_part)
    return torch.stack(masks)


def dilated_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments, ratios
) -> torch.Tensor:
    """Dense masked reference in float32: each pattern's softmax and log-sum-exp over the full
    (Nq, Nk) score matrix, then O = Σ exp(lse_i) O_i / Σ exp(lse_i)."""
    check_patterns(segments, ratios)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep).float(), repeat_kv(v, n_rep).float()
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    masks = dilated_masks(q.shape[2], k.shape[2], q.shape[1], segments, ratios, q.device)
    outs, lses = [], []
    for mask in masks:
        masked = scores.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(masked, dim=-1, keepdim=True)  # -inf where the pattern misses q
        covered = mask.any(dim=-1, keepdim=True)
        probs = torch.where(covered, (masked - lse).exp(), 0.0)
        outs.append(probs @ v)
        lses.append(lse)
    lse = torch.stack(lses)  # (m, B, H, Nq, 1)
    weights = (lse - lse.amax(dim=0)).exp()  # exp(lse_i), shifted by the largest to stay in range
    out = (weights * torch.stack(outs)).sum(dim=0) / weights.sum(dim=0)
    return out.to(q.dtype)


# ---------------------------------------------------------------------------------------------
# Fast path: one compact (segments, w/r) attention per pattern.


def dilated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments, ratios) -> torch.Tensor:
    """Dilated attention, returns (B, H, Nq, d) in q's dtype (computed in float32)."""
    check_patterns(segments, ratios)
    outs, lses = zip(
        *(_one_pattern(q, k, v, w, r) for w, r in zip(segments, ratios, strict=True)), strict=True
    )
    # exp(lse_i) / Σ_j exp(lse_j) is a softmax over the patterns; a pattern that misses the
    # query has lse = -inf and weight 0, and pattern 1 (r = 1) never misses.
    weights = torch.softmax(torch.stack(lses), dim=0)  # (m, B, H, Nq)
    return (weights.unsqueeze(-1) * torch.stack(outs)).sum(dim=0).to(q.dtype)


def _one_pattern(q, k, v, w: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pattern's output (B, H, Nq, d) and log-sum-exp (B, H, Nq), float32; lse is -inf
    (and the output arbitrary but finite) at queries the pattern does not cover.

    Because r divides w, a position p takes part for head h iff p ≡ h (mod r), whatever its
    segment: head h's participating positions are every r-th one from its offset, and
    consecutive runs of c = w / r of them form the segments. So gathering the strided
    positions per head and reshaping to (segments, c) gives a layout where each segment is a
    small dense causal attention.
    """
    b, heads, n_q, d = q.shape
    n_k = k.shape[2]
    device = q.device
    c = w // r
    first_query = n_k - n_q
    # Keys before the first query's segment are invisible to every query: start there.
    start = first_query - first_query % w
    n_segments = -(-(n_k - start) // w)
    span = n_segments * w  # positions start .. start + span - 1, the tail padded

    head = torch.arange(heads, device=device)
    offset = head % r  # s_h
    slots = offset[:, None] + r * torch.arange(n_segments * c, device=device)  # (H, S·c), from start
    kv_head = (head // (heads // k.shape[1]))[:, None]

    # Zero padding at the end only fills slots after the last real position: causally
    # invisible to every real query. Queries are padded in front too (positions start ..
    # first_query - 1 are keys only); the outputs of padded queries are never read.
    tail = start + span - n_k
    keys = F.pad(k[:, :, start:], (0, 0, 0, tail))
    values = F.pad(v[:, :, start:], (0, 0, 0, tail))
    queries = F.pad(q, (0, 0, first_query - start, tail))
    # Advanced indexing with (H, 1) and (H, S·c) indices -> (B, H, S·c, d), then segments.
    shape = (b, heads, n_segments, c, d)
    qc = queries[:, head[:, None], slots].float().view(shape)
    kc = keys[:, kv_head, slots].float().view(shape)
    vc = values[:, kv_head, slots].float().view(shape)

    scores = qc @ kc.transpose(-1, -2) / math.sqrt(d)  # (B, H, S, c, c)
    scores = scores.masked_fill(~causal_mask(c, c, device), float("-inf"))
    # Softmax and its log-denominator from one exp. Any shift gives the same result; the row
    # maximum (finite: the diagonal is always visible) keeps exp in range, detached because
    # no gradient needs to flow through the choice of shift.
    top = scores.amax(dim=-1, keepdim=True).detach()
    weights = (scores - top).exp()
    total = weights.sum(dim=-1, keepdim=True)
    out = (weights @ vc) / total  # (B, H, S, c, d)
    lse = (top + total.log()).squeeze(-1)  # (B, H, S, c)

    # Back to query order: query at position p reads compact slot (p - start - s_h) // r,
    # which is its own when the pattern covers it (p ≡ s_h mod r), a neighbour's otherwise.
    rel = torch.arange(first_query, n_k, device=device) - start  # (Nq,)
    covered = (rel[None, :] - offset[:, None]) % r == 0  # (H, Nq)
    slot = (rel[None, :] - offset[:, None]).clamp(min=0) // r  # (H, Nq)
    out = out.view(b, heads, n_segments * c, d)[:, head[:, None], slot]  # (B, H, Nq, d)
    lse = lse.view(b, heads, n_segments * c)[:, head[:, None], slot]
    lse = lse.masked_fill(~covered, float("-inf"))
    return out, lse
