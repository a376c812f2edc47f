"""Curricula: a recipe whose ``[stages.NAME]`` tables are trained first, each stage starting
from the weights the one before it ended with.

A stage table holds recipe sections that replace the recipe's own for that stage: tables merge
key by key (``[stages.copy.data]`` with only ``seq_len`` keeps the recipe's sources), any other
value replaces the recipe's. So ``--set train.max_steps=N`` changes the recipe's own stage and
every stage that does not set its own; ``--set stages.copy.train.max_steps=N`` one stage.
Stages run in the order they are written, each in ``OUT/stages/NAME``; the first starts from
the recipe's ``train.init_from`` (random weights without one). The recipe itself is the last
stage: it runs in OUT from the last stage's weights, so ``yoco eval ... --model OUT`` finds the
final model as it does for any run. A stage with ``train.stop_at_val_loss`` hands over at the
first evaluation that reaches that loss (a gate: ``train.max_steps`` is then its budget).

``--resume`` skips the stages that finished, at ``train.max_steps`` or at their gate (refusing
one whose recipe has since changed: the stages after it were trained from its weights),
continues the one that stopped, and starts the rest (raising a finished stage's
``train.max_steps``, or lowering the loss of the gate it stopped at, trains it further, but a
later stage that has started keeps its checkpoints: retrain it in another ``--out``).
``--max-steps N`` stops whichever stage reaches step N, and the command with it (a stage
shorter than N finishes and the next one begins). Under ``torchrun`` one process group serves
every stage.
"""

import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from yoco.data.sources import list_documents
from yoco.tokenizer import load_tokenizer
from yoco.train import checkpoint as ckpt
from yoco.train import distributed
from yoco.train.config import (
    ConfigError,
    RunConfig,
    check_config,
    merged,
    read_recipe,
    recipe_differences,
    run_config,
    unresumable_changes,
)
from yoco.train.loop import recipe_model_config, run_is_finished, train

STAGES = "stages"
STAGE_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a folder name under OUT/stages


@dataclass
class Stage:
    name: str  # the [stages.NAME] table, or "" for the recipe's own (last) stage
    out: Path
    config: RunConfig

    @property
    def label(self) -> str:
        return f"stage {self.name!r}" if self.name else "the recipe's own stage"

    @property
    def latest(self) -> Path | None:
        return ckpt.latest_checkpoint(self.out / "checkpoints")

    @property
    def finished(self) -> bool:
        latest = self.latest
        return latest is not None and run_is_finished(latest, self.config)


def _starting_from(raw: dict, weights: str | None) -> dict:
    raw = copy.deepcopy(raw)
    train = raw.setdefault("train", {})
    if weights is None:
        train.pop("init_from", None)
    else:
        train["init_from"] = weights
    return raw


def check_stage(config: RunConfig, label: str) -> None:
    """What train() would refuse at its start, checked for a stage that trains later: counts
    and choices, the model section, the data sources."""
    try:
        check_config(config, distributed.world_size())
        recipe_model_config(config.model, len(load_tokenizer(config.tokenizer.path)))
        for source in config.data.sources:
            list_documents(source.path, source.loss)
    except ValueError as error:  # (ConfigError and DataError are ValueErrors)
        raise ConfigError(f"{label}: {error}") from error


def load_stages(path, out: Path, overrides: list[str] = ()) -> list[Stage]:
    """The runs a recipe stands for, in order: its stages, then the recipe itself (a recipe
    without stages is one run). Every stage is checked before any is trained; the recipe's own
    sections first, so an error in them is named as theirs, not as a stage's."""
    raw = read_recipe(path, overrides)
    tables = raw.pop(STAGES, {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{STAGES} must hold one table per stage ([{STAGES}.NAME]), got {tables!r}")
    for name, table in tables.items():
        if not STAGE_NAME.fullmatch(name):
            raise ConfigError(f"stage name {name!r}: use letters, digits, '-' and '_' (it names a folder)")
        if isinstance(table.get("train"), dict) and "init_from" in table["train"]:
            raise ConfigError(
                f"{STAGES}.{name}.train.init_from: a stage starts from the weights of the one before it"
            )
        if STAGES in table:
            raise ConfigError(f"{STAGES}.{name} cannot hold stages of its own")
    weights = raw.get("train", {}).get("init_from")  # where the first stage starts
    folders = [out / STAGES / name for name in tables]
    own = Stage("", out, run_config(_starting_from(raw, str(folders[-1]) if folders else weights)))
    if tables:
        check_stage(own.config, own.label)
    stages = []
    for (name, table), folder in zip(tables.items(), folders, strict=True):
        config = run_config(_starting_from(merged(raw, table), weights), f"{STAGES}.{name}")
        stages.append(Stage(name, folder, config))
        check_stage(config, stages[-1].label)
        weights = str(folder)
    return [*stages, own]


def check_unchanged(stage: Stage) -> None:
    """Refuse to skip a finished stage whose recipe has changed since it was trained (beyond
    what a resume may change): the stages after it started from the weights it ended with."""
    stored = stage.latest / ckpt.RECIPE
    if not stored.is_file():
        return
    differences = recipe_differences(json.loads(stored.read_text()), stage.config.as_stored())
    if details := unresumable_changes(differences):
        raise ConfigError(
            f"--resume: {stage.label} finished with another recipe ({details}), and the stages after it "
            "were trained from it: restore it, or start the curriculum in another --out"
        )


def train_stages(
    stages: list[Stage], resume: bool = False, stop_at: int | None = None, show_progress: bool = True
) -> dict:
    """Train ``stages`` in order (see the module's docstring); returns the summary of the last
    stage trained."""
    if resume and all(stage.latest is None for stage in stages):
        where = f"{stages[-1].out} or its stages" if len(stages) > 1 else stages[-1].out
        raise ConfigError(f"--resume: no checkpoint under {where}")
    d = distributed.setup()
    say = print if d.is_main and len(stages) > 1 else lambda *args, **kwargs: None
    try:
        for stage in stages:
            # (a finished last stage goes to train(), which says there is nothing left to train)
            if resume and stage.finished and stage is not stages[-1]:
                check_unchanged(stage)
                say(f"yoco train: {stage.label} finished earlier ({stage.out}), skipped", file=sys.stderr)
                continue
            say(f"yoco train: {stage.label}, in {stage.out}", file=sys.stderr)
            summary = train(
                stage.config,
                stage.out,
                resume=resume and stage.latest is not None,
                stop_at=stop_at,
                show_progress=show_progress,
            )
            if summary["last_step"] < stage.config.train.max_steps and not summary["reached_val_loss"]:
                break  # stopped by --max-steps
    finally:
        distributed.teardown()
    return summary
