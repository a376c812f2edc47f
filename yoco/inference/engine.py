"""Prefill and generation with one cache per model.

``prefill`` runs a prompt through the model once, filling the cache: for YOCO only the
self-decoder and the shared K/V projection see every prompt token, and the cross-decoder and
LM head run for the last position only. With ``chunk_size`` the prompt goes through in chunks,
so activation memory depends on the chunk, not the prompt.

``generate`` prefills each prompt on its own (so prompts of different lengths need no padding
and give exactly what they give alone), stacks the caches into one batch, then decodes one
token per row per step. ``stream_generate`` yields each step's tokens as they come.

Every argument is checked before any cache is created, so a bad call changes nothing.
Both run under ``no_grad`` rather than ``inference_mode``: a cache made of inference tensors
could not be extended by a later plain forward call.
"""

import operator
from collections.abc import Iterator, Sequence

import torch
from tqdm import tqdm

from yoco.cache import ModelCache, check_kv_cache_dtype
from yoco.inference.sampling import check_sampling, sample_next
from yoco.models.base import NO_LOGITS


def _as_prompts(prompts) -> list[list[int]]:
    """A batch of prompts as lists of ints; a single flat prompt becomes a batch of one.
    Text, float tensors and other non-integers are refused here, at the door."""
    if isinstance(prompts, torch.Tensor):
        prompts = _integer_ids(prompts).tolist()
    if isinstance(prompts, str | bytes) or (prompts and isinstance(prompts[0], str | bytes)):
        raise TypeError(
            "prompts must be token ids, not text: encode the text with the model's tokenizer first"
        )
    if prompts and not isinstance(prompts[0], Sequence | torch.Tensor):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts given")
    return [_integer_ids(p).tolist() if isinstance(p, torch.Tensor) else _ints(p) for p in prompts]


def _integer_ids(ids: torch.Tensor) -> torch.Tensor:
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"token ids must be an integer tensor, got dtype {ids.dtype}")
    return ids


def _ints(prompt) -> list[int]:
    try:
        return [operator.index(token) for token in prompt]
    except TypeError:
        bad = next(t for t in prompt if not hasattr(t, "__index__"))
        raise TypeError(f"token ids must be integers, got {type(bad).__name__} {bad!r}") from None


def check_prompt(model, prompt: Sequence[int], extra_tokens: int = 0, context: int = 0) -> None:
    """Raise ValueError if the prompt is empty, has ids outside the vocabulary, or would run
    past ``max_position_embeddings`` after ``context`` tokens already in a cache and once
    ``extra_tokens`` more are generated."""
    config = model.config
    if len(prompt) == 0:
        raise ValueError("prompt is empty: give at least one token")
    bad = [t for t in prompt if not 0 <= t < config.vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {config.vocab_size})")
    total = context + len(prompt) + extra_tokens
    if total > config.max_position_embeddings:
        kept = f"a cache of {context} tokens + " if context else ""
        raise ValueError(
            f"{kept}prompt of {len(prompt)} tokens + {extra_tokens} new tokens = {total} exceeds "
            f"max_position_embeddings={config.max_position_embeddings}"
        )


REPLY_ROOM = 1024  # tokens prefill reserves after the prompt unless told the capacity


