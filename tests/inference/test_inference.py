"""The inference engine against the obviously-correct slow path: recompute everything."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import yoco
from tests.helpers import (
    MODEL_KINDS,
    cached_logits,
    greedy_by_full_forward,
    int8_kernel_expected,
    prompt_of,
    sharpen_attention,
    tiny_model,
)
from yoco.inference.sampling import sample_next
from yoco.ops.attention import SPLIT_K_FROM

WINDOW = 8  # tiny_model's sliding window
PROMPT_LENGTHS = [1, WINDOW - 1, WINDOW, WINDOW + 1, 3 * WINDOW + 5]


@pytest.mark.parametrize("length", PROMPT_LENGTHS)
@pytest.mark.parametrize("chunk", [None, 3, 5])
def test_cached_greedy_equals_full_recompute(model_kind, length, chunk):
    model = tiny_model(model_kind)
    prompt = prompt_of(length, seed=length)
    expected = greedy_by_full_forward(model, prompt, 10)
    got = yoco.generate(model, [prompt], 10, prefill_chunk_size=chunk)[0]
    assert got == expected


@pytest.mark.parametrize("chunk", [1, 4, 7, 10, 64])
def test_chunked_prefill_equals_one_shot_and_plain_forward(model_kind, chunk):
    # Sharpened, so that a missing or misplaced key moves the logits far beyond the tolerance.
    model = sharpen_attention(tiny_model(model_kind))
    ids = torch.tensor([prompt_of(3 * WINDOW + 5), prompt_of(3 * WINDOW + 5, seed=1)])
    with torch.no_grad():
        plain = model(ids).logits[:, -1]
    # Measured over the 25 kind x chunk cases: at most 2.2e-7, i.e. 1.9e-6 of the logits' spread
    # (std 0.11). The tolerance is 3x that, relative to the spread.
    tolerance = dict(atol=6e-6 * float(plain.std()), rtol=0)
    one_shot, cache_a = yoco.prefill(model, ids)
    chunked, cache_b = yoco.prefill(model, ids, chunk_size=chunk)
    torch.testing.assert_close(one_shot, plain, **tolerance)
    torch.testing.assert_close(chunked, plain, **tolerance)
    # The caches must carry on identically too: decode the same next token from both.
    step = torch.tensor([[3], [4]])
    with torch.no_grad():
        next_a = model(step, cache=cache_a).logits
        next_b = model(step, cache=cache_b).logits
        full = model(torch.cat([ids, step], dim=1)).logits[:, -1:]
    torch.testing.assert_close(next_a, full, **tolerance)
    torch.testing.assert_close(next_b, full, **tolerance)


def test_yoco_prefill_runs_the_cross_decoder_for_the_last_position_only():
    model = tiny_model("yoco-gret")
    seen = []
    hook = model.model.cross_decoder[0].register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
    yoco.prefill(model, prompt_of(30), chunk_size=7)
    hook.remove()
    assert seen == [1], "cross-decoder must see only the last prompt token"


def test_batch_of_unequal_prompts_equals_single_runs(model_kind):
    model = tiny_model(model_kind)
    prompts = [prompt_of(n, seed=n) for n in (1, WINDOW - 1, WINDOW + 1, 3 * WINDOW + 5)]
    singles = [yoco.generate(model, [p], 9)[0] for p in prompts]
    assert yoco.generate(model, prompts, 9) == singles
    assert yoco.generate(model, prompts, 9, prefill_chunk_size=3) == singles


def test_transformers_generate_uses_our_cache_and_matches(model_kind):
    model = tiny_model(model_kind)
    prompts = torch.tensor([prompt_of(13), prompt_of(13, seed=2)])
    lengths = []
    original_forward = model.forward

    def recording_forward(*args, **kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        assert isinstance(kwargs["cache"], yoco.cache.ModelCache)
        return original_forward(*args, **kwargs)

    model.forward = recording_forward
    out = model.generate(prompts, max_new_tokens=8, do_sample=False)
    model.forward = original_forward
    assert lengths == [13] + [1] * 7, "generate() must feed one token per step after prefill"
    assert out[:, 13:].tolist() == yoco.generate(model, prompts, 8)


def test_stream_yields_what_generate_returns():
    model = tiny_model("yoco-swa")
    prompts = [prompt_of(5), prompt_of(11, seed=3)]
    steps = list(yoco.stream_generate(model, prompts, 6))
    assert len(steps) == 6
    assert [list(col) for col in zip(*steps, strict=True)] == yoco.generate(model, prompts, 6)


def test_stop_tokens_end_a_row_and_are_kept():
    model = tiny_model("yoco-gret")
    prompt = prompt_of(9)
    free_run = yoco.generate(model, [prompt], 12)[0]
    stop = free_run[4]
    stopped = yoco.generate(model, [prompt, prompt_of(4)], 12, stop_token_ids=[stop])[0]
    assert stopped == free_run[: free_run.index(stop) + 1]


def test_sampling_is_reproducible_with_a_seed_and_respects_top_k():
    model = tiny_model("transformer")
    prompt = prompt_of(6)
    a = yoco.generate(model, [prompt], 20, temperature=1.0, seed=123)
    b = yoco.generate(model, [prompt], 20, temperature=1.0, seed=123)
    c = yoco.generate(model, [prompt], 20, temperature=1.0, seed=124)
    assert a == b and a != c
    greedy = yoco.generate(model, [prompt], 20)
    assert yoco.generate(model, [prompt], 20, temperature=1.0, top_k=1, seed=5) == greedy
    assert yoco.generate(model, [prompt], 20, temperature=1.0, top_p=1e-6, seed=5) == greedy


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(500, 1)
    gen = torch.Generator().manual_seed(0)
    top2 = yoco.inference.sampling.sample_next(logits, 1.0, top_k=2, generator=gen)
    assert set(top2.tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.64, 0.24, ...: top_p 0.8 keeps the first two
    nucleus = yoco.inference.sampling.sample_next(logits, 1.0, top_p=0.8, generator=gen)
    assert set(nucleus.tolist()) == {0, 1} and probs[:2].sum() > 0.8 > probs[0]


# Sampling frequencies against the exact distributions. Eight logits, in two different orders
# (rows alternate in one batched call), so the top-p mask has to be mapped back from sorted order.
LOGITS = [2.0, 1.6, 1.1, 0.7, 0.2, -0.3, -0.9, -1.5]
ROWS = [[LOGITS[i] for i in order] for order in ([3, 6, 0, 4, 7, 1, 5, 2], [7, 2, 5, 0, 6, 3, 1, 4])]
# (temperature, top_k, top_p). Sorted probabilities at T = 0.5: .578 .260 .096 .043 ..., so top_p
# 0.9 keeps three (cumulative .578 .838 .933); at T = 2: .243 .199 .155 .127 .099 ..., so top_p
# 0.7 keeps four (.598 -> .725); top_k 5 then top_p 0.8 keeps four of the renormalised five
# (.295 .537 .726 .880), where top_p first (on all eight) would keep five.
SAMPLING_CASES = [
    (0.5, None, None),
    (2.0, None, None),
    (0.5, 3, None),
    (2.0, 5, None),
    (0.5, None, 0.9),
    (2.0, None, 0.7),
    (2.0, 5, 0.8),
]
DRAWS = 40_000  # per row: 80,000 tokens in one call, ~0.05 s
# Total-variation distance between the observed frequencies and the expected distribution,
# measured with this seed: at most 0.0046 over the 14 (case, row) pairs. The bound is 3x that. The
# wrong distributions are 0.1 or more away: logits * T instead of / T is 0.21-0.41 off, top-p
# dropping the token that crosses p 0.10-0.18, top-p before top-k 0.12.
TV_BOUND = 0.015


def expected_distribution(logits: list[float], temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """softmax(logits / T) restricted to the k largest, then to the nucleus (the fewest most likely
    tokens whose renormalised mass reaches top_p), renormalised: written out token by token."""
    scaled = [x / temperature for x in logits]
    kept = sorted(range(len(scaled)), key=lambda i: -scaled[i])[:top_k]

    def normalised(ids: list[int]) -> dict[int, float]:
        total = sum(math.exp(scaled[i]) for i in ids)
        return {i: math.exp(scaled[i]) / total for i in ids}

    if top_p is not None:
        probs, mass, nucleus = normalised(kept), 0.0, []
        for i in kept:
            nucleus.append(i)
            mass += probs[i]
            if mass >= top_p:
                break
        kept = nucleus
    probs = normalised(kept)
    return torch.tensor([probs.get(i, 0.0) for i in range(len(logits))], dtype=torch.float64)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p.double() - q.double()).abs().sum())


@pytest.mark.parametrize("temperature, top_k, top_p", SAMPLING_CASES)
def test_the_expected_distributions_are_transformers_conventions(temperature, top_k, top_p):
    """The hand-written distributions are what transformers' warpers give (same order:
    temperature, top-k, top-p; top-p keeps the token that crosses p)."""
    for row in ROWS:
        scores = TemperatureLogitsWarper(temperature)(None, torch.tensor([row], dtype=torch.float64))
        if top_k is not None:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p is not None:
            scores = TopPLogitsWarper(top_p)(None, scores)
        expected = expected_distribution(row, temperature, top_k, top_p)
        torch.testing.assert_close(scores.softmax(-1)[0], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("temperature, top_k, top_p", SAMPLING_CASES)
def test_sampling_frequencies_follow_the_expected_distribution(temperature, top_k, top_p):
    logits = torch.tensor(ROWS).repeat(DRAWS, 1)
    generator = torch.Generator().manual_seed(0)
    tokens = sample_next(logits, temperature, top_k, top_p, generator=generator)
    for r, row in enumerate(ROWS):
        frequencies = tokens[r :: len(ROWS)].bincount(minlength=len(row)) / DRAWS
        expected = expected_distribution(row, temperature, top_k, top_p)
        assert total_variation(frequencies, expected) < TV_BOUND, (row, frequencies, expected)
        # The bound separates: temperature applied the wrong way round lies far outside it.
        wrong_way = expected_distribution(row, 1 / temperature, top_k, top_p)
        assert total_variation(frequencies, wrong_way) > 10 * TV_BOUND


@torch.no_grad()
def sampled_by_full_forward(model, prompts, new_tokens: int, seed: int, **options) -> list[list[int]]:
    """Reference: recompute the whole batch every step and draw with ``sample_next``, one
    generator seeded as ``generate`` seeds its own."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor(prompts)
    for _ in range(new_tokens):
        tokens = sample_next(model(ids).logits[:, -1], generator=generator, **options)
        ids = torch.cat([ids, tokens[:, None]], dim=1)
    return ids[:, len(prompts[0]) :].tolist()


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.5, None, None), (2.0, 5, None), (2.0, None, 0.7)])
def test_generate_samples_what_sample_next_draws_from_the_full_forward(temperature, top_k, top_p):
    """generate() passes temperature, top-k and top-p through to the sampler whose frequencies
    are checked above, on cached logits equal to the full forward's."""
    model = sharpen_attention(tiny_model("yoco-swa"))
    with torch.no_grad():  # logits spread ~1.7 instead of 0.11, so T changes which tokens come
        model.model.norm.weight.mul_(15)
    prompts = [prompt_of(11), prompt_of(11, seed=1)]
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    got = yoco.generate(model, prompts, 16, seed=3, **options)
    assert got == sampled_by_full_forward(model, prompts, 16, seed=3, **options)
    wrong_way = sampled_by_full_forward(
        model, prompts, 16, seed=3, **{**options, "temperature": 1 / temperature}
    )
    assert got != wrong_way


