"""Every swappable part inside whole models: cached decoding equals the full forward, and a
short training run lowers the loss. The part-specific reference checks live beside each part
(test_retention.py, ...); this file checks that the parts compose."""

import math

import pytest
import torch

import yoco
from tests.helpers import cached_logits, sharpen_attention, tiny_model, train_briefly
from yoco.layers.rotary import RotaryEmbedding

# (model kind, config overrides) for each part in a decoder.
PARTS = [
    ("retnet", {}),
    ("yoco-retention", {}),
    ("transformer", {"position_embedding": "xpos"}),
    ("yoco-swa", {"position_embedding": "xpos"}),
    ("yoco-gret", {"position_embedding": "xpos"}),
    ("yoco-swa", {"cross_decoder_positions": False}),
    ("yoco-gret", {"cross_decoder_positions": False}),
    ("yoco-swa", {"attention_type": "differential", "cross_decoder_positions": False}),
]


def part_id(part) -> str:
    kind, overrides = part
    return "-".join([kind, *(f"{k}={v}" for k, v in overrides.items())])


@pytest.fixture(params=PARTS, ids=part_id)
def part(request):
    return request.param


def test_cached_chunked_prefill_and_steps_equal_the_full_forward(part):
    kind, overrides = part
    model = sharpen_attention(tiny_model(kind, **overrides))  # so an attention bug shows
    ids = torch.randint(0, 99, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
    # Measured: at most 8.3e-6 of the logits' spread (Diff-YOCO-SWA without positions).
    torch.testing.assert_close(cached_logits(model, ids), full, rtol=0, atol=2.5e-5 * float(full.std()))
    prompt = ids[0, :12].tolist()
    expected = [int(t) for t in model(ids[:1, :12]).logits[0, -1:].argmax(-1)]
    assert yoco.generate(model, [prompt], 1)[0] == expected


def test_a_short_training_run_lowers_the_loss(part):
    kind, overrides = part
    model = tiny_model(kind, **overrides)
    ids = torch.arange(64).remainder(11).repeat(4, 1)  # a repeating pattern, learnable quickly
    losses = train_briefly(model, ids)
    assert losses[-1] < 0.5 * losses[0], losses


def xpos_scores(n_positions: torch.Tensor, m_positions: torch.Tensor, q, k) -> torch.Tensor:
    rotary = RotaryEmbedding(8, xpos_scale_base=512, xpos_center=100)
    queries = rotary(n_positions[None], torch.float32).rotate_queries(q)
    keys = rotary(m_positions[None], torch.float32).rotate_keys(k)
    return (queries * keys).sum(-1)


def test_xpos_scores_depend_on_distance_only():
    """Shifting both positions changes nothing (true of plain rotary too: the decay itself is
    checked by hand in the next test)."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    n, m = torch.tensor([10, 50, 300, 900, 3000]), torch.tensor([3, 20, 100, 899, 1000])
    torch.testing.assert_close(
        xpos_scores(n, m, q, k), xpos_scores(n + 777, m + 777, q, k), rtol=1e-4, atol=1e-5
    )


def one_pair_score(rotary, i: int, m: int, n: int, sine: bool = False) -> float:
    """q·k for a query at position m and a key at position n, both the unit vector of dimension
    i (i < d/2); with ``sine`` the key is the unit vector of i's partner, i + d/2."""
    d = rotary.head_dim
    q, k = torch.zeros(1, 1, 1, d), torch.zeros(1, 1, 1, d)
    q[..., i] = 1.0
    k[..., i + d // 2 if sine else i] = 1.0
    queries = rotary(torch.tensor([[m]]), torch.float32).rotate_queries(q)
    keys = rotary(torch.tensor([[n]]), torch.float32).rotate_keys(k)
    return float((queries * keys).sum())


def test_xpos_scales_each_dimension_pairs_score_by_zeta_to_the_distance():
    """By hand: pair i (dims i, i + d/2) turns by θ_i = 10000^(-2i/d) per position, and XPos
    scales queries by ζ_i^(m/B), keys by ζ_i^(-n/B), ζ_i = (2i + 0.4d) / 1.4d, B = 512, so the
    score of unit vectors is cos((m - n) θ_i) ζ_i^((m - n)/B) (sin(...) against the partner
    dimension). Plain rotary gives the same without the factor, and fails this check."""
    xpos = tiny_model("transformer", position_embedding="xpos").model.rotary_emb
    plain = tiny_model("transformer").model.rotary_emb
    d = xpos.head_dim
    assert (d, xpos.xpos_scale_base) == (8, 512)
    for i in range(d // 2):
        theta, zeta = 10000.0 ** (-2 * i / d), (2 * i + 0.4 * d) / (1.4 * d)
        for m, n in ((1500, 20), (700, 900), (37, 5), (260, 260)):
            angle, factor = (m - n) * theta, zeta ** ((m - n) / 512)
            for sine, wave in ((False, math.cos(angle)), (True, math.sin(angle))):
                expected = wave * factor
                assert one_pair_score(xpos, i, m, n, sine) == pytest.approx(expected, rel=1e-4, abs=1e-6)
                assert one_pair_score(plain, i, m, n, sine) == pytest.approx(wave, rel=1e-4, abs=1e-6)
                if abs(factor - 1) > 0.01 and abs(wave) > 0.1:  # the control: plain rotary fails
                    assert one_pair_score(plain, i, m, n, sine) != pytest.approx(expected, rel=1e-2)


def test_xpos_equals_torchscale_xpos_scores():
    # torchscale is in requirements.lock (the Makefile installs it): a missing one fails here.
    from torchscale.component import xpos_relative_position as xpos

    torch.manual_seed(1)
    n, d = 20, 8
    q, k = torch.randn(3, n, d), torch.randn(3, n, d)
    theirs = xpos.XPOS(d)
    reference = theirs(q) @ theirs(k, downscale=True).transpose(1, 2)
    half = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))  # interleaved -> rotate_half
    tables = RotaryEmbedding(d, xpos_scale_base=512, xpos_center=37)(torch.arange(n)[None], torch.float32)
    ours = tables.rotate_queries(q[None, :, :, half]) @ tables.rotate_keys(k[None, :, :, half]).transpose(
        -1, -2
    )
    torch.testing.assert_close(ours[0], reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention_type", ["softmax", "differential"])
def test_a_position_free_cross_decoder_reads_its_cache_as_a_set(attention_type):
    """Without positions, the last query's cross-attention cannot tell where a key sits:
    shuffling the earlier positions of the cross-decoder's input, or giving every token a
    scrambled position id (which would show a rotation of queries or keys alone), leaves the
    last output unchanged, while the rotary cross-decoder (the default) sees the shuffle."""
    x = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(1))
    shuffled = torch.cat([x[:, torch.randperm(23, generator=torch.Generator().manual_seed(2))], x[:, -1:]], 1)
    scrambled_ids = torch.randperm(500, generator=torch.Generator().manual_seed(3))[:24][None]
    last = {}
    for positions in (True, False):
        backbone = tiny_model(
            "yoco-swa", attention_type=attention_type, cross_decoder_positions=positions
        ).model
        backbone.self_decoder = torch.nn.ModuleList()  # the cross-decoder alone reads x
        sharpen_attention(backbone, 30)  # sharp attention, so where it looks shows in the output
        rope = backbone.rotary_emb(torch.arange(24)[None], x.dtype)
        scrambled = backbone.rotary_emb(scrambled_ids, x.dtype)
        with torch.no_grad():
            last[positions] = [
                backbone.body(x, rope, keep_last=1),
                backbone.body(shuffled, rope, keep_last=1),
                backbone.body(x, scrambled, keep_last=1),
            ]
    for other in last[False][1:]:
        torch.testing.assert_close(other, last[False][0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(last[True][1], last[True][0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["transformer", "retnet"])
def test_a_yoco_only_option_on_another_kind_is_refused(kind):
    # PretrainedConfig keeps unknown keywords, so without the check it would silently do nothing.
    with pytest.raises(ValueError, match=f"cross_decoder_positions is not an option of {kind} models"):
        tiny_model(kind, cross_decoder_positions=False)
