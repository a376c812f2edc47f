"""`yoco bench`: profile prefill, memory and decode of YOCO against a Transformer and Hugging
Face Llama of the same shape (:mod:`yoco.bench.profile`), and write the report."""

import argparse
import json
import os
from pathlib import Path

from yoco.bench import long, report
from yoco.bench.profile import DTYPES, run
from yoco.bench.systems import SYSTEMS, system_name


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="yoco bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shape and grid (a smoke test)")
    parser.add_argument(
        "--long",
        action="store_true",
        help="the long-context benchmark instead: YOCO 32K..1M in bfloat16 (bf16 and int8 cache), "
        "the Transformer as far as --transformer-budget-s allows",
    )
    parser.add_argument(
        "--transformer-budget-s",
        type=float,
        default=300.0,
        help="with --long: seconds of Transformer prefill to spend before extrapolating",
    )
    parser.add_argument(
        "--llamacpp-budget-s",
        type=float,
        default=900.0,
        help="with --long: seconds of llama.cpp prefill per dtype before extrapolating (needs make bench-deps)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", help="context lengths (default 1K..32K)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES))
    parser.add_argument(
        "--systems",
        nargs="+",
        type=system_name,
        help=f"default {' '.join(SYSTEMS)}; also a registry name such as yoco-gret+noconv",
    )
    parser.add_argument("--repeats", type=int, help="timed prefill runs after one warm-up (default 3)")
    parser.add_argument("--new-tokens", type=int, help="decode steps (default 64)")
    parser.add_argument("--window", type=int, help="SWA window (default 1024)")
    parser.add_argument(
        "--budget-gib", type=float, default=4.0, help="cache memory budget for batched decode"
    )
    parser.add_argument("--max-batch", type=int, default=256, help="cap on the batch within the budget")
    parser.add_argument(
        "--budget-new-tokens", type=int, help="decode steps timed at the budget batch (default 16)"
    )
    parser.add_argument("--out", default="docs/bench", help="folder for JSON, Markdown and PNGs")
    parser.add_argument(
        "--benchmarks-md", help="also write the report into this Markdown file's profile section"
    )
    parser.add_argument(
        "--section", default="profile", help="name of the --benchmarks-md section to write (keeps the others)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.long:
        return long_context(args, out)
    results = run(args)
    (out / "profile.json").write_text(json.dumps(results, indent=1))
    (out / "profile.md").write_text(report.markdown(results, image_dir="."))
    report.plots(results, out)
    if args.benchmarks_md:
        doc = Path(args.benchmarks_md)
        markdown = report.markdown(results, image_dir=os.path.relpath(out, doc.parent))
        report.update_section(doc, args.section, markdown, relative_to=out)
    print(report.summary(results))
    return results


def long_context(args, out: Path) -> dict:
    results = long.run_long(args)
    (out / "long.json").write_text(json.dumps(results, indent=1))
    long.plot(results, out / "long.png")
    (out / "long.md").write_text(long.markdown(results, image="long.png"))
    if args.benchmarks_md:
        doc = Path(args.benchmarks_md)
        image = os.path.join(os.path.relpath(out, doc.parent), "long.png")
        section = "long" if args.section == "profile" else args.section
        report.update_section(doc, section, long.markdown(results, image=image), relative_to=out)
    print(long.markdown(results))
    return results
