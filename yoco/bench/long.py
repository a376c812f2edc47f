"""`yoco bench --long`: the paper's long-context axis, 32K to 1M tokens, on this CPU.

For YOCO-gRet and YOCO-SWA in bfloat16 (YOCO-gRet also with its cache in int8: the shared K/V
is the same in both kinds), one prefill of a random prompt per length (chunks of ``PREFILL_CHUNK``) and then ``DECODE_STEPS`` greedy steps
at batch 1, each timed on its own (the median is reported). Every speed is put beside the limit it is bounded by, measured in the same run:

* prefill: FLOPs (:func:`yoco.bench.flops.prefill_flops`) per second as a share of the faster
  of the bfloat16 and float32 matrix-product rates (4096³ products): bfloat16 operands are exact
  in float32, and :mod:`yoco.layers.linear` multiplies them in float32 where that is faster;
* decode: the bytes one step must move (the weights once, YOCO's shared K/V once per
  cross-decoder layer, the self-decoder's state, as the cache reports them) per second as a
  share of the plain read bandwidth.

Our Transformer runs the same lengths in bfloat16, its prompt in one piece (a chunk after a
cache attends through a chunk × context mask, gigabytes at these lengths), until the next length
would not fit the time budget; beyond that its prefill time, cache and decode step are extrapolated from its own
measured points (prefill: a fit of time = a·N + b·N²; cache bytes: exact; a decode step: in
proportion to the bytes it must move, as decoding is bound by them) and marked as such. The ratios sit beside the paper's (3B model on an H100, so only their trend compares).

Last, :func:`versus_llamacpp` puts YOCO-gRet in float32 and bfloat16 beside llama.cpp at 16K to
128K, when llama-cpp-python is installed (:mod:`yoco.bench.llamacpp`).
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import yoco
from yoco.bench import llamacpp
from yoco.bench.environment import describe, environment
from yoco.bench.flops import parameter_count, prefill_flops
from yoco.bench.profile import (
    DEFAULT_SHAPE,
    QUICK_SHAPE,
    PeakRSS,
    decode_step_times,
    matmul_peak,
    read_bandwidth,
)
from yoco.bench.report import _k, _table, label
from yoco.bench.systems import build_model
from yoco.ops.decode_attention import weigh_int8_chunk
from yoco.ops.int8_attention import KERNEL as INT8_KERNEL

LENGTHS = [2**15 * 2**i for i in range(6)]  # 32K .. 1M
QUICK_LENGTHS = [256, 512]
VERSUS_LLAMACPP = [2**14 * 2**i for i in range(4)]  # 16K .. 128K
QUICK_VERSUS_LLAMACPP = [128, 256]
PREFILL_CHUNK = 16384
DECODE_STEPS = 16  # timed one by one; the tables report their median
# Positions after the prompt: the warm-up step, the timed steps and a kept context's next token.
POSITIONS = DECODE_STEPS + 2
RUNS = [("yoco-gret", "auto"), ("yoco-gret", "int8"), ("yoco-swa", "auto")]  # (system, kv_cache_dtype)
# The paper's Figure (3B, H100): Transformer / YOCO-gRet prefill time and total memory.
PAPER = {
    2**15: (2.87, 1.95),
    2**16: (5.05, 2.32),
    2**17: (8.36, 3.01),
    2**18: (15.55, 4.16),
    2**19: (30.3, 6.39),
    2**20: (71.8, 9.38),
}
GiB = 2**30


def step_bytes(model, cache, system: str, shape) -> int:
    """Bytes one decode step must move: the weights every step reads (not the embedding table:
    one row of it) once, plus the cache as attention reads it."""
    weights = parameter_count(shape, system) * next(model.parameters()).element_size()
    if system == "transformer":
        return weights + cache.nbytes()
    return weights + shape.cross_layers * cache.shared_kv.nbytes() + cache.self_decoder_nbytes()


@torch.no_grad()
def warmed_up(model, shape, tokens: int, chunk: int | None):
    """``model`` after one untimed prefill of ``tokens`` (one chunk): the first prefill in a
    process also pays for touching its activations' memory for the first time, which later
    ones, and a server's, do not. llama.cpp gets the same (:func:`yoco.bench.llamacpp.measure`),
    as llama-bench does by default."""
    ids = torch.randint(0, shape.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    yoco.prefill(model, ids, chunk)
    return model


class Greedy:
    """One greedy decode step per call, continuing ``cache`` from ``logits``."""

    def __init__(self, model, cache, logits):
        self.model, self.cache, self.logits = model, cache, logits

    def __call__(self):
        token = self.logits.argmax(-1, keepdim=True)
        self.logits = self.model(token, cache=self.cache, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def measure(
    model, system: str, shape, n: int, kv_cache_dtype: str, chunk: int | None, keep_dir: str | None = None
) -> dict:
    """One prefill of ``n`` random tokens, then decoding; with ``keep_dir``, the cache is also
    saved there, loaded back and continued by one token (a kept context), timed."""
    ids = torch.randint(0, shape.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
    with PeakRSS() as rss:
        start = time.perf_counter()
        logits, cache = yoco.prefill(
            model, ids, chunk, capacity=n + DECODE_STEPS + 1, kv_cache_dtype=kv_cache_dtype
        )
        prefill_s = time.perf_counter() - start
        cache_bytes = cache.nbytes()
        step = Greedy(model, cache, logits)
        step()  # warm-up step
        times = decode_step_times(step, DECODE_STEPS)
        logits = step.logits
    kept = {}
    if keep_dir is not None:
        path = Path(keep_dir) / "context.safetensors"
        start = time.perf_counter()
        yoco.save_cache(model, cache, path)
        kept["save_s"] = time.perf_counter() - start
        kept["file_bytes"] = path.stat().st_size
        del cache
        start = time.perf_counter()
        cache = yoco.load_cache(model, path)
        model(logits.argmax(-1, keepdim=True), cache=cache, logits_to_keep=1)
        kept["load_and_step_s"] = time.perf_counter() - start
        path.unlink()
    return kept | dict(
        system=system,
        kv_cache_dtype=kv_cache_dtype,
        length=n,
        prefill_s=prefill_s,
        flops=prefill_flops(system, shape, n),
        cache_bytes=cache_bytes,
        peak_rss_bytes=rss.peak,
        rss_growth_bytes=rss.growth,
        **times,
        step_bytes=step_bytes(model, cache, system, shape),
        measured=True,
    )


def quadratic_fit(rows: list[dict]):
    """(a, b) of prefill time = a·N + b·N² through the rows' (length, prefill_s) points."""
    n = np.array([r["length"] for r in rows], dtype=float)
    times = np.array([r["prefill_s"] for r in rows])
    (a, b), *_ = np.linalg.lstsq(np.stack([n, n**2], 1), times, rcond=None)
    return a, b