@torch.no_grad()
def prefill(
    model,
    input_ids,
    chunk_size: int | None = None,
    capacity: int | None = None,
    cache: ModelCache | None = None,
    progress: bool = False,
    kv_cache_dtype: str = "auto",
) -> tuple[torch.Tensor, ModelCache]:
    """Run a prompt (N,) or a batch of equal-length prompts (B, N) into a fresh cache, or on
    from the end of ``cache`` (a kept context: the prompt continues it).

    Returns the logits for the last position (B, vocab) and the cache. ``capacity`` reserves
    room for that many tokens up front (default: the prompt and ``REPLY_ROOM`` more), so the
    steps that follow write in place: growing a cache copies it, 2 GiB at 1M tokens.
    ``progress`` shows a bar over the prompt's chunks (a 1M-token prompt takes minutes).
    ``kv_cache_dtype``: how a fresh cache stores keys and values, "auto" (the model's dtype)
    or "int8" (see ``model.new_cache``).
    """
    ids = torch.as_tensor(_as_prompts(input_ids) if not isinstance(input_ids, torch.Tensor) else input_ids)
    ids = _integer_ids(ids).to(model.device)
    ids = ids[None] if ids.dim() == 1 else ids
    context = max(cache.lengths) if cache is not None else 0
    for row in ids.tolist():
        check_prompt(model, row, context=context)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = ids.shape[1]
    if cache is None:
        cache = model.new_cache(ids.shape[0], capacity or n + REPLY_ROOM, kv_cache_dtype)
    else:
        cache.check_step(ids.shape[0], n, model.dtype)
    step = chunk_size or n
    bar = tqdm(total=n, desc="prefill", unit="tok", unit_scale=True, disable=not progress, leave=False)
    for start in range(0, n - step, step):  # every chunk but the last: fill the cache only
        model(ids[:, start : start + step], cache=cache, logits_to_keep=NO_LOGITS)
        bar.update(step)
    last_chunk = ids[:, ((n - 1) // step) * step :]
    logits = model(last_chunk, cache=cache, logits_to_keep=1).logits[:, -1]
    bar.update(last_chunk.shape[1])
    bar.close()
    return logits, cache


@torch.no_grad()
def stream_generate(
    model,
    prompts,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_token_ids: Sequence[int] | None = None,
    prefill_chunk_size: int | None = None,
    seed: int | None = None,
    kv_cache_dtype: str = "auto",
) -> Iterator[list[int | None]]:
    """Yield, at each step, one new token per prompt (None for prompts that have stopped).

    A prompt stops after emitting a token in ``stop_token_ids`` (that token is yielded) or
    after ``max_new_tokens``. ``kv_cache_dtype`` as in :func:`prefill`.
    """
    prompts = _as_prompts(prompts)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    check_kv_cache_dtype(kv_cache_dtype)
    for prompt in prompts:
        check_prompt(model, prompt, max_new_tokens)
    stops = stop_token_ids or ()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(seed)

    logits, caches = [], []
    for prompt in prompts:
        last, cache = prefill(
            model,
            prompt,
            prefill_chunk_size,
            capacity=len(prompt) + max_new_tokens,
            kv_cache_dtype=kv_cache_dtype,
        )
        logits.append(last)
        caches.append(cache)
    cache = caches[0] if len(caches) == 1 else type(caches[0]).stack(caches)
    yield from decode(
        model, torch.cat(logits), cache, max_new_tokens, temperature, top_k, top_p, stops, generator
    )


@torch.no_grad()
def decode(
    model,
    logits: torch.Tensor,
    cache: ModelCache,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_token_ids=(),
    generator: torch.Generator | None = None,
) -> Iterator[list[int | None]]:
    """The decoding loop after a prefill: sample a token per row from ``logits`` (B, vocab),
    yield them (None for rows that have stopped), run them through ``cache``, repeat."""
    stops = set(stop_token_ids)
    done = [False] * logits.shape[0]
    for step in range(max_new_tokens):
        tokens = sample_next(logits, temperature, top_k, top_p, generator)
        emitted = [None if d else t for d, t in zip(done, tokens.tolist(), strict=True)]
        done = [d or (t in stops) for d, t in zip(done, tokens.tolist(), strict=True)]
        yield emitted
        if all(done) or step == max_new_tokens - 1:
            return
        logits = model(tokens[:, None], cache=cache, logits_to_keep=1).logits[:, -1]


def generate(model, prompts, max_new_tokens: int, **options) -> list[list[int]]:
    """New tokens for each prompt (prompt excluded); options as in :func:`stream_generate`."""
    outputs: list[list[int]] | None = None
    for step in stream_generate(model, prompts, max_new_tokens, **options):
        outputs = outputs or [[] for _ in step]
        for row, token in enumerate(step):
            if token is not None:
                outputs[row].append(token)
    return outputs
