"""Copy documents repeat their span where they say, and `yoco eval copy` scores exactly the
repeated bytes a lookup can predict."""

import json
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import tiny_model
from yoco.data.synthetic import PRINTABLE, copy_document, copy_training_text
from yoco.eval.command import main as eval_main
from yoco.eval.copy import copy_accuracy
from yoco.tokenizer import byte_tokenizer


@pytest.mark.parametrize("length", [16, 128, 1024])
def test_a_copy_document_repeats_its_span_inside_its_length(length):
    for index in range(50):
        doc = copy_document(index, length)
        assert len(doc.text) == length and set(doc.text) <= set(PRINTABLE)
        assert doc.span == length // 8 and doc.span <= doc.distance <= length - doc.span
        repeat = doc.start + doc.distance
        assert doc.text[repeat : repeat + doc.span] == doc.text[doc.start : doc.start + doc.span]
        assert repeat + doc.span <= len(doc.text)
        assert copy_training_text(index, length) == doc.text


class _Oracle(torch.nn.Module):
    """Predicts position t + 1 of the true document (it cheats), or repeats its input."""

    def __init__(self, cheat: bool):
        super().__init__()
        self.cheat, self.device = cheat, torch.device("cpu")

    def forward(self, ids):
        predicted = torch.cat([ids[:, 1:], ids[:, :1]], dim=1) if self.cheat else ids
        return SimpleNamespace(logits=torch.nn.functional.one_hot(predicted, 258).float())


def test_copy_accuracy_scores_the_repeat_after_its_first_bytes():
    tokenizer = byte_tokenizer()
    assert copy_accuracy(_Oracle(cheat=True), tokenizer, 64, 20, batch_size=8)["accuracy"] == 1.0
    # Repeating the current byte is right only where a byte repeats itself: about chance.
    assert copy_accuracy(_Oracle(cheat=False), tokenizer, 64, 40)["accuracy"] < 0.05
    # Among digits a byte repeats itself 1 time in 10.
    digits = copy_accuracy(_Oracle(cheat=False), tokenizer, 128, 64, symbols=10)
    assert 0.05 < digits["accuracy"] < 0.15 and digits["chance"] == 0.1 and digits["symbols"] == 10
    assert copy_accuracy(_Oracle(cheat=True), tokenizer, 128, 8, symbols=10)["accuracy"] == 1.0


def test_eval_copy_on_a_saved_model_and_a_tokenizer_that_is_not_byte_level(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_model("yoco-swa", vocab_size=258).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    eval_main(["copy", "--model", str(model_dir), "--length", "32", "--documents", "4"])
    result = json.loads(capsys.readouterr().out)
    assert result["documents"] == 4 and 0 <= result["accuracy"] <= 1 and result["chance"] == 1 / 95
    with pytest.raises(ValueError, match="symbols must be 2 .. 95, got 1"):
        eval_main(["copy", "--model", str(model_dir), "--length", "32", "--symbols", "1"])

    def two_characters_a_token(text, add_special_tokens):
        return {"input_ids": [1] * (len(text) // 2)}

    with pytest.raises(ValueError, match="byte-level tokenizer"):
        copy_accuracy(tiny_model("yoco-swa", vocab_size=300), two_characters_a_token, 32, 2)
