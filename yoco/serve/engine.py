"""The serving loop: one thread owns the model and runs every request through it.

Requests arrive from the HTTP handlers (:meth:`Engine.submit`) and wait in a bounded queue. The
loop repeats one *step*:

1. **Admission by cache bytes.** A waiting request is admitted when the cache it may grow to
   (its prompt + ``max_tokens``, priced by the model's own cache: ``Engine.cache_bytes``) fits
   the budget beside those already admitted. The budget therefore bounds the memory of every
   cache at once, whatever the load.
2. **One prefill chunk** of the oldest admitted request still prefilling (at most
   ``prefill_chunk`` tokens), so a long prompt never stalls the running streams for its whole
   prefill. After its last chunk the request samples its first token and joins the running
   batch: its cache is stacked onto the batch's (the library's own caches, so every model
   kind serves).
3. **One decode step** for the whole running batch: rows of unequal length decode together
   (the caches mask each row's unused tail). Each row samples with its own settings.
4. Rows that finished (a stop token, ``max_tokens``) or were cancelled (the client went away)
   leave the batch at once, and their bytes return to the budget.

A prompt that begins with the tokens of an earlier one starts from a snapshot of the earlier
one's cache (:mod:`yoco.serve.prefix`) instead of prefilling them again.

Tokens go back through each request's ``emit`` callback, called on the loop's thread.
"""

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from yoco.inference.engine import check_prompt
from yoco.inference.sampling import check_sampling, sample_next
from yoco.models.base import NO_LOGITS
from yoco.serve.prefix import PrefixCache


class QueueFull(Exception):
    """The waiting queue is at ``max_queue``: the HTTP layer answers 429."""


