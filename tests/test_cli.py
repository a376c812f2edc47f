"""The `yoco` command: generate streams text, bad input exits with a message, demo runs."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

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


def saved_run(tmp_path):
    """A run folder as `yoco train` leaves it: the model in checkpoints/step-*."""
    folder = tmp_path / "run" / "checkpoints" / "step-0000003"
    tiny_model("yoco-swa", vocab_size=258).save_pretrained(folder)
    return tmp_path / "run", folder


def one_line_exit(argv: list[str], capsys) -> str:
    """Run the command expecting a user error; return its message after checking it is one
    line, says which command failed, exits non-zero and prints no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code
    assert isinstance(message, str), "a message exits with status 1; an int code would print nothing"
    assert "\n" not in message.strip() and message.startswith(f"yoco {argv[0]}: ")
    assert "Traceback" not in capsys.readouterr().err
    return message


def test_generate_takes_a_run_folder(tmp_path, capsys):
    run, _ = saved_run(tmp_path)
    main(["generate", "--model", str(run), "--prompt", "ab", "--max-new-tokens", "3"])
    assert capsys.readouterr().out.startswith("ab")


def test_bad_model_folders_are_named_in_one_line(tmp_path, capsys, monkeypatch):
    run, folder = saved_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    generate = ["generate", "--prompt", "ab", "--max-new-tokens", "3", "--model"]
    # A missing relative path is a missing folder, not a Hub id to connect to.
    assert "no-such-run does not exist" in one_line_exit([*generate, "no-such-run"], capsys)

    config_file, weights = folder / "config.json", folder / "model.safetensors"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "hidden_size": "big"}))
    message = one_line_exit([*generate, str(run)], capsys)
    assert str(config_file) in message and "hidden_size" in message
    config_file.write_text(json.dumps({**config, "model_type": "llama"}))
    assert "'llama' model" in one_line_exit([*generate, str(run)], capsys)
    config_file.write_text(json.dumps(config))

    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if "lm_head" not in k}, weights)
    assert "does not hold the weights" in one_line_exit([*generate, str(run)], capsys)
    save_file(tensors, weights)

    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert f"{weights} is not a readable safetensors file" in one_line_exit([*generate, str(run)], capsys)


@pytest.mark.parametrize(
    "argv, problem",
    [
        (
            ["generate", "--model", "missing", "--prompt", "x", "--temperature", "-1"],
            "temperature must be >= 0",
        ),
        (["generate", "--model", "missing", "--prompt", "x", "--top-p", "2"], "top_p must be in"),
        (["generate", "--model", "missing", "--prompt", "", "--max-new-tokens", "3"], "prompt is empty"),
        (["eval", "ppl", "--model", "missing", "--data", "stdlib", "--seq-len", "0"], "seq_len must be >= 2"),
        (["eval", "needle", "--model", "missing", "--needles", "0"], "needles must be between 1"),
        (["train", "quickstart", "--max-steps", "0"], "--max-steps must be >= 1"),
    ],
)
def test_bad_values_are_refused_in_one_line_before_loading(argv, problem, capsys):
    """'missing' is no model: each value is checked before anything is loaded."""
    assert problem in one_line_exit(argv, capsys)


def test_debug_shows_the_traceback(monkeypatch):
    with pytest.raises(ValueError, match="temperature"):
        main(["generate", "--debug", "--config", "tiny", "--prompt", "x", "--temperature", "-1"])
    monkeypatch.setenv("YOCO_DEBUG", "1")
    with pytest.raises(ValueError, match="temperature"):
        main(["generate", "--config", "tiny", "--prompt", "x", "--temperature", "-1"])


def test_the_installed_command_exits_non_zero_with_one_line(tmp_path):
    """End to end, as a shell user sees it: status 1 and a single line on stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from yoco.cli import main; main()",
            "eval",
            "ppl",
            "--model",
            str(tmp_path / "x"),
            "--data",
            "stdlib",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "YOCO_DEBUG"},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"yoco eval: {tmp_path / 'x'} does not exist"]
