"""Needle prompts: the needle sits at the requested depth, the answer is never in the filler,
and the same seed builds the same prompt. The teacher-forced answer probe scores the right
positions, and `yoco eval needle` writes its results."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import tiny_model
from yoco.data.stdlib import stdlib_prose
from yoco.data.synthetic import build_prompt, needle_sentence
from yoco.eval.command import main as eval_main
from yoco.eval.needle import answer_token_hits
from yoco.tokenizer import byte_tokenizer, decode_bytes, encode_bytes

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


class _Predicts(torch.nn.Module):
    """A stand-in model whose top logit at position t is ``pick(ids)[t]``."""

    def __init__(self, pick):
        super().__init__()
        self.pick, self.device = pick, torch.device("cpu")

    def forward(self, ids, logits_to_keep=0):
        logits = torch.nn.functional.one_hot(self.pick(ids), 258).float()
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


def test_answer_token_hits_score_each_answer_token_given_the_ones_before():
    prompt, answer = encode_bytes("is:"), encode_bytes(" 4455")
    next_token = _Predicts(lambda ids: torch.cat([ids[:, 1:], ids[:, :1]], dim=1))  # an oracle
    assert answer_token_hits(next_token, prompt, answer) == [True] * 5
    same_token = _Predicts(lambda ids: ids)  # repeats its input: right only where a digit repeats
    assert answer_token_hits(same_token, prompt, answer) == [False, False, True, False, True]


def test_eval_needle_writes_accuracy_per_depth_and_per_answer_token(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "eval"
    tiny_model("yoco-swa", vocab_size=258).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    logn = "cross_decoder_logn_base=128"
    eval_main(
        [
            "needle",
            "--model",
            str(model_dir),
            "--lengths",
            "160",
            "--trials",
            "1",
            "--out",
            str(out),
            "--set",
            logn,
        ]
    )
    result = json.loads((out / "needle.json").read_text())
    assert result["config_overrides"] == [logn]
    assert result["cross_decoder_logn_base"] == 128  # what the evaluated model had
    assert sorted(result["accuracy"]) == sorted(f"160:{d}" for d in result["depths"])
    per_token = result["answer_token_accuracy"]["160"]
    # " " and 7 digits, each a share of the 11 depths x 1 trial
    assert len(per_token) == 8 and all(abs(a * 11 - round(a * 11)) < 1e-9 for a in per_token)
    assert (out / "needle.png").stat().st_size > 0
