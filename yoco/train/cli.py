"""`yoco train CONFIG.toml [--out DIR] [--max-steps N] [--resume] [--set section.key=value ...]`."""

import argparse
import sys
from pathlib import Path

from yoco.train.config import load_config
from yoco.train.data import DataError
from yoco.train.loop import TrainingDiverged, train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="yoco train", description=__doc__)
    parser.add_argument("config", help="a TOML recipe file, or a shipped recipe's name (quickstart, needle)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    parser.add_argument(
        "--max-steps",
        type=int,
        help="stop after this step (checkpointed); the schedule still spans train.max_steps",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    try:
        config = load_config(args.config, overrides)
        summary = train(
            config, out, resume=args.resume, stop_at=args.max_steps, show_progress=not args.no_progress
        )
    except (ValueError, FileNotFoundError, DataError, TrainingDiverged) as error:
        sys.exit(f"yoco train: {error}")
    if summary["is_main"]:
        print(
            f"run folder: {out}  (loss curve: {out / 'loss.png'}, checkpoint: {summary['final_checkpoint']})"
        )
    return summary
