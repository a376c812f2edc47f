"""`yoco train CONFIG.toml [--out DIR] [--max-steps N] [--resume] [--set section.key=value ...]`,
and `yoco plot RUN_DIR`."""

import argparse
import sys
from pathlib import Path

from yoco.data.sources import DataError
from yoco.train.curriculum import load_stages, train_stages
from yoco.train.loop import TrainingDiverged
from yoco.train.plot import plot_run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="yoco train", description=__doc__)
    parser.add_argument(
        "config",
        help="a TOML recipe file, or a shipped recipe's name (quickstart, needle); "
        "a recipe with [stages.NAME] tables trains them first (yoco.train.curriculum)",
    )
    parser.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    parser.add_argument(
        "--max-steps",
        type=int,
        help="stop after this step (checkpointed); the schedule still spans train.max_steps",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out (and its stages)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    try:
        stages = load_stages(args.config, out, overrides)
        summary = train_stages(stages, args.resume, args.max_steps, show_progress=not args.no_progress)
    except (ValueError, FileNotFoundError, DataError, TrainingDiverged) as error:
        sys.exit(f"yoco train: {error}")
    if summary["is_main"]:
        folder = Path(summary["out"])  # (a stage's, if --max-steps stopped a curriculum inside it)
        print(
            f"run folder: {folder}  (loss curve: {folder / 'loss.png'}, checkpoint: {summary['final_checkpoint']})"
        )
    return summary


def plot(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco plot", description="draw the loss curve of a training run")
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    print(plot_run(Path(args.run_dir)))