class RequestError(ValueError):
    """A request that can never run; ``param`` names the field at fault (the HTTP layer's 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int
    emit: Callable[[int | None, str | None], None]  # (token, None) per token; (None, reason) at the end
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_token_ids: frozenset[int] = frozenset()
    seed: int | None = None
    # Set by the engine.
    cache_bytes: int = 0
    prefilled: int = 0
    generated: int = 0
    last_token: int = -1
    cancelled: bool = False
    cache: object = None
    generator: torch.Generator | None = None
    arrived: float = field(default_factory=time.perf_counter)


class Engine:
    def __init__(
        self,
        model,
        kv_budget_bytes: int,
        max_batch: int = 32,
        max_queue: int = 256,
        prefill_chunk: int = 2048,
        prefix_cache_bytes: int = 0,
        on_first_token: Callable[[float], None] | None = None,
    ):
        self.model = model
        self.budget, self.max_batch, self.max_queue = kv_budget_bytes, max_batch, max_queue
        self.prefill_chunk = prefill_chunk
        self.prefixes = PrefixCache(prefix_cache_bytes, block=prefill_chunk)
        self.on_first_token = on_first_token or (lambda seconds: None)
        self.fixed_bytes, self.bytes_per_token = self._price_cache()
        self.waiting: collections.deque[Request] = collections.deque()
        self.prefilling: list[Request] = []
        self.running: list[Request] = []  # in the order of the batch cache's rows
        self.batch_cache = None
        self.used_bytes = 0
        self.prompt_tokens = self.generated_tokens = 0
        self.condition = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="yoco-serve-engine", daemon=True)
        self.thread.start()

    @torch.no_grad()
    def _price_cache(self) -> tuple[int, int]:
        """(bytes of an empty cache, bytes per token): from the model's own cache, filled by one
        token (constant-size states are allocated whole, growing K/V count their tokens)."""
        cache = self.model.new_cache(1, 1)
        empty = cache.nbytes()
        self.model(
            torch.zeros(1, 1, dtype=torch.long, device=self.model.device),
            cache=cache,
            logits_to_keep=NO_LOGITS,
        )
        return empty, cache.nbytes() - empty

    def cache_bytes(self, tokens: int) -> int:
        return self.fixed_bytes + self.bytes_per_token * tokens

    def check(self, request: Request) -> None:
        """Raise RequestError for a request that can never run (checked before it queues)."""
        if request.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {request.max_tokens}", "max_tokens")
        try:
            check_sampling(request.temperature, request.top_k, request.top_p)
        except ValueError as error:  # its messages begin with the field's name
            raise RequestError(str(error), str(error).split()[0]) from error
        try:
            check_prompt(self.model, request.prompt, request.max_tokens)
        except ValueError as error:  # empty, ids outside the vocabulary, or too long with max_tokens
            raise RequestError(str(error), "max_tokens" if "exceeds" in str(error) else "prompt") from error
        need = self.cache_bytes(len(request.prompt) + request.max_tokens)
        if need > self.budget:
            raise RequestError(
                f"prompt of {len(request.prompt)} tokens + max_tokens {request.max_tokens} needs a "
                f"{need / 2**20:.1f} MiB cache, more than the whole budget of {self.budget / 2**20:.1f} MiB",
                "max_tokens",
            )

    def submit(self, request: Request) -> None:
        self.check(request)
        request.cache_bytes = self.cache_bytes(len(request.prompt) + request.max_tokens)
        if request.seed is not None:
            request.generator = torch.Generator(device=self.model.device).manual_seed(request.seed)
        with self.condition:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry later")
            self.waiting.append(request)
            self.condition.notify()

    def cancel(self, request: Request) -> None:
        """Stop a request (its client went away): it leaves within one step."""
        with self.condition:
            request.cancelled = True
            self.condition.notify()

    def stop(self) -> None:
        with self.condition:
            self.stopped = True
            self.condition.notify()
        self.thread.join()

    def stats(self) -> dict:
        with self.condition:
            return dict(
                running=len(self.running) + len(self.prefilling),
                waiting=len(self.waiting),
                cache_bytes_used=self.used_bytes,
                cache_bytes_budget=self.budget,
                prompt_tokens=self.prompt_tokens,
                generated_tokens=self.generated_tokens,
                prefix_hits=self.prefixes.hits,
                prefix_reused_tokens=self.prefixes.reused_tokens,
                prefix_cache_bytes=self.prefixes.bytes,
            )

    # The loop (its own thread). ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.condition:
                self.condition.wait_for(
                    lambda: self.stopped or self.waiting or self.prefilling or self.running
                )
                if self.stopped:
                    return
                self._drop_cancelled()
                self._admit()
            try:
                self._step()
            except Exception as error:  # a bug: end every request with the error, keep serving
                with self.condition:
                    for request in [*self.prefilling, *self.running]:
                        request.emit(None, f"error: {error}")
                    self.prefilling, self.running, self.batch_cache = [], [], None
                    self.used_bytes = 0

    def _finish(self, request: Request, reason: str | None) -> None:
        """Give the request's bytes back; tell its client why it ended (None: it left)."""
        self.used_bytes -= request.cache_bytes
        request.cache = None
        if reason is not None:
            request.emit(None, reason)

    def _drop_cancelled(self) -> None:
        self.waiting = collections.deque(r for r in self.waiting if not r.cancelled)
        for request in [r for r in self.prefilling if r.cancelled]:
            self.prefilling.remove(request)
            self._finish(request, None)
        self._leave({i: None for i, r in enumerate(self.running) if r.cancelled})

    def _admit(self) -> None:
        while (
            self.waiting
            and len(self.running) + len(self.prefilling) < self.max_batch
            and self.used_bytes + self.waiting[0].cache_bytes <= self.budget
        ):
            request = self.waiting.popleft()
            self.used_bytes += request.cache_bytes
            self.prefilling.append(request)

    def _leave(self, leaving: dict[int, str | None]) -> None:
        """Running rows (index -> finish reason; None: cancelled) leave the batch and its cache."""
        if not leaving:
            return
        for index, reason in leaving.items():
            self._finish(self.running[index], reason)
        rows = [i for i in range(len(self.running)) if i not in leaving]
        self.running = [self.running[i] for i in rows]
        if rows:
            self.batch_cache.reorder_cache(torch.tensor(rows))
        else:
            self.batch_cache = None

    def _sample(self, request: Request, logits: torch.Tensor) -> tuple[int, str | None]:
        """The request's next token from its logits (1, vocab); a finish reason if it ends."""
        token = int(sample_next(logits, request.temperature, request.top_k, request.top_p, request.generator))
        request.generated += 1
        request.last_token = token
        self.generated_tokens += 1
        request.emit(token, None)
        if token in request.stop_token_ids:
            return token, "stop"
        if request.generated >= request.max_tokens:
            return token, "length"
        return token, None

    @torch.no_grad()
    def _step(self) -> None:
        model = self.model
        if self.prefilling:
            request = self.prefilling[0]
            if request.cache is None:
                capacity = len(request.prompt) + request.max_tokens
                request.prefilled, request.cache = self.prefixes.restore(model, request.prompt, capacity)
                if request.cache is None:  # (not `or`: an empty transformers Cache is falsy)
                    request.cache = model.new_cache(1, capacity)
            start = request.prefilled
            chunk = request.prompt[start : start + self.prefill_chunk]
            ids = torch.tensor([chunk], device=model.device)
            request.prefilled += len(chunk)
            if request.prefilled < len(request.prompt):
                model(ids, cache=request.cache, logits_to_keep=NO_LOGITS)
                # Chunks start at multiples of prefill_chunk, so this is a block boundary.
                self.prefixes.put(request.prompt, request.prefilled, request.cache)
            else:
                logits = model(ids, cache=request.cache, logits_to_keep=1).logits[:, -1]
                self.prompt_tokens += len(request.prompt)
                self.on_first_token(time.perf_counter() - request.arrived)
                with self.condition:
                    self.prefilling.pop(0)
                    _, reason = self._sample(request, logits)
                    if reason is not None:
                        self._finish(request, reason)
                    else:
                        caches = [self.batch_cache, request.cache] if self.batch_cache is not None else None
                        self.batch_cache = type(request.cache).stack(caches) if caches else request.cache
                        request.cache = None  # its rows live in the batch cache now
                        self.running.append(request)
        if not self.running:
            return
        tokens = torch.tensor([[r.last_token] for r in self.running], device=model.device)
        logits = model(tokens, cache=self.batch_cache, logits_to_keep=1).logits[:, -1]
        with self.condition:
            reasons = [self._sample(r, logits[i : i + 1])[1] for i, r in enumerate(self.running)]
            self._leave(
                {
                    i: reason
                    for i, (r, reason) in enumerate(zip(self.running, reasons, strict=True))
                    if reason or r.cancelled
                }
            )