def extrapolate(rows: list[dict], lengths: list[int], shape) -> list[dict]:
    """The Transformer at the lengths it was not run at, from its measured rows."""
    a, b = quadratic_fit(rows)
    last = rows[-1]
    per_token = rows[-1]["cache_bytes"] / rows[-1]["length"]
    weights = rows[-1]["step_bytes"] - rows[-1]["cache_bytes"]
    out = []
    for length in lengths:
        if length <= rows[-1]["length"]:
            continue
        cache = per_token * length
        out.append(
            dict(
                system="transformer",
                kv_cache_dtype="auto",
                length=length,
                prefill_s=a * length + b * length**2,
                flops=prefill_flops("transformer", shape, length),
                cache_bytes=cache,
                peak_rss_bytes=None,
                rss_growth_bytes=None,
                step_s=last["step_s"] * (weights + cache) / last["step_bytes"],
                step_bytes=weights + cache,
                measured=False,
            )
        )
    return out


def versus_llamacpp(args, shape, peak: float, bandwidth: float, bar) -> dict:
    """YOCO-gRet in float32 and bfloat16 beside llama.cpp running our Transformer's weights as a
    Llama GGUF in F32 and F16, batch 1, prompts of 16K .. 128K (:mod:`yoco.bench.llamacpp`).
    llama.cpp's prefill grows with the square of the prompt on this CPU; each of its dtypes runs
    until the next length would pass ``--llamacpp-budget-s``, and beyond that its prefill is a
    fit of a·N + b·N² and its decode step a straight line through its own measured points
    (marked as extrapolated)."""
    lengths = QUICK_VERSUS_LLAMACPP if args.quick else VERSUS_LLAMACPP
    chunk = 128 if args.quick else PREFILL_CHUNK
    rows = []
    for dtype, name in [(torch.float32, "float32"), (torch.bfloat16, "bfloat16")]:
        model = warmed_up(
            build_model("yoco-gret", shape, dtype, max(lengths) + POSITIONS), shape, chunk, chunk
        )
        for n in lengths:
            bar.set_postfix_str(f"yoco-gret {name} {_k(n)}")
            rows.append(
                measure(model, "yoco-gret", shape, n, "auto", chunk) | dict(engine="yoco", dtype=name)
            )
            bar.update()
        del model
    for row in rows:
        row["flops_share"] = row["flops"] / row["prefill_s"] / peak
        row["read_share"] = row["step_bytes"] / row["step_s"] / bandwidth
    reason = llamacpp.available()
    if reason is None:
        threads = torch.get_num_threads()
        llama = build_model("transformer", shape, torch.float32, max(lengths) + 64 * len(lengths))
        with tempfile.TemporaryDirectory(dir=args.out) as folder:
            for gguf_type in ("f32", "f16"):
                bar.set_postfix_str(f"llama.cpp {gguf_type}")
                path = llamacpp.write_gguf(llama, Path(folder) / f"llama-{gguf_type}.gguf", gguf_type)
                difference = llamacpp.check_same_model(llama, path, threads)
                if difference > (1e-2 if gguf_type == "f32" else 5e-2):
                    raise RuntimeError(
                        f"llama.cpp's logits differ from our Transformer's by {difference:.3g}: "
                        "the GGUF is not the same model"
                    )
                measured = llamacpp.measure(
                    path, lengths, DECODE_STEPS, threads, shape.vocab_size, args.llamacpp_budget_s
                )
                rows += [r | dict(engine="llama.cpp", dtype=gguf_type, measured=True) for r in measured]
                rows += extrapolate_llamacpp(measured, lengths, gguf_type)
                bar.update()
        del llama
    return dict(lengths=lengths, rows=rows, llamacpp_missing=reason)


