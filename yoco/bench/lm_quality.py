"""LM quality at equal size: YOCO-SWA, YOCO-gRet and a Transformer, same tokens, same recipe.

The three models share hidden size, depth, heads and vocabulary; each YOCO's feed-forward
width is chosen so that its non-embedding parameter count matches the Transformer's (YOCO's
cross-decoder layers have no K/V projections of their own, gRet layers have a gate and a
decay projection more). All train for the same number of steps on the same sequences of
the embedded corpus (the data order depends only on the seed), then report validation loss.
Two part variants can join (``--systems``): Diff-YOCO-SWA (differential attention, matched
the same way) and YOCO-gRet with MH-MoE (matched on activated FFN compute instead, since a
mixture of experts holds more parameters than it uses per token).

Each system may have its own learning rate (``--lr 2e-3 yoco-gret=1e-3``), chosen by a short
sweep. The command can be rerun: a system whose run already finished with the same recipe is
kept, one that was interrupted resumes from its last checkpoint, so a budget of several hours
can be spent across sittings. With ``--results`` inside the repository, finished systems (their
summary and metrics log, not their weights) survive a fresh clone as well.
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from yoco.bench.environment import describe, environment
from yoco.bench.report import update_section
from yoco.models.registry import model_identity, resolve
from yoco.train import checkpoint as ckpt
from yoco.train.config import load_config
from yoco.train.loop import build_model, train, trains_in_bf16
from yoco.train.plot import plot_run, read_metrics

# Registry names (yoco.models.registry) and how the table labels them.
LABELS = {
    "transformer": "Transformer",
    "yoco-swa": "YOCO-SWA",
    "yoco-gret": "YOCO-gRet",
    "yoco-swa+diff": "Diff-YOCO-SWA",
    "yoco-gret+mhmoe": "YOCO-gRet + MH-MoE",
    "yoco-swa+crosspos": "YOCO-SWA with a rotary cross-decoder (the paper's)",
    "yoco-gret+noconv": "YOCO-gRet without its short convolution (the paper's)",
}


def non_embedding_parameters(model) -> int:
    embeddings = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    return sum(p.numel() for p in model.parameters()) - embeddings


def matched_intermediate(fields: dict, target: int, vocab: int) -> int:
    """Feed-forward width (a multiple of 8) whose non-embedding count is closest to target;
    the count is linear in the width, so two probes determine it."""
    a = non_embedding_parameters(build_model({**fields, "intermediate_size": 8}, vocab))
    b = non_embedding_parameters(build_model({**fields, "intermediate_size": 16}, vocab))
    per_8 = b - a
    return 8 * max(1, round((target - a) / per_8) + 1)


def learning_rates(values: list[str], systems: list[str]) -> dict[str, float]:
    """``--lr`` values: one number for every system, ``system=number`` for one of them."""
    rates, default = {}, None
    for value in values:
        system, _, number = value.rpartition("=")
        try:
            rate = float(number)
        except ValueError:
            raise SystemExit(f"--lr: {value!r} is neither a number nor system=number") from None
        if not system:
            default = rate
        elif system not in systems:
            raise SystemExit(f"--lr: {system!r} is not among --systems ({', '.join(systems)})")
        else:
            rates[system] = rate
    missing = [s for s in systems if s not in rates and default is None]
    if missing:
        raise SystemExit(f"--lr: no learning rate for {', '.join(missing)}")
    return {s: rates.get(s, default) for s in systems}


def same_experiment(result: dict, recipe: list[str], model: dict) -> bool:
    """Whether a finished ``result`` trained what ``recipe`` would. A registry name is only a
    label: what it stands for (``model``: the architecture and fields the name resolves to) is
    compared instead, so a result stays valid under a new name for the same model and is
    retrained when a kind's defaults change what its name means."""
    unnamed = [line for line in recipe if not line.startswith("model.name=")]
    kept = [line for line in result["recipe"] if not line.startswith("model.name=")]
    return kept == unnamed and result.get("model") == model