def successor(token: int) -> int:
    return (5 * token + 3) % 99


def trained_on_a_successor_rule(kind: str, steps: int = 80) -> torch.nn.Module:
    """A tiny model taught ``next = (5 t + 3) mod 99``, so its greedy choices have clear margins
    (a random tiny model's logits are near-ties that any rounding flips)."""
    model = tiny_model(kind).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = []
        for start in torch.randint(0, 99, (16,), generator=gen).tolist():
            row = [start]
            while len(row) < 24:
                row.append(successor(row[-1]))
            rows.append(row)
        ids = torch.tensor(rows)
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_bf16_generation_matches_fp32_greedy_tokens(model_kind):
    model = trained_on_a_successor_rule(model_kind)
    prompt = [7, successor(7), successor(successor(7))]
    chain = [successor(prompt[-1])]
    while len(chain) < 12:
        chain.append(successor(chain[-1]))
    fp32 = yoco.generate(model, [prompt], 12)
    assert fp32 == [chain], "the trained model follows the rule for all 12 tokens"
    assert yoco.generate(model.to(torch.bfloat16), [prompt], 12) == fp32


def test_bf16_cached_logits_track_fp32(model_kind):
    """Teacher-forced: bf16 decoding through the cache stays within bf16 rounding of fp32."""
    model = sharpen_attention(tiny_model(model_kind))
    ids = torch.tensor([prompt_of(30)])
    with torch.no_grad():
        reference = model(ids).logits[0, 20:]
    low = model.to(torch.bfloat16)
    _, cache = yoco.prefill(low, ids[0, :20])
    steps = []
    with torch.no_grad():
        for t in range(20, 30):
            steps.append(low(ids[:, t : t + 1], cache=cache).logits[0, 0].float())
    # Measured: at most 0.113 of the logits' spread (yoco-gret; 0.04-0.084 for the other kinds,
    # 0.053 for yoco-gret without its convolution; the bf16 full forward alone is 0.03-0.10 off).
    # Tolerance 2.2x, relative to the spread. Dropping the oldest cached key on decode steps
    # moves them by 0.4-1.3 spreads (yoco-gret without its convolution 0.15: there the fp32
    # comparisons above catch it); unsharpened, with the old 0.03 + 5%, no kind caught it.
    torch.testing.assert_close(torch.stack(steps), reference, atol=0.25 * float(reference.std()), rtol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: yoco.generate(m, [[]], 4), "empty"),
        (lambda m: yoco.generate(m, [[1, 99]], 4), "outside the vocabulary"),
        (lambda m: yoco.generate(m, [[1, -3]], 4), "outside the vocabulary"),
        (lambda m: yoco.generate(m, [[1, 2]], 0), "max_new_tokens"),
        (lambda m: yoco.generate(m, [[1] * 500], 13), "max_position_embeddings"),
        (lambda m: yoco.generate(m, [[1]], 4, temperature=-1.0), "temperature"),
        (lambda m: yoco.generate(m, [[1]], 4, top_p=0.0), "top_p"),
        (lambda m: yoco.prefill(m, [1, 2], chunk_size=0), "chunk_size"),
    ],
)
def test_bad_inputs_raise_value_error(model_kind, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_model(model_kind))


