"""Tiny configs shared by the tests (hidden 32, vocab 99, as HF's own model tests use)."""

import pytest
import torch

from yoco.models import build

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
    small_blocks = dict(sliding_window=8, gret_chunk_size=16, retention_chunk_size=16)
    return build(kind, where_applicable=small_blocks, **{**TINY, **overrides}).eval()


def sharpen_attention(model: torch.nn.Module, factor: float = 20.0) -> torch.nn.Module:
    """Scale every query and key projection (``*q_proj.weight``, ``*k_proj.weight``: attention,
    cross-attention's shared K, retention) by ``factor``, in place. At the 0.02 init attention is
    nearly uniform (measured in a tiny Transformer over rows of 20-29 keys: the largest weight
    averages 0.042, uniform is 0.034-0.05), so a misplaced or missing key barely moves the logits;
    at factor 20 the largest weight averages 0.67, and an attention bug shows."""
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(factor)
    return model


def train_briefly(
    model: torch.nn.Module, ids: torch.Tensor, steps: int = 40, lr: float = 3e-3
) -> list[float]:
    """AdamW on one fixed batch (its own labels); the loss before each step. Leaves the gradients
    of the last step in place."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.fixture(params=MODEL_KINDS)
def model_kind(request) -> str:
    return request.param