def extrapolate_llamacpp(rows: list[dict], lengths: list[int], gguf_type: str) -> list[dict]:
    if len(rows) < 2:
        return []
    a, b = quadratic_fit(rows)
    n = np.array([r["length"] for r in rows], dtype=float)
    slope, intercept = np.polyfit(n, [r["step_s"] for r in rows], 1)
    return [
        dict(
            engine="llama.cpp",
            dtype=gguf_type,
            length=length,
            prefill_s=a * length + b * length**2,
            step_s=intercept + slope * length,
            measured=False,
        )
        for length in lengths
        if length > rows[-1]["length"]
    ]


def measure_limits(quick: bool) -> tuple[float, float, float]:
    """(bfloat16 and float32 matrix-product FLOP/s, read bytes/s) on this machine now. The
    prefill's limit is the faster of the two products: bfloat16 operands are exact in float32,
    and the library multiplies them in float32 where that is faster (:mod:`yoco.layers.linear`)."""
    size = 512 if quick else 4096
    bf16, fp32 = matmul_peak(torch.bfloat16, size=size), matmul_peak(torch.float32, size=size)
    return bf16, fp32, read_bandwidth(32 * 2**20 if quick else 512 * 2**20)


def run_long(args) -> dict:
    shape = QUICK_SHAPE if args.quick else DEFAULT_SHAPE
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)
    chunk = 128 if args.quick else PREFILL_CHUNK
    budget_s = args.transformer_budget_s
    limits = measure_limits(args.quick)
    rows = []
    versus = len(QUICK_VERSUS_LLAMACPP if args.quick else VERSUS_LLAMACPP)
    steps = (len(RUNS) + 1) * len(lengths) + 2 * versus + (2 if llamacpp.available() is None else 0)
    bar = tqdm(total=steps, desc="yoco bench --long", disable=args.no_progress)
    for system, kv_cache_dtype in RUNS:
        model = warmed_up(
            build_model(system, shape, torch.bfloat16, max(lengths) + POSITIONS), shape, chunk, chunk
        )
        for n in lengths:
            bar.set_postfix_str(f"{system} {kv_cache_dtype} {_k(n)}")
            keep = (system, kv_cache_dtype, n) == (*RUNS[0], max(lengths))  # the longest YOCO-gRet context
            with tempfile.TemporaryDirectory(dir=args.out) as folder:
                rows.append(measure(model, system, shape, n, kv_cache_dtype, chunk, folder if keep else None))
            bar.update()
        del model
    model = warmed_up(
        build_model("transformer", shape, torch.bfloat16, max(lengths) + POSITIONS), shape, chunk, None
    )
    spent, measured = 0.0, []
    for n in lengths:
        if measured:  # prefill grows at most quadratically: stop before overrunning the budget
            last = measured[-1]
            if spent + last["prefill_s"] * (n / last["length"]) ** 2 > budget_s:
                break
        bar.set_postfix_str(f"transformer {_k(n)}")
        measured.append(measure(model, "transformer", shape, n, "auto", None))
        spent += measured[-1]["prefill_s"]
        bar.update()
    rows += measured + extrapolate(measured, lengths, shape)
    # Measured again at the end: something else on the machine can only make a limit read low.
    bf16_peak, fp32_peak, bandwidth = (
        max(pair) for pair in zip(limits, measure_limits(args.quick), strict=True)
    )
    peak = max(bf16_peak, fp32_peak)
    for row in rows:
        row["flops_share"] = row["flops"] / row["prefill_s"] / peak
        row["read_share"] = row["step_bytes"] / row["step_s"] / bandwidth
    # llama.cpp last: its OpenMP threads may keep spinning after it returns.
    versus = versus_llamacpp(args, shape, peak, bandwidth, bar)
    bar.close()
    return dict(
        meta=dict(
            command="yoco bench " + " ".join(args.argv),  # argv holds --long
            environment=environment(),
            shape=shape.__dict__,
            lengths=lengths,
            prefill_chunk=chunk,
            decode_steps=DECODE_STEPS,
            # The int8 path's fused softmax kernel, compiled in the first warm-up step that had a
            # whole key chunk (None: never needed, or compiling is off).
            int8_kernel_compile_s=weigh_int8_chunk.compile_seconds,
            # The int8 cache's C attention kernel: its compile time, or why it was not used.
            int8_native_compile_s=INT8_KERNEL.compile_seconds,
            int8_native_failure=INT8_KERNEL.failure,
            transformer_budget_s=budget_s,
        ),
        bf16_matmul_flops=bf16_peak,
        float32_matmul_flops=fp32_peak,
        matmul_limit_flops=peak,
        read_bytes_per_s=bandwidth,
        rows=rows,
        versus_llamacpp=versus,
    )


