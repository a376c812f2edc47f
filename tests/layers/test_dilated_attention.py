"""LongNet dilated attention: the compact op against dense masks, and the YOCO self-decoder
"dilated" through the cache and the optimiser."""

import math

import pytest
import torch

import yoco
from tests.helpers import greedy_by_full_forward, prompt_of, sharpen_attention, tiny_model, train_briefly
from yoco.ops.attention import causal_attention, repeat_kv
from yoco.ops.dilated_attention import (
    check_patterns,
    dilated_attention,
    dilated_attention_reference,
    dilated_masks,
)

# Op comparisons on q, k, v ~ N(0, 1) (scores of std 1, outputs of spread (std) 0.33): max
# difference measured 6.0e-7 (compact vs reference), 7.2e-7 (other geometries, cached prefix),
# 3.6e-7 (union, causal SDPA). Bound: 3x the largest.
TOL = dict(atol=2.2e-6, rtol=0)
# Gradients of the union test (magnitudes up to 6.7): measured 6.0e-7 (wrt k). Bound: 3x.
GRAD_TOL = dict(atol=1.8e-6, rtol=0)
SEGMENTS, RATIOS = (4, 8, 16), (1, 2, 4)
DILATED = dict(dilated_segments=list(SEGMENTS), dilated_ratios=list(RATIOS))


def qkv(n, heads=4, kv_heads=2, d=8, seed=0, prefix=0, requires_grad=False):
    """Queries for the last n of n + prefix positions."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, n, d, generator=gen)
    k = torch.randn(2, kv_heads, n + prefix, d, generator=gen)
    v = torch.randn(2, kv_heads, n + prefix, d, generator=gen)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def union_attention(q, k, v, segments, ratios):
    """The mixture restated: one softmax over all keys, key j weighted by the number of
    patterns in which the query sees it (log 0 = -inf hides the rest). Differentiable."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    count = dilated_masks(q.shape[2], k.shape[2], q.shape[1], segments, ratios, q.device).sum(0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + count.log()
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("n", [1, 3, 4, 7, 16, 29, 53])
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (8, 8), (6, 1)])
def test_compact_equals_dense_reference(n, heads, kv_heads):
    """Including N below the smallest segment and N not a multiple of any segment."""
    q, k, v = qkv(n, heads, kv_heads)
    torch.testing.assert_close(
        dilated_attention(q, k, v, SEGMENTS, RATIOS),
        dilated_attention_reference(q, k, v, SEGMENTS, RATIOS),
        **TOL,
    )


def test_default_patterns_at_n_1000():
    """The default w = (64, 256, 1024), r = (1, 4, 16): every pattern active, N neither below
    nor a multiple of the largest segment; 16 heads, so the r = 16 pattern takes every offset."""
    q, k, v = (t[:1] for t in qkv(1000, heads=16, kv_heads=4))
    segments, ratios = (64, 256, 1024), (1, 4, 16)
    # Max difference measured 1.2e-6 (outputs of std 0.33): 3x.
    torch.testing.assert_close(
        dilated_attention(q, k, v, segments, ratios),
        dilated_attention_reference(q, k, v, segments, ratios),
        atol=3.6e-6,
        rtol=0,
    )


@pytest.mark.parametrize("segments, ratios", [((2,), (1,)), ((3, 6), (1, 3)), ((8, 32, 64), (1, 4, 8))])
def test_other_geometries(segments, ratios):
    q, k, v = qkv(71, heads=8, kv_heads=4)
    torch.testing.assert_close(
        dilated_attention(q, k, v, segments, ratios),
        dilated_attention_reference(q, k, v, segments, ratios),
        **TOL,
    )


@pytest.mark.parametrize("n, prefix", [(1, 1), (1, 36), (5, 3), (5, 16), (9, 23), (20, 13)])
def test_queries_after_a_cached_prefix(n, prefix):
    """Queries are the last n of n + prefix keys: a decode step or a prefill chunk."""
    q, k, v = qkv(n, prefix=prefix)
    torch.testing.assert_close(
        dilated_attention(q, k, v, SEGMENTS, RATIOS),
        dilated_attention_reference(q, k, v, SEGMENTS, RATIOS),
        **TOL,
    )
    # ... and equal to the rows of the full computation over all n + prefix queries.
    q_all = torch.cat([torch.randn(2, 4, prefix, 8, generator=torch.Generator().manual_seed(6)), q], dim=2)
    torch.testing.assert_close(
        dilated_attention(q, k, v, SEGMENTS, RATIOS),
        dilated_attention(q_all, k, v, SEGMENTS, RATIOS)[:, :, prefix:],
        **TOL,
    )


def test_mixture_is_the_softmax_over_the_union_with_multiplicity():
    """A second statement of the definition, also for gradients (the reference's masked
    log-sum-exp is not differentiable where a pattern misses a query)."""
    fast_in = qkv(37, requires_grad=True)
    union_in = [t.detach().clone().requires_grad_() for t in fast_in]
    fast = dilated_attention(*fast_in, SEGMENTS, RATIOS)
    union = union_attention(*union_in, SEGMENTS, RATIOS)
    torch.testing.assert_close(fast, union, **TOL)
    weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(5))
    (fast * weights).sum().backward()
    (union * weights).sum().backward()
    for a, b in zip(fast_in, union_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, **GRAD_TOL)


