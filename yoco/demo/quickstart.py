"""`yoco quickstart` (what `make demo` runs): train, generate, profile, in a few minutes.

1. Trains the shipped ``quickstart`` recipe (``yoco/recipes/quickstart.toml``) (a tiny YOCO-gRet) on the embedded corpus, the Python
   standard library's own source, with a progress bar; writes the loss curve.
2. Loads the final checkpoint with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and completes
   a line of code with the inference engine.
3. Runs a short `yoco bench` comparison against a Transformer and Hugging Face Llama.
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import yoco
from yoco.train.config import load_config
from yoco.train.loop import train

PROMPT = "    def __init__(self"


def new_run_folder(parent: Path, name: str) -> Path:
    """``parent/name-YYYYmmdd-HHMMSS``, not yet existing (a suffix is added within one second)."""
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = parent / stem, 1
    while out.exists():
        n += 1
        out = parent / f"{stem}-{n}"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco quickstart", description=__doc__)
    parser.add_argument("--recipe", default="quickstart", help="a shipped recipe's name or a TOML file")
    parser.add_argument(
        "--out", help="run folder (default: a new runs/quickstart-DATE-TIME each time, so the demo reruns)"
    )
    parser.add_argument("--max-steps", type=int, help="stop early (the schedule still spans the recipe)")
    parser.add_argument("--no-bench", action="store_true", help="skip the profiling comparison")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else new_run_folder(Path("runs"), "quickstart")

    print(f"== 1/3 training {args.recipe} on the Python standard library's source -> {out}")
    start = time.perf_counter()
    summary = train(load_config(args.recipe), out, stop_at=args.max_steps)
    losses = list(summary["losses"].values())
    head, tail = losses[: min(10, len(losses))], losses[-min(10, len(losses)) :]
    print(
        f"trained {len(losses)} steps in {time.perf_counter() - start:.0f}s: loss {sum(head) / len(head):.3f} "
        f"(first steps) -> {sum(tail) / len(tail):.3f} (last steps), validation {summary['val_loss']:.3f}"
    )
    print(f"loss curve: {out / 'loss.png'}    checkpoint: {summary['final_checkpoint']}")

    print(
        "\n== 2/3 completing a line of code with the trained model (sampled: temperature 0.7, top-k 20, seed 0)"
    )
    model = AutoModelForCausalLM.from_pretrained(summary["final_checkpoint"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(summary["final_checkpoint"])
    ids = tokenizer(PROMPT)["input_ids"]
    # A few minutes of training leaves greedy decoding prone to loops; light sampling shows more.
    new = yoco.generate(
        model, [ids], 160, temperature=0.7, top_k=20, seed=0, stop_token_ids=[tokenizer.eos_token_id]
    )[0]
    print("-" * 60 + "\n" + PROMPT + tokenizer.decode(new, skip_special_tokens=True) + "\n" + "-" * 60)

    if not args.no_bench:
        print(
            "\n== 3/3 profiling: YOCO vs a Transformer and HF Llama (bfloat16, short grid; full grid: yoco bench)"
        )
        from yoco.bench.command import main as bench

        torch.manual_seed(0)
        bench(
            [
                "--lengths",
                "1024",
                "4096",
                "--dtypes",
                "bfloat16",
                "--repeats",
                "1",
                "--new-tokens",
                "16",
                "--budget-new-tokens",
                "4",
                "--out",
                str(out / "bench"),
            ]
        )
        print(f"tables and plots: {out / 'bench'}")
    print(f"\nall outputs of this demo are in {out}/")
