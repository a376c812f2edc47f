"""Profiling benchmark: `python benchmarks/profile.py [flags]` is `yoco bench [flags]`.

The full default grid (1K..32K tokens, float32 and bfloat16, four systems) writes
docs/bench/ and the profile section of docs/BENCHMARKS.md:

    python benchmarks/profile.py --benchmarks-md docs/BENCHMARKS.md
"""

import sys

from yoco.bench.profile import main

if __name__ == "__main__":
    main(sys.argv[1:])