def test_a_rejected_step_leaves_the_cache_untouched(model_kind):
    model = tiny_model(model_kind)
    _, cache = yoco.prefill(model, prompt_of(10), capacity=600)
    before = (list(cache.lengths), cache.nbytes())
    for bad in (torch.tensor([[99]]), torch.tensor([[1] * 503])):
        with pytest.raises(ValueError):
            model(bad, cache=cache)
    assert (list(cache.lengths), cache.nbytes()) == before


def test_transformers_beam_search_and_multiple_sequences(model_kind):
    model = tiny_model(model_kind)
    ids = torch.tensor([prompt_of(10), prompt_of(10, seed=4)])
    with_cache = model.generate(ids, max_new_tokens=8, num_beams=3, num_return_sequences=3)
    # use_cache=False reruns the full forward every step: the slow, obviously-correct reference.
    without = model.generate(ids, max_new_tokens=8, num_beams=3, num_return_sequences=3, use_cache=False)
    assert torch.equal(with_cache, without), "beam reordering must follow the beams"
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert greedy[:, 10:].tolist() == yoco.generate(model, ids, 8)
    # Sampling three sequences per prompt through the (expanded) cache draws the same tokens as
    # the full recompute under the same seed; and the three are different draws.
    sampled = {}
    for use_cache in (True, False):
        torch.manual_seed(7)
        sampled[use_cache] = model.generate(
            ids, max_new_tokens=6, do_sample=True, num_return_sequences=3, use_cache=use_cache
        )
    assert torch.equal(sampled[True], sampled[False])
    rows = sampled[True].tolist()
    assert [row[:10] for row in rows] == [ids[0].tolist()] * 3 + [ids[1].tolist()] * 3
    assert len({tuple(row) for row in rows}) == 6, rows


