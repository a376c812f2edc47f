"""The `yoco` command: generate streams text, bad input exits with a message, demo runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import yoco
from tests.helpers import tiny_model
from yoco.cli import main
from yoco.inference.command import StdoutStreamer
from yoco.models.pretrained import load_pretrained, parse_config_overrides
from yoco.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer, train_bpe


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


def test_streaming_never_splits_a_character(capsys):
    """Fed one UTF-8 byte per token, the streamer writes no half character (U+FFFD) and its
    pieces join to the text."""
    text = "café →\nünïcode ✓ done"
    streamer, pieces = StdoutStreamer(byte_tokenizer()), []
    for token in byte_tokenizer()(text, add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([token]))
        pieces.append(capsys.readouterr().out)
    streamer.end()
    pieces.append(capsys.readouterr().out)
    assert "\ufffd" not in "".join(pieces) and "".join(pieces) == text
    assert sum(1 for piece in pieces if piece) > 2  # it streams, not one write at the end


BPE_TEXT = "café ünïcode → déjà vu, naïve façade → ünïcode café\n"


@pytest.fixture
def bpe_run(tmp_path):
    """A run folder of `yoco train` with a BPE tokenizer: 3 steps of a tiny YOCO-gRet."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"doc{i}.txt").write_text(BPE_TEXT * (i + 2))
    train_bpe([BPE_TEXT] * 20, vocab_size=300).save_pretrained(tmp_path / "bpe")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f"""
[model]
name = "yoco-gret"
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 4
max_position_embeddings = 256
[data]
sources = [{{ path = "{corpus}", weight = 1.0 }}]
seq_len = 32
val_fraction = 0.0
[tokenizer]
path = "{tmp_path / "bpe"}"
[train]
max_steps = 3
batch_size = 2
dtype = "float32"
[schedule]
warmup_steps = 1
[checkpoint]
every = 3
[eval]
every = 100
[logging]
tensorboard = false
"""
    )
    main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"])
    return tmp_path / "run"


def test_generate_uses_the_tokenizer_saved_with_the_run(bpe_run, capsys, monkeypatch):
    model, tokenizer = load_pretrained(bpe_run)
    assert tokenizer is not None and model.config.vocab_size == len(tokenizer) > BYTE_VOCAB_SIZE
    prompt = "café ünïcode →"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(prompt.encode()), "the prompt should take multi-byte BPE tokens"
    expected = yoco.generate(model, [ids], 24, stop_token_ids=[tokenizer.eos_token_id])[0]

    from yoco.inference import command

    fed, prefill, decode = [], yoco.prefill, command.decode

    def spy_prefill(model, prompt, *args, **kwargs):
        fed.append(prompt)
        return prefill(model, prompt, *args, **kwargs)

    def spy_decode(*args, **kwargs):
        fed.append(kwargs["stop_token_ids"])
        return decode(*args, **kwargs)

    monkeypatch.setattr(yoco, "prefill", spy_prefill)
    monkeypatch.setattr(command, "decode", spy_decode)
    capsys.readouterr()
    main(["generate", "--model", str(bpe_run), "--prompt", prompt, "--max-new-tokens", "24"])
    out = capsys.readouterr().out
    assert fed == [ids, [tokenizer.eos_token_id]]
    # The prompt comes back exactly, followed by the streamed continuation, which is the
    # one-shot decode of the tokens greedy generation gives for the same prompt.
    assert out.startswith(prompt)
    assert out[len(prompt) :] == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_a_kept_context_continues_as_if_the_whole_text_were_the_prompt(kv_cache_dtype, tmp_path, capsys):
    model_dir, cache = tmp_path / "model", tmp_path / "doc.cache"
    tiny_model("yoco-gret", vocab_size=258).save_pretrained(model_dir)
    document, question = tmp_path / "doc.txt", " and then?"
    document.write_text("The special magic Osaka number is: 4455. " * 3)
    common = [
        "generate",
        "--model",
        str(model_dir),
        "--max-new-tokens",
        "8",
        "--kv-cache-dtype",
        kv_cache_dtype,
    ]
    main([*common, "--prompt-file", str(document), "--save-cache", str(cache), "--prefill-chunk-size", "16"])
    err, n = capsys.readouterr().err, len(document.read_bytes())  # byte tokens
    assert "cache saved" in err and f"prefill: {n} tokens after 0 kept" in err and cache.is_file()
    main([*common, "--load-cache", str(cache), "--prompt", question])
    continued = capsys.readouterr()
    assert f"prefill: {len(question)} tokens after {n} kept" in continued.err
    main([*common, "--prompt", document.read_text() + question])
    whole = capsys.readouterr().out
    assert continued.out.startswith(question) and continued.out == whole[len(document.read_text()) :]
    if kv_cache_dtype == "auto":  # a kept context continues in its own format
        message = one_line_exit(
            [*common, "--load-cache", str(cache), "--prompt", "x", "--kv-cache-dtype", "int8"], capsys
        )
        assert (
            "--kv-cache-dtype int8" in message and "keeps its keys and values in the model's dtype" in message
        )


