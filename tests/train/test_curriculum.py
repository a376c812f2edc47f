"""Curricula: a recipe's [stages.NAME] train first, in order, each from the weights before it;
resume picks up where the curriculum stopped, exactly."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import losses_of, tiny_config, to_toml
from yoco.train import checkpoint as ckpt
from yoco.train.command import main
from yoco.train.config import ConfigError, load_config
from yoco.train.curriculum import load_stages


def curriculum(corpus, tmp_path, **stages) -> str:
    """A recipe file: the tiny test recipe (4 steps, checkpoints every 2) with ``stages`` before it."""
    recipe = tiny_config(corpus, **{"train.max_steps": 4, "checkpoint.every": 2}).to_dict()
    path = tmp_path / "curriculum.toml"
    path.write_text(to_toml({**recipe, "stages": stages}))
    return str(path)


def weights(run) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(ckpt.find_weights(run))[0]


def steps_logged(run) -> list[int]:
    """Every step in the run's log, in order (a step logged twice appears twice)."""
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stages_train_in_order_each_from_the_weights_before_it(corpus, tmp_path):
    # The first stage trains on shorter sequences; the recipe's own stage then trains at lr 0,
    # so its weights must be exactly those the first stage ended with.
    recipe = curriculum(
        corpus,
        tmp_path,
        first={"data": {"seq_len": 16}, "train": {"max_steps": 3}, "optimizer": {"lr": 3e-3}},
    )
    out = tmp_path / "run"
    main([recipe, "--out", str(out), "--set", "optimizer.lr=0.0", "--no-progress"])
    first = out / "stages" / "first"
    assert steps_logged(first) == [1, 2, 3] and steps_logged(out) == [1, 2, 3, 4]
    stored = json.loads((first / "run_config.json").read_text())
    assert (
        stored["data"]["seq_len"] == 16
        and stored["data"]["sources"] == tiny_config(corpus).to_dict()["data"]["sources"]
    )
    assert json.loads((out / "run_config.json").read_text())["train"]["init_from"] == str(first)
    start, end = weights(first), weights(out)
    assert all(torch.equal(start[k], end[k]) for k in start)
    fresh = tiny_config(corpus).to_dict()
    assert any(not torch.equal(start[k], v) for k, v in weights_of_random_init(fresh, tmp_path).items())


def weights_of_random_init(recipe: dict, tmp_path) -> dict[str, torch.Tensor]:
    """The weights the recipe's model starts from without init_from (lr 0, one step)."""
    path = tmp_path / "fresh.toml"
    path.write_text(to_toml(recipe))
    main(
        [
            str(path),
            "--out",
            str(tmp_path / "fresh"),
            "--max-steps",
            "1",
            "--set",
            "optimizer.lr=0.0",
            "--no-progress",
        ]
    )
    return weights(tmp_path / "fresh")


def test_a_stopped_curriculum_resumes_exactly(corpus, tmp_path):
    stages = dict(
        first={"train": {"max_steps": 3}}, second={"data": {"seq_len": 16}, "train": {"max_steps": 2}}
    )
    recipe = curriculum(corpus, tmp_path, **stages)
    main([recipe, "--out", str(tmp_path / "straight"), "--no-progress"])
    split = tmp_path / "split"
    with pytest.raises(SystemExit, match="--resume: no checkpoint under .*split or its stages"):
        main([recipe, "--out", str(split), "--resume", "--no-progress"])
    main([recipe, "--out", str(split), "--max-steps", "2", "--no-progress"])  # stops inside the first stage
    assert steps_logged(split / "stages" / "first") == [1, 2] and not (split / "stages" / "second").exists()
    with pytest.raises(SystemExit, match="already holds a run"):  # a fresh start may not overwrite it
        main([recipe, "--out", str(split), "--no-progress"])
    # Past the first two stages (3 and 2 steps), into the last (4 steps):
    main([recipe, "--out", str(split), "--resume", "--max-steps", "3", "--no-progress"])
    assert steps_logged(split / "stages" / "first") == [1, 2, 3]
    assert steps_logged(split / "stages" / "second") == [1, 2] and steps_logged(split) == [1, 2, 3]
    main([recipe, "--out", str(split), "--resume", "--no-progress"])
    assert steps_logged(split) == [1, 2, 3, 4]
    straight, resumed = weights(tmp_path / "straight"), weights(split)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    with pytest.raises(SystemExit, match="nothing to train"):  # every stage finished
        main([recipe, "--out", str(split), "--resume", "--no-progress"])
    # A finished stage trained with another recipe is not skipped as if it were this one's.
    with pytest.raises(SystemExit, match="stage 'first' finished with another recipe .*optimizer.lr"):
        main(
            [
                recipe,
                "--out",
                str(split),
                "--resume",
                "--set",
                "stages.first.optimizer.lr=0.5",
                "--no-progress",
            ]
        )


