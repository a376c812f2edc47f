"""`yoco generate`: stream a completion from a saved model (or a random ``--config tiny`` one)."""

import argparse
import codecs
import sys
import time

import torch

import yoco
from yoco.inference.sampling import check_sampling
from yoco.models import build_causal_lm
from yoco.models.pretrained import load_pretrained
from yoco.tokenizer import BYTE_VOCAB_SIZE, EOS_ID, encode_bytes

PRESETS = {
    # Randomly initialised shapes for trying the engine before any training.
    "tiny": dict(
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=8192,
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model(path: str | None, preset: str | None, architecture: str, dtype: torch.dtype):
    if path:
        return load_pretrained(path, dtype)[0]
    fields = PRESETS[preset]
    torch.manual_seed(0)
    model = build_causal_lm(architecture, {"sliding_window": 256}, **fields)
    return model.to(dtype).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco generate", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved model: save_pretrained folder, checkpoint or run folder")
    source.add_argument("--config", choices=sorted(PRESETS), help="random model of a preset shape")
    parser.add_argument(
        "--arch", default="yoco-gret", choices=["yoco-gret", "yoco-swa", "transformer"], help="with --config"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--prefill-chunk-size", type=int)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args(argv)

    # Everything that does not need the model is checked before the (slow) load.
    if args.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if args.prefill_chunk_size is not None and args.prefill_chunk_size < 1:
        raise ValueError(f"prefill chunk size must be >= 1, got {args.prefill_chunk_size}")
    check_sampling(args.temperature, args.top_k, args.top_p)
    prompt = encode_bytes(args.prompt)
    if not prompt:
        raise ValueError("prompt is empty: give at least one character")
    model = load_model(args.model, args.config, args.arch, DTYPES[args.dtype])
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(args.prompt)
    start, count = time.perf_counter(), 0
    for step in yoco.stream_generate(
        model,
        [prompt],
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_token_ids=[EOS_ID],
        prefill_chunk_size=args.prefill_chunk_size,
        seed=args.seed,
    ):
        token = step[0]
        if token is None or token >= 256:
            continue
        count += 1
        sys.stdout.write(decoder.decode(bytes([token])))
        sys.stdout.flush()
    elapsed = time.perf_counter() - start
    sys.stdout.write(decoder.decode(b"", final=True))
    print(f"\n[{count} tokens in {elapsed:.2f}s, {count / elapsed:.1f} tokens/s]", file=sys.stderr)
