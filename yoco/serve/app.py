"""The HTTP side of `yoco serve`: OpenAI-compatible endpoints on FastAPI, metrics, access rules.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (when the tokenizer has a
chat template), ``GET /v1/models``, ``GET /health`` (503 until the model is loaded) and
``GET /metrics`` (Prometheus). Streams are server-sent events in OpenAI's format, ending with
``data: [DONE]``. Errors have OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``,
and name the field at fault.
"""

import asyncio
import hmac
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from yoco.serve.engine import Engine, QueueFull, RequestError
from yoco.serve.engine import Request as EngineRequest


class Generation(BaseModel):
    """The fields both endpoints share: how much to generate and how to sample it."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = 1


class Completion(Generation):
    prompt: str | list[int]


class Message(BaseModel):
    role: str
    content: str


class ChatCompletion(Generation):
    messages: list[Message] = Field(min_length=1)


class BadRequest(Exception):
    def __init__(
        self, message: str, param: str | None = None, status: int = 400, kind="invalid_request_error"
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


# (name, help, kind) of what the engine counts, read from Engine.stats() at every scrape.
ENGINE_METRICS = [
    ("requests_running", "requests admitted (prefilling or decoding)", GaugeMetricFamily),
    ("requests_waiting", "requests in the queue", GaugeMetricFamily),
    (
        "cache_bytes_used",
        "cache bytes reserved by admitted requests (prompt + max_tokens each)",
        GaugeMetricFamily,
    ),
    ("cache_bytes_budget", "the budget for all requests' caches", GaugeMetricFamily),
    ("prefix_cache_bytes", "bytes held by prefix snapshots", GaugeMetricFamily),
    ("prompt_tokens", "prompt tokens of requests that reached their first token", CounterMetricFamily),
    ("generated_tokens", "tokens generated", CounterMetricFamily),
    ("prefix_hits", "prompts that started from a kept prefix", CounterMetricFamily),
    ("prefix_reused_tokens", "prompt tokens not prefilled thanks to a kept prefix", CounterMetricFamily),
]
STATS_KEYS = {"requests_running": "running", "requests_waiting": "waiting"}


class EngineCollector:
    """Prometheus metrics read from the engine when scraped (zeros while the model loads)."""

    def __init__(self, state: dict):
        self.state = state

    def collect(self):
        engine = self.state.get("engine")
        stats = engine.stats() if engine is not None else {}
        for name, description, family in ENGINE_METRICS:
            yield family(f"yoco_{name}", description, value=stats.get(STATS_KEYS.get(name, name), 0))


class Metrics:
    def __init__(self, state: dict):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(state))
        self.ttft = Histogram(
            "yoco_time_to_first_token_seconds",
            "from arrival to the first token",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TextStream:
    """Generated token ids -> text, piece by piece: a piece is released once it decodes to whole
    characters, and never past the start of a stop string."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        """The new text after ``token`` and whether a stop string has been reached."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [text.find(s) for s in self.stop if s and text.find(s) >= 0]
        if hits:
            self.text = text[: min(hits)]
            return self._release(self.text), True
        self.text = text
        safe = len(text.rstrip("\ufffd"))  # an unfinished UTF-8 sequence waits for its next bytes
        longest = max((len(s) for s in self.stop), default=0)
        if longest > 1:  # hold back what could still become a stop string
            safe = min(safe, len(text) - longest + 1)
        return self._release(text[: max(safe, self.sent)]), False

    def _release(self, upto: str) -> str:
        piece = upto[self.sent :]
        self.sent = max(self.sent, len(upto))
        return piece

    def flush(self) -> str:
        return self._release(self.text)


