"""`yoco generate`: stream a completion from a saved model (or a random ``--config tiny`` one).

The prompt is encoded, and the output decoded, with the tokenizer saved beside the model (a
training run saves it in every checkpoint). A random preset, or a saved model without a
tokenizer whose vocabulary is the byte-level one, uses ``yoco.tokenizer.byte_tokenizer()``.

Kept contexts: ``--prompt-file DOC --save-cache DOC.cache`` processes a long document once and
saves its cache (:mod:`yoco.inference.saved_cache`); ``--load-cache DOC.cache --prompt
QUESTION`` later continues from it, so only the question is prefilled.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import TextStreamer

import yoco
from yoco.cache import KV_CACHE_DTYPES
from yoco.inference.engine import check_prompt, decode
from yoco.inference.sampling import check_sampling
from yoco.models import KINDS, PRESETS, build
from yoco.models.pretrained import add_config_overrides_argument, load_pretrained, parse_config_overrides
from yoco.tokenizer import byte_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model(
    path: str | None, preset: str | None, architecture: str, dtype: torch.dtype, overrides: dict | None = None
):
    """(model in eval mode, its tokenizer): a saved one with its saved tokenizer
    (:func:`yoco.models.pretrained.load_pretrained`), or a random preset with the byte-level
    one; ``overrides`` are config fields set on either."""
    if path:
        return load_pretrained(path, dtype, overrides)
    torch.manual_seed(0)
    model = build(architecture, preset, where_applicable={"sliding_window": 256}, **(overrides or {}))
    return model.to(dtype).eval(), byte_tokenizer()


class StdoutStreamer(TextStreamer):
    """transformers' ``TextStreamer``: it decodes the whole generated sequence at each new token
    and writes only text that further tokens cannot change, so a character split over several
    tokens (a UTF-8 byte each, or BPE pieces) comes out whole, never as U+FFFD halves. Unlike
    its parent it ends without a newline: stdout holds exactly the prompt and its completion."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_special_tokens=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco generate", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved model: save_pretrained folder, checkpoint or run folder")
    source.add_argument("--config", choices=sorted(PRESETS), help="random model of a preset shape")
    parser.add_argument(
        "--arch", default="yoco-gret", help=f"with --config: a model name, {', '.join(KINDS)}, +parts"
    )
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text")
    prompt.add_argument("--prompt-file", help="read the prompt from this UTF-8 text file")
    parser.add_argument(
        "--save-cache", metavar="PATH", help="save the cache after the prompt (a kept context)"
    )
    parser.add_argument(
        "--load-cache",
        metavar="PATH",
        help="continue a kept context saved by --save-cache: the prompt follows it",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--prefill-chunk-size", type=int)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    add_config_overrides_argument(parser)
    parser.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="auto",
        help="keys and values in the model's dtype, or int8 with a scale per vector (about half the bytes)",
    )
    args = parser.parse_args(argv)

    # Everything that does not need the model is checked before the (slow) load.
    if args.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if args.prefill_chunk_size is not None and args.prefill_chunk_size < 1:
        raise ValueError(f"prefill chunk size must be >= 1, got {args.prefill_chunk_size}")
    check_sampling(args.temperature, args.top_k, args.top_p)
    text = Path(args.prompt_file).read_text(encoding="utf-8") if args.prompt_file else args.prompt
    if not text:
        raise ValueError("prompt is empty: give at least one character")
    overrides = parse_config_overrides(args.config_overrides)
    model, tokenizer = load_model(args.model, args.config, args.arch, DTYPES[args.dtype], overrides)
    # As training tokenizes its documents: no special tokens added.
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    room = len(prompt) + args.max_new_tokens
    cache = yoco.load_cache(model, args.load_cache, room=room) if args.load_cache else None
    if cache is not None and args.kv_cache_dtype != "auto" and cache.kv_cache_dtype != args.kv_cache_dtype:
        kept = "int8" if cache.kv_cache_dtype == "int8" else "the model's dtype"
        raise ValueError(
            f"--kv-cache-dtype {args.kv_cache_dtype}: {args.load_cache} keeps its keys and values in "
            f"{kept}, and a kept context continues in the format it was saved in"
        )
    context = max(cache.lengths) if cache is not None else 0
    check_prompt(model, prompt, args.max_new_tokens, context)
    start = time.perf_counter()
    logits, cache = yoco.prefill(
        model,
        prompt,
        args.prefill_chunk_size,
        capacity=room,
        cache=cache,
        progress=True,
        kv_cache_dtype=args.kv_cache_dtype,
    )
    prefill_seconds = time.perf_counter() - start
    print(
        f"[prefill: {len(prompt)} tokens after {context} kept in {prefill_seconds:.2f}s, "
        f"{len(prompt) / prefill_seconds:.1f} tokens/s; cache {cache.nbytes() / 2**20:.1f} MiB]",
        file=sys.stderr,
    )
    if args.save_cache:
        ids = prompt if not args.load_cache else None  # a continued context's earlier ids are not known here
        print(
            f"[cache saved: {yoco.save_cache(model, cache, args.save_cache, token_ids=ids)}]", file=sys.stderr
        )

    eos = tokenizer.eos_token_id
    streamer = StdoutStreamer(tokenizer)
    sys.stdout.write(text if not args.prompt_file else "")
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    start, count = time.perf_counter(), 0
    for step in decode(
        model,
        logits,
        cache,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_token_ids=() if eos is None else [eos],
        generator=generator,
    ):
        token = step[0]
        if token is None:
            continue
        count += 1
        streamer.put(torch.tensor([token]))
    elapsed = time.perf_counter() - start
    streamer.end()
    print(f"\n[{count} tokens in {elapsed:.2f}s, {count / elapsed:.1f} tokens/s]", file=sys.stderr)
