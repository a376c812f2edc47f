"""Needle prompts: the needle sits at the requested depth, the answer is never in the filler,
and the same seed builds the same prompt."""

import random

import pytest

from yoco.eval.needle import build_prompt, needle_sentence, stdlib_prose
from yoco.tokenizer import decode_bytes, encode_bytes

FILLER = encode_bytes(stdlib_prose(60_000))


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_needle_sits_at_the_requested_depth(depth):
    prompt = build_prompt(encode_bytes, FILLER, 2000, depth, random.Random(0))
    assert abs(prompt.needle_start / prompt.haystack_tokens - depth) < 0.01
    text = decode_bytes(prompt.ids)
    assert needle_sentence(prompt.city, prompt.answer).strip() in text
    assert text.rstrip().endswith(f"The special magic {prompt.city} number is:")
    assert abs(len(prompt.ids) - 2000) <= 1


def test_answer_never_in_the_filler_and_prompts_are_seeded():
    for seed in range(20):
        prompt = build_prompt(encode_bytes, FILLER, 1500, 0.5, random.Random(seed), n_needles=3)
        text = decode_bytes(prompt.ids)
        assert text.count(prompt.answer) == 1  # only in its needle
        assert text.count("The special magic") == 3 + 1  # three needles + the question
    again = [build_prompt(encode_bytes, FILLER, 1500, 0.5, random.Random(7)).ids for _ in range(2)]
    assert again[0] == again[1]


def test_filler_is_prose_not_code():
    prose = stdlib_prose(5000)
    assert "def " not in prose[:2000] and len(prose) == 5000


def test_too_short_a_context_is_refused():
    with pytest.raises(ValueError, match="too short"):
        build_prompt(encode_bytes, FILLER, 40, 0.5, random.Random(0))
