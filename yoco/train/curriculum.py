"""Curricula: a recipe whose ``[stages.NAME]`` tables are trained first, each stage starting
from the weights the one before it ended with.

A stage table holds recipe sections that replace the recipe's own for that stage: tables merge
key by key (``[stages.copy.data]`` with only ``seq_len`` keeps the recipe's sources), any other
value replaces the recipe's. Stages run in the order they are written, each in
``OUT/stages/NAME``; the first starts from the recipe's ``train.init_from`` (random weights
without one). The recipe itself is the last stage: it runs in OUT from the last stage's
weights, so ``yoco eval ... --model OUT`` finds the final model as it does for any run.

``--resume`` skips the stages that reached their ``train.max_steps``, continues the one that
stopped, and starts the rest; ``--max-steps N`` stops whichever stage reaches step N (a stage
shorter than N finishes and the next one begins).
"""

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

from yoco.data.sources import list_documents
from yoco.tokenizer import load_tokenizer
from yoco.train import checkpoint as ckpt
from yoco.train import distributed
from yoco.train.config import ConfigError, RunConfig, build_config, check_config, read_recipe
from yoco.train.loop import recipe_model_config, train

STAGES = "stages"


@dataclass
class Stage:
    name: str  # the [stages.NAME] table, or "" for the recipe's own (last) stage
    out: Path
    config: RunConfig

    @property
    def finished(self) -> bool:
        latest = ckpt.latest_checkpoint(self.out / "checkpoints")
        return latest is not None and ckpt.checkpoint_step(latest) >= self.config.train.max_steps


def merged(base: dict, override: dict) -> dict:
    """``base`` with ``override`` on top: tables merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _starting_from(raw: dict, weights: str | None) -> dict:
    raw = copy.deepcopy(raw)
    train = raw.setdefault("train", {})
    if weights is None:
        train.pop("init_from", None)
    else:
        train["init_from"] = weights
    return raw


def check_stage(config: RunConfig, where: str) -> None:
    """What train() would refuse at its start, checked for a stage that trains later: counts
    and choices, the model section, the data sources."""
    try:
        check_config(config, distributed.world_size())
        recipe_model_config(config.model, len(load_tokenizer(config.tokenizer.path)))
        for source in config.data.sources:
            list_documents(source.path)
    except ValueError as error:  # (ConfigError and DataError are ValueErrors)
        raise ConfigError(f"{where}: {error}") from error


def load_stages(path, out: Path, overrides: list[str] = ()) -> list[Stage]:
    """The runs a recipe stands for, in order: its stages, then the recipe itself (a recipe
    without stages is one run). Every stage is checked before any is trained."""
    raw = read_recipe(path, overrides)
    tables = raw.pop(STAGES, {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{STAGES} must hold one table per stage ([{STAGES}.NAME]), got {tables!r}")
    build_config(raw)  # the recipe's own errors first, named as its keys (not as a stage's)
    stages, weights = [], raw.get("train", {}).get("init_from")
    for name, table in tables.items():
        if "init_from" in table.get("train", {}):
            raise ConfigError(
                f"{STAGES}.{name}.train.init_from: a stage starts from the weights of the one before it"
            )
        if STAGES in table:
            raise ConfigError(f"{STAGES}.{name} cannot hold stages of its own")
        folder = out / STAGES / name
        config = build_config(_starting_from(merged(raw, table), weights), f"{STAGES}.{name}")
        check_stage(config, f"stage {name!r}")
        stages.append(Stage(name, folder, config))
        weights = str(folder)
    stages.append(Stage("", out, build_config(_starting_from(raw, weights))))
    if tables:
        check_stage(stages[-1].config, "the recipe's own stage")
    return stages


def train_stages(
    stages: list[Stage], resume: bool = False, stop_at: int | None = None, show_progress: bool = True
) -> dict:
    """Train ``stages`` in order (see the module's docstring); returns the summary of the last
    stage trained."""
    for stage in stages:
        label = f"stage {stage.name!r}" if stage.name else "the recipe's own stage"
        # (a finished last stage goes to train(), which says there is nothing left to train)
        if resume and stage.finished and stage is not stages[-1]:
            print(f"yoco train: {label} finished earlier ({stage.out}), skipped", file=sys.stderr)
            continue
        if len(stages) > 1:
            print(f"yoco train: {label}, in {stage.out}", file=sys.stderr)
        started = ckpt.latest_checkpoint(stage.out / "checkpoints") is not None
        summary = train(
            stage.config, stage.out, resume=resume and started, stop_at=stop_at, show_progress=show_progress
        )
        if not stage.finished:  # stopped by --max-steps: the next stage needs this one's end
            break
    return summary
