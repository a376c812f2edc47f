"""Profiling (what `yoco bench` runs): prefill latency, memory and decode throughput of YOCO against a Transformer
and Hugging Face Llama of the same shape, beside the theoretical ratios.

One run measures every (dtype, context length, system) cell, interleaving the systems inside
each repeat so that machine drift hits all of them alike, and writes JSON, a Markdown report
and PNG plots. ``--quick`` runs a tiny grid (the test suite uses it as a smoke test).
"""

import statistics
import threading
import time

import psutil
import torch
from tqdm import tqdm

from yoco.allocator import release_freed_memory
from yoco.bench.environment import environment
from yoco.bench.flops import Shape, cache_bytes, decode_bytes, prefill_flops
from yoco.bench.systems import SYSTEMS, Runner, build_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_SHAPE = Shape(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    sliding_window=1024,
)
QUICK_SHAPE = Shape(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=32,
    gret_chunk_size=16,
)


def matmul_peak(dtype: torch.dtype, size: int = 4096, repeats: int = 3) -> float:
    """Measured FLOP/s of one square matrix product in ``dtype`` (median of ``repeats``)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Measured bytes/s of one plain read of ``nbytes`` (a float32 sum; best of ``repeats``):
    the limit a decoding step, which reads its weights and cache once, is compared with."""
    x = torch.ones(nbytes // 4)
    x.sum()
    best = min(timed(x.sum)[1] for _ in range(repeats))
    return nbytes / best


class PeakRSS:
    """Samples this process's resident memory in a thread; ``growth`` is peak minus start.

    Free memory malloc kept from earlier work (:mod:`yoco.allocator`) is handed back first, so
    the peak and the growth are those of the measured work, not of whatever ran before it."""

    def __init__(self, interval: float = 0.002):
        self.process, self.interval = psutil.Process(), interval

    def __enter__(self):
        release_freed_memory()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def decode_step_times(step, steps: int) -> dict:
    """``steps`` calls of ``step()`` (one decode step each), timed one by one: the median
    (``step_s``, what the tables report: on a shared machine a neighbour's burst slows a few
    steps by 30% or more, which a mean passes on) and the mean (``step_mean_s``)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return dict(step_s=statistics.median(times), step_mean_s=statistics.fmean(times))


def run(args) -> dict:
    shape = QUICK_SHAPE if args.quick else DEFAULT_SHAPE
    if args.window:
        shape = Shape(**{**shape.__dict__, "sliding_window": args.window})
    lengths = args.lengths or ([64, 128] if args.quick else [1024 * 2**i for i in range(6)])
    dtypes = args.dtypes or ["float32", "bfloat16"]
    systems = args.systems or list(SYSTEMS)
    repeats = args.repeats or (1 if args.quick else 3)
    new_tokens = args.new_tokens or (4 if args.quick else 64)
    budget_tokens = args.budget_new_tokens or (4 if args.quick else 16)
    budget = int(args.budget_gib * 2**30)
    max_positions = max(lengths) + new_tokens

    # Both products are measured whatever is run: bfloat16 prefill is measured against the faster
    # of the two (bfloat16 operands are multiplied in float32 where that is faster, yoco.layers.linear).
    peaks = {
        name: matmul_peak(DTYPES[name], size=512 if args.quick else 4096) for name in ("float32", "bfloat16")
    }
    cells = []
    total = len(dtypes) * len(lengths) * len(systems) * (repeats + 1)
    bar = tqdm(total=total, desc="yoco bench", unit="run", disable=args.no_progress)
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        runners = {s: Runner(s, build_model(s, shape, dtype, max_positions)) for s in systems}
        for length in lengths:
            ids = torch.randint(
                0, shape.vocab_size, (1, length), generator=torch.Generator().manual_seed(length)
            )
            times = {s: [] for s in systems}
            caches = {}
            # Repeat 0 is the warm-up; systems are interleaved within every repeat.
            for repeat in range(repeats + 1):
                for system in systems:
                    bar.set_postfix_str(f"{dtype_name} {length} {system} run {repeat}")
                    caches.pop(system, None)
                    (logits, cache), seconds = timed(runners[system].prefill, ids, reserve=new_tokens)
                    if repeat:
                        times[system].append(seconds)
                    caches[system] = (logits, cache)
                    bar.update()
            for system in systems:
                runner = runners[system]
                logits, cache = caches.pop(system)
                bar.set_postfix_str(f"{dtype_name} {length} {system} decode")
                cells.append(
                    decode_and_memory(
                        runner,
                        ids,
                        logits,
                        cache,
                        times[system],
                        new_tokens,
                        budget,
                        args.max_batch,
                        budget_tokens,
                    )
                    | dict(
                        system=system,
                        dtype=dtype_name,
                        length=length,
                        flops=prefill_flops(system, shape, length),
                        theory_cache_bytes=cache_bytes(system, shape, length, dtype.itemsize),
                        theory_decode_bytes=decode_bytes(system, shape, length, dtype.itemsize),
                    )
                )
                cells[-1]["theory_budget_step_bytes"] = decode_bytes(
                    system, shape, length, dtype.itemsize, batch=cells[-1]["budget_batch"]
                )
                del logits, cache
        del runners
    bar.close()
    for cell in cells:
        cell["achieved_flops"] = cell["flops"] / cell["prefill_s"]
        limit = max(peaks.values()) if cell["dtype"] == "bfloat16" else peaks[cell["dtype"]]
        cell["peak_fraction"] = cell["achieved_flops"] / limit
    return dict(
        meta=machine_facts(args, shape, lengths, dtypes, systems, repeats, new_tokens, budget_tokens),
        peaks=peaks,
        cells=cells,
    )


def decode_and_memory(
    runner: Runner, ids, logits, cache, prefill_times, new_tokens, budget, max_batch, budget_tokens
) -> dict:
    """Decode speed at batch 1 and at the largest batch whose cache fits ``budget``, plus the
    resident-memory growth of one prefill + decode at batch 1."""
    cache_after_prefill = runner.cache_nbytes(cache)
    # Memory: a fresh prefill and a batch-1 decode, watched from the start.
    del cache
    with PeakRSS() as rss:
        logits, cache = runner.prefill(ids, reserve=new_tokens)
        runner.decode(logits, runner.replicate(cache, 1), 2)  # warm-up
        working = runner.replicate(cache, 1)
        _, seconds = timed(runner.decode, logits, working, new_tokens)
    tokens_per_s = new_tokens / seconds
    per_sequence = runner.cache_nbytes(working)  # after new_tokens more: the most a sequence holds
    del working
    batch = max(1, min(max_batch, budget // max(per_sequence, 1)))
    batch_logits = logits.expand(batch, -1)
    # A new batch shape: let the kernels settle on a throwaway copy first.
    runner.decode(batch_logits, runner.replicate(cache, batch), 2)
    _, batch_seconds = timed(runner.decode, batch_logits, runner.replicate(cache, batch), budget_tokens)
    return dict(
        prefill_runs_s=prefill_times,
        prefill_s=statistics.median(prefill_times),
        cache_bytes=cache_after_prefill,
        rss_growth_bytes=rss.growth,
        decode_tokens_per_s=tokens_per_s,
        budget_batch=batch,
        budget_tokens_per_s=batch * budget_tokens / batch_seconds,
    )


def machine_facts(args, shape, lengths, dtypes, systems, repeats, new_tokens, budget_tokens) -> dict:
    return dict(
        command="yoco bench " + " ".join(args.argv),
        environment=environment(),
        shape=shape.__dict__,
        lengths=lengths,
        dtypes=dtypes,
        systems=systems,
        repeats=repeats,
        new_tokens=new_tokens,
        budget_new_tokens=budget_tokens,
        budget_gib=args.budget_gib,
        max_batch=args.max_batch,
    )
