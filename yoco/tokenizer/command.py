"""`yoco tokenizer train --out DIR [--vocab-size N] [--source PATH ...] [--max-docs N]`.

Trains a byte-level BPE with Hugging Face ``tokenizers`` on the given data sources (default:
the embedded standard-library corpus) and saves it; point a recipe's ``tokenizer.path`` at DIR.
"""

import argparse
import sys
from pathlib import Path

from yoco.data.sources import DataError, list_documents
from yoco.tokenizer import train_bpe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco tokenizer", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    trainer = sub.add_parser("train", help="train a BPE tokenizer")
    trainer.add_argument("--out", required=True)
    trainer.add_argument("--vocab-size", type=int, default=8192)
    trainer.add_argument("--source", action="append", help="file, folder or 'stdlib' (repeatable)")
    trainer.add_argument("--max-docs", type=int, help="use at most this many documents per source")
    args = parser.parse_args(argv)
    try:
        docs = []
        for source in args.source or ["stdlib"]:
            docs.extend(list_documents(source)[: args.max_docs])
        tokenizer = train_bpe((d.text() for d in docs), args.vocab_size)
    except (DataError, ValueError) as error:
        sys.exit(f"yoco tokenizer: {error}")
    tokenizer.save_pretrained(Path(args.out))
    print(f"trained a {len(tokenizer)}-token BPE on {len(docs)} documents -> {args.out}")
