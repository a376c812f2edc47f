"""The `yoco` command. Each subcommand lives in its own module and parses its own flags."""

import sys

COMMANDS = {
    "quickstart": ("yoco.quickstart", "train a tiny YOCO, generate with it, profile it (make demo)"),
    "demo": ("yoco.demo", "compare untrained YOCO and Transformer models of the same shape"),
    "generate": ("yoco.generate_cli", "stream a completion from a model"),
    "train": ("yoco.train.cli", "train a model from a TOML recipe"),
    "plot": ("yoco.train.plot", "draw the loss curve of a training run"),
    "tokenizer": ("yoco.tokenizer_cli", "train a BPE tokenizer: yoco tokenizer train ..."),
    "eval": ("yoco.eval.cli", "perplexity, needle in a haystack, MQAR recall"),
    "bench": ("yoco.bench.profile", "profile prefill, memory and decode against a Transformer and HF Llama"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: yoco COMMAND [flags]   (yoco COMMAND --help for its flags)\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<10} {summary}")
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"\nyoco: unknown command {argv[0]!r}")
        return
    module_name, _ = COMMANDS[argv[0]]
    module = __import__(module_name, fromlist=["main"])
    module.main(argv[1:])
