"""One table names every model: each kind with each part builds and runs; options that do not
belong to a kind are refused by name."""

import itertools
import re

import pytest
import torch

from tests.helpers import TINY, greedy_by_full_forward, prompt_of
from yoco import generate
from yoco.models import KINDS, PARTS, PRESETS, build, resolve
from yoco.models.registry import config_fields
from yoco.models.yoco import YocoConfig


def applicable(kind: str, parts: tuple[str, ...]) -> bool:
    architecture, _ = resolve(kind)
    fields = {k for p in parts for k in PARTS[p]}
    # Two parts setting one field differently: refused, tested below.
    clashing = any(
        PARTS[a][f] != PARTS[b][f]
        for a, b in itertools.combinations(parts, 2)
        for f in PARTS[a].keys() & PARTS[b].keys()
    )
    # Refused by YocoConfig, tested below: differential dilated attention; and on the controls
    # without a cross-decoder, a position-free cross-decoder or a differential one (gret-only).
    unsupported = (kind in ("yoco-dilated", "gret-only") and "diff" in parts) or (
        kind.endswith("-only") and "nope" in parts
    )
    return fields <= config_fields(architecture) and not clashing and not unsupported


COMBINATIONS = [
    (kind, parts)
    for kind in KINDS
    for n in (0, 1, 2)
    for parts in itertools.combinations(PARTS, n)
    if applicable(kind, parts)
]


@pytest.mark.parametrize(
    "kind, parts", COMBINATIONS, ids=lambda v: "+".join(v) if isinstance(v, tuple) else v
)
def test_every_kind_and_part_combination_builds_and_runs(kind, parts):
    name = "+".join((kind, *parts))
    torch.manual_seed(0)
    model = build(name, where_applicable=dict(sliding_window=8, gret_chunk_size=16), **TINY).eval()
    for part in parts:
        for field, value in PARTS[part].items():
            assert getattr(model.config, field) == value, (name, field)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 12, TINY["vocab_size"]) and bool(logits.isfinite().all())


def test_every_kind_is_combined_with_every_part_that_applies_to_it():
    built = {(kind, parts) for kind, parts in COMBINATIONS if len(parts) == 1}
    for kind in KINDS:
        for part in PARTS:
            refused = {
                ("yoco-dilated", "diff"),
                ("gret-only", "diff"),
                ("swa-only", "nope"),
                ("gret-only", "nope"),
            }
            yoco_kind = KINDS[kind][0] == "yoco"  # the yoco-* kinds and the -only controls
            only_yoco = {
                "nope": kind.startswith("yoco-"),
                "crosspos": yoco_kind,
                "conv": yoco_kind,
                "noconv": yoco_kind,
            }  # parts of YocoConfig alone
            expected = only_yoco.get(part, True) and (kind, part) not in refused
            assert ((kind, (part,)) in built) == expected, (kind, part)


@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("transformer", {"sliding_window": 8}, "sliding_window is not an option of transformer models"),
        ("retnet", {"gret_chunk_size": 8}, "gret_chunk_size is not an option of retnet models"),
        ("transformer+nope", {}, "cross_decoder_positions is not an option of transformer+nope"),
        ("yoco-swa", {"retention_chunk_size": 8}, "retention_chunk_size is not an option of yoco-swa"),
        ("yoco-swa", {"self_decoder": "gret"}, "contradicts the model name"),
        ("yoco-swaa", {}, "unknown model kind 'yoco-swaa'"),
        ("yoco-swa+difff", {}, "unknown part 'difff'"),
        ("yoco-dilated+diff", {}, "self_decoder 'dilated' needs attention_type 'softmax'"),
        ("swa-only+nope", {}, "cross_decoder_positions=False needs a cross-decoder"),
        ("gret-only+diff", {}, "a 'gret' self-decoder without a cross-decoder has none"),
        ("swa-only", {"num_self_decoder_layers": 2}, "num_self_decoder_layers must be 4, got 2"),
    ],
)
def test_an_option_that_does_not_belong_is_refused_by_name(name, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build(name, **TINY, **fields)


def test_a_kind_default_beyond_the_paper_has_a_part_that_gives_the_paper_model_back():
    assert build("yoco-gret", **TINY).config.short_conv_size == 4
    assert build("yoco-gret+noconv", **TINY).config.short_conv_size == 0  # the paper's YOCO-gRet
    # The recall control is the kind without its cross-decoder, and nothing else.
    control = build("gret-only", **TINY).config
    assert control.short_conv_size == 4 and not control.cross_decoder
    # A default is not part of the name: a config field overrides it, a part's field does not.
    assert build("yoco-gret", **TINY, short_conv_size=3).config.short_conv_size == 3
    with pytest.raises(ValueError, match="short_conv_size=3 contradicts the model name 'yoco-gret\\+noconv'"):
        build("yoco-gret+noconv", **TINY, short_conv_size=3)
    # The config class keeps the paper's defaults: a config.json saved without the field (as
    # save_pretrained writes only fields that differ from the class defaults) loads unchanged.
    assert YocoConfig().short_conv_size == 0


@pytest.mark.parametrize("name", ["yoco-gret+conv+noconv", "yoco-swa+nope+crosspos", "transformer+moe+mhmoe"])
def test_parts_that_set_one_field_differently_are_refused(name):
    with pytest.raises(ValueError, match="contradict each other"):
        build(name, **TINY)


def test_presets_and_where_applicable_fields():
    model = build("transformer", "tiny", where_applicable={"sliding_window": 64})
    assert model.config.hidden_size == PRESETS["tiny"]["hidden_size"]
    assert "sliding_window" not in model.config.to_dict()
    assert build("yoco-swa", "tiny", where_applicable={"sliding_window": 64}).config.sliding_window == 64
    with pytest.raises(ValueError, match="unknown preset"):
        build("yoco-swa", "huge")


@pytest.mark.parametrize("kind", ["swa-only", "gret-only"])
def test_the_controls_have_no_global_cache_and_decode_as_they_recompute(kind):
    torch.manual_seed(0)
    model = build(kind, where_applicable=dict(sliding_window=8, gret_chunk_size=16), **TINY).eval()
    body = model.model
    assert body.shared_kv is None and len(body.cross_decoder) == 0
    assert len(body.self_decoder) == TINY["num_hidden_layers"]
    cache = model.new_cache(1, 64)
    assert cache.shared_kv is None and len(cache.self_decoder) == TINY["num_hidden_layers"]
    prompts = [prompt_of(21, seed=1), prompt_of(5, seed=2)]
    expected = [greedy_by_full_forward(model, p, 6) for p in prompts]
    assert generate(model, prompts, 6, prefill_chunk_size=4) == expected
