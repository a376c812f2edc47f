"""Fixtures shared by the tests; shared helpers are in tests/helpers.py."""

import json

import pytest

from tests.helpers import MODEL_KINDS


@pytest.fixture(params=MODEL_KINDS)
def model_kind(request) -> str:
    return request.param


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
