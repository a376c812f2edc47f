"""The `yoco` command: generate streams text, bad input exits with a message, demo runs."""

import pytest

from tests.conftest import tiny_model
from yoco.cli import main


def test_generate_streams_from_a_random_preset(capsys):
    main(["generate", "--config", "tiny", "--prompt", "def f():", "--max-new-tokens", "12", "--seed", "0"])
    out = capsys.readouterr()
    assert out.out.startswith("def f():")
    assert "12 tokens" in out.err or "tokens in" in out.err


def test_generate_from_a_saved_model(tmp_path, capsys):
    model = tiny_model("yoco-swa", vocab_size=258)
    model.save_pretrained(tmp_path)
    main(["generate", "--model", str(tmp_path), "--prompt", "ab", "--max-new-tokens", "5"])
    assert capsys.readouterr().out.startswith("ab")


def test_generate_rejects_bad_input_with_a_message():
    with pytest.raises(SystemExit, match="max_new_tokens"):
        main(["generate", "--config", "tiny", "--prompt", "x", "--max-new-tokens", "0"])
    with pytest.raises(SystemExit, match="prompt is empty"):
        main(["generate", "--config", "tiny", "--prompt", "", "--max-new-tokens", "3"])


def test_unknown_command_exits():
    with pytest.raises(SystemExit, match="unknown command"):
        main(["frobnicate"])


def test_demo_prints_the_comparison(capsys):
    main(["demo", "--tokens", "300", "--window", "64"])
    out = capsys.readouterr().out
    for name in ("YOCO-gRet", "YOCO-SWA", "Transformer"):
        assert name in out
