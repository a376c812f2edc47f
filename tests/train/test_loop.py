"""Training: loss falls, exact resume, atomic checkpoints, clear errors, torchrun parity."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import losses_of, tiny_config, to_toml
from yoco.train import checkpoint as ckpt
from yoco.train import loop as loop_module
from yoco.train.config import ConfigError, load_config
from yoco.train.loop import TrainingDiverged, lr_at, train


def test_loss_falls_and_the_checkpoint_loads_with_auto_classes(corpus, tmp_path):
    summary = train(tiny_config(corpus, **{"train.max_steps": 30}), tmp_path / "run", show_progress=False)
    losses = summary["losses"]
    assert sum(list(losses.values())[-5:]) / 5 < 0.7 * sum(list(losses.values())[:5]) / 5
    final = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert final.name == "step-0000030" and (tmp_path / "run" / "loss.png").exists()
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = torch.tensor([tokenizer("def f(x):")["input_ids"]])
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    assert summary["val_loss"] is not None


def test_saving_a_checkpoint_draws_no_bar_of_its_own(corpus, tmp_path, capfd):
    train(
        tiny_config(corpus, **{"train.max_steps": 2, "checkpoint.every": 1}),
        tmp_path / "run",
        show_progress=False,
    )
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-0000002"
    assert "Writing model shards" not in capfd.readouterr().err  # it would break the trainer's bar


def test_stop_and_resume_reproduces_the_uninterrupted_losses(corpus, tmp_path):
    config = tiny_config(corpus)
    straight = train(config, tmp_path / "straight", show_progress=False)["losses"]
    train(config, tmp_path / "split", stop_at=6, show_progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "split" / "checkpoints").name == "step-0000006"
    resumed = train(config, tmp_path / "split", resume=True, show_progress=False)["losses"]
    assert sorted(resumed) == list(range(7, 13))
    assert {s: straight[s] for s in resumed} == resumed  # identical, not merely close
    assert losses_of(tmp_path / "split") == straight


def test_a_crash_mid_write_leaves_the_last_checkpoint_intact(corpus, tmp_path, monkeypatch):
    config = tiny_config(corpus)
    run = tmp_path / "run"
    train(config, run, stop_at=5, show_progress=False)
    good = ckpt.latest_checkpoint(run / "checkpoints")
    real_save = ckpt.save_file

    def crash_on_optimizer(tensors, path, *args, **kwargs):
        if path.endswith("optimizer.safetensors"):
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise KeyboardInterrupt("killed mid-write")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, resume=True, stop_at=10, show_progress=False)
    assert ckpt.latest_checkpoint(run / "checkpoints") == good
    assert any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert ckpt.load_checkpoint(good)["trainer"]["step"] == 5
    assert sorted(train(config, run, resume=True, show_progress=False)["losses"]) == list(range(6, 13))


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    config = tiny_config(corpus, **{"optimizer.lr": 1e8, "optimizer.grad_clip": 1e30, "checkpoint.every": 1})
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as caught:
        train(config, tmp_path / "run", show_progress=False)
    bad_step = int(caught.value.args[0].split("at step ")[1].split(";")[0])
    latest = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert latest.name == f"step-{bad_step - 1:07d}"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.lrr": 1}, "unknown key optimizer.lrr"),
        ({"train.batch_size": '"big"'}, "train.batch_size must be int"),
        ({"model.hidden": 3}, "model: hidden is not an option of yoco-gret models"),
        ({"model.architecture": '"yoco"'}, "model.architecture is not a recipe key: name the model"),
        ({"model.name": '"rnn"'}, "unknown model kind 'rnn'"),
        ({"model.retention_chunk_size": 8}, "retention_chunk_size is not an option of yoco-gret models"),
        ({"train.batch_size": 3, "train.grad_accum": 2}, "multiple of"),
        ({"data.sources": '[{path="/nonexistent/data"}]'}, "does not exist"),
        ({"train.max_steps": 0}, "train.max_steps must be >= 1, got 0"),
        ({"checkpoint.every": 0}, "checkpoint.every must be >= 1, got 0"),
        ({"logging.every": 0}, "logging.every must be >= 1"),
        ({"data.seq_len": 0}, "data.seq_len must be >= 1"),
        ({"train.stop_at_val_loss": 0}, "train.stop_at_val_loss must be > 0"),
        ({"train.stop_at_val_loss": 3.0, "eval.batches": 0}, "stop_at_val_loss needs a validation loss"),
        ({"train.stop_at_val_loss": 3.0, "data.val_fraction": 0.0}, "stop_at_val_loss needs a validation"),
    ],
)
def test_bad_configs_fail_at_start_naming_the_problem(corpus, tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        train(tiny_config(corpus, **overrides), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(corpus, tmp_path):
    train(tiny_config(corpus), tmp_path / "run", stop_at=5, show_progress=False)
    with pytest.raises(ConfigError, match="already holds a run.*step-0000005.*--resume"):
        train(tiny_config(corpus), tmp_path / "run", show_progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-0000005"]


def test_resume_logs_each_step_once(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(corpus), run, stop_at=7, show_progress=False)
    shutil.rmtree(run / "checkpoints" / "step-0000007")  # as if killed after logging steps 6-7
    train(tiny_config(corpus), run, resume=True, show_progress=False)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == steps == list(range(1, 13))


def test_resuming_into_a_different_shape_fails(corpus, tmp_path):
    train(tiny_config(corpus), tmp_path / "run", stop_at=5, show_progress=False)
    other = tiny_config(corpus, **{"model.hidden_size": 64})
    with pytest.raises(ConfigError, match="recipe differs .*model.hidden_size: 32 -> 64"):
        train(other, tmp_path / "run", resume=True, show_progress=False)
    # Without a stored recipe to compare, the weights' shape check still refuses it.
    (tmp_path / "run" / "checkpoints" / "step-0000005" / "run_config.json").unlink()
    (tmp_path / "run" / "run_config.json").unlink()
    with pytest.raises(ConfigError, match="different model shape.*hidden_size"):
        train(other, tmp_path / "run", resume=True, show_progress=False)


def test_init_from_starts_a_fresh_run_from_saved_weights(corpus, tmp_path):
    train(tiny_config(corpus), tmp_path / "base", stop_at=5, show_progress=False)
    base = ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "base" / "checkpoints"))[0]
    # lr 0: the one step leaves the weights as loaded, so they must equal the base run's exactly.
    tuned = tiny_config(corpus, **{"train.init_from": f'"{tmp_path / "base"}"', "optimizer.lr": 0})
    summary = train(tuned, tmp_path / "tuned", stop_at=1, show_progress=False)
    assert list(summary["losses"]) == [1]  # a new run: step, optimizer and data start afresh
    loaded = ckpt.load_weights(Path(summary["final_checkpoint"]))[0]
    assert loaded.keys() == base.keys()
    assert all(torch.equal(loaded[k], base[k]) for k in base)
    fresh = train(
        tiny_config(corpus, **{"optimizer.lr": 0}), tmp_path / "fresh", stop_at=1, show_progress=False
    )
    assert fresh["losses"][1] != summary["losses"][1]  # (a random init would not match)


def test_a_run_folder_stands_for_its_latest_checkpoint(corpus, tmp_path):
    from yoco.eval.command import _load

    train(tiny_config(corpus), tmp_path / "run", show_progress=False)
    assert ckpt.find_weights(tmp_path / "run").name == "step-0000012"  # (not step 5 or 10)
    saved = ckpt.load_weights(tmp_path / "run" / "checkpoints" / "step-0000012")[0]
    model, _ = _load(str(tmp_path / "run"), "float32")  # what `yoco eval ... --model RUN` loads
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)


@pytest.mark.parametrize(
    ("init_from", "message"),
    [
        ("missing", "init_from: .*missing does not exist"),
        ("empty", "init_from: .*empty holds neither model.safetensors"),
        ("base", "different model shape"),
    ],
)
def test_init_from_a_bad_source_fails_naming_it(corpus, tmp_path, init_from, message):
    (tmp_path / "empty").mkdir()
    if init_from == "base":
        train(
            tiny_config(corpus, **{"model.hidden_size": 64}),
            tmp_path / "base",
            stop_at=1,
            show_progress=False,
        )
    config = tiny_config(corpus, **{"train.init_from": f'"{tmp_path / init_from}"'})
    with pytest.raises((ConfigError, FileNotFoundError), match=message):
        train(config, tmp_path / "run", show_progress=False)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[optimizer]\nlr = 'fast'\n")
    done = subprocess.run(
        [sys.executable, "-m", "yoco", "train", str(recipe), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "optimizer.lr must be float" in done.stderr


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_torchrun_matches_one_process(corpus, tmp_path, strategy):
    texts, lines = corpus
    recipe = tmp_path / "tiny.toml"
    config = tiny_config(corpus, **{"train.max_steps": 6, "train.distributed": f'"{strategy}"'})
    recipe.write_text(to_toml(config.to_dict()))
    single = train(config, tmp_path / "one", show_progress=False)["losses"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "yoco",
            "train",
            str(recipe),
            "--out",
            str(tmp_path / "two"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = losses_of(tmp_path / "two")
    assert sorted(two) == sorted(single)
    for step, loss in single.items():
        assert two[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step


def test_a_retnet_trains_and_its_checkpoint_loads(corpus, tmp_path):
    config = tiny_config(corpus, **{"train.max_steps": 4})
    config.model["name"] = "retnet"
    train(config, tmp_path / "run", show_progress=False)
    model = AutoModelForCausalLM.from_pretrained(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert type(model).__name__ == "RetNetForCausalLM"


def files_of(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_with_a_changed_recipe_is_refused_and_leaves_the_run_untouched(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(corpus, **{"logging.tensorboard": "true"}), run, stop_at=5, show_progress=False)
    stored = json.loads((run / "checkpoints" / "step-0000005" / "run_config.json").read_text())
    assert stored == json.loads((run / "run_config.json").read_text())
    assert stored["train"]["batch_size"] == 4
    before = files_of(run)
    changed = tiny_config(
        corpus,
        **{
            "logging.tensorboard": "true",
            "train.batch_size": 8,
            "data.seq_len": 64,
            "optimizer.lr": 1e-3,
            "model.sliding_window": 16,  # (not set by the first run)
            "train.max_steps": 20,  # (allowed alone)
        },
    )
    with pytest.raises(
        ConfigError, match="recipe differs from the one step-0000005 was trained with"
    ) as caught:
        train(changed, run, resume=True, show_progress=False)
    message = str(caught.value)
    for difference in (
        "train.batch_size: 4 -> 8",
        "data.seq_len: 32 -> 64",
        "optimizer.lr: 0.003 -> 0.001",
        "model.sliding_window: (not set) -> 16",
    ):
        assert difference in message, message
    assert "max_steps" not in message.split("Only")[0]  # (the stop may move)
    assert files_of(run) == before  # run_config.json, metrics, TensorBoard, checkpoints: byte for byte


def test_resume_may_move_the_stop_and_the_cadences(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(corpus), run, show_progress=False)  # the whole 12 steps
    capsys.readouterr()
    longer = tiny_config(corpus, **{"train.max_steps": 16, "checkpoint.every": 3, "eval.every": 2})
    losses = train(longer, run, resume=True, show_progress=False)["losses"]
    assert sorted(losses) == [13, 14, 15, 16]
    assert (
        "train.max_steps 12 -> 16: the learning-rate schedule now spans 16 steps" in capsys.readouterr().err
    )
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")][-2:] == [
        "step-0000015",
        "step-0000016",
    ]
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    assert json.loads((latest / "run_config.json").read_text())["train"]["max_steps"] == 16
    assert json.loads((run / "run_config.json").read_text())["train"]["max_steps"] == 16
    # The record of what the first 12 steps were trained with travels with the checkpoints.
    assert ckpt.load_checkpoint(latest)["trainer"]["recipe_changes"] == [
        {
            "step": 12,
            "changed": {"train.max_steps": [12, 16], "checkpoint.every": [5, 3], "eval.every": [4, 2]},
        }
    ]
    assert sorted(losses_of(run)) == list(range(1, 17))


def test_resume_checks_a_checkpoint_without_a_stored_recipe_against_run_config_json(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(corpus), run, stop_at=5, show_progress=False)
    (run / "checkpoints" / "step-0000005" / "run_config.json").unlink()  # as written before this check
    with pytest.raises(ConfigError, match=r"run_config.json\): train.batch_size: 4 -> 8"):
        train(tiny_config(corpus, **{"train.batch_size": 8}), run, resume=True, show_progress=False)
    assert sorted(train(tiny_config(corpus), run, resume=True, show_progress=False)["losses"]) == list(
        range(6, 13)
    )


def test_resuming_a_finished_run_says_there_is_nothing_to_train(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(corpus), run, stop_at=5, show_progress=False)
    before = files_of(run)
    with pytest.raises(ConfigError, match="nothing to train, step-0000005 is at step 5 and --max-steps 4"):
        train(tiny_config(corpus), run, resume=True, stop_at=4, show_progress=False)
    assert files_of(run) == before


def test_a_run_stops_at_the_first_evaluation_that_reaches_its_target_loss(corpus, tmp_path, capsys):
    # The tiny run evaluates every 4 steps and checkpoints every 5; its validation loss starts
    # near ln(256) = 5.5 and falls. A target above the first evaluation's loss stops the run
    # there, with a checkpoint of that step; one below it changes nothing else.
    straight = train(tiny_config(corpus), tmp_path / "straight", show_progress=False)
    val_at = {
        r["step"]: r["val_loss"]
        for r in map(json.loads, open(tmp_path / "straight" / "metrics.jsonl"))
        if "val_loss" in r
    }
    assert val_at[4] > val_at[8]  # (so a target between them stops the run at step 8, not 4)
    target = (val_at[4] + val_at[8]) / 2
    run = tmp_path / "gated"
    summary = train(tiny_config(corpus, **{"train.stop_at_val_loss": target}), run, show_progress=False)
    assert (
        summary["reached_val_loss"]
        and summary["last_step"] == 8
        and sorted(summary["losses"]) == list(range(1, 9))
    )
    assert (
        f"validation loss {val_at[8]:.4f} at step 8 is at or below train.stop_at_val_loss"
        in capsys.readouterr().err
    )
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    assert latest.name == "step-0000008" and ckpt.trainer_state(latest)["val_loss"] == val_at[8]
    assert {s: straight["losses"][s] for s in range(1, 9)} == summary["losses"]
    with pytest.raises(ConfigError, match="nothing to train, step-0000008 was saved with validation loss"):
        train(
            tiny_config(corpus, **{"train.stop_at_val_loss": target}), run, resume=True, show_progress=False
        )
    # A lower target (a resumable change) trains on, exactly as the run that never stopped.
    rest = train(
        tiny_config(corpus, **{"train.stop_at_val_loss": 0.01}), run, resume=True, show_progress=False
    )
    assert not rest["reached_val_loss"] and rest["last_step"] == 12
    assert losses_of(run) == straight["losses"]


def test_a_source_trained_on_its_targets_is_evaluated_on_them_alone(corpus, tmp_path):
    # Copy windows of 32 bytes, one per sequence, trained and evaluated on their repeats only:
    # the run's validation loss is the model's cross-entropy on the held-out repeats (after
    # their first byte), recomputed here by hand from the saved weights.
    from yoco.data.sources import list_documents, split_documents
    from yoco.data.synthetic import copy_document

    spec = "copy:32:400:4:8"
    config = tiny_config(
        corpus,
        **{
            "data.sources": f'[{{path="{spec}", loss="targets"}}]',
            "train.max_steps": 4,
            "train.stop_at_val_loss": 0.01,  # (never reached: 4 steps cannot copy)
        },
    )
    summary = train(config, tmp_path / "run", show_progress=False)
    model = AutoModelForCausalLM.from_pretrained(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    _, held_out = split_documents(list_documents(spec), config.data.val_fraction)
    batch_losses = []
    for first in range(0, 2 * 4, 4):  # eval.batches = 2 of train.batch_size = 4, in order
        docs = [copy_document(d.row, 32, span=4, max_distance=8) for d in held_out[first : first + 4]]
        ids = torch.tensor([list(d.text.encode()) for d in docs])
        logits = model(ids).logits.float()
        picked = [
            (row, t)
            for row, d in enumerate(docs)
            for t in range(d.start + d.distance + 1, d.start + d.distance + 4)
        ]
        rows, positions = zip(*picked, strict=True)
        predicted = logits[list(rows), [p - 1 for p in positions]]
        batch_losses.append(
            torch.nn.functional.cross_entropy(predicted, ids[list(rows), list(positions)]).item()
        )
    assert summary["val_loss"] == pytest.approx(sum(batch_losses) / 2, rel=1e-5)
    everything = train(
        tiny_config(corpus, **{"data.sources": f'[{{path="{spec}"}}]', "train.max_steps": 4}),
        tmp_path / "all",
        show_progress=False,
    )
    # The same weights and batches trained on every byte: other losses from the first step on.
    assert everything["losses"][1] != pytest.approx(summary["losses"][1], rel=1e-3)
    assert everything["val_loss"] != pytest.approx(summary["val_loss"], rel=1e-3)


def test_a_checkpoint_from_before_a_recipe_key_existed_resumes_with_it_at_its_default(corpus, tmp_path):
    # A checkpoint written before train.stop_at_val_loss existed stores no such key; it was
    # trained without a gate (the default), and a resume may set one. Nor, from before sources
    # had a loss, a data.sources[i].loss: they were trained on all tokens, the default.
    run = tmp_path / "run"
    train(tiny_config(corpus), run, stop_at=5, show_progress=False)
    stored = run / "checkpoints" / "step-0000005" / "run_config.json"
    recipe = json.loads(stored.read_text())
    del recipe["train"]["stop_at_val_loss"]
    for source in recipe["data"]["sources"]:
        del source["loss"]
    stored.write_text(json.dumps(recipe))
    gated = tiny_config(corpus, **{"train.stop_at_val_loss": 0.01})
    assert sorted(train(gated, run, resume=True, show_progress=False)["losses"]) == list(range(6, 13))
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    assert ckpt.trainer_state(latest)["recipe_changes"] == [
        {"step": 5, "changed": {"train.stop_at_val_loss": [None, 0.01]}}
    ]


def tensorboard_steps(run, tag="loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_and_metrics_show_each_step_once_after_a_resume(corpus, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(corpus, **{"logging.tensorboard": "true"})
    train(config, run, stop_at=7, show_progress=False)
    shutil.rmtree(run / "checkpoints" / "step-0000007")  # as if killed after logging steps 6-7
    assert [s for s, _ in tensorboard_steps(run)] == list(range(1, 8))
    time.sleep(1.1)  # (TensorBoard reads event files in name order; a name holds its creation second)
    resumed = train(config, run, resume=True, show_progress=False)["losses"]
    logged = tensorboard_steps(run)
    assert [s for s, _ in logged] == list(range(1, 13))  # 6 and 7 once, not twice
    assert {s: v for s, v in logged if s > 5} == pytest.approx(resumed)  # the resumed run's values
    # (step 7's validation came after the lost checkpoint: hidden with the rest of 6-7)
    assert [s for s, _ in tensorboard_steps(run, "val_loss")] == [4, 8, 12]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_max_steps_zero_is_refused_up_front(corpus, tmp_path, capsys):
    from yoco.train.command import main

    with pytest.raises(ConfigError, match="--max-steps must be >= 1, got 0"):
        train(tiny_config(corpus), tmp_path / "run", stop_at=0, show_progress=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text(to_toml(tiny_config(corpus).to_dict()))
    with pytest.raises(SystemExit, match="^yoco train: --max-steps must be >= 1, got 0$"):
        main([str(recipe), "--out", str(tmp_path / "run"), "--max-steps", "0", "--no-progress"])
    assert not (tmp_path / "run").exists()


def checkpoint_folder_names(run: Path) -> list[str]:
    """Everything in the run's checkpoints folder, unfinished ``.tmp-*`` writes included."""
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_keep_last_prunes_old_checkpoints_and_the_run_still_resumes(corpus, tmp_path):
    config = tiny_config(corpus, **{"checkpoint.every": 2, "checkpoint.keep_last": 2})
    straight = train(config, tmp_path / "straight", show_progress=False)["losses"]
    # Checkpoints at steps 2, 4, ..., 12: the four oldest were deleted as the newer ones landed.
    assert checkpoint_folder_names(tmp_path / "straight") == ["step-0000010", "step-0000012"]
    split = tmp_path / "split"
    train(config, split, stop_at=7, show_progress=False)  # saves 2, 4, 6 and 7
    assert checkpoint_folder_names(split) == ["step-0000006", "step-0000007"]
    resumed = train(config, split, resume=True, show_progress=False)["losses"]
    assert checkpoint_folder_names(split) == ["step-0000010", "step-0000012"]
    assert resumed == {s: straight[s] for s in range(8, 13)}  # exact, from the newest kept one
    assert losses_of(split) == straight


