"""The model families, and one way to build any of them by name."""

from yoco.models.retnet import RetNetConfig, RetNetForCausalLM
from yoco.models.transformer import TransformerConfig, TransformerForCausalLM
from yoco.models.yoco import SELF_DECODERS, YocoConfig, YocoForCausalLM

YOCO_KINDS = tuple(f"yoco-{name}" for name in SELF_DECODERS)
KINDS = ("transformer", *YOCO_KINDS, "retnet")


def build_causal_lm(kind: str, yoco_options: dict | None = None, **fields):
    """A freshly initialised model of ``kind`` with config ``fields``; ``yoco_options``
    (``sliding_window``, ``gret_chunk_size``, ...) apply to the YOCO kinds only."""
    if kind == "transformer":
        return TransformerForCausalLM(TransformerConfig(**fields))
    if kind == "retnet":
        return RetNetForCausalLM(RetNetConfig(**fields))
    if kind in YOCO_KINDS:
        config = YocoConfig(self_decoder=kind.removeprefix("yoco-"), **(yoco_options or {}), **fields)
        return YocoForCausalLM(config)
    raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
