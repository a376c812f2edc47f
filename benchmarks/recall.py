"""MQAR recall benchmark: `python benchmarks/recall.py [yoco eval mqar options]`.

Trains the recall probes (YOCO-SWA, YOCO-gRet, SWA-only, gRet-only, Transformer) from
scratch on Zoology's multi-query associative recall and writes the accuracy table into
docs/EVALUATION.md. Same options as `yoco eval mqar`; see docs/EVALUATION.md for the run.
"""

import sys

from yoco.cli import main

if __name__ == "__main__":
    options = sys.argv[1:]
    if "--evaluation-md" not in options:
        options += ["--evaluation-md", "docs/EVALUATION.md"]
    main(["eval", "mqar", *options])
