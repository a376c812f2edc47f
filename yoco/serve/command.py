"""`yoco serve`: an OpenAI-compatible server for a saved model, with continuous batching.

    yoco serve --model runs/qs [--host 127.0.0.1] [--port 8000] [--dtype auto] [--kv-budget-gib 4]

The server answers at once; ``/health`` says 503 until the model has loaded, then 200. The
cache budget bounds the memory of every request's cache together: a request waits until its
cache fits, and gets a 429 when the queue is full. Only 127.0.0.1 is served unless the host
says otherwise, and any other address needs an API key (``--api-key`` or ``YOCO_API_KEY``)
unless ``--insecure-no-api-key`` says the network is trusted.
"""

import argparse
import contextlib
import ipaddress
import os
import sys
import threading
from pathlib import Path

import torch
import uvicorn

from yoco.models.pretrained import add_config_overrides_argument, load_pretrained, parse_config_overrides
from yoco.serve.app import create_app
from yoco.serve.engine import Engine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="yoco serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="a checkpoint folder or a run folder (its latest checkpoint)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bfloat16 where native"
    )
    parser.add_argument("--kv-budget-gib", type=float, default=4.0, help="memory for all requests' caches")
    parser.add_argument("--max-batch", type=int, default=32, help="requests decoded together at most")
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting at most (then 429)")
    parser.add_argument("--prefill-chunk", type=int, default=2048, help="prompt tokens per engine step")
    parser.add_argument(
        "--prefix-cache-gib",
        type=float,
        default=1.0,
        help="memory for snapshots of prompt prefixes that later prompts reuse (0: no reuse)",
    )
    parser.add_argument("--api-key", default=os.environ.get("YOCO_API_KEY"), help="default: $YOCO_API_KEY")
    parser.add_argument(
        "--insecure-no-api-key",
        action="store_true",
        help="allow serving an address other than localhost without an API key",
    )
    parser.add_argument("--max-body-kib", type=int, default=4096, help="larger request bodies get a 413")
    parser.add_argument(
        "--body-timeout-s", type=float, default=30.0, help="a request body that stalls this long gets a 408"
    )
    parser.add_argument("--name", help="the model's name in /v1/models (default: the folder's name)")
    add_config_overrides_argument(parser)
    args = parser.parse_args(argv)
    args.config_overrides = parse_config_overrides(args.config_overrides)
    for flag in (
        "kv_budget_gib",
        "max_batch",
        "max_queue",
        "prefill_chunk",
        "max_body_kib",
        "body_timeout_s",
    ):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.prefix_cache_gib < 0:
        raise ValueError(f"--prefix-cache-gib must be >= 0, got {args.prefix_cache_gib}")
    if not Path(args.model).exists():
        raise ValueError(f"--model {args.model} does not exist")
    if not _loopback(args.host) and args.api_key is None and not args.insecure_no_api_key:
        raise ValueError(
            f"--host {args.host} serves other machines: give --api-key (or YOCO_API_KEY), or "
            "--insecure-no-api-key if the network is trusted"
        )
    return args


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(args: argparse.Namespace) -> tuple[uvicorn.Server, dict]:
    """The server (not yet running) and its shared state; the model loads in the background
    once the server starts, and ``state["engine"]`` is set when it has."""
    state = {"engine": None, "tokenizer": None, "error": None}
    name = args.name or Path(args.model).resolve().name

    def load() -> None:
        try:
            if args.dtype == "auto":
                from yoco.train.loop import native_bf16

                dtype = torch.bfloat16 if native_bf16(torch.device("cpu")) else torch.float32
            else:
                dtype = DTYPES[args.dtype]
            model, tokenizer = load_pretrained(args.model, dtype, args.config_overrides)
            engine = Engine(
                model,
                kv_budget_bytes=int(args.kv_budget_gib * 2**30),
                max_batch=args.max_batch,
                max_queue=args.max_queue,
                prefill_chunk=args.prefill_chunk,
                prefix_cache_bytes=int(args.prefix_cache_gib * 2**30),
                on_first_token=state["metrics"].ttft.observe,
            )
            state["tokenizer"], state["engine"] = tokenizer, engine
        except Exception as error:  # reported by /health and on the console; the server stops
            state["error"] = error
            print(f"yoco serve: could not load {args.model}: {error}", file=sys.stderr)
            server.should_exit = True

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load, name="yoco-serve-load", daemon=True).start()
        yield
        if state["engine"] is not None:
            state["engine"].stop()

    app = create_app(
        state,
        name,
        api_key=args.api_key,
        max_body_bytes=args.max_body_kib * 1024,
        body_timeout_s=args.body_timeout_s,
        lifespan=lifespan,
    )
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    return server, state


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    server, state = build_server(args)
    print(
        f"yoco serve: http://{args.host}:{args.port} (loading {args.model}; /health says when ready)",
        file=sys.stderr,
    )
    server.run()
    if state["error"] is not None:
        raise ValueError(f"could not load {args.model}: {state['error']}")