def create_app(
    state: dict,
    model_name: str,
    api_key: str | None = None,
    max_body_bytes: int = 4 * 2**20,
    body_timeout_s: float = 30.0,
    lifespan=None,
) -> FastAPI:
    """``state`` holds ``engine`` and ``tokenizer`` once the model is loaded (None before);
    ``lifespan`` is FastAPI's (what runs as the server starts and stops)."""
    app = FastAPI(title="yoco serve", lifespan=lifespan)
    metrics = Metrics(state)
    state["metrics"] = metrics

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(
                error_body(f"the body is not valid JSON: {first.get('msg')}", None), status_code=400
            )
        where = first.get("loc", ())
        param = str(where[1]) if len(where) > 1 else None  # the top-level field (a union adds its types)
        message = f"{param}: {first.get('msg')}" if param else f"malformed request body: {first.get('msg')}"
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(BadRequest)
    async def bad(request: Request, error: BadRequest):
        return JSONResponse(error_body(error.message, error.param, error.kind), status_code=error.status)

    app.add_middleware(Gate, api_key=api_key, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)

    def ready() -> tuple[Engine, object]:
        if state.get("engine") is None:
            raise BadRequest("the model is still loading", None, status=503, kind="server_error")
        return state["engine"], state["tokenizer"]

    @app.get("/health")
    async def health():
        if state.get("engine") is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "yoco"}]}

    @app.post("/v1/completions")
    async def completions(body: Completion, request: Request):
        engine, tokenizer = ready()
        if isinstance(body.prompt, str):
            if not body.prompt:
                raise BadRequest("prompt is empty: give at least one character", "prompt")
            ids = tokenizer(body.prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = body.prompt
        return await run(engine, tokenizer, body, ids, request, "text_completion")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletion, request: Request):
        engine, tokenizer = ready()
        if getattr(tokenizer, "chat_template", None) is None:
            raise BadRequest("this model's tokenizer has no chat template: use /v1/completions", "messages")
        messages = [m.model_dump() for m in body.messages]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template wrote any special tokens
        return await run(engine, tokenizer, body, ids, request, "chat.completion")

    async def run(engine: Engine, tokenizer, body, ids: list[int], request: Request, kind: str):
        if body.n != 1:
            raise BadRequest("only n = 1 is supported", "n")
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        eos = tokenizer.eos_token_id
        job = EngineRequest(
            prompt=list(ids),
            max_tokens=body.max_tokens,
            emit=lambda token, reason: loop.call_soon_threadsafe(queue.put_nowait, (token, reason)),
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            stop_token_ids=frozenset() if eos is None else frozenset([eos]),
            seed=body.seed,
        )
        try:
            engine.submit(job)
        except QueueFull as error:
            raise BadRequest(str(error), None, status=429, kind="rate_limit_error") from error
        except RequestError as error:  # checked by the engine, which names the field
            raise BadRequest(str(error), error.param) from error
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        stream = TextStream(tokenizer, stops)
        name = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())

        async def pieces():
            """(text piece, finish reason or None) until the request ends."""
            while True:
                token, reason = await queue.get()
                if reason is not None:
                    yield stream.flush(), ("stop" if reason == "stop" else reason)
                    return
                piece, stopped = stream.push(token)
                if stopped:
                    engine.cancel(job)
                    yield piece, "stop"
                    return
                yield piece, None

        def usage():
            completion = len(stream.ids)
            return {
                "prompt_tokens": len(ids),
                "completion_tokens": completion,
                "total_tokens": len(ids) + completion,
            }

        def choice(text: str, reason: str | None, delta: bool) -> dict:
            if kind == "text_completion":
                return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
            content = {"role": "assistant", "content": text}
            return {"index": 0, ("delta" if delta else "message"): content, "finish_reason": reason}

        def envelope(choices: list[dict], final: bool, chunk: bool) -> dict:
            obj = kind + (".chunk" if chunk and kind == "chat.completion" else "")
            out = {"id": name, "object": obj, "created": created, "model": model_name, "choices": choices}
            if final:
                out["usage"] = usage()
            return out

        if not body.stream:
            text, finish = "", None
            try:
                async for piece, reason in pieces():
                    text, finish = text + piece, reason
            finally:
                engine.cancel(job)  # a client that went away frees its row
            return envelope([choice(text, finish, delta=False)], final=True, chunk=False)

        async def events():
            try:
                async for piece, reason in pieces():
                    if piece or reason:
                        final = reason is not None
                        yield f"data: {json.dumps(envelope([choice(piece, reason, delta=True)], final, chunk=True))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                engine.cancel(job)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class Gate:
    """ASGI middleware in front of every request: the API key (all paths but /health), then the
    body, read whole before the app sees it: over ``max_body_bytes`` is a 413 (before anything
    is parsed), a body that stalls for ``body_timeout_s`` a 408."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout_s: float):
        self.app, self.api_key = app, api_key
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"] != "/health":
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                message = "missing or wrong API key (send Authorization: Bearer KEY)"
                return await _reply(send, 401, error_body(message, None, "authentication_error"))
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        too_large = error_body(f"the request body is over the limit of {limit} bytes", None)
        if headers.get("content-length", "").isdigit() and int(headers["content-length"]) > limit:
            return await _reply(send, 413, too_large)
        body, more = b"", True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                return await _reply(send, 408, error_body("the request body stalled; timed out", None))
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _reply(send, 413, too_large)
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive_again():
            return replay.pop() if replay else await receive()  # then: the client's disconnect

        await self.app(scope, receive_again, send)


async def _reply(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
