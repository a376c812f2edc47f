"""LM-quality benchmark: `python benchmarks/lm_quality.py --benchmarks-md docs/BENCHMARKS.md`.

Trains YOCO-SWA, YOCO-gRet and a Transformer at equal non-embedding parameters on the same
tokens of the embedded corpus and writes the validation-loss table and curves.
"""

import sys

from yoco.allocator import keep_freed_memory
from yoco.bench.lm_quality import main

if __name__ == "__main__":
    keep_freed_memory()
    main(sys.argv[1:])