def test_a_gated_stage_hands_over_once_it_reaches_its_validation_loss(corpus, tmp_path):
    # The stage's budget is 40 steps; a target every evaluation meets ends it at its first (step 4).
    gate = {"train": {"max_steps": 40, "stop_at_val_loss": 100.0}, "eval": {"every": 4}}
    recipe = curriculum(corpus, tmp_path, first=gate)
    out = tmp_path / "run"
    main([recipe, "--out", str(out), "--max-steps", "2", "--no-progress"])  # stops inside the stage
    assert steps_logged(out / "stages" / "first") == [1, 2] and not (out / "checkpoints").exists()
    main([recipe, "--out", str(out), "--resume", "--no-progress"])
    first = out / "stages" / "first"
    assert steps_logged(first) == [1, 2, 3, 4] and steps_logged(out) == [1, 2, 3, 4]
    assert ckpt.latest_checkpoint(first / "checkpoints").name == "step-0000004"
    assert json.loads((out / "run_config.json").read_text())["train"]["init_from"] == str(first)
    # The gated stage counts as finished: skipped, the recipe's own stage is the one refused.
    with pytest.raises(SystemExit, match="nothing to train, step-0000004 is at step 4"):
        main([recipe, "--out", str(out), "--resume", "--no-progress"])
    assert steps_logged(first) == [1, 2, 3, 4]
    # Without its gate the stage is not finished: it trains on, here to a budget of 6 steps (the
    # recipe's own stage, already at its last step, then has nothing to train).
    lowered = ["--set", "stages.first.train.stop_at_val_loss=0.01", "--set", "stages.first.train.max_steps=6"]
    with pytest.raises(SystemExit, match="nothing to train, step-0000004 is at step 4"):
        main([recipe, "--out", str(out), "--resume", *lowered, "--no-progress"])
    assert steps_logged(first) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"first": {"train": {"warmup": 3}}}, "unknown key stages.first.train.warmup"),
        ({"first": {"optimizer": {"lr": "fast"}}}, "stages.first.optimizer.lr must be float"),
        (
            {"first": {"train": {"init_from": "elsewhere"}}},
            "stages.first.train.init_from: a stage starts from",
        ),
        ({"first": 3}, "one table per stage"),
        ({"first": {"data": {"seq_len": 0}}}, "stage 'first': data.seq_len must be >= 1"),
        ({"first": {"model": {"name": "yoco-bad"}}}, "stage 'first': model: unknown model kind 'yoco-bad'"),
        ({"first": {"data": {"sources": [{"path": "missing.txt"}]}}}, "stage 'first': .*missing.txt"),
        ({"a/../b": {"train": {"max_steps": 3}}}, "stage name 'a/../b'"),
    ],
)
def test_a_bad_stage_is_refused_naming_it_before_anything_trains(corpus, tmp_path, stages, message):
    recipe = curriculum(corpus, tmp_path, **stages)
    with pytest.raises(ConfigError, match=message):
        load_stages(recipe, tmp_path / "run")
    with pytest.raises(SystemExit, match=message):
        main([recipe, "--out", str(tmp_path / "run"), "--no-progress"])
    assert not (tmp_path / "run").exists()


def test_a_curriculum_is_not_read_as_one_run(corpus, tmp_path):
    recipe = curriculum(corpus, tmp_path, first={"train": {"max_steps": 3}})
    with pytest.raises(ConfigError, match="curriculum"):
        load_config(recipe)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr='fast'", "^optimizer.lr must be float"),
        ("data.seq_len=0", "^the recipe's own stage: data.seq_len"),
    ],
)
def test_an_error_in_the_recipe_itself_is_named_as_its_own(corpus, tmp_path, override, message):
    recipe = curriculum(corpus, tmp_path, first={"train": {"max_steps": 3}})
    with pytest.raises(ConfigError, match=message):
        load_stages(recipe, tmp_path / "run", [override])


def test_a_curriculum_under_torchrun_matches_one_process(corpus, tmp_path):
    """Two processes go through the stages together (one process group for all, every process
    reading the stage's last checkpoint only after it is written) and train as one does."""
    recipe = curriculum(corpus, tmp_path, first={"train": {"max_steps": 2}})
    main([recipe, "--out", str(tmp_path / "one"), "--no-progress"])
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["-m", "yoco", "train", recipe, "--out", str(tmp_path / "two"), "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for folder in ("stages/first", "."):
        one, two = losses_of(tmp_path / "one" / folder), losses_of(tmp_path / "two" / folder)
        assert sorted(one) == sorted(two) and one
        for step, loss in one.items():
            assert two[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), (folder, step)
