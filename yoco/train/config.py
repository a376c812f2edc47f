"""Training configuration: typed sections read from TOML, checked before anything runs.

Every section is a dataclass; an unknown key or a value of the wrong type is an error naming
``section.key``. ``--set section.key=value`` overrides a value (parsed as TOML, else a string).
The ``[model]`` section names the model as the registry does (``name = "yoco-swa+diff"``,
optionally ``preset = "tiny"``; see ``yoco.models.registry``) and takes any field of that
kind's config on top.
"""

import copy
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DataSource:
    path: str  # a file, a folder, or "stdlib" for the embedded Python standard-library corpus
    weight: float = 1.0
    # "all": the loss counts every token; "targets": only the tokens a synthetic source marks
    # as what it teaches (a copy window's repeat, not the random bytes around it)
    loss: str = "all"


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=lambda: [DataSource("stdlib")])
    seq_len: int = 256
    val_fraction: float = 0.02
    seed: int = 0


@dataclass
class TokenizerConfig:
    path: str = "bytes"  # "bytes" or a folder written by `yoco tokenizer train`


@dataclass
class OptimizerConfig:
    lr: float = 3e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    grad_clip: float = 1.0


@dataclass
class ScheduleConfig:
    warmup_steps: int = 20
    decay: str = "cosine"  # "cosine" | "linear" | "constant"
    min_lr_ratio: float = 0.1


@dataclass
class TrainConfig:
    max_steps: int = 200
    batch_size: int = 16  # sequences per optimizer step, over all processes
    grad_accum: int = 1
    dtype: str = "auto"  # "auto": bfloat16 autocast where it is native and faster (train.loop.autocast_bf16)
    activation_checkpointing: bool = False
    distributed: str = "ddp"  # under torchrun: "ddp" or "fsdp"
    seed: int = 0
    # Start from these weights instead of a random init (fine-tuning, curricula): a run folder
    # (its latest checkpoint), a checkpoint folder, or any save_pretrained folder of the same
    # shape. Only the weights are taken: step, optimizer and data start afresh. --resume wins.
    init_from: str | None = None
    # End the run at the first evaluation whose validation loss is at or below this: a stage
    # gate, so a curriculum stage hands over once it has learned what it is for, however many
    # steps that takes. train.max_steps stays the budget and the learning-rate schedule's span.
    stop_at_val_loss: float | None = None


@dataclass
class CheckpointConfig:
    every: int = 100
    keep_last: int = 2


@dataclass
class EvalConfig:
    every: int = 50
    batches: int = 4


@dataclass
class LoggingConfig:
    every: int = 1
    tensorboard: bool = True


@dataclass
class RunConfig:
    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def as_stored(self) -> dict:
        """The recipe as a checkpoint stores it (JSON: tuples become lists, ...)."""
        return json.loads(json.dumps(self.to_dict()))


class ConfigError(ValueError):
    pass


def _check_type(value, annotation, where: str):
    origin = typing.get_origin(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} has the wrong type: {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return _build(annotation, value, where)
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return value
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where} must be empty")
        return value
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key {where + '.' if where else ''}{unknown[0]}; known keys: {sorted(known)}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in values.items()}
    return cls(**kwargs)


