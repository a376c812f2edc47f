"""YOCO against an independent reference (tests/models/reference_yoco.py): the whole model, and each layer
whose only other check is against itself (gRet with its decay gate, sliding-window attention,
SharedKV, softmax cross-attention).

The weights are *sharpened* before comparing, so that a wrong mask, window or scale cannot hide
behind near-uniform attention: q/k projections are scaled until attention concentrates on a few
keys (asserted below, from the reference's own attention maps), and the decay gate's weights
until γ spreads over (0, 1) (asserted too). Measured on the SWA model: a window of 7 instead of
8 moves the logits by 4.0 standard deviations sharpened, by 0.7 at the 0.02 init.

The reference runs in float64, so the difference measures the library's float32 rounding. That
rounding is amplified by sharp attention (the reference itself run in float32 is as far from
float64 as the library is); the tolerances are 2-3x the error measured with these seeds,
relative to the spread (standard deviation) of the expected values, and each states its figure.
"""

import pytest
import torch

from tests.helpers import tiny_model
from tests.models import reference_yoco as ref
from yoco.cache import RecurrentState
from yoco.layers.attention import SelfAttention
from yoco.layers.cross_attention import CrossAttention, SharedKV
from yoco.layers.gated_retention import GatedRetention
from yoco.layers.rotary import NO_POSITIONS, RotaryEmbedding

HIDDEN, HEADS, KV_HEADS, EPS, THETA = 32, 4, 2, 1e-6, 10000.0
HEAD_DIM = HIDDEN // HEADS
# Longer than the sliding window (8), than the gRet chunk (16, not a multiple of it: a padded
# last chunk), and than one block of the blocked window kernel plus the window (256 + 7), so the
# window attention runs its causal head, two band blocks and a padded tail.
N = 300
QK_SHARPEN = 2.0  # q/k weights: scores q·k/√d of standard deviation ~QK_SHARPEN² = 4
GATE_SHARPEN = 12.0  # W_γ: logits of std ~12, so γ = sigmoid(z)^(1/16) spans ~0.1 .. 1