def test_stop_and_resume_is_exact_under_bf16_autocast(corpus, tmp_path):
    """The quickstart's train.dtype = "auto" means bf16 autocast where the CPU runs it natively
    and faster than float32 (AMX). "bfloat16" turns it on wherever torch runs CPU bf16 autocast (emulated without those
    instructions), so this runs on any machine."""
    config = tiny_config(corpus, **{"train.dtype": '"bfloat16"', "train.max_steps": 8})
    straight = train(config, tmp_path / "straight", show_progress=False)["losses"]
    full_precision = train(
        tiny_config(corpus, **{"train.max_steps": 8}), tmp_path / "fp32", show_progress=False
    )
    # Autocast was on: the losses differ from full precision. Not the first loss alone: a fresh
    # model's logits are so small that their bf16 rounding can vanish below fp32 resolution at
    # ln(V) (on some CPUs it does); once the weights move the runs part (~1e-4 here by step 8).
    assert straight != full_precision["losses"]
    train(config, tmp_path / "split", stop_at=3, show_progress=False)
    resumed = train(config, tmp_path / "split", resume=True, show_progress=False)["losses"]
    assert resumed == {s: straight[s] for s in range(4, 9)}  # identical, not merely close
    assert losses_of(tmp_path / "split") == straight


@pytest.mark.parametrize(
    ("native", "float32_faster", "expected"),
    [(True, False, True), (True, True, False), (False, False, False)],
)
def test_auto_dtype_uses_bf16_autocast_only_where_native_and_faster(
    native, float32_faster, expected, monkeypatch
):
    """With AVX512-BF16 and no AMX, bf16 products ran at half the float32 rate and training
    steps 1.6-1.8x slower under autocast: "auto" must not pick bf16 for the flag alone."""
    monkeypatch.setattr(loop_module, "native_bf16", lambda device: native)
    monkeypatch.setattr(loop_module, "float32_products_are_faster", lambda: float32_faster)
    assert loop_module.autocast_bf16(torch.device("cpu")) is expected


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_learning_rate_schedule_by_hand(decay):
    """Warm-up 4 steps to 1e-3 over a 24-step run, then decay to 0.1 of it at the last step."""
    cfg = load_config(
        None,
        [
            "optimizer.lr=1e-3",
            "schedule.warmup_steps=4",
            f'schedule.decay="{decay}"',
            "schedule.min_lr_ratio=0.1",
            "train.max_steps=24",
        ],
    )
    assert [lr_at(step, cfg) for step in (1, 2, 4)] == pytest.approx([0.25e-3, 0.5e-3, 1e-3], rel=1e-12)
    halfway = {"cosine": 0.55e-3, "linear": 0.55e-3, "constant": 1e-3}[decay]  # step 14 of 4..24
    quarter = {
        "cosine": 1e-4 + 0.9e-3 * (1 + math.cos(math.pi / 4)) / 2,
        "linear": 0.775e-3,
        "constant": 1e-3,
    }
    assert lr_at(14, cfg) == pytest.approx(halfway, rel=1e-12)
    assert lr_at(9, cfg) == pytest.approx(quarter[decay], rel=1e-12)
    assert lr_at(24, cfg) == pytest.approx(1e-3 if decay == "constant" else 1e-4, rel=1e-12)


def test_the_plotted_training_loss_is_a_trailing_mean():
    from yoco.train.plot import trailing_mean

    assert trailing_mean([4.0, 2.0, 6.0, 0.0], 2) == [4.0, 3.0, 4.0, 3.0]
    assert trailing_mean([4.0, 2.0, 6.0], 1) == [4.0, 2.0, 6.0]
    assert trailing_mean([4.0, 2.0], 5) == [4.0, 3.0]  # fewer values than the window: their mean