def summarize(out: Path, recipe: list[str], env: dict) -> dict:
    """The figures of a finished run, from its metrics log, so a resumed run counts all its
    steps; minutes are its tokens at the median logged rate (training steps only, without
    evaluation, checkpoint writes or pauses). ``trained_on`` names the machine, since kept
    systems may have been trained on another CPU than the rest of the table."""
    records = read_metrics(out)
    val = [r for r in records if "val_loss" in r]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in records)
    return dict(
        recipe=recipe,
        val_loss=val[-1]["val_loss"],
        train_loss_last=statistics.mean(r["loss"] for r in records[-20:]),
        tokens=records[-1]["tokens"],
        tokens_per_s=tokens_per_s,
        minutes=records[-1]["tokens"] / tokens_per_s / 60,
        trained_on=f"{env['date']}, {env['cpu']} ({', '.join(env['cpu_flags']) or 'no bfloat16 instructions'})",
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks/lm_quality.py", description=__doc__)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate-size", type=int, default=688, help="the Transformer's")
    parser.add_argument("--window", type=int, default=128, help="YOCO-SWA window")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--lr",
        nargs="+",
        default=["2e-3"],
        help="a learning rate for all, or system=rate for one (e.g. yoco-gret=1e-3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and data order")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="training precision; auto: bfloat16 autocast where native and faster, else float32",
    )
    parser.add_argument("--systems", nargs="+", default=list(LABELS)[:3], choices=list(LABELS))
    parser.add_argument("--out", default="runs/lm_quality", help="training runs and checkpoints")
    parser.add_argument(
        "--results",
        help="folder for each finished system's summary and metrics log (default: --out); inside "
        "the repository it keeps finished systems across checkouts, so a comparison longer than "
        "one sitting can be completed on a fresh clone",
    )
    parser.add_argument(
        "--benchmarks-md", help="write the results into this Markdown file's lm_quality section"
    )
    args = parser.parse_args(argv)
    rates = learning_rates(args.lr, args.systems)
    env = environment()

    shape = dict(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=args.seq_len,
    )
    vocab = 258
    target = non_embedding_parameters(
        build_model({"name": "transformer", **shape, "intermediate_size": args.intermediate_size}, vocab)
    )
    results, runs = {}, {}
    for system in args.systems:
        fields = {"name": system, **shape}
        _, named = resolve(system)
        model = model_identity(system)
        if named.get("self_decoder") == "swa":
            fields["sliding_window"] = args.window
        if system == "transformer":
            fields["intermediate_size"] = args.intermediate_size
        elif named.get("ffn_type", "swiglu") != "swiglu":
            # Mixture of experts: equal *activated* FFN compute, not equal parameters: the
            # dense width matched as for the others, split over the k experts a token uses
            # (MH-MoE then applies its own parity sizing to this width).
            dense = {**fields, "name": "+".join(p for p in system.split("+") if p not in ("moe", "mhmoe"))}
            width = matched_intermediate(dense, target, vocab) / named["num_experts_per_tok"]
            fields["intermediate_size"] = 8 * round(width / 8)
        else:
            fields["intermediate_size"] = matched_intermediate(fields, target, vocab)
        params = non_embedding_parameters(build_model(fields, vocab))
        every = max(1, args.steps // 10)
        recipe = [f"model.{k}={json.dumps(v)}" for k, v in fields.items()] + [
            f"data.seq_len={args.seq_len}",
            f"data.seed={args.seed}",
            f"train.seed={args.seed}",
            f"train.batch_size={args.batch_size}",
            f"train.dtype={args.dtype}",
            f"train.max_steps={args.steps}",
            f"optimizer.lr={rates[system]}",
            f"schedule.warmup_steps={max(1, args.steps // 20)}",
            f"eval.every={every}",
            "eval.batches=8",
            f"checkpoint.every={every}",
            "checkpoint.keep_last=1",
        ]
        out = Path(args.out) / system
        kept = Path(args.results or args.out) / system
        finished = kept / "lm_quality.json"
        print(
            f"== {LABELS[system]}: intermediate {fields['intermediate_size']}, {params:,} non-embedding "
            f"parameters, lr {rates[system]}"
        )
        result = json.loads(finished.read_text()) if finished.is_file() else None
        if result is not None and same_experiment(result, recipe, model):
            print(f"   finished earlier with this recipe, kept: {finished}")
        else:
            # An interrupted run resumes (train refuses a checkpoint trained with another recipe).
            resume = ckpt.latest_checkpoint(out / "checkpoints") is not None
            train(load_config(None, recipe), out, resume=resume)
            result = {**summarize(out, recipe, env), "model": model}
            if kept != out:
                kept.mkdir(parents=True, exist_ok=True)
                (kept / "metrics.jsonl").write_bytes((out / "metrics.jsonl").read_bytes())
            finished.write_text(json.dumps(result, indent=1))
        results[system] = dict(
            intermediate_size=fields["intermediate_size"],
            non_embedding_parameters=params,
            lr=rates[system],
            **result,
        )
        runs[LABELS[system]] = kept
    Path(args.out).mkdir(parents=True, exist_ok=True)
    plot_run(Path(args.out), runs=runs, out=Path(args.out) / "lm_quality.png", x="tokens")
    (Path(args.out) / "lm_quality.json").write_text(json.dumps(results, indent=1))
    markdown = report(results, args, argv, env)
    print(markdown)
    if args.benchmarks_md:
        image = Path(args.benchmarks_md).parent / "bench" / "lm_quality.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes((Path(args.out) / "lm_quality.png").read_bytes())
        update_section(
            Path(args.benchmarks_md),
            "lm_quality",
            markdown + "\n\n![LM quality](bench/lm_quality.png)",
            image,
        )
    return results


def training_precision(dtype: str) -> str:
    """How ``train.dtype`` resolves on this machine's CPU, in words for the report."""
    bf16 = trains_in_bf16(dtype, torch.device("cpu"))
    return "trained under bfloat16 autocast" if bf16 else "trained in float32"


def report(results: dict, args, argv, environment: dict) -> str:
    baseline = results.get("transformer", {}).get("val_loss")
    rows = []
    for system, r in results.items():
        relative = f"{(r['val_loss'] / baseline - 1) * 100:+.2f}%" if baseline else ""
        rows.append(
            f"| {LABELS[system]} | {r['non_embedding_parameters']:,} | {r['intermediate_size']} | {r['lr']:g} | {r['tokens']:,} | "
            f"{r['val_loss']:.4f} | {relative} | {r['train_loss_last']:.4f} | {r['tokens_per_s']:.0f} | {r['minutes']:.1f} |"
        )
    command = "python benchmarks/lm_quality.py " + " ".join(argv or [])
    return "\n".join(
        [
            f"Command: `{command.strip()}`  ",
            describe(environment),
            f"Shape: hidden {args.hidden_size}, {args.layers} layers, {args.heads} heads, byte vocabulary, "
            f"sequence {args.seq_len}, batch {args.batch_size}, {args.steps} steps (cosine schedule, 5% warm-up), "
            f"seed {args.seed}, SWA window {args.window}; {training_precision(args.dtype)}. "
            "Validation loss in nats per byte; minutes count training steps only.",
            "",
            "| model | non-embedding params | FFN width | lr | training tokens | val loss | vs Transformer "
            "| train loss (last 20 steps) | tokens/s | minutes |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *trained_on_lines(results),
        ]
    )


def trained_on_lines(results: dict) -> list[str]:
    """Where each system was trained (its tokens/s and minutes are that machine's)."""
    machines: dict[str, list[str]] = {}
    for system, r in results.items():
        machines.setdefault(r.get("trained_on", "not recorded"), []).append(LABELS[system])
    return [f"Trained on {machine}: {', '.join(labels)}.  " for machine, labels in machines.items()]
