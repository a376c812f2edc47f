"""The training loop: one process, or many under ``torchrun`` (DDP / FSDP2).

Every process draws the same global batch from the same seeded data mixture and trains on its
own contiguous slice of it, so N processes with global batch B take exactly the steps one
process would take with batch B (up to floating-point reduction order).
"""

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from tqdm import tqdm

from yoco.data.packing import build_data, check_sizes
from yoco.layers.block import DecoderLayer
from yoco.layers.linear import float32_products_are_faster
from yoco.layers.moe import expert_statistics
from yoco.models.registry import model_config, model_from_config
from yoco.tokenizer import load_tokenizer
from yoco.train import checkpoint as ckpt
from yoco.train import distributed
from yoco.train.config import (
    RESUMABLE_CHANGES,
    ConfigError,
    RunConfig,
    check_config,
    recipe_differences,
    unresumable_changes,
)
from yoco.train.plot import plot_run


class TrainingDiverged(RuntimeError):
    pass


DEFAULT_MODEL = "yoco-gret"  # a recipe's model when it names none


def build_model(model_fields: dict, vocab_size: int):
    """The recipe's model: its registry ``name`` (``yoco.models.registry``: ``yoco-gret``,
    ``transformer``, ``yoco-swa+diff``, ...), an optional named ``preset`` shape, and config
    fields on top."""
    return model_from_config(recipe_model_config(model_fields, vocab_size))


def recipe_model_config(model_fields: dict, vocab_size: int):
    """The config :func:`build_model` initialises a model from (ConfigError naming a bad field)."""
    fields = dict(model_fields)
    if "architecture" in fields:
        raise ConfigError(
            "model.architecture is not a recipe key: name the model instead, "
            'e.g. name = "yoco-gret" (kinds and parts: yoco.models.registry)'
        )
    name, preset = fields.pop("name", DEFAULT_MODEL), fields.pop("preset", None)
    fields.setdefault("vocab_size", vocab_size)
    if fields["vocab_size"] < vocab_size:
        raise ConfigError(
            f"model.vocab_size {fields['vocab_size']} is smaller than the tokenizer's {vocab_size}"
        )
    try:
        return model_config(name, preset, **fields)  # refuses a field the kind does not have
    except (ValueError, StrictDataclassError) as error:
        raise ConfigError(f"model: {error}") from error


