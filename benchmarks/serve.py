"""Serving under load: YOCO-gRet against our Transformer, same server, same cache budget.

    python benchmarks/serve.py [--clients 16] [--requests 16] [--prompt-tokens 16384] [--new-tokens 64]
                               [--kv-budget-gib 1] [--prefix-tokens 12288] [--quick]

For each system a random model of the default shape (bfloat16) is saved with a 32000-word
tokenizer and served by `yoco serve` on 127.0.0.1. ``--clients`` threads send streamed
completions (distinct random prompts of ``--prompt-tokens`` token ids) until ``--requests``
have completed. Reported: completed requests per minute, generated tokens/s, p50 / p99 time to
first token, the most requests running at once (sampled from the engine), peak RSS. Then, with
prefix reuse off and on, requests that share their first ``--prefix-tokens`` tokens are sent
one after another: the time to first token of all but the first. Results: docs/BENCHMARKS.md.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serve.test_serve import start, stop  # noqa: E402  (the tests' way to run a server in-process)
from yoco.bench.environment import describe, environment  # noqa: E402
from yoco.bench.profile import DEFAULT_SHAPE, QUICK_SHAPE  # noqa: E402
from yoco.bench.report import label  # noqa: E402
from yoco.bench.systems import build_model  # noqa: E402


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """One word per id ("t0" .. ): decodes any id, so random models can be served."""
    vocab = {f"t{i}": i for i in range(vocab_size - 1)} | {"<eos>": vocab_size - 1}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def stream_one(served, prompt: list[int], new_tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens received) of one streamed completion."""
    start_time, first, count = time.perf_counter(), None, 0
    stream = served.client.completions.create(
        model="m", prompt=prompt, max_tokens=new_tokens, temperature=0, stream=True
    )
    for piece in stream:
        if piece.choices and piece.choices[0].text:
            first = first or time.perf_counter() - start_time
            count += len(piece.choices[0].text.split())
    return first or time.perf_counter() - start_time, count


def load(served, args, vocab: int) -> dict:
    engine = served.state["engine"]
    gen = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(0, vocab - 1, (args.prompt_tokens,), generator=gen).tolist()
        for _ in range(args.requests)
    ]
    ttfts, tokens, lock, most, peak = [], [0], threading.Lock(), [0], [0]
    process, done = psutil.Process(), threading.Event()

    def watch():
        while not done.is_set():
            most[0] = max(most[0], engine.stats()["running"])
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.05)

    def client():
        while True:
            with lock:
                if not prompts:
                    return
                prompt = prompts.pop()
            ttft, count = stream_one(served, prompt, args.new_tokens)
            with lock:
                ttfts.append(ttft)
                tokens[0] += count

    watcher = threading.Thread(target=watch)
    watcher.start()
    start_time = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_time
    done.set()
    watcher.join()
    ttfts.sort()
    return dict(
        requests_per_min=60 * len(ttfts) / wall,
        tokens_per_s=tokens[0] / wall,
        ttft_p50=statistics.median(ttfts),
        ttft_p99=ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        most_running=most[0],
        peak_rss_gib=peak[0] / 2**30,
        wall_s=wall,
    )


def shared_prefix_ttft(served, args, vocab: int, count: int = 4) -> float:
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, vocab - 1, (args.prefix_tokens,), generator=gen).tolist()
    rest = args.prompt_tokens - args.prefix_tokens
    times = []
    for _ in range(count):
        prompt = prefix + torch.randint(0, vocab - 1, (rest,), generator=gen).tolist()
        times.append(stream_one(served, prompt, 4)[0])
    return statistics.median(times[1:])  # the first one has nothing to reuse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16384)
    parser.add_argument("--new-tokens", type=int, default=64)
    # 1 GiB holds three 16K-token Transformer caches (257 MiB each) and thirty YOCO-gRet ones.
    parser.add_argument("--kv-budget-gib", type=float, default=1.0)
    parser.add_argument("--prefix-tokens", type=int, default=12288)
    parser.add_argument("--prefill-chunk", type=int, default=2048)
    parser.add_argument("--systems", nargs="+", default=["yoco-gret", "transformer"])
    parser.add_argument("--quick", action="store_true", help="tiny shape and prompts (a smoke run)")
    args = parser.parse_args()
    shape = QUICK_SHAPE if args.quick else DEFAULT_SHAPE
    if args.quick:
        args.prompt_tokens, args.prefix_tokens, args.new_tokens, args.prefill_chunk = 256, 192, 8, 64
    print(describe(environment()))
    print(
        f"{args.clients} clients, {args.requests} requests of {args.prompt_tokens} prompt tokens + "
        f"{args.new_tokens} new, budget {args.kv_budget_gib} GiB, prefill chunk {args.prefill_chunk}, bfloat16\n"
    )
    rows = []
    for system in args.systems:
        with tempfile.TemporaryDirectory() as folder:
            positions = args.prompt_tokens + args.new_tokens + 16
            build_model(system, shape, torch.bfloat16, positions).save_pretrained(folder)
            word_tokenizer(shape.vocab_size).save_pretrained(folder)
            flags = ["--dtype", "bfloat16", "--kv-budget-gib", str(args.kv_budget_gib), "--max-batch", "64"]
            flags += ["--prefill-chunk", str(args.prefill_chunk)]
            served = start(folder, *flags, "--prefix-cache-gib", "0")
            try:
                result = load(served, args, shape.vocab_size)
                result["prefix_off"] = shared_prefix_ttft(served, args, shape.vocab_size)
            finally:
                stop(served)
            served = start(folder, *flags, "--prefix-cache-gib", "4")
            try:
                result["prefix_on"] = shared_prefix_ttft(served, args, shape.vocab_size)
            finally:
                stop(served)
        rows.append((system, result))
        print(system, result, flush=True)
    print(
        "\n| system | requests/min | generated tokens/s | TTFT p50 s | TTFT p99 s | most running at once "
        "| peak RSS GiB | shared-prefix TTFT, reuse off / on s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for system, r in rows:
        print(
            f"| {label(system)} | {r['requests_per_min']:.1f} | {r['tokens_per_s']:.1f} | {r['ttft_p50']:.2f} "
            f"| {r['ttft_p99']:.2f} | {r['most_running']} | {r['peak_rss_gib']:.2f} "
            f"| {r['prefix_off']:.2f} / {r['prefix_on']:.2f} ({r['prefix_off'] / r['prefix_on']:.1f}x) |"
        )


if __name__ == "__main__":
    main()
