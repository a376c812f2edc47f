"""Tiny configs shared by the tests (hidden 32, vocab 99, as HF's own model tests use)."""

import pytest
import torch

from yoco import TransformerConfig, TransformerForCausalLM, YocoConfig, YocoForCausalLM

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

MODEL_KINDS = ("transformer", "yoco-swa", "yoco-gret")


def tiny_model(kind: str, **overrides) -> torch.nn.Module:
    """A randomly initialised tiny model of the given kind, in eval mode."""
    torch.manual_seed(0)
    fields = {**TINY, **overrides}
    if kind == "transformer":
        return TransformerForCausalLM(TransformerConfig(**fields)).eval()
    self_decoder = kind.removeprefix("yoco-")
    fields.setdefault("sliding_window", 8)
    fields.setdefault("gret_chunk_size", 16)
    return YocoForCausalLM(YocoConfig(self_decoder=self_decoder, **fields)).eval()


@pytest.fixture(params=MODEL_KINDS)
def model_kind(request) -> str:
    return request.param