def markdown(results, image: str | None = None) -> str:
    meta = results["meta"]
    bandwidth = results["read_bytes_per_s"]
    products = (
        f"matrix products {results['bf16_matmul_flops'] / 1e9:.0f} GFLOP/s in bfloat16, "
        f"{results['float32_matmul_flops'] / 1e9:.0f} in float32 (prefill shares are of the faster: "
        "bfloat16 operands are multiplied in float32 where that is faster)"
    )
    out = [
        f"Command: `{meta['command']}`  ",
        describe(meta["environment"]),
        f"Shape: {meta['shape']}, bfloat16 weights.  ",
        f"Limits measured in this run (at its start and before llama.cpp, the higher of the two): {products}, plain read "
        f"{bandwidth / GiB:.1f} GiB/s. YOCO prefills in chunks of {meta['prefill_chunk']} tokens, the "
        "Transformer in one piece, each model after one untimed prefill of one chunk (llama.cpp: one batch); decode "
        f"{meta['decode_steps']} greedy steps at batch 1 after one warm-up step, timed one by one: the median step"
        + int8_kernels(meta)
        + ". Transformer rows in "
        f"italics are extrapolated from its measured ones (its run stops within {meta['transformer_budget_s']:.0f} s "
        "of prefill).",
        "",
    ]
    body = []
    for r in results["rows"]:
        cells = [
            label(r["system"]) + (" (int8 cache)" if r["kv_cache_dtype"] == "int8" else ""),
            _k(r["length"]),
            f"{r['prefill_s']:.1f}",
            f"{r['flops_share']:.0%}",
            f"{r['cache_bytes'] / GiB:.3f}",
            "" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / GiB:.2f}",
            f"{1e3 * r['step_s']:.1f}",
            f"{r['read_share']:.0%}",
        ]
        body.append(cells if r["measured"] else [f"*{c}*" if c else c for c in cells])
    header = [
        "system",
        "prompt",
        "prefill s",
        "of matmul rate",
        "cache GiB",
        "peak RSS GiB",
        "decode ms/token",
        "of read bandwidth",
    ]
    out.append(_table(header, body))
    out += ["", "Transformer / YOCO-gRet (bf16 cache), beside the paper's (3B, H100):", ""]
    index = {(r["system"], r["kv_cache_dtype"], r["length"]): r for r in results["rows"]}
    ratios = []
    for n in meta["lengths"]:
        t, y = index.get(("transformer", "auto", n)), index.get(("yoco-gret", "auto", n))
        if not (t and y):
            continue
        paper = PAPER.get(n, (None, None))
        mark = "" if t["measured"] else " (extrapolated)"
        ratios.append(
            [
                _k(n),
                f"{t['prefill_s'] / y['prefill_s']:.1f}x{mark}",
                "" if paper[0] is None else f"{paper[0]}x",
                f"{t['cache_bytes'] / y['cache_bytes']:.1f}x",
                "" if paper[1] is None else f"{paper[1]}x (total memory)",
                f"{t['step_s'] / y['step_s']:.1f}x{mark}",
            ]
        )
    out.append(_table(["prompt", "prefill time", "paper", "cache", "paper", "decode step time"], ratios))
    for r in results["rows"]:
        if "load_and_step_s" in r:
            out += [
                "",
                f"Kept context ({label(r['system'])}, {_k(r['length'])} tokens): `yoco.save_cache` wrote "
                f"{r['file_bytes'] / GiB:.2f} GiB in {r['save_s']:.1f} s; `yoco.load_cache` and the next "
                f"token took {r['load_and_step_s']:.1f} s, {r['load_and_step_s'] / r['prefill_s']:.1%} of "
                "prefilling it again.",
            ]
    out += ["", *versus_markdown(results["versus_llamacpp"])]
    if image:
        out += ["", f"![long context]({image})"]
    return "\n".join(out)