def sharpen(module: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every weight: matrices N(0, 1/fan_in) (each projection keeps unit scale), q/k
    projections (self-attention, retention, shared keys, cross queries) QK_SHARPEN times that,
    W_γ GATE_SHARPEN times; embeddings N(0, 1); norm scales 1 + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if p.dim() == 1:
                p.copy_(1 + 0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                std = p.shape[1] ** -0.5
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    std *= QK_SHARPEN
                elif name.endswith("decay_proj.weight"):
                    std *= GATE_SHARPEN
                p.copy_(std * noise)


def inputs(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, n, HIDDEN, generator=torch.Generator().manual_seed(seed))


def library_rope(n: int):
    positions = torch.arange(n)[None].expand(2, n)
    return RotaryEmbedding(HEAD_DIM, THETA)(positions, torch.float32)


def reference_tables(n: int):
    return ref.rotary_tables(torch.arange(n), HEAD_DIM, THETA)


def assert_matches(got: torch.Tensor, expected: torch.Tensor, rel_tol: float) -> None:
    """max |got - expected| <= rel_tol * std(expected)."""
    err = (got.double() - expected).abs().max().item()
    spread = expected.std().item()
    assert err <= rel_tol * spread, f"max error {err:.3g} > {rel_tol:g} x spread {spread:.3g}"


def assert_far_from(got: torch.Tensor, expected: torch.Tensor, rel_tol: float) -> None:
    """The control of ``assert_matches``: a wrong formula misses by far more than the tolerance."""
    err = (got.double() - expected).abs().max().item()
    assert err > 100 * rel_tol * expected.std().item(), f"only {err:.3g} apart"


def assert_sharp(trace: dict) -> None:
    """Every attention map concentrates: over rows that see at least 4 keys, the mean largest
    weight is >= 0.3 (uniform: <= 0.25 over 4 keys, 0.125 over an 8-key window, < 0.01 over the
    cross rows' hundreds of keys) and the mean entropy is at most half that of uniform attention
    over the same keys. Every gRet layer's decays spread: some γ < 0.3 and at least a fifth
    below 0.9 (a γ ≈ 1 everywhere would hide the gate)."""
    maps = trace.get("swa", []) + trace.get("cross", [])
    for weights, mask in maps:
        visible = mask.sum(-1)
        rows = visible >= 4
        top = weights.max(-1).values[..., rows]
        entropy = -(weights * weights.clamp_min(1e-300).log()).sum(-1)[..., rows]
        relative_entropy = entropy / visible[rows].double().log()
        assert top.mean() >= 0.3, f"mean max attention weight {top.mean():.3f}"
        assert relative_entropy.mean() <= 0.5, f"mean entropy / log(keys) {relative_entropy.mean():.3f}"
    for log_g in trace.get("log_gamma", []):
        gamma = log_g.exp()
        assert gamma.min() < 0.3 and (gamma < 0.9).double().mean() > 0.2, "decays too close to 1"
    assert maps, "no attention map was traced"


# --------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------

# Measured max |library - reference| / std(reference logits) with these seeds (std 0.94-0.99):
# swa (position-free cross-decoder, its default) 1.7e-5, swa with a rotary cross-decoder
# 1.6e-5, swa with a short convolution 1.9e-5, gret (with its default short convolution)
# 2.2e-5, gret without 1.5e-5, gret position-free 1.7e-5, swa with 4 kv heads 1.2e-5, gret
# with 1 kv head and a 3:1 split 2.7e-5, gret position-free with log-n scaling 2.2e-5 (counting
# p keys instead of p + 1 in its factor misses by 4.6e-3). Tolerance ~2x the largest;
# the convolution's kernel applied reversed misses by 5.6 standard deviations (tested below).
MODEL_REL_TOL = 6e-5
LOGN_BASE = 64  # below N: positions 64.. of the N are scaled, by up to ln(300) / ln(64) = 1.37
MODEL_CASES = {
    "swa": dict(self_decoder="swa"),  # position-free cross-decoder, its default
    "swa-rotary-cross-decoder": dict(self_decoder="swa", parts="+crosspos"),  # the paper's
    "swa-short-conv": dict(self_decoder="swa", parts="+conv"),
    "gret": dict(self_decoder="gret"),  # with its default short convolution
    "gret-without-conv": dict(self_decoder="gret", parts="+noconv"),  # the paper's YOCO-gRet
    "gret-position-free": dict(self_decoder="gret", cross_decoder_positions=False),
    "gret-logn-scaled": dict(self_decoder="gret", parts="+nope", cross_decoder_logn_base=LOGN_BASE),
    "swa-mha": dict(self_decoder="swa", num_key_value_heads=4),
    "gret-mqa-3-to-1": dict(self_decoder="gret", num_key_value_heads=1, num_self_decoder_layers=3),
}


def sharpened_model(self_decoder: str, parts: str = "", **fields):
    model = tiny_model(f"yoco-{self_decoder}{parts}", **fields)  # sliding window 8, gRet chunk 16
    sharpen(model)
    return model


@pytest.mark.parametrize("case", MODEL_CASES)
def test_yoco_logits_equal_the_independent_reference(case):
    model = sharpened_model(**MODEL_CASES[case])
    assert model.config.sliding_window < N and model.config.gret_chunk_size < N
    ids = torch.randint(0, model.config.vocab_size, (2, N), generator=torch.Generator().manual_seed(2))
    trace = {}
    expected = ref.yoco_logits(model.config, model.state_dict(), ids, trace)
    with torch.no_grad():
        got = model(ids).logits
    assert_sharp(trace)
    assert_matches(got, expected, MODEL_REL_TOL)


def test_a_short_convolution_applied_in_reverse_misses_the_reference(monkeypatch):
    """The control of the whole-model comparison for the short convolution: a reference reading
    the kernel the other way round is far from the library's logits."""
    model = sharpened_model(self_decoder="gret")
    assert model.config.short_conv_size == 4
    ids = torch.randint(0, model.config.vocab_size, (2, N), generator=torch.Generator().manual_seed(2))
    convolve = ref.short_convolution
    monkeypatch.setattr(ref, "short_convolution", lambda x, w: convolve(x, w.flip(1)))
    with torch.no_grad():
        assert_far_from(
            model(ids).logits, ref.yoco_logits(model.config, model.state_dict(), ids), MODEL_REL_TOL
        )


def test_without_its_log_n_scaling_the_reference_misses_only_the_positions_past_the_base():
    """The control of the log-n case: the model with the scaling equals the plain reference on
    the positions that see at most ``base`` keys and is far from it on the rest."""
    model = sharpened_model(**MODEL_CASES["gret-logn-scaled"])
    ids = torch.randint(0, model.config.vocab_size, (2, N), generator=torch.Generator().manual_seed(2))
    model.config.cross_decoder_logn_base = None
    plain = ref.yoco_logits(model.config, model.state_dict(), ids)
    model.config.cross_decoder_logn_base = LOGN_BASE
    with torch.no_grad():
        got = model(ids).logits
    assert_matches(got[:, :LOGN_BASE], plain[:, :LOGN_BASE], MODEL_REL_TOL)
    assert_far_from(got[:, LOGN_BASE:], plain[:, LOGN_BASE:], MODEL_REL_TOL)


def test_the_reference_rejects_what_it_does_not_implement():
    model = tiny_model("yoco-swa", attention_type="differential")
    with pytest.raises(NotImplementedError, match="attention_type"):
        ref.yoco_logits(model.config, model.state_dict(), torch.zeros(1, 4, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# gRet: the layer, and its decay gate on its own
# --------------------------------------------------------------------------------------------

# Measured, relative to the spread: log γ 9.0e-7 (4e-7 absolute, ~2 float32 ulps of the largest
# |log γ|); layer output 3.9e-6 (also with a cache: 299 tokens, then one step); carried state 3.0e-6.
DECAY_REL_TOL = 3e-6
GRET_REL_TOL = 1.2e-5
GRET_STATE_REL_TOL = 1e-5


def sharpened_gated_retention() -> GatedRetention:
    torch.manual_seed(0)
    layer = GatedRetention(HIDDEN, HEADS, eps=EPS, chunk_size=16)
    sharpen(layer)
    return layer


def test_gret_decay_gate_is_logsigmoid_over_16():
    """log γ = logsigmoid(x W_γ) / 16 exactly: any other divisor misses by far more than the
    tolerance (a divisor of 15 or 17 already changes log γ by ~6%)."""
    layer = sharpened_gated_retention()
    x = inputs()
    with torch.no_grad():
        got = layer.log_decay(x)  # (B, H, N)
    w_gamma = ref.weights_under(layer.state_dict(), "")["decay_proj"]
    assert_matches(got, ref.log_gamma(x.double(), w_gamma), DECAY_REL_TOL)
    for tau in (8.0, 15.0, 17.0, 32.0):
        assert_far_from(got, ref.log_gamma(x.double(), w_gamma, tau=tau), DECAY_REL_TOL)


def test_gret_layer_equals_the_recurrence():
    """The chunkwise layer (chunk 16, 300 tokens) against the token-by-token recurrence with
    rotary, k/√d, the gate, the weightless per-head norm and the swish output gate; then the
    same with a cache (299 tokens chunkwise, one recurrent step), whose carried state must be
    the recurrence's S_N: the per-head norm hides a constant factor on k from the outputs, the
    state shows it."""
    layer = sharpened_gated_retention()
    x = inputs()
    w = ref.weights_under(layer.state_dict(), "")
    trace = {}
    expected = ref.gated_retention_layer(x.double(), w, HEADS, EPS, reference_tables(N), trace=trace)
    cache = RecurrentState(2, HEADS, HEAD_DIM, x.device)
    with torch.no_grad():
        got = layer(x, library_rope(N))
        prefix = layer(x[:, :-1], library_rope(N - 1), cache)
        step = layer(x[:, -1:], library_rope(N).last(1), cache)
    gamma = trace["log_gamma"][0].exp()
    assert gamma.min() < 0.3 and (gamma < 0.9).double().mean() > 0.2, "decays too close to 1"
    assert_matches(got, expected, GRET_REL_TOL)
    assert_matches(torch.cat([prefix, step], dim=1), expected, GRET_REL_TOL)
    assert_matches(cache.state, trace["gret_state"][0], GRET_STATE_REL_TOL)
    # The comparison sees the decay: the same layer with τ = 15 or 17 is far outside the tolerance.
    for tau in (15.0, 17.0):
        other = ref.gated_retention_layer(x.double(), w, HEADS, EPS, reference_tables(N), tau=tau)
        assert_far_from(got, other, GRET_REL_TOL)


# --------------------------------------------------------------------------------------------
# Sliding-window self-attention
# --------------------------------------------------------------------------------------------

# Measured, relative to the spread: window 1: 0.8e-6, 8: 5.1e-6, 100: 6.3e-6.
SWA_REL_TOL = 2e-5


@pytest.mark.parametrize("window", [1, 8, 100])
def test_sliding_window_layer_equals_the_masked_softmax(window):
    """Blocked kernel vs softmax over i - W + 1 .. i, written with an N x N mask; 300 tokens
    cover the causal head, two 256-query band blocks and the padded tail."""
    torch.manual_seed(0)
    layer = SelfAttention(HIDDEN, HEADS, KV_HEADS, window=window)
    sharpen(layer)
    x = inputs()
    trace = {}
    w = ref.weights_under(layer.state_dict(), "")
    expected = ref.sliding_window_attention_layer(
        x.double(), w, HEADS, KV_HEADS, window, reference_tables(N), trace
    )
    with torch.no_grad():
        got = layer(x, library_rope(N))
    if window > 1:
        assert_sharp(trace)
    assert_matches(got, expected, SWA_REL_TOL)
    # The comparison sees the window's edges: one key more or fewer is far outside the tolerance.
    for other_window in (window - 1, window + 1):
        if other_window >= 1:
            other = ref.sliding_window_attention_layer(
                x.double(), w, HEADS, KV_HEADS, other_window, reference_tables(N)
            )
            assert_far_from(got, other, SWA_REL_TOL)


# --------------------------------------------------------------------------------------------
# SharedKV and softmax cross-attention
# --------------------------------------------------------------------------------------------

# Measured, relative to the spread: SharedKV keys 3.3e-6 rotated / 1.3e-6 position-free, values
# 0.9e-6; cross-attention (300 / 37 / 1 queries) 5.9e-6 / 5.0e-6 / 2.2e-6 with rotary,
# 3.6e-6 / 3.4e-6 / 1.1e-6 position-free.
SHARED_KV_REL_TOL = 1e-5
CROSS_REL_TOL = 2e-5


def sharpened_shared_kv() -> SharedKV:
    torch.manual_seed(0)
    shared = SharedKV(HIDDEN, KV_HEADS, HEAD_DIM, EPS)
    sharpen(shared, seed=1)
    return shared


@pytest.mark.parametrize("positions", [True, False], ids=["rotary", "position-free"])
def test_shared_kv_equals_norm_then_projection(positions):
    shared = sharpened_shared_kv()
    memory = inputs(seed=2)
    tables = reference_tables(N) if positions else None
    expected_k, expected_v = ref.shared_kv(
        memory.double(), ref.weights_under(shared.state_dict(), ""), KV_HEADS, EPS, tables
    )
    with torch.no_grad():
        k, v = shared(memory, library_rope(N) if positions else NO_POSITIONS)
    assert_matches(k, expected_k, SHARED_KV_REL_TOL)
    assert_matches(v, expected_v, SHARED_KV_REL_TOL)
    if positions:  # the keys are rotated: unrotated keys are far off
        unrotated, _ = ref.shared_kv(
            memory.double(), ref.weights_under(shared.state_dict(), ""), KV_HEADS, EPS, None
        )
        assert_far_from(k, unrotated, SHARED_KV_REL_TOL)


@pytest.mark.parametrize("positions", [True, False], ids=["rotary", "position-free"])
@pytest.mark.parametrize("n_queries", [N, 37, 1])
def test_cross_attention_equals_causal_softmax_to_the_shared_kv(positions, n_queries):
    """Queries are the last ``n_queries`` of the N positions (a full forward, a prompt chunk, a
    decoding step); keys and values are SharedKV's, computed once."""
    shared = sharpened_shared_kv()
    torch.manual_seed(0)
    layer = CrossAttention(HIDDEN, HEADS)
    sharpen(layer, seed=3)
    x, memory = inputs(n_queries, seed=4), inputs(seed=2)
    rope = library_rope(N) if positions else NO_POSITIONS
    with torch.no_grad():
        got = layer(x, rope.last(n_queries), shared(memory, rope))

    tables = reference_tables(N) if positions else None
    query_tables = None if tables is None else tuple(t[N - n_queries :] for t in tables)
    keys, values = ref.shared_kv(
        memory.double(), ref.weights_under(shared.state_dict(), ""), KV_HEADS, EPS, tables
    )
    w = ref.weights_under(layer.state_dict(), "")
    trace = {}
    expected = ref.cross_attention_layer(x.double(), keys, values, w, HEADS, query_tables, trace)
    if n_queries > 1:
        assert_sharp(trace)
    assert_matches(got, expected, CROSS_REL_TOL)
    if positions:  # the queries are rotated: unrotated queries are far off
        assert_far_from(
            got, ref.cross_attention_layer(x.double(), keys, values, w, HEADS, None), CROSS_REL_TOL
        )
