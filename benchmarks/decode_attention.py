"""Decode attention: one query per head over a long K/V, split-K against SDPA, and over int8.

    python benchmarks/decode_attention.py [--lengths 4096 16384 131072] [--kv-heads 8 2]

Prints, per storage dtype, number of K/V heads and cache length, the time of one step's
attention (best of 7) and the share of the plain read bandwidth (measured in the same run) at
which it reads the cache: SDPA, split-K, and decode attention over the same keys and values stored
int8 (:mod:`yoco.ops.quantize`; its share counts the int8 bytes it reads), through the C kernel
(:mod:`yoco.ops.int8_attention`, where this machine builds it) and through the PyTorch path. 8 query heads of 64
dimensions, batch 1, the cache a slice of a larger buffer as in a decoding cache (int8: written
into a :class:`~yoco.cache.GrowingKV`, values kept positions last as a cache keeps them).
Results: docs/BENCHMARKS.md.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from yoco.bench.environment import environment
from yoco.bench.profile import read_bandwidth
from yoco.cache import GrowingKV
from yoco.ops.decode_attention import decode_attention, int8_decode_attention

HEADS, HEAD_DIM = 8, 64


def best_ms(fn, *args, repeats: int = 7, **kwargs) -> float:
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 131072, 524288])
    parser.add_argument("--kv-heads", type=int, nargs="+", default=[8, 2])
    args = parser.parse_args()
    bandwidth = read_bandwidth() / 2**30
    print(f"{environment()['cpu']}, torch {torch.__version__}; plain read: {bandwidth:.1f} GiB/s\n")
    print(
        "| dtype | K/V heads | keys | K+V MiB | SDPA ms | split-K ms | int8 ms: kernel | PyTorch "
        "| share of read: SDPA | split-K | int8 kernel | int8 PyTorch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for kv_heads in args.kv_heads:
            for n in args.lengths:
                gen = torch.Generator().manual_seed(n)
                q = torch.randn(1, HEADS, 1, HEAD_DIM, generator=gen).to(dtype)
                buffer = torch.randn(2, 1, kv_heads, n + 256, HEAD_DIM, generator=gen).to(dtype)
                k, v = buffer[0][:, :, :n], buffer[1][:, :, :n]
                gib = 2 * k.numel() * k.element_size() / 2**30
                sdpa = best_ms(F.scaled_dot_product_attention, q, k, v, enable_gqa=kv_heads != HEADS)
                split = best_ms(decode_attention, q, k, v)
                store = GrowingKV(1, kv_heads, HEAD_DIM, dtype, "cpu", n + 256, kv_cache_dtype="int8")
                k8, v8, _ = store.append(k, v)
                int8 = best_ms(decode_attention, q, k8, v8)
                int8_pytorch = best_ms(int8_decode_attention, q, k8, v8, native=False)
                int8_gib = (k8.nbytes() + v8.nbytes()) / 2**30

                def share(gib_read: float, ms: float) -> str:  # of the plain read bandwidth
                    return f"{gib_read / ms * 1e3 / bandwidth:.0%}"

                print(
                    f"| {str(dtype)[6:]} | {kv_heads} | {n} | {gib * 1024:.0f} | {sdpa:.2f} | {split:.2f} "
                    f"| {int8:.2f} | {int8_pytorch:.2f} | {share(gib, sdpa)} | {share(gib, split)} "
                    f"| {share(int8_gib, int8)} | {share(int8_gib, int8_pytorch)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