def test_transformers_generate_takes_a_callers_cache_and_the_old_keyword(model_kind):
    model = tiny_model(model_kind)
    prompt = torch.tensor([prompt_of(9)])
    expected = yoco.generate(model, prompt, 6)
    cache = model.new_cache(1)
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, cache=cache)
    assert out[:, 9:].tolist() == expected
    assert cache.lengths == [9 + 5], "generate() must have filled the cache it was given"
    # past_key_values, the keyword before transformers 5.24, still reaches the cache.
    _, filled = yoco.prefill(model, prompt)
    step = torch.tensor([[expected[0][0]]])
    old = model(step, past_key_values=filled).logits
    assert filled.lengths == [10]
    _, again = yoco.prefill(model, prompt)
    torch.testing.assert_close(old, model(step, cache=again).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        model(step, cache=again, past_key_values=filled)


def test_the_private_generation_hook_is_the_one_we_override(monkeypatch):
    """Fails, naming the installed transformers version, when a release changes the hook."""
    import transformers

    hooks = yoco.models.hf_generation
    hooks.check_generation_hook()
    # The check can fail: against another expected signature it names the installed version.
    monkeypatch.setattr(hooks, "HOOK_PARAMETERS", (*hooks.HOOK_PARAMETERS, "a_later_parameter"))
    with pytest.raises(RuntimeError, match=f"transformers {transformers.__version__} changed"):
        hooks.check_generation_hook()


def test_prompt_lookup_decoding_rolls_back_or_refuses(model_kind):
    model = tiny_model(model_kind)
    prompt = [5, 6, 7, 8] * 3 + [5, 6]
    call = lambda: model.generate(torch.tensor([prompt]), max_new_tokens=10, prompt_lookup_num_tokens=3)  # noqa: E731
    if model_kind == "transformer":
        assert call()[0, len(prompt) :].tolist() == yoco.generate(model, [prompt], 10)[0]
    else:
        with pytest.raises(ValueError, match="cannot be rolled back"):
            call()


def test_a_step_that_does_not_fit_the_cache_is_refused_before_writing(model_kind):
    model = tiny_model(model_kind)
    _, short = yoco.prefill(model, prompt_of(3))
    _, long = yoco.prefill(model, prompt_of(5))
    unequal = type(short).stack([short, long])
    _, pair = yoco.prefill(model, torch.tensor([prompt_of(4), prompt_of(4, seed=1)]))
    cases = [
        (unequal, torch.tensor([[1, 2], [3, 4]]), "one-token steps"),
        (pair, torch.tensor([[9]]), "batch size"),
        (short, torch.tensor([[1], [2]]), "batch size"),
    ]
    for cache, ids, message in cases:
        before = [list(s.lengths) for s in cache.stores()], cache.nbytes()
        with pytest.raises(ValueError, match=message):
            model(ids, cache=cache)
        assert ([list(s.lengths) for s in cache.stores()], cache.nbytes()) == before
    with pytest.raises(ValueError, match="make a new cache"):
        model.to(torch.bfloat16)(torch.tensor([[1]]), cache=short)


def test_prompts_that_are_not_token_ids_are_refused_at_the_door():
    model = tiny_model("yoco-swa")
    cases = [
        ("def f():", "not text"),
        (["def f():"], "not text"),
        (b"abc", "not text"),
        (torch.tensor([[1.0, 2.0]]), "integer tensor"),
        ([[1, 2.5]], "must be integers, got float 2.5"),
    ]
    for prompt, message in cases:
        with pytest.raises(TypeError, match=message):
            yoco.generate(model, prompt, 3)
    with pytest.raises(TypeError, match="integer tensor"):
        yoco.prefill(model, torch.tensor([1.0, 2.0]))
    ints = yoco.generate(model, [[3, 4, 5]], 3)
    assert yoco.generate(model, torch.tensor([[3, 4, 5]], dtype=torch.int32), 3) == ints


def test_logits_to_keep_follows_transformers(model_kind):
    """0 keeps every position, k the last k, a tensor the positions it lists (none when empty),
    and each gives the full forward's logits at those positions."""
    model = tiny_model(model_kind)
    ids = torch.tensor([prompt_of(12)])
    full = model(ids).logits
    assert torch.equal(model(ids, logits_to_keep=0).logits, full)
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, full[:, -3:], rtol=0, atol=1e-6)
    picked = torch.tensor([0, 5, 11])
    torch.testing.assert_close(model(ids, logits_to_keep=picked).logits, full[:, picked], rtol=0, atol=1e-6)
    cache = model.new_cache(1)
    assert model(ids, cache=cache, logits_to_keep=yoco.models.base.NO_LOGITS).logits.shape == (1, 0, 99)
    assert cache.lengths == [12], "keeping no logits still fills the cache"
    with pytest.raises(ValueError, match="outside"):
        model(ids, logits_to_keep=torch.tensor([12]))