def test_a_saved_model_without_tokenizer_needs_the_byte_vocabulary(tmp_path, capsys):
    tiny_model("yoco-swa", vocab_size=300).save_pretrained(tmp_path)
    message = one_line_exit(["generate", "--model", str(tmp_path), "--prompt", "ab"], capsys)
    assert f"{tmp_path} has no tokenizer saved" in message and "300" in message


def test_generate_rejects_bad_input_with_a_message():
    with pytest.raises(SystemExit, match="max_new_tokens"):
        main(["generate", "--config", "tiny", "--prompt", "x", "--max-new-tokens", "0"])
    with pytest.raises(SystemExit, match="prompt is empty"):
        main(["generate", "--config", "tiny", "--prompt", "", "--max-new-tokens", "3"])


def test_unknown_command_exits():
    with pytest.raises(SystemExit, match="unknown command"):
        main(["frobnicate"])


def test_demo_prints_the_comparison(capsys):
    main(["compare", "--tokens", "300", "--window", "64"])
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


def test_set_changes_a_config_field_for_that_command_only(tmp_path, capsys):
    """`yoco eval / generate ... --set FIELD=VALUE` loads the saved weights under a changed
    inference option; an unknown field, a bad value or a malformed item is refused in one line."""
    run, folder = saved_run(tmp_path)
    model, _ = load_pretrained(run, config_overrides={"cross_decoder_logn_base": 4})
    expected = tiny_model("yoco-swa", vocab_size=258, cross_decoder_logn_base=4)
    ids = torch.arange(40)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected(ids).logits, atol=0, rtol=0)
    assert json.loads((folder / "config.json").read_text()).get("cross_decoder_logn_base") is None

    copy = ["eval", "copy", "--model", str(run), "--documents", "1", "--set"]
    assert "no config field 'logn'" in one_line_exit([*copy, "logn=4"], capsys)
    assert "or a length >= 2, got 1" in one_line_exit([*copy, "cross_decoder_logn_base=1"], capsys)
    assert "--set takes FIELD=VALUE, got 'cross_decoder_logn_base'" in one_line_exit(
        [*copy, "cross_decoder_logn_base"], capsys
    )
    assert "with hidden_size=64" in one_line_exit([*copy, "hidden_size=64"], capsys)
    # Same shapes, one layer fewer: the saved weights of the fourth layer would be left unused.
    assert "with num_hidden_layers=3" in one_line_exit([*copy, "num_hidden_layers=3"], capsys)
    off = parse_config_overrides(["cross_decoder_logn_base=none"])
    assert off == {"cross_decoder_logn_base": None}
    assert load_pretrained(run, config_overrides=off)[0].config.cross_decoder_logn_base is None
    generate = ["generate", "--model", str(run), "--prompt", "ab", "--max-new-tokens", "2", "--set"]
    assert "no config field 'logn'" in one_line_exit([*generate, "logn=4"], capsys)


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