def parse_value(text: str):
    """A --set value: a TOML value (number, bool, string in quotes, list), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        *sections, last = key.strip().split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {section} is not a section")
        node[last] = parse_value(value.strip())
    return raw


def shipped_recipes() -> dict[str, Path]:
    """The recipes packaged with yoco (``yoco/recipes/*.toml``), by name."""
    folder = Path(__file__).resolve().parents[1] / "recipes"
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def find_recipe(name_or_path: str | Path) -> Path:
    """A TOML file: the path itself if it exists, else a shipped recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise ConfigError(f"no recipe file {path}, and no shipped recipe of that name ({', '.join(shipped)})")


def read_recipe(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """A recipe as its TOML tables (a file or a shipped recipe's name; None: empty), with
    ``section.key=value`` overrides applied, not yet checked."""
    raw = {}
    if path is not None:
        path = find_recipe(path)
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from error
    return apply_overrides(raw, list(overrides))


def run_config(raw: dict, where: str = "") -> RunConfig:
    """The checked RunConfig of a recipe's tables; errors name keys under ``where``."""
    return _build(RunConfig, raw, where)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """A run's recipe: a TOML file or a shipped recipe's name (None: the defaults), with
    ``section.key=value`` overrides applied. A recipe with stages is a curriculum
    (:mod:`yoco.train.curriculum`), not one run."""
    raw = read_recipe(path, overrides)
    if "stages" in raw:
        raise ConfigError(
            f"the recipe {path or ''} has [stages.*]: it is a curriculum (yoco.train.curriculum), "
            "run it with `yoco train`"
        )
    return run_config(raw)


# Counts that must be at least 1 (0 would divide by zero mid-run, or train nothing).
POSITIVE = (
    "train.max_steps",
    "train.batch_size",
    "train.grad_accum",
    "data.seq_len",
    "checkpoint.every",
    "eval.every",
    "logging.every",
)


CHOICES = {
    "schedule.decay": ("cosine", "linear", "constant"),
    "train.dtype": ("auto", "bfloat16", "float32"),
    "train.distributed": ("ddp", "fsdp"),
}


def check_config(cfg: RunConfig, world_size: int = 1) -> None:
    """Raise ConfigError naming the first key whose value cannot work, before anything runs:
    counts below 1, values outside their choices, a batch that ``world_size`` processes with
    ``train.grad_accum`` micro-batches cannot split evenly. (The model section is checked when
    the model is built, the data sources when they are listed: both before any step.)"""
    for key in POSITIVE:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    t = cfg.train
    if t.stop_at_val_loss is not None:
        if not t.stop_at_val_loss > 0:
            raise ConfigError(
                f"train.stop_at_val_loss must be > 0 (a cross-entropy), got {t.stop_at_val_loss}"
            )
        if cfg.data.val_fraction <= 0 or cfg.eval.batches < 1:
            raise ConfigError(
                "train.stop_at_val_loss needs a validation loss: data.val_fraction > 0 and eval.batches >= 1"
            )
    if t.batch_size % (world_size * t.grad_accum):
        raise ConfigError(
            f"train.batch_size {t.batch_size} must be a multiple of processes x grad_accum = "
            f"{world_size} x {t.grad_accum} = {world_size * t.grad_accum}"
        )


# What a resumed run may change in its recipe: where the run stops (its step budget or the
# validation loss it stops at), how often it writes checkpoints, evaluates and logs, and
# train.init_from (read only by a fresh start; a curriculum derives it from --out, which may be
# spelled another way on resume). None of these changes a batch or a weight of the steps both
# recipes train (the stop-and-resume test evaluates and checkpoints at other steps than the
# uninterrupted run and gets identical losses). Everything else - data, tokenizer, model,
# optimizer, schedule, batch size, seeds, dtype, eval.batches (which validation batches) -
# changes what is trained, so a resume with it is refused. train.max_steps is also the span of
# the learning-rate schedule: the loop says so when a new value moves the learning rate.
RESUMABLE_CHANGES = frozenset(
    {
        "train.max_steps",
        "train.stop_at_val_loss",
        "train.init_from",
        "checkpoint.every",
        "checkpoint.keep_last",
        "eval.every",
        "logging.every",
    }
)

UNSET = object()


def _flatten(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}, "l": [{"x": 2}]}`` -> ``{"a.b": 1, "l[0].x": 2}``; other lists are values."""
    if isinstance(tree, dict):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in tree.items()]
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    flat = {}
    for key, value in items:
        flat.update(_flatten(value, key))
    return flat


def merged(base: dict, override: dict) -> dict:
    """``base`` with ``override`` on top: tables merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def recipe_differences(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted key -> (old value, new value) for every leaf that differs (UNSET where absent),
    in the order the keys appear. ``old`` is a stored recipe: a key added to the recipe since it
    was written counts at its default, the value the run was trained with."""
    old = merged(RunConfig().as_stored(), old)
    # (merged replaces lists whole, so the tables inside data.sources get their defaults here)
    source_defaults = dataclasses.asdict(DataSource(path=""))
    old["data"]["sources"] = [merged(source_defaults, s) for s in old["data"]["sources"]]
    old_flat, new_flat = _flatten(old), _flatten(new)
    keys = list(old_flat) + [k for k in new_flat if k not in old_flat]
    return {
        k: (old_flat.get(k, UNSET), new_flat.get(k, UNSET))
        for k in keys
        if old_flat.get(k, UNSET) != new_flat.get(k, UNSET)
    }


def show_value(value) -> str:
    return "(not set)" if value is UNSET else json.dumps(value)


def unresumable_changes(differences: dict[str, tuple]) -> str:
    """The entries of ``differences`` (:func:`recipe_differences`) that a resume may not make,
    as ``"key: old -> new; ..."`` ("" when there are none)."""
    return "; ".join(
        f"{k}: {show_value(a)} -> {show_value(b)}"
        for k, (a, b) in differences.items()
        if k not in RESUMABLE_CHANGES
    )
