"""`yoco eval ppl | needle | copy | mqar`: evaluate saved models, or train recall probes from scratch."""

import argparse
import itertools
import json
import sys
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a command that evaluates a saved model."""
    from yoco.models.pretrained import add_config_overrides_argument

    parser.add_argument("--model", required=True, help="a saved model, checkpoint or run folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    add_config_overrides_argument(parser)


def _load(path: str, dtype: str, overrides: tuple[str, ...] | list[str] = ()):
    """The saved model and its tokenizer (:func:`yoco.models.pretrained.load_pretrained`): a
    save_pretrained or checkpoint folder, or a run folder's latest checkpoint; ``overrides``
    are ``--set FIELD=VALUE`` items."""
    import torch

    from yoco.models.pretrained import load_pretrained, parse_config_overrides

    return load_pretrained(path, getattr(torch, dtype), parse_config_overrides(overrides))


def mqar_setting(text: str) -> tuple[int, int, int | None]:
    """A grid entry ``SEQ_LEN:PAIRS`` or ``SEQ_LEN:PAIRS:VOCAB`` (vocabulary None: --vocab-size)."""
    parts = text.split(":")
    try:
        numbers = [int(x) for x in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(
            f"grid entries are SEQ_LEN:PAIRS or SEQ_LEN:PAIRS:VOCAB with positive integers, got {text!r}"
        )
    return numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None


def mqar_table(rows: list[dict]) -> str:
    settings = sorted({(r["seq_len"], r["num_pairs"], r["vocab_size"]) for r in rows})
    kinds = list(dict.fromkeys((r["model"], r["hidden"], r["seed"]) for r in rows))
    lookup = {
        (r["model"], r["hidden"], r["seed"], r["seq_len"], r["num_pairs"], r["vocab_size"]): r for r in rows
    }
    header = "| model | width | seed | " + " | ".join(f"({s}, {p}), vocab {v}" for s, p, v in settings) + " |"
    lines = [header, "|" + "---|" * (3 + len(settings))]
    for model, hidden, seed in kinds:
        cells = []
        for setting in settings:
            row = lookup.get((model, hidden, seed, *setting))
            cells.append("" if row is None else f"{row['accuracy']:.1%} ({row['final_loss']:.3f})")
        lines.append(f"| {model} | {hidden} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_mqar(args, argv: list[str] | None) -> None:
    """Train every (setting, width, model) probe; finished rows are kept in OUT/mqar.jsonl and
    reused when the same command is run again, so an interrupted grid resumes."""
    from yoco.eval.mqar import plot_loss_curves, train_recall
    from yoco.models.registry import model_identity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_path = out / "mqar.jsonl"
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.exists() else []
    recipe = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        window=args.window,
        tie_embeddings=not args.untied_embeddings,
        random_non_queries=not args.zero_gaps,
    )
    rows = []
    for seq_len, pairs, vocab in args.grid:
        vocab = vocab or args.vocab_size
        for hidden in args.widths:
            for kind, seed in itertools.product(args.models, args.seeds):
                setting = dict(seq_len=seq_len, num_pairs=pairs, vocab_size=vocab, seed=seed)
                # The fields the name stands for too: a kind whose defaults changed trains anew.
                key = dict(
                    model=kind, model_identity=model_identity(kind), hidden=hidden, **setting, **recipe
                )
                row = next((r for r in done if all(r.get(k) == v for k, v in key.items())), None)
                if row is None:
                    row = {**train_recall(kind, seq_len, pairs, hidden, vocab, seed=seed, **recipe), **key}
                    with done_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(
                        f"{kind} d={hidden} seed {seed} ({seq_len}, {pairs}), vocab {vocab}: {row['accuracy']:.1%} "
                        f"in {row['seconds']:.0f} s"
                    )
                rows.append(row)
    table = mqar_table(rows)
    (out / "mqar.md").write_text(table + "\n")
    print(table)
    if plot_loss_curves(rows, out / "mqar-curves.png"):
        print(f"loss curves: {out / 'mqar-curves.png'}")
    if args.evaluation_md:
        from yoco.bench.environment import describe, environment
        from yoco.bench.report import update_section

        minutes = sum(r["seconds"] for r in rows) / 60
        command = "yoco eval " + " ".join(argv if argv is not None else sys.argv[2:])
        body = (
            f"{describe(environment())}\n"
            f"Command: `{command}` ({minutes:.0f} min of training on this machine; accuracy on 512 "
            f"held-out sequences; {args.steps} steps of batch {args.batch_size}, lr {args.lr}, "
            f"SWA window {args.window}, 2 layers, "
            f"{'untied' if args.untied_embeddings else 'tied'} embeddings, "
            f"{'zeros' if args.zero_gaps else 'random tokens'} between queries; cells: accuracy "
            f"(final training loss))\n\n{table}"
        )
        docs_plot = Path(args.evaluation_md).parent / "eval" / "mqar-curves.png"
        docs_plot.parent.mkdir(parents=True, exist_ok=True)
        if plot_loss_curves(rows, docs_plot):
            body += "\n\n![MQAR training loss against steps, per model and seed](eval/mqar-curves.png)"
        update_section(Path(args.evaluation_md), "mqar", body, Path(args.evaluation_md).parent)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco eval", description=__doc__)
    sub = parser.add_subparsers(dest="task", required=True)

    ppl = sub.add_parser("ppl", help="loss and perplexity on a data source")
    add_model_arguments(ppl)
    ppl.add_argument("--data", required=True, help="file, folder or 'stdlib'")
    ppl.add_argument("--seq-len", type=int, default=512)
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--max-tokens", type=int)

    needle = sub.add_parser("needle", help="needle-in-a-haystack accuracy heat map")
    add_model_arguments(needle)
    needle.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    needle.add_argument("--trials", type=int, default=3)
    needle.add_argument("--needles", type=int, default=1, help="needles hidden (one is asked)")
    needle.add_argument("--filler", help="a text file to use as haystack (default: stdlib prose)")
    needle.add_argument("--seed", type=int, default=0)
    needle.add_argument("--out", default="runs/needle")

    copy = sub.add_parser("copy", help="teacher-forced accuracy at copying a span from the context")
    add_model_arguments(copy)
    copy.add_argument("--length", type=int, default=128, help="document length in bytes")
    copy.add_argument("--span", type=int, help="bytes repeated (default length // 8, as copy:LENGTH)")
    copy.add_argument("--max-distance", type=int, help="farthest repeat (default: the whole document)")
    copy.add_argument("--documents", type=int, default=256)
    copy.add_argument(
        "--symbols", type=int, default=95, help="alphabet size (10: digits; default every printable byte)"
    )

    mqar = sub.add_parser("mqar", help="train small models on MQAR from scratch and report recall")
    mqar.add_argument(
        "--models",
        nargs="+",
        default=["yoco-swa", "yoco-gret", "swa-only", "gret-only", "transformer"],
        help="registry model names (yoco.models.registry): kinds such as yoco-swa or the controls "
        "swa-only / gret-only, with part suffixes such as +diff or +nope (e.g. yoco-swa+diff)",
    )
    mqar.add_argument("--widths", type=int, nargs="+", default=[128])
    mqar.add_argument(
        "--grid",
        nargs="+",
        type=mqar_setting,
        default=[mqar_setting("128:8:256"), mqar_setting("256:16:1024")],
        help="settings SEQ_LEN:PAIRS[:VOCAB] (default: (128, 8) with vocabulary 256 and twice the "
        "length and pairs with four times the vocabulary)",
    )
    mqar.add_argument("--vocab-size", type=int, default=8192, help="for grid entries without a vocabulary")
    mqar.add_argument("--steps", type=int, default=2000)
    mqar.add_argument("--seeds", type=int, nargs="+", default=[0], help="one model per seed (init and data)")
    mqar.add_argument("--batch-size", type=int, default=32)
    mqar.add_argument("--lr", type=float, default=1e-3, help="gated retention does not train at 3e-3")
    mqar.add_argument("--window", type=int, default=8, help="SWA window (below the key-query distances)")
    mqar.add_argument(
        "--untied-embeddings", action="store_true", help="separate LM head (default: tied to the embedding)"
    )
    mqar.add_argument(
        "--zero-gaps",
        action="store_true",
        help="token 0 between queries (Zoology's random_non_queries=False)",
    )
    mqar.add_argument("--out", default="runs/mqar", help="rows are appended to OUT/mqar.jsonl as they finish")
    mqar.add_argument("--evaluation-md", help="also write the table into this markdown file's mqar section")
    args = parser.parse_args(argv)

    if args.task == "ppl":
        from yoco.eval.ppl import check_ppl_options, evaluate_ppl

        check_ppl_options(args.seq_len, args.batch_size, args.max_tokens)  # before the slow load
        model, tokenizer = _load(args.model, args.dtype, args.config_overrides)
        result = evaluate_ppl(model, tokenizer, args.data, args.seq_len, args.batch_size, args.max_tokens)
        print(json.dumps(result))
    elif args.task == "needle":
        from yoco.eval.needle import check_needle_options, run_needle, save

        check_needle_options(args.lengths, args.trials, args.needles)
        model, tokenizer = _load(args.model, args.dtype, args.config_overrides)
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
        result["config_overrides"] = args.config_overrides  # --set FIELD=VALUE, as given
        result["cross_decoder_logn_base"] = getattr(model.config, "cross_decoder_logn_base", None)
        save(result, Path(args.out))
        for length in args.lengths:
            cells = [result["accuracy"][f"{length}:{d}"] for d in result["depths"]]
            print(f"{length:>6} tokens: mean accuracy {sum(cells) / len(cells):.2f}  by depth {cells}")
            tokens = [round(a, 2) for a in result["answer_token_accuracy"][str(length)]]
            print(f"{'':>6}         teacher-forced accuracy per answer token {tokens}")
        print(f"heat map: {Path(args.out) / 'needle.png'}")
    elif args.task == "copy":
        from yoco.eval.copy import check_copy_options, copy_accuracy

        check_copy_options(args.length, args.documents, args.span, args.max_distance, args.symbols)
        model, tokenizer = _load(args.model, args.dtype, args.config_overrides)
        result = copy_accuracy(
            model, tokenizer, args.length, args.documents, args.span, args.max_distance, symbols=args.symbols
        )
        print(json.dumps(result))
    else:
        run_mqar(args, argv)