def int8_kernels(meta: dict) -> str:
    """Which int8 attention ran, and what compiling it cost the process."""
    notes = []
    if meta.get("int8_native_compile_s") is not None:
        notes.append(f"the int8 cache's C attention kernel compiled in {meta['int8_native_compile_s']:.1f} s")
    elif meta.get("int8_native_failure"):
        notes.append(f"the int8 cache's C attention kernel unavailable ({meta['int8_native_failure']})")
    if meta.get("int8_kernel_compile_s") is not None:
        notes.append(
            f"the PyTorch int8 path's fused softmax compiled in {meta['int8_kernel_compile_s']:.1f} s"
        )
    return f" ({'; '.join(notes)}, in the first step that needed it)" if notes else ""


def versus_markdown(versus: dict) -> list[str]:
    out = ["Against llama.cpp, batch 1: tokens/s of prefill and of decoding after the prompt."]
    ran = not versus["llamacpp_missing"]
    if not ran:
        out += [f"llama.cpp was not run: {versus['llamacpp_missing']}.", ""]
    else:
        out += [
            "llama.cpp (llama-cpp-python, flash attention, as many threads as torch) runs our Transformer's "
            "weights as a Llama GGUF, checked to give our logits first; it grows one prompt through "
            "the lengths, and its rows in italics are extrapolated from its measured ones.",
            "",
        ]
    index = {(r["engine"], r["dtype"], r["length"]): r for r in versus["rows"]}
    columns = [("yoco", "float32", "YOCO-gRet fp32"), ("yoco", "bfloat16", "YOCO-gRet bf16")]
    if ran:
        columns += [("llama.cpp", "f32", "llama.cpp F32"), ("llama.cpp", "f16", "llama.cpp F16")]
    header = ["prompt"] + [f"{label} {what}" for *_, label in columns for what in ("prefill", "decode")]
    if ran:
        header += [
            "YOCO ÷ llama.cpp decode, 16-bit",
            "YOCO ÷ llama.cpp prefill, 16-bit",
            "YOCO ÷ llama.cpp decode, 32-bit",
            "YOCO ÷ llama.cpp prefill, 32-bit",
        ]
    body = []
    for n in versus["lengths"]:
        cells = [_k(n)]
        for engine, dtype, _ in columns:
            r = index.get((engine, dtype, n))
            if r is None:
                cells += ["", ""]
                continue
            mark = (lambda c: c) if r.get("measured", True) else (lambda c: f"*{c}*")
            cells += [mark(f"{n / r['prefill_s']:.0f}"), mark(f"{1 / r['step_s']:.1f}")]
        if ran:
            bf16, f16 = index.get(("yoco", "bfloat16", n)), index.get(("llama.cpp", "f16", n))
            fp32, f32 = index.get(("yoco", "float32", n)), index.get(("llama.cpp", "f32", n))
            cells += [
                f"{f16['step_s'] / bf16['step_s']:.2f}x" if f16 else "",
                f"{f16['prefill_s'] / bf16['prefill_s']:.1f}x" if f16 else "",
                f"{f32['step_s'] / fp32['step_s']:.2f}x" if f32 else "",
                f"{f32['prefill_s'] / fp32['prefill_s']:.1f}x" if f32 else "",
            ]
        body.append(cells)
    out.append(_table(header, body))
    shares = [
        f"{r['dtype']} {_k(r['length'])}: {r['read_share']:.0%}"
        for r in versus["rows"]
        if r["engine"] == "yoco" and r["length"] == max(versus["lengths"])
    ]
    out += [
        "",
        "YOCO-gRet decode at the longest of these prompts, share of the read bandwidth: "
        + ", ".join(shares)
        + ".",
    ]
    return out


def plot(results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    panels = [("prefill_s", "prefill seconds"), ("cache_bytes", "cache GiB"), ("step_s", "decode ms/token")]
    scale = {"prefill_s": 1.0, "cache_bytes": 1 / GiB, "step_s": 1e3}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    series = sorted({(r["system"], r["kv_cache_dtype"]) for r in rows})
    for ax, (key, title) in zip(axes, panels, strict=True):
        for system, kv in series:
            own = [r for r in rows if (r["system"], r["kv_cache_dtype"]) == (system, kv)]
            name = label(system) + (" int8 cache" if kv == "int8" else "")
            measured = [r for r in own if r["measured"]]
            line = ax.plot(
                [r["length"] for r in measured],
                [r[key] * scale[key] for r in measured],
                marker="o",
                label=name,
            )
            guessed = [measured[-1], *[r for r in own if not r["measured"]]] if measured else []
            if len(guessed) > 1:
                ax.plot(
                    [r["length"] for r in guessed],
                    [r[key] * scale[key] for r in guessed],
                    linestyle="--",
                    color=line[0].get_color(),
                    label=f"{name} (extrapolated)",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt length (tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
