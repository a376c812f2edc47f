"""Tiny configs shared by the tests (hidden 32, vocab 99, as HF's own model tests use)."""

import pytest
import torch

from yoco.models import build_causal_lm

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

MODEL_KINDS = ("transformer", "yoco-swa", "yoco-gret", "yoco-retention", "retnet")


def tiny_model(kind: str, **overrides) -> torch.nn.Module:
    """A randomly initialised tiny model of the given kind, in eval mode."""
    torch.manual_seed(0)
    fields = {**TINY, **overrides}
    options = {
        "sliding_window": fields.pop("sliding_window", 8),
        "gret_chunk_size": fields.pop("gret_chunk_size", 16),
    }
    for name in ("dilated_segments", "dilated_ratios"):  # given only by the dilated tests
        if name in fields:
            options[name] = fields.pop(name)
    if kind == "retnet":
        fields.setdefault("retention_chunk_size", 16)
    return build_causal_lm(kind, options, **fields).eval()


@pytest.fixture(params=MODEL_KINDS)
def model_kind(request) -> str:
    return request.param