def test_one_pattern_spanning_the_sequence_is_causal_attention():
    q, k, v = qkv(23)
    torch.testing.assert_close(dilated_attention(q, k, v, (32,), (1,)), causal_attention(q, k, v), **TOL)
    q, k, v = qkv(6, prefix=17)
    torch.testing.assert_close(dilated_attention(q, k, v, (32,), (1,)), causal_attention(q, k, v), **TOL)


def test_pattern_mask_by_hand():
    """w = 4, r = 2: query 5 is offset 1 in segment 4..7, so it takes part for odd heads only
    (s_h = h mod 2), seeing the odd-offset keys of its segment up to itself: key 5 alone.
    Query 7 (offset 3) sees keys 5 and 7 in odd heads; query 6 (offset 2) keys 4, 6 in even."""
    masks = dilated_masks(8, 8, 4, (4,), (2,), "cpu")[0]  # (H, Nq, Nk)
    seen = lambda h, i: masks[h, i].nonzero().flatten().tolist()  # noqa: E731
    assert seen(0, 5) == [] and seen(2, 5) == []
    assert seen(1, 5) == [5] and seen(3, 5) == [5]
    assert seen(1, 7) == [5, 7] and seen(0, 7) == []
    assert seen(0, 6) == [4, 6] and seen(1, 6) == []
    assert seen(0, 1) == [] and seen(1, 1) == [1]  # the first segment alike


def test_which_keys_query_5_depends_on():
    """The fast op, probed: with patterns (w=4, r=1) and (w=8, r=2), query 5 in head 1 sees
    keys 4, 5 (pattern 1) and the odd keys 1, 3, 5 (pattern 2); in head 0 pattern 2 misses
    it (5 is odd), leaving keys 4, 5."""
    q, k, v = qkv(8, heads=2, kv_heads=2)
    base = dilated_attention(q, k, v, (4, 8), (1, 2))[:, :, 5]
    expected = {0: {4, 5}, 1: {1, 3, 4, 5}}
    for j in range(8):
        v2 = v.clone()
        v2[:, :, j] += 10.0
        out = dilated_attention(q, k, v2, (4, 8), (1, 2))[:, :, 5]
        for h in (0, 1):
            changed = not torch.allclose(out[:, h], base[:, h])
            assert changed == (j in expected[h]), f"key {j}, head {h}"


@pytest.mark.parametrize(
    "segments, ratios, message",
    [
        ((), (), "non-empty"),
        ((4, 8), (1,), "equal length"),
        ((4, 6), (1, 4), "divisible"),
        ((4,), (2,), "first"),
    ],
)
def test_bad_patterns_raise(segments, ratios, message):
    with pytest.raises(ValueError, match=message):
        check_patterns(segments, ratios)
    with pytest.raises(ValueError, match="dilated_"):
        tiny_model("yoco-dilated", dilated_segments=list(segments), dilated_ratios=list(ratios))


def dilated_model():
    return tiny_model("yoco-dilated", **DILATED)


# Sharpened (attention weights far from uniform), logits of spread (std) 0.11: max difference
# measured 8.9e-8 (prefill) and 2.1e-7 (steps) over the chunk sizes. Bound: 3x.
CACHED_TOL = dict(atol=6e-7, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 5, 16, 64])
def test_chunked_prefill_and_steps_equal_the_full_forward(chunk):
    model = sharpen_attention(dilated_model())
    ids = torch.tensor([prompt_of(37), prompt_of(37, seed=1)])
    with torch.no_grad():
        full = model(ids).logits
    last, cache = yoco.prefill(model, ids[:, :27], chunk_size=chunk)
    torch.testing.assert_close(last, full[:, 26], **CACHED_TOL)
    with torch.no_grad():
        for t in range(27, 37):
            step = model(ids[:, t : t + 1], cache=cache).logits[:, 0]
            torch.testing.assert_close(step, full[:, t], **CACHED_TOL)


@pytest.mark.parametrize("length", [1, 3, 4, 17, 33])
def test_cached_greedy_equals_full_recompute(length):
    model = dilated_model()
    prompt = prompt_of(length, seed=length)
    assert yoco.generate(model, [prompt], 10, prefill_chunk_size=5)[0] == greedy_by_full_forward(
        model, prompt, 10
    )


def test_batch_of_unequal_prompts_equals_single_runs():
    """Rows at different positions decode together: each row keeps its own segments."""
    model = dilated_model()
    prompts = [prompt_of(n, seed=n) for n in (1, 6, 9, 21)]
    singles = [yoco.generate(model, [p], 9)[0] for p in prompts]
    assert yoco.generate(model, prompts, 9) == singles


def test_training_reduces_the_loss():
    ids = torch.tensor([[5, 17, 42, 8, 33, 71, 2, 64] * 5] * 2)  # a short repeating sequence
    losses = train_briefly(dilated_model(), ids)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses
