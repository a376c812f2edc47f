"""The `yoco` command. Each subcommand lives in its own module and parses its own flags.

A mistake a user can make (a bad flag value, a missing or corrupt file, a recipe that does not
fit the run it resumes) ends the command with one line naming the problem and exit status 1.
``--debug`` anywhere on the command line, or ``YOCO_DEBUG=1``, shows the full traceback instead.
"""

import importlib
import os
import sys

from yoco.allocator import keep_freed_memory

# name: ("module:function", summary). Modules are imported only when their command runs.
COMMANDS = {
    "quickstart": (
        "yoco.demo.quickstart:main",
        "train a tiny YOCO, generate with it, profile it (make demo)",
    ),
    "compare": ("yoco.demo.compare:main", "compare untrained YOCO and Transformer models of the same shape"),
    "generate": ("yoco.inference.command:main", "stream a completion from a model"),
    "serve": ("yoco.serve.command:main", "an OpenAI-compatible server with continuous batching"),
    "train": ("yoco.train.command:main", "train a model from a TOML recipe"),
    "plot": ("yoco.train.command:plot", "draw the loss curve of a training run"),
    "tokenizer": ("yoco.tokenizer.command:main", "train a BPE tokenizer: yoco tokenizer train ..."),
    "eval": ("yoco.eval.command:main", "perplexity, needle in a haystack, copying, MQAR recall"),
    "bench": (
        "yoco.bench.command:main",
        "profile prefill, memory and decode against a Transformer and HF Llama",
    ),
}
# Errors that describe the user's input rather than a bug in yoco: their message is enough.
USER_ERRORS = (ValueError, OSError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages joined with '; ')."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, USER_ERRORS) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("YOCO_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: yoco COMMAND [flags]   (yoco COMMAND --help for its flags; --debug for tracebacks)")
        print("\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<10} {summary}")
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"\nyoco: unknown command {argv[0]!r}")
        return
    target, _ = COMMANDS[argv[0]]
    module_name, function = target.split(":")
    command = getattr(importlib.import_module(module_name), function)
    keep_freed_memory()
    try:
        command(argv[1:])
    except KeyboardInterrupt:
        sys.exit(f"\nyoco {argv[0]}: interrupted")
    except Exception as error:
        if debug:
            raise
        hint = "" if isinstance(error, USER_ERRORS) else "  (YOCO_DEBUG=1 shows the traceback)"
        sys.exit(f"yoco {argv[0]}: {one_line(error)}{hint}")
