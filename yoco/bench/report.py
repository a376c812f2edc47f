"""Turning `yoco bench` results into Markdown tables, PNG plots and a terminal summary."""

import math
import re
from pathlib import Path

from yoco.bench.environment import describe
from yoco.bench.flops import self_decoder

MiB = 2**20
LABELS = {
    "yoco-swa": "YOCO-SWA",
    "yoco-gret": "YOCO-gRet",
    "transformer": "Transformer",
    "hf-llama": "HF Llama",
}


def label(system: str) -> str:
    """``"yoco-gret+noconv"`` -> ``"YOCO-gRet+noconv"``: the kind's label, then the parts."""
    kind, _, parts = system.partition("+")
    return LABELS.get(kind, kind) + (f"+{parts}" if parts else "")


def pairs(systems: list[str]) -> list[tuple[str, str]]:
    """(YOCO, baseline) pairs compared in the ratio tables: every YOCO in ``systems`` against
    every Transformer in it."""
    yocos = [s for s in systems if self_decoder(s) is not None]
    return [(y, b) for y in yocos for b in systems if self_decoder(b) is None]


def _index(results) -> dict:
    return {(c["dtype"], c["length"], c["system"]): c for c in results["cells"]}


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def ratio_rows(results, dtype: str, yoco: str, baseline: str) -> list[dict]:
    """Per length: measured and theoretical baseline/YOCO ratios for prefill, cache, decode."""
    cells = _index(results)
    rows = []
    for n in results["meta"]["lengths"]:
        y, b = cells.get((dtype, n, yoco)), cells.get((dtype, n, baseline))
        if not (y and b):
            continue
        rows.append(
            dict(
                length=n,
                prefill=b["prefill_s"] / y["prefill_s"],
                prefill_theory=b["flops"] / y["flops"],
                cache=b["cache_bytes"] / y["cache_bytes"],
                cache_theory=b["theory_cache_bytes"] / y["theory_cache_bytes"],
                decode=y["decode_tokens_per_s"] / b["decode_tokens_per_s"],
                decode_theory=b["theory_decode_bytes"] / y["theory_decode_bytes"],
                throughput=y["budget_tokens_per_s"] / b["budget_tokens_per_s"],
                # memory-bound: tokens/s ~ batch / bytes moved per step
                throughput_theory=(y["budget_batch"] / y["theory_budget_step_bytes"])
                / (b["budget_batch"] / b["theory_budget_step_bytes"]),
            )
        )
    return rows


def slope(results, dtype: str, system: str, short: int, long: int) -> float | None:
    cells = _index(results)
    a, b = cells.get((dtype, short, system)), cells.get((dtype, long, system))
    if not (a and b):
        return None
    return math.log(b["prefill_s"] / a["prefill_s"]) / math.log(long / short)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results, image_dir: str | None = None) -> str:
    """The report; ``image_dir`` is where the plots are, relative to the Markdown file."""
    meta, peaks = results["meta"], results["peaks"]
    cells = _index(results)
    systems = meta["systems"]
    out = [
        f"Command: `{meta['command']}`  ",
        describe(meta["environment"]),
        f"Shape: {meta['shape']}.  ",
        f"Prefill: median of {meta['repeats']} runs after a warm-up, logits for the last position only. "
        f"Decode: {meta['new_tokens']} greedy tokens at batch 1; {meta['budget_new_tokens']} at the budget batch, "
        f"the largest (at most {meta['max_batch']}) whose caches fit {meta['budget_gib']} GiB. Theoretical decode "
        "ratios count the bytes a step moves (weights + every cache read; YOCO's one K/V is read by each "
        "cross-decoder layer).  ",
        "Measured matrix-multiply peak: "
        + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items())
        + " (bfloat16 prefill is measured against the faster of the two: bfloat16 operands are "
        "multiplied in float32 where that is faster).",
        "",
    ]

    def per_system(dtype, *formats):
        """Rows of one column per (format, system), one row per context length."""
        rows = []
        for n in meta["lengths"]:
            row = [_k(n)]
            for fmt in formats:
                row += [fmt(cells[(dtype, n, s)]) if (dtype, n, s) in cells else "" for s in systems]
            rows.append(row)
        return rows

    names = [label(s) for s in systems]
    for dtype in meta["dtypes"]:
        out += [
            f"### {dtype}\n",
            "Prefill latency (s) and achieved FLOP/s as a share of the matmul peak:\n",
            _table(
                ["context"] + [f"{n} s" for n in names] + [f"{n} %peak" for n in names],
                per_system(dtype, lambda c: f"{c['prefill_s']:.3f}", lambda c: f"{c['peak_fraction']:.0%}"),
            ),
            "",
            "Cache after prefill / peak RSS growth during prefill + decode (MiB):\n",
            _table(
                ["context", *names],
                per_system(
                    dtype, lambda c: f"{c['cache_bytes'] / MiB:.1f} / {c['rss_growth_bytes'] / MiB:.0f}"
                ),
            ),
            "",
            "Decode tokens/s at batch 1 / within the memory budget (batch):\n",
            _table(
                ["context", *names],
                per_system(
                    dtype,
                    lambda c: (
                        f"{c['decode_tokens_per_s']:.1f} / {c['budget_tokens_per_s']:.1f} (b={c['budget_batch']})"
                    ),
                ),
            ),
            "",
        ]
        for yoco, baseline in pairs(systems):
            ratios = ratio_rows(results, dtype, yoco, baseline)
            if not ratios:
                continue
            rows = [
                [
                    _k(r["length"]),
                    f"{r['prefill']:.2f}x / {r['prefill_theory']:.2f}x",
                    f"{r['cache']:.2f}x / {r['cache_theory']:.2f}x",
                    f"{r['decode']:.2f}x / {r['decode_theory']:.2f}x",
                    f"{r['throughput']:.2f}x / {r['throughput_theory']:.2f}x",
                ]
                for r in ratios
            ]
            out.append(f"{label(yoco)} vs {label(baseline)}, measured / theoretical:\n")
            out.append(
                _table(
                    [
                        "context",
                        "prefill speed-up",
                        "cache smaller",
                        "decode b=1 speed-up",
                        "budget throughput",
                    ],
                    rows,
                )
            )
            out.append("")
        lengths = meta["lengths"]
        if len(lengths) > 1:
            short = 8192 if 8192 in lengths else lengths[-3 if len(lengths) > 2 else 0]
            slopes = {s: slope(results, dtype, s, short, lengths[-1]) for s in systems}
            out.append(
                f"Prefill log-log slope {_k(short)} -> {_k(lengths[-1])}: "
                + ", ".join(f"{label(s)} {v:.2f}" for s, v in slopes.items() if v is not None)
                + "\n"
            )
    if image_dir is not None:
        for name in ("prefill_latency", "memory", "throughput"):
            out.append(f"![{name.replace('_', ' ')}]({image_dir}/{name}.png)\n")
    return "\n".join(out)


