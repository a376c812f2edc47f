"""Checkpoints that survive a kill at any moment, and load without unpickling anything.

A checkpoint is a folder ``step-0000050/`` holding what ``save_pretrained`` writes (config +
``model.safetensors``, loadable with ``AutoModelForCausalLM``), the tokenizer, the optimizer's
tensors as safetensors with their layout in JSON, the torch RNG state,
``trainer_state.json`` (step, data position, ...) and ``run_config.json``, the recipe the steps
up to this one were trained with (a resumed run is checked against it). It is written under a
temporary name and renamed into place, so a crash mid-write leaves only a ``.tmp-*`` folder
that is ignored and the previous checkpoint untouched.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import logging as hf_logging

PREFIX = "step-"
RECIPE = "run_config.json"  # in a checkpoint: the recipe it was trained with


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> (tensors, JSON layout). Keys in ``state`` may be param
    indices (plain optimizers) or parameter names (distributed state dicts)."""
    tensors, layout = {}, {"param_groups": state["param_groups"], "state": {}}
    for key, entries in state["state"].items():
        layout["state"][str(key)] = {"key_is_int": isinstance(key, int), "values": {}}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}/{name}"] = value.detach().cpu().contiguous()
                layout["state"][str(key)]["values"][name] = "tensor"
            else:
                layout["state"][str(key)]["values"][name] = value
    return tensors, layout


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    state = {}
    for key, entry in layout["state"].items():
        values = {
            name: tensors[f"{key}/{name}"] if value == "tensor" else value
            for name, value in entry["values"].items()
        }
        state[int(key) if entry["key_is_int"] else key] = values
    return {"state": state, "param_groups": layout["param_groups"]}


@contextlib.contextmanager
def _without_transformers_bars():
    """``save_pretrained`` draws a "Writing model shards" bar for every save; under the
    trainer's own bar that is a stray line at every checkpoint."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_checkpoint(
    root: Path,
    step: int,
    model,
    tokenizer,
    model_state: dict,
    optimizer_state: dict,
    trainer_state: dict,
    keep_last: int,
    run_config: dict | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically, then keep only the last ``keep_last``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    with _without_transformers_bars():
        model.save_pretrained(tmp, state_dict=model_state)
    tokenizer.save_pretrained(tmp)
    tensors, layout = _flatten_optimizer(optimizer_state)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(layout))
    save_file({"cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
    if run_config is not None:
        (tmp / RECIPE).write_text(json.dumps(run_config, indent=1))
    for file in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder (``step-0000100``) was written at."""
    return int(path.name.removeprefix(PREFIX))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(done, key=checkpoint_step)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    """Everything a resumed run needs, read from safetensors and JSON only."""
    layout = json.loads((path / "optimizer.json").read_text())
    weights, config = load_weights(path)
    return dict(
        model=weights,
        optimizer=_unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), layout),
        rng=load_file(str(path / "rng.safetensors"))["cpu"],
        trainer=trainer_state(path),
        config=config,
        # (None in checkpoints written before recipes were stored with them)
        recipe=json.loads((path / RECIPE).read_text()) if (path / RECIPE).is_file() else None,
    )


def trainer_state(path: Path) -> dict:
    """A checkpoint's ``trainer_state.json`` (step, data position, ...), without its tensors."""
    return json.loads((path / "trainer_state.json").read_text())


def find_weights(path: Path) -> Path:
    """The folder holding ``config.json`` + ``model.safetensors`` for ``path``: the folder itself
    (a checkpoint or a save_pretrained model), or a run folder's latest checkpoint."""
    if (path / "model.safetensors").is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints")
    if latest is not None:
        return latest
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise FileNotFoundError(f"{path} holds neither model.safetensors nor a run's checkpoints/step-* folders")


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, config) of a model folder, from safetensors and JSON only."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has model.safetensors but no config.json")
    return load_file(str(path / "model.safetensors")), json.loads((path / "config.json").read_text())