@pytest.mark.parametrize("kind", ["transformer", "yoco-swa+diff", "yoco-gret"])
def test_decoding_over_a_cache_long_enough_for_split_k_equals_full_recompute(kind):
    """Past SPLIT_K_FROM keys a decode step's attention (the Transformer's layers, YOCO's
    cross-decoder, differential or not) takes split-K decode attention; rows of unequal
    length hide whole blocks of padding."""
    model = sharpen_attention(tiny_model(kind, max_position_embeddings=SPLIT_K_FROM + 16))
    prompts = [prompt_of(SPLIT_K_FROM + 2, seed=1), prompt_of(SPLIT_K_FROM // 2 - 3, seed=2)]
    expected = [greedy_by_full_forward(model, p, 3) for p in prompts]
    assert yoco.generate(model, prompts, 3, prefill_chunk_size=4096) == expected
    # The logits themselves, for the long row's next token (greedy agreement alone is coarse).
    last, cache = yoco.prefill(model, prompts[0], chunk_size=4096)
    step = model(torch.tensor([[expected[0][0]]]), cache=cache).logits[0, -1]
    full = model(torch.tensor([prompts[0] + expected[0][:1]])).logits[0, -1]
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


# Int8 keys and values (kv_cache_dtype="int8"). Attention sharpened 4x: measured, the logits
# through an int8 cache stay within 0.0021 of the full forward's (logits ~0.45 at most) for every
# kind below, and within 1e-6 through a float32 cache; reading each vector with its neighbour's
# scale (a misplaced scale) moves them by 0.06 to 0.16. The bound is 3x the largest measured.
INT8_BOUND = 6e-3


@pytest.mark.parametrize("kind", [*MODEL_KINDS, "yoco-swa+diff", "transformer+diff"])
def test_an_int8_cache_tracks_the_full_forward_within_its_rounding(kind):
    model = sharpen_attention(tiny_model(kind), 4.0)
    ids = torch.tensor([prompt_of(60)])
    cache = model.new_cache(1, 0, kv_cache_dtype="int8")
    with torch.no_grad():
        full = model(ids).logits
        pieces = [model(ids[:, :13], cache=cache).logits, model(ids[:, 13:30], cache=cache).logits]
        pieces += [model(ids[:, i : i + 1], cache=cache).logits for i in range(30, 60)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=INT8_BOUND, rtol=0)


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer"])
def test_an_int8_cache_with_64_wide_heads_decodes_through_the_c_kernel_as_the_pytorch_path_does(
    kind, monkeypatch
):
    """64-wide heads, as in the default shape: one-token steps over an int8 cache take the C
    kernel (yoco.ops.int8_attention) wherever this machine can build it. Their logits
    track the full forward within the int8 bound and the PyTorch path's within a tenth of it."""
    import yoco.ops.decode_attention as decode_attention_module

    kernel_path = decode_attention_module.native_int8_attention

    def steps(kernel) -> torch.Tensor:
        answered = []  # the steps the kernel answered (None: it declined, the PyTorch path ran)
        monkeypatch.setattr(
            decode_attention_module,
            "native_int8_attention",
            lambda *a: answered.append(out := kernel(*a)) or out,
        )
        cache = model.new_cache(1, 0, kv_cache_dtype="int8")
        with torch.no_grad():
            model(ids[:, :30], cache=cache)
            logits = torch.cat([model(ids[:, i : i + 1], cache=cache).logits for i in range(30, 60)], dim=1)
        return logits, sum(out is not None for out in answered)

    model = sharpen_attention(tiny_model(kind, hidden_size=128, num_attention_heads=2), 4.0)
    ids = torch.tensor([prompt_of(60)])
    with torch.no_grad():
        full = model(ids).logits[:, 30:]
    (fast, by_kernel), (pytorch, _) = steps(kernel_path), steps(lambda *a: None)
    # every step, in every attention layer reading the int8 cache; none where there is no kernel
    assert by_kernel >= 30 if int8_kernel_expected() else by_kernel == 0
    torch.testing.assert_close(fast, full, atol=INT8_BOUND, rtol=0)
    torch.testing.assert_close(fast, pytorch, atol=INT8_BOUND / 10, rtol=0)


def test_an_int8_cache_takes_about_half_the_bytes_of_bfloat16():
    # 64-wide heads, as in the default shape: 64 int8 values + a float32 scale = 68 bytes a vector.
    model = tiny_model("yoco-gret", hidden_size=128, num_attention_heads=2).to(torch.bfloat16)
    prompt = prompt_of(50)
    sizes = {}
    for kv_cache_dtype in ("auto", "int8"):
        _, cache = yoco.prefill(model, prompt, kv_cache_dtype=kv_cache_dtype)
        assert cache.kv_cache_dtype == kv_cache_dtype
        sizes[kv_cache_dtype] = cache.shared_kv.nbytes()
    assert sizes["int8"] / sizes["auto"] == 68 / 128


def test_int8_batches_of_unequal_prompts_equal_single_runs_and_bad_formats_are_refused():
    model = tiny_model("transformer")
    prompts = [prompt_of(n, seed=n) for n in (3, WINDOW + 1, 3 * WINDOW + 5)]
    singles = [yoco.generate(model, [p], 6, kv_cache_dtype="int8")[0] for p in prompts]
    assert yoco.generate(model, prompts, 6, kv_cache_dtype="int8") == singles
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be one of \('auto', 'int8'\), got 'int4'"):
        yoco.generate(model, prompts, 6, kv_cache_dtype="int4")
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        model.new_cache(1, 8, kv_cache_dtype="float8")


@pytest.mark.parametrize("kind", ["yoco-gret+nope", "yoco-gret", "yoco-swa", "yoco-swa+diff"])
def test_log_n_scaled_queries_decode_as_the_full_forward(kind):
    """cross_decoder_logn_base: each query's factor follows its own row's position, so cached
    logits (prefill, chunk, one-token steps) equal the full forward, a batch of unequal prompts
    equals single runs, and greedy decoding equals re-running the whole sequence."""
    model = sharpen_attention(tiny_model(kind, cross_decoder_logn_base=4))
    ids = torch.tensor([prompt_of(30), prompt_of(30, seed=1)])
    with torch.no_grad():
        full = model(ids).logits
        torch.testing.assert_close(cached_logits(model, ids), full, atol=1e-5, rtol=0)
        model.config.cross_decoder_logn_base = None
        assert (model(ids).logits - full).abs().max() > 1e-2, "the scaling should change the logits"
        model.config.cross_decoder_logn_base = 4
    prompts = [prompt_of(n, seed=n) for n in (1, WINDOW + 1, 3 * WINDOW + 5)]
    singles = [yoco.generate(model, [p], 6)[0] for p in prompts]
    assert yoco.generate(model, prompts, 6) == singles
    assert singles[2] == greedy_by_full_forward(model, prompts[2], 6)


@pytest.mark.parametrize("kind", ["yoco-swa+conv", "yoco-gret+conv", "gret-only+conv", "yoco-swa+diff+conv"])
def test_a_short_convolution_caches_its_last_inputs_exactly(kind, tmp_path):
    """short_conv_size: cached logits (prefill, chunk, one-token steps) equal the full forward;
    a batch of unequal prompts equals single runs; a saved cache continues exactly."""
    model = sharpen_attention(tiny_model(kind))
    ids = torch.tensor([prompt_of(30), prompt_of(30, seed=1)])
    with torch.no_grad():
        torch.testing.assert_close(cached_logits(model, ids), model(ids).logits, atol=1e-5, rtol=0)
    prompts = [prompt_of(n, seed=n) for n in (1, WINDOW + 1, 3 * WINDOW + 5)]
    singles = [yoco.generate(model, [p], 6)[0] for p in prompts]
    assert yoco.generate(model, prompts, 6) == singles
    assert singles[2] == greedy_by_full_forward(model, prompts[2], 6)
    _, cache = yoco.prefill(model, prompts[2], chunk_size=8)
    loaded = yoco.load_cache(model, yoco.save_cache(model, cache, tmp_path / "c.safetensors"))
    with torch.no_grad():
        step = torch.tensor([[3]])
        assert torch.equal(model(step, cache=loaded).logits, model(step, cache=cache).logits)
