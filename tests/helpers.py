"""What many tests share: tiny model shapes and builders, the slow references they compare
against, and a tiny training setup. Fixtures live in conftest.py; everything else is here."""

import json
import os
import re
import shutil
from pathlib import Path

import torch

from yoco.models import build
from yoco.train.config import load_config

# Tiny configs (hidden 32, vocab 99, as HF's own model tests use).
TINY = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

# yoco-gret+noconv: the paper's YOCO-gRet, which YocoConfig's own defaults build.
MODEL_KINDS = ("transformer", "yoco-swa", "yoco-gret", "yoco-gret+noconv", "yoco-retention", "retnet")


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


def prompt_of(length: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 99, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def greedy_by_full_forward(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Reference: run the whole sequence through the plain forward for every new token."""
    ids = list(prompt)
    for _ in range(new_tokens):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@torch.no_grad()
def cached_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``ids`` (B, 30) computed through a cache: a 13-token prefill, a 7-token
    chunk, then one-token steps; the full forward's logits are the reference."""
    cache = model.new_cache(ids.shape[0], 0)
    pieces = [model(ids[:, :13], cache=cache).logits, model(ids[:, 13:20], cache=cache).logits]
    pieces += [model(ids[:, i : i + 1], cache=cache).logits for i in range(20, ids.shape[1])]
    return torch.cat(pieces, 1)


# A tiny training setup, on the files the `corpus` fixture writes.
TINY_MODEL = dict(
    name="yoco-gret",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
)


def tiny_config(corpus, **sections):
    texts, lines = corpus
    overrides = [
        f'data.sources=[{{path="{texts}", weight=1.0}}, {{path="{lines}", weight=1.0}}]',
        "data.seq_len=32",
        "data.val_fraction=0.1",
        "train.batch_size=4",
        "train.max_steps=12",
        "train.dtype='float32'",
        "schedule.warmup_steps=3",
        "checkpoint.every=5",
        "checkpoint.keep_last=5",
        "eval.every=4",
        "eval.batches=2",
        "logging.tensorboard=false",
    ]
    overrides += [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    overrides += [f"{k}={v}" for k, v in sections.items()]
    return load_config(None, overrides)


def int8_kernel_expected() -> bool:
    """Whether this machine can build the int8 attention kernel (yoco.ops.int8_attention): a C
    compiler and a CPU with AVX-512 F, BW, VL and VNNI. Where it can, the tests require the kernel
    to be built and used; elsewhere they require the PyTorch path to answer instead."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    needed = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    return needed <= flags and shutil.which(os.environ.get("CC", "cc")) is not None


def to_toml(tree: dict) -> str:
    """A recipe file's text for ``tree`` (sections of key = value)."""

    def key(k):
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def value(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    return "\n".join(
        # (TOML has no null: a None value is left out, which means its default.)
        f"[{section}]\n" + "\n".join(f"{key(k)} = {value(v)}" for k, v in body.items() if v is not None)
        for section, body in tree.items()
    )


def losses_of(run_dir) -> dict[int, float]:
    """Step -> training loss, from a run folder's metrics log."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}