def plots(results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = results["meta"]
    cells = _index(results)
    dtypes, systems, lengths = meta["dtypes"], meta["systems"], meta["lengths"]

    def series(dtype, system, key):
        xs = [n for n in lengths if (dtype, n, system) in cells]
        return xs, [cells[(dtype, n, system)][key] for n in xs]

    def figure(name, panels, ylabel, log_y=True):
        fig, axes = plt.subplots(
            1, len(dtypes) * len(panels), figsize=(5.5 * len(dtypes) * len(panels), 4), squeeze=False
        )
        for col, (dtype, (key, title, scale)) in enumerate((d, p) for d in dtypes for p in panels):
            ax = axes[0][col]
            for system in systems:
                xs, ys = series(dtype, system, key)
                ax.plot(xs, [y * scale for y in ys], marker="o", label=label(system))
            ax.set_xscale("log", base=2)
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel(ylabel if len(panels) == 1 else title)
            ax.set_title(f"{title} ({dtype})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    figure("prefill_latency.png", [("prefill_s", "prefill latency", 1.0)], "seconds")
    figure(
        "memory.png",
        [
            ("cache_bytes", "cache after prefill, MiB", 1 / MiB),
            ("rss_growth_bytes", "peak RSS growth, MiB", 1 / MiB),
        ],
        "MiB",
    )
    figure(
        "throughput.png",
        [
            ("decode_tokens_per_s", "decode tokens/s, batch 1", 1.0),
            ("budget_tokens_per_s", "tokens/s within budget", 1.0),
        ],
        "tokens/s",
    )


def summary(results) -> str:
    lines = []
    for dtype in results["meta"]["dtypes"]:
        for yoco, baseline in pairs(results["meta"]["systems"]):
            for r in ratio_rows(results, dtype, yoco, baseline)[-2:]:
                lines.append(
                    f"{dtype:<9} {_k(r['length']):>4} {label(yoco)} vs {label(baseline)}: prefill "
                    f"{r['prefill']:.2f}x (theory {r['prefill_theory']:.2f}x), cache {r['cache']:.2f}x, "
                    f"decode {r['decode']:.2f}x (theory {r['decode_theory']:.2f}x), budget throughput "
                    f"{r['throughput']:.2f}x (theory {r['throughput_theory']:.2f}x)"
                )
    return "\n".join(lines)


def update_section(path: Path, name: str, body: str, relative_to: Path) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``
    (appending the section if absent), so several benchmarks share one document. The body must
    state what it was measured on (:func:`yoco.bench.environment.describe`)."""
    if "Environment: " not in body:
        raise ValueError(f"section {name!r} does not state its environment (yoco.bench.environment.describe)")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)
