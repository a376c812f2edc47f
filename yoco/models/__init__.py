"""The model families, and one way to build any of them by name."""

import dataclasses

from yoco.models.base import DecoderConfig
from yoco.models.retnet import RetNetConfig, RetNetForCausalLM
from yoco.models.transformer import TransformerConfig, TransformerForCausalLM
from yoco.models.yoco import SELF_DECODERS, YocoConfig, YocoForCausalLM

YOCO_KINDS = tuple(f"yoco-{name}" for name in SELF_DECODERS)
KINDS = ("transformer", *YOCO_KINDS, "retnet")
# Fields only a YOCO config has. Other configs would keep them as unused extra attributes
# (PretrainedConfig accepts any keyword), so a YOCO-only option would silently do nothing.
YOCO_ONLY_FIELDS = frozenset(
    {f.name for f in dataclasses.fields(YocoConfig)} - {f.name for f in dataclasses.fields(DecoderConfig)}
)


def build_causal_lm(kind: str, yoco_options: dict | None = None, **fields):
    """A freshly initialised model of ``kind`` with config ``fields``; ``yoco_options``
    (``sliding_window``, ``gret_chunk_size``, ...) apply to the YOCO kinds only."""
    misplaced = sorted(YOCO_ONLY_FIELDS & set(fields)) if kind not in YOCO_KINDS else []
    if misplaced:
        raise ValueError(f"{misplaced[0]} is a YOCO config field; model kind {kind!r} has no such option")
    if kind == "transformer":
        return TransformerForCausalLM(TransformerConfig(**fields))
    if kind == "retnet":
        return RetNetForCausalLM(RetNetConfig(**fields))
    if kind in YOCO_KINDS:
        config = YocoConfig(self_decoder=kind.removeprefix("yoco-"), **(yoco_options or {}), **fields)
        return YocoForCausalLM(config)
    raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