def native_bf16(device: torch.device) -> bool:
    """True where matrix products run natively in bfloat16 (AMX / AVX512-BF16 CPUs, recent GPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_bf16(device: torch.device) -> bool:
    """Whether ``dtype = "auto"`` trains under bfloat16 autocast: where bfloat16 products run
    natively and are not slower than float32 ones. Native is not enough: with AVX512-BF16 and
    no AMX we measured bfloat16 products at half the float32 rate, and a training step of the
    LM-quality shape 1.6-1.8x slower under autocast than in float32."""
    if not native_bf16(device):
        return False
    return device.type != "cpu" or not float32_products_are_faster()


def trains_in_bf16(dtype: str, device: torch.device) -> bool:
    """Whether ``train.dtype`` (``"auto"``, ``"bfloat16"`` or ``"float32"``) means bfloat16 autocast on ``device``."""
    return dtype == "bfloat16" or (dtype == "auto" and autocast_bf16(device))


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warm-up to ``lr``, then cosine or linear decay to ``min_lr_ratio * lr``."""
    peak, schedule, total = cfg.optimizer.lr, cfg.schedule, cfg.train.max_steps
    if step <= schedule.warmup_steps:
        return peak * step / max(1, schedule.warmup_steps)
    if schedule.decay == "constant":
        return peak
    progress = min(1.0, (step - schedule.warmup_steps) / max(1, total - schedule.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule.decay == "cosine" else 1 - progress
    return peak * (schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * shape)


def reached_target(val_loss: float | None, cfg: RunConfig) -> bool:
    """Whether ``val_loss`` ends the run early: ``train.stop_at_val_loss`` is set and the loss
    is at or below it (None, a step without evaluation, never is)."""
    target = cfg.train.stop_at_val_loss
    return target is not None and val_loss is not None and val_loss <= target


def run_is_finished(checkpoint: Path, cfg: RunConfig) -> bool:
    """Whether the run whose latest checkpoint is ``checkpoint`` has nothing left to train under
    ``cfg``: it reached ``train.max_steps``, or the validation loss it was saved with reached
    ``train.stop_at_val_loss``."""
    state = ckpt.trainer_state(checkpoint)
    return state["step"] >= cfg.train.max_steps or reached_target(state.get("val_loss"), cfg)


def training_objective(outputs, config) -> torch.Tensor:
    """What the trainer minimises: the model's cross-entropy ``outputs.loss`` plus
    ``config.router_aux_loss_coef`` times its unscaled load-balancing loss ``outputs.aux_loss``
    (models without mixture-of-experts layers have none, and train on the cross-entropy alone).

    The model keeps the two apart (its ``loss`` is cross-entropy only, so logged losses and
    perplexities never include the balancing term); only the objective adds them.
    """
    if outputs.aux_loss is None:
        return outputs.loss
    return outputs.loss + config.router_aux_loss_coef * outputs.aux_loss


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms' scales)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_resume_shape(saved: dict, model) -> None:
    current = model.config.to_dict()
    # config.json holds only the fields that differ from the class defaults (save_pretrained).
    saved = {**type(model.config)().to_dict(), **saved}
    differing = [
        k
        for k in (
            "model_type",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "self_decoder",
            "num_self_decoder_layers",
            "cross_decoder",
            "short_conv_size",
        )
        if saved.get(k) != current.get(k)
    ]
    if differing:
        details = ", ".join(
            f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in differing
        )
        raise ConfigError(f"checkpoint is from a different model shape ({details})")


def put_weights(model, weights: dict, saved_config: dict, where: Path) -> None:
    """Put saved weights into ``model``, refusing a checkpoint of another shape."""
    check_resume_shape(saved_config, model)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ConfigError(f"{where} does not match the model: missing {missing}, unexpected {unexpected}")


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and, if installed, TensorBoard."""

    def __init__(self, out: Path, tensorboard: bool, start_step: int):
        self.path = out / "metrics.jsonl"
        if self.path.exists():
            # Keep only what led to the checkpoint this run starts from: a fresh run starts an
            # empty log, a resumed one drops the steps logged after its checkpoint (they rerun).
            kept = [
                line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= start_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides the events of steps after the checkpoint that an earlier
                # process logged before it was stopped (they rerun now), as metrics.jsonl drops them.
                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                pass

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(
    cfg: RunConfig, out: Path, resume: bool = False, stop_at: int | None = None, show_progress: bool = True
) -> dict:
    """Train as configured, writing checkpoints and logs under ``out``; returns a summary.

    ``stop_at`` ends this invocation early (with a checkpoint) without changing the learning-
    rate schedule, which spans ``train.max_steps``: a run stopped at step 30 and resumed
    continues exactly as if it had never stopped. A resume must use the recipe its checkpoint
    was trained with (stored in the checkpoint): only ``config.RESUMABLE_CHANGES`` may differ.
    """
    if stop_at is not None and stop_at < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {stop_at}")
    check_config(cfg, distributed.world_size())
    owns_group = not distributed.initialized()
    d = distributed.setup()
    try:
        trainer = Trainer(cfg, Path(out), resume, stop_at, d)
        return trainer.run(show_progress)
    finally:
        if owns_group:
            distributed.teardown()


class Trainer:
    """One run: the model, its data and optimizer, where it starts (fresh, resumed or from
    other weights), and the step, evaluation and checkpoint it repeats. Everything that can
    refuse the run (the recipe, the data, a resume) does so in ``__init__``, before the run
    folder is written."""

    def __init__(self, cfg: RunConfig, out: Path, resume: bool, stop_at: int | None, d: distributed.Dist):
        self.cfg, self.out, self.d = cfg, out, d
        t = cfg.train
        self.last_step = min(t.max_steps, stop_at) if stop_at is not None else t.max_steps
        self.per_rank = t.batch_size // (d.world_size * t.grad_accum)  # sequences per micro-batch
        self.tokens_per_step = t.batch_size * cfg.data.seq_len
        torch.manual_seed(t.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer.path)
        self.model = build_model(cfg.model, len(self.tokenizer))
        self.mixture, val_stream = build_data(cfg.data, self.tokenizer)
        for warning in check_sizes(cfg.data, self.mixture, val_stream, t.batch_size, cfg.eval.batches):
            if d.is_main:
                print(f"yoco train: {warning}", file=sys.stderr)
        self.val_batches = self.validation_batches(val_stream)
        if t.stop_at_val_loss is not None and not self.val_batches:
            raise ConfigError(
                "train.stop_at_val_loss needs a validation loss, and no document fell into the held-out "
                f"split (data.val_fraction {cfg.data.val_fraction}): raise data.val_fraction"
            )
        self.root = out / "checkpoints"
        self.recipe = cfg.as_stored()
        state = self.starting_state(resume, stop_at)

        self.model.to(d.device)
        if t.activation_checkpointing:
            for module in self.model.modules():
                if isinstance(module, DecoderLayer):
                    module.checkpoint_activations = True
        self.wrapped = distributed.wrap(self.model, t.distributed, d)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.wrapped, cfg.optimizer.weight_decay),
            lr=cfg.optimizer.lr,
            betas=tuple(cfg.optimizer.betas),
        )
        if state is not None:
            distributed.load_optimizer_state(self.wrapped, self.optimizer, state["optimizer"], d)
            torch.set_rng_state(state["rng"])
        self.use_bf16 = trains_in_bf16(t.dtype, d.device)

    def validation_batches(self, val_stream) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed held-out batches (ids, labels); each process evaluates its own slice of each."""
        t, d = self.cfg.train, self.d
        if val_stream is None or self.cfg.eval.batches == 0:
            return []
        share = t.batch_size // d.world_size
        mine = slice(d.rank * share, (d.rank + 1) * share)
        batches = []
        for _ in range(self.cfg.eval.batches):
            ids, labels = zip(*(val_stream.next_example() for _ in range(t.batch_size)), strict=True)
            batches.append((torch.tensor(ids)[mine], torch.tensor(labels)[mine]))
        return batches

    def starting_state(self, resume: bool, stop_at: int | None) -> dict | None:
        """Set the start step and put the starting weights in: the latest checkpoint's (with its
        data position) on resume, ``train.init_from``'s, or none. Returns the checkpoint state
        to take the optimizer and RNG from (None unless resuming)."""
        cfg, t = self.cfg, self.cfg.train
        self.start_step = 0
        self.recipe_changes = []  # resumes that changed the recipe: [{"step": N, "changed": {key: [old, new]}}]
        latest = ckpt.latest_checkpoint(self.root)
        if resume:
            if latest is None:
                raise ConfigError(f"--resume: no checkpoint under {self.root}")
            state = ckpt.load_checkpoint(latest)
            self.start_step = state["trainer"]["step"]
            self.recipe_changes = check_resume_recipe(
                state, self.recipe, cfg, latest, self.out, self.start_step, self.d.is_main
            )
            if self.last_step <= self.start_step:
                limit = (
                    f"--max-steps {stop_at}"
                    if self.last_step == stop_at
                    else f"train.max_steps {t.max_steps}"
                )
                raise ConfigError(
                    f"--resume: nothing to train, {latest.name} is at step {self.start_step} and {limit} stops "
                    "there; raise train.max_steps (or --max-steps) to train further"
                )
            if reached_target(saved_val := state["trainer"].get("val_loss"), cfg):
                raise ConfigError(
                    f"--resume: nothing to train, {latest.name} was saved with validation loss {saved_val:.4f}, "
                    f"at or below train.stop_at_val_loss {t.stop_at_val_loss}; lower it to train further"
                )
            put_weights(self.model, state["model"], state["config"], latest)
            self.mixture.load_state_dict(state["trainer"]["data"])
            return state
        if latest is not None:
            # A fresh run here would mix its checkpoints with the old run's (keep_last would even
            # delete the new ones first): refuse rather than lose either.
            raise ConfigError(
                f"{self.out} already holds a run (latest checkpoint {latest.name}): "
                "pass --resume to continue it, or choose another --out"
            )
        if t.init_from is not None:
            try:
                source = ckpt.find_weights(Path(t.init_from))
            except FileNotFoundError as error:
                raise ConfigError(f"train.init_from: {error}") from error
            put_weights(self.model, *ckpt.load_weights(source), source)
        return None

    def forward(self, ids: torch.Tensor, labels: torch.Tensor):
        """The model's outputs on ``ids``: ``loss`` (cross-entropy on ``labels``), ``aux_loss``."""
        with torch.autocast(self.d.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            return self.wrapped(input_ids=ids, labels=labels)

    def train_step(self, step: int) -> dict:
        """One optimizer step on the next global batch (this process's slice of it, in
        ``train.grad_accum`` micro-batches); returns the step's metrics record."""
        t, d = self.cfg.train, self.d
        step_start = time.perf_counter()
        self.wrapped.train()
        lr = lr_at(step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ids, labels = self.mixture.next_batch(t.batch_size)
        rows = slice(d.rank * self.per_rank * t.grad_accum, (d.rank + 1) * self.per_rank * t.grad_accum)
        ids, labels = ids[rows].to(d.device), labels[rows].to(d.device)
        # The step's mean cross-entropy and mean unscaled aux loss (0 without MoE), over its
        # micro-batches here and then over the processes (one all-reduce for both).
        totals = torch.zeros(2, device=d.device)
        for micro in range(t.grad_accum):
            micro_rows = slice(micro * self.per_rank, (micro + 1) * self.per_rank)
            outputs = self.forward(ids[micro_rows], labels[micro_rows])
            (training_objective(outputs, self.model.config) / t.grad_accum).backward()
            totals[0] += outputs.loss.detach() / t.grad_accum
            if outputs.aux_loss is not None:
                totals[1] += outputs.aux_loss.detach() / t.grad_accum
        step_loss, step_aux = distributed.mean_across(totals, d).tolist()
        if not (math.isfinite(step_loss) and math.isfinite(step_aux)):
            what = f"loss is {step_loss}" if not math.isfinite(step_loss) else f"moe_aux_loss is {step_aux}"
            raise TrainingDiverged(
                f"{what} at step {step}; stopped without saving, the last good checkpoint is kept"
            )
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), self.cfg.optimizer.grad_clip)
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        record = {
            "step": step,
            "loss": step_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": self.tokens_per_step / (time.perf_counter() - step_start),
            "tokens": step * self.tokens_per_step,
        }
        # Expert activation of the step's last micro-batch (this process's share); {} without MoE.
        # ``loss`` is cross-entropy alone; with MoE layers, ``moe_aux_loss`` is the step's mean
        # unscaled balancing loss, like ``loss`` over all micro-batches and processes, so the
        # step minimised loss + router_aux_loss_coef * moe_aux_loss.
        stats = expert_statistics(self.model)
        if stats:
            stats["moe_aux_loss"] = step_aux
        record.update(stats)
        return record

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation cross-entropy over the fixed held-out batches, across processes."""
        self.wrapped.eval()
        device = self.d.device
        losses = [self.forward(ids.to(device), labels.to(device)).loss for ids, labels in self.val_batches]
        return float(distributed.mean_across(torch.stack(losses).mean(), self.d))

    def save(self, step: int, val_loss: float | None) -> None:
        """A checkpoint of this step: weights, optimizer, data position, recipe (atomic, keep-last-k),
        and ``val_loss`` if the recipe evaluates at this step (a resume reads it against
        train.stop_at_val_loss)."""
        model_state, optim_state = distributed.full_state_dicts(self.wrapped, self.optimizer, self.d)
        if not self.d.is_main:
            return
        trainer_state = {
            "step": step,
            "data": self.mixture.state_dict(),
            "tokens": step * self.tokens_per_step,
        }
        if val_loss is not None:
            trainer_state["val_loss"] = val_loss
        if self.recipe_changes:
            trainer_state["recipe_changes"] = self.recipe_changes
        ckpt.save_checkpoint(
            self.root,
            step,
            self.model,
            self.tokenizer,
            model_state,
            optim_state,
            trainer_state,
            self.cfg.checkpoint.keep_last,
            run_config=self.recipe,
        )

    def run(self, show_progress: bool) -> dict:
        """Train from the start step to the last (or to the gate, ``train.stop_at_val_loss``),
        logging, evaluating and checkpointing as the recipe says; returns the per-step losses,
        the last validation loss, the step reached (``last_step``), whether the gate stopped
        the run (``reached_val_loss``) and where it all is."""
        cfg, d, out = self.cfg, self.d, self.out
        out.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(out, cfg.logging.tensorboard, self.start_step) if d.is_main else None
        if d.is_main:
            (out / "run_config.json").write_text(json.dumps(self.recipe, indent=1))
        bar = tqdm(
            total=self.last_step,
            initial=self.start_step,
            desc="train",
            unit="step",
            disable=not (show_progress and d.is_main),
        )
        losses, last_val, step, reached = {}, None, self.start_step, False
        try:
            for step in range(self.start_step + 1, self.last_step + 1):
                record = self.train_step(step)
                losses[step] = record["loss"]
                # The recipe's evaluations; a --max-steps stop evaluates too, but the gate (and
                # the loss a checkpoint keeps for it) looks at the recipe's own only, so where an
                # invocation stops never moves where the run ends.
                scheduled = step % cfg.eval.every == 0 or step == cfg.train.max_steps
                if self.val_batches and (scheduled or step == self.last_step):
                    last_val = record["val_loss"] = self.evaluate()
                gate_val = record.get("val_loss") if scheduled else None
                reached = reached_target(gate_val, cfg)
                if log is not None and (step % cfg.logging.every == 0 or "val_loss" in record):
                    log.write(record)
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}",
                    val=f"{last_val:.3f}" if last_val else "-",
                    tok_s=f"{record['tokens_per_s']:.0f}",
                )
                bar.update()
                if step % cfg.checkpoint.every == 0 or step == self.last_step or reached:
                    self.save(step, gate_val)
                if reached:
                    if d.is_main:
                        bar.write(
                            f"yoco train: validation loss {last_val:.4f} at step {step} is at or below "
                            f"train.stop_at_val_loss {cfg.train.stop_at_val_loss}: stopped "
                            f"(train.max_steps {cfg.train.max_steps} was the budget)",
                            file=sys.stderr,
                        )
                    break
            target = cfg.train.stop_at_val_loss
            if target is not None and not reached and step == cfg.train.max_steps and d.is_main:
                bar.write(
                    f"yoco train: warning: train.max_steps {step} reached with validation loss {last_val:.4f}, "
                    f"above train.stop_at_val_loss {target}: the run did not learn what its gate asks for",
                    file=sys.stderr,
                )
        finally:
            bar.close()
            if log is not None:
                log.close()
        if log is not None:
            plot_run(out)
        distributed.barrier(d)  # the main process has written the last checkpoint: all may read it
        return {
            "losses": losses,
            "val_loss": last_val,
            "out": str(out),
            "last_step": step,
            "reached_val_loss": reached,  # stopped by train.stop_at_val_loss
            "final_checkpoint": str(ckpt.latest_checkpoint(self.root)),
            "is_main": d.is_main,
        }


def check_resume_recipe(
    state: dict, recipe: dict, cfg: RunConfig, latest: Path, out: Path, start_step: int, is_main: bool
) -> list[dict]:
    """Refuse to resume ``latest`` with a recipe that differs from the one it was trained with,
    unless only RESUMABLE_CHANGES differ; returns the checkpoint's list of such changes, this
    resume's appended. Runs before anything in the run folder is written."""
    stored, source = state["recipe"], latest / ckpt.RECIPE
    if (
        stored is None and (out / "run_config.json").is_file()
    ):  # a checkpoint from before recipes were stored in it
        stored, source = json.loads((out / "run_config.json").read_text()), out / "run_config.json"
    changes = list(state["trainer"].get("recipe_changes", []))
    if stored is None:
        return changes
    differences = recipe_differences(stored, recipe)
    if details := unresumable_changes(differences):
        raise ConfigError(
            f"--resume: the recipe differs from the one {latest.name} was trained with ({source}): {details}. "
            f"Only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume: restore the others, "
            "or start a new run in another --out (train.init_from takes this run's weights)"
        )
    if not differences:
        return changes
    if "train.max_steps" in differences and is_main:
        old_steps, new_steps = differences["train.max_steps"]
        step = start_step + 1
        before = lr_at(
            step, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=old_steps))
        )
        after = lr_at(step, cfg)
        if before != after:
            print(
                f"yoco train: note: train.max_steps {old_steps} -> {new_steps}: the learning-rate schedule now "
                f"spans {new_steps} steps (lr at step {step}: {after:.3g}, was to be {before:.3g})",
                file=sys.stderr,
            )
    return changes + [{"step": start_step, "changed": {k: list(v) for k, v in differences.items()}}]
