"""A tiny training setup on small files the tests write themselves."""

import json

import pytest

from yoco.train.config import load_config

TINY_MODEL = dict(
    name="yoco-gret",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
)


@pytest.fixture
def corpus(tmp_path):
    """A folder of .txt files and a .jsonl file with distinct content."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(30):
        (texts / f"doc{i:02d}.txt").write_text(f"def function_{i}(x):\n    return x * {i} + {i * 7}\n" * 3)
    lines = tmp_path / "records.jsonl"
    lines.write_text(
        "\n".join(json.dumps({"text": f"record {i}: " + "abc " * (i % 5 + 1)}) for i in range(40))
    )
    return texts, lines


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
