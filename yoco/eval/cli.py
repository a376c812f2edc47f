"""`yoco eval ppl | needle | mqar`: evaluate saved models, or train recall probes from scratch."""

import argparse
import json
import sys
from pathlib import Path


def _load(path: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import yoco  # noqa: F401  (registers the model classes)

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    return model, AutoTokenizer.from_pretrained(path)


def mqar_table(rows: list[dict]) -> str:
    settings = sorted({(r["seq_len"], r["num_pairs"]) for r in rows})
    kinds = list(dict.fromkeys((r["model"], r["hidden"]) for r in rows))
    lookup = {(r["model"], r["hidden"], r["seq_len"], r["num_pairs"]): r["accuracy"] for r in rows}
    header = "| model | width | " + " | ".join(f"({s}, {p})" for s, p in settings) + " |"
    lines = [header, "|" + "---|" * (2 + len(settings))]
    for model, hidden in kinds:
        cells = [
            f"{lookup[(model, hidden, s, p)]:.1%}" if (model, hidden, s, p) in lookup else ""
            for s, p in settings
        ]
        lines.append(f"| {model} | {hidden} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco eval", description=__doc__)
    sub = parser.add_subparsers(dest="task", required=True)

    ppl = sub.add_parser("ppl", help="loss and perplexity on a data source")
    ppl.add_argument("--model", required=True)
    ppl.add_argument("--data", required=True, help="file, folder or 'stdlib'")
    ppl.add_argument("--seq-len", type=int, default=512)
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--max-tokens", type=int)
    ppl.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])

    needle = sub.add_parser("needle", help="needle-in-a-haystack accuracy heat map")
    needle.add_argument("--model", required=True)
    needle.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    needle.add_argument("--trials", type=int, default=3)
    needle.add_argument("--needles", type=int, default=1, help="needles hidden (one is asked)")
    needle.add_argument("--filler", help="a text file to use as haystack (default: stdlib prose)")
    needle.add_argument("--seed", type=int, default=0)
    needle.add_argument("--out", default="runs/needle")
    needle.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])

    mqar = sub.add_parser("mqar", help="train small models on MQAR from scratch and report recall")
    mqar.add_argument(
        "--models", nargs="+", default=["yoco-swa", "yoco-gret", "swa-only", "gret-only", "transformer"]
    )
    mqar.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    mqar.add_argument(
        "--grid", nargs="+", default=["64:4", "128:8", "256:16", "512:64"], help="seq_len:pairs"
    )
    mqar.add_argument("--vocab-size", type=int, default=8192)
    mqar.add_argument("--steps", type=int, default=2000)
    mqar.add_argument("--batch-size", type=int, default=64)
    mqar.add_argument("--lr", type=float, default=1e-3)
    mqar.add_argument("--window", type=int, default=32, help="SWA window (below the key-query distances)")
    mqar.add_argument("--out", default="runs/mqar")
    args = parser.parse_args(argv)

    try:
        if args.task == "ppl":
            from yoco.eval.ppl import evaluate_ppl

            model, tokenizer = _load(args.model, args.dtype)
            result = evaluate_ppl(model, tokenizer, args.data, args.seq_len, args.batch_size, args.max_tokens)
            print(json.dumps(result))
        elif args.task == "needle":
            from yoco.eval.needle import run_needle, save

            model, tokenizer = _load(args.model, args.dtype)
            filler = Path(args.filler).read_text() if args.filler else None
            result = run_needle(
                model,
                tokenizer,
                args.lengths,
                trials=args.trials,
                n_needles=args.needles,
                seed=args.seed,
                filler=filler,
            )
            save(result, Path(args.out))
            for length in args.lengths:
                cells = [result["accuracy"][f"{length}:{d}"] for d in result["depths"]]
                print(f"{length:>6} tokens: mean accuracy {sum(cells) / len(cells):.2f}  by depth {cells}")
            print(f"heat map: {Path(args.out) / 'needle.png'}")
        else:
            from yoco.eval.mqar import train_recall

            rows = []
            for setting in args.grid:
                seq_len, pairs = (int(x) for x in setting.split(":"))
                for hidden in args.widths:
                    for kind in args.models:
                        rows.append(
                            train_recall(
                                kind,
                                seq_len,
                                pairs,
                                hidden,
                                args.vocab_size,
                                args.steps,
                                args.batch_size,
                                args.lr,
                                args.window,
                            )
                        )
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "mqar.json").write_text(json.dumps(rows, indent=1))
            table = mqar_table(rows)
            (out / "mqar.md").write_text(table + "\n")
            print(table)
    except (ValueError, FileNotFoundError, OSError) as error:
        sys.exit(f"yoco eval: {error}")
