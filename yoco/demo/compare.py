"""`yoco compare`: YOCO-gRet, YOCO-SWA and a Transformer of the same shape, side by side.

Builds the three (randomly initialised) models, runs a few thousand tokens of Python
standard-library source through each, and prints parameters, loss and forward time in
float32 and bfloat16. Later work turns this into the trained quickstart.
"""

import argparse
import time

import torch

from yoco.data.stdlib import stdlib_text
from yoco.models import PRESETS, build
from yoco.tokenizer import encode_bytes

SHAPE = PRESETS["small"]


def build_models(window: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "YOCO-gRet": build("yoco-gret", "small"),
        "YOCO-SWA": build("yoco-swa", "small", sliding_window=window),
        "Transformer": build("transformer", "small"),
    }


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside the embedding and LM head)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    return total, total - embedding


@torch.no_grad()
def timed_loss(model, ids: torch.Tensor, repeats: int = 3) -> tuple[float, float]:
    """(loss, median forward seconds) after one warm-up pass."""
    model(ids)
    times, loss = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        times.append(time.perf_counter() - start)
    return float(loss), sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco compare", description=__doc__)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of stdlib source")
    parser.add_argument("--window", type=int, default=512, help="YOCO-SWA window")
    args = parser.parse_args(argv)

    ids = torch.tensor([encode_bytes(stdlib_text(args.tokens * 2))[: args.tokens]])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"input: {ids.shape[1]} byte tokens of Python standard-library source")
    print(
        f"shape: hidden {SHAPE['hidden_size']}, {SHAPE['num_hidden_layers']} layers, "
        f"{SHAPE['num_attention_heads']} heads ({SHAPE['num_key_value_heads']} kv), "
        f"vocab {SHAPE['vocab_size']}; models are untrained, so loss ~ ln(vocab) = "
        f"{torch.log(torch.tensor(float(SHAPE['vocab_size']))):.3f}\n"
    )
    header = f"{'model':<12} {'params':>10} {'non-emb':>10} {'loss':>7} {'fp32 fwd':>9} {'bf16 fwd':>9}"
    print(header)
    print("-" * len(header))
    for name, model in build_models(args.window).items():
        model.eval()
        total, body = count_parameters(model)
        loss, t32 = timed_loss(model, ids)
        _, t16 = timed_loss(model.to(torch.bfloat16), ids)
        print(f"{name:<12} {total:>10,} {body:>10,} {loss:>7.3f} {t32:>8.3f}s {t16:>8.3f}s")


if __name__ == "__main__":
    main()
