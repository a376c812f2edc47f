"""Profiling benchmark: `python benchmarks/profiling.py [flags]` is `yoco bench [flags]`.

(Not named profile.py: a script's folder comes first on sys.path, and a profile.py there
shadows the standard library's `profile`, which torch imports.)

The full default grid (1K..32K tokens, float32 and bfloat16, four systems) writes
docs/bench/ and the profile section of docs/BENCHMARKS.md:

    python benchmarks/profiling.py --benchmarks-md docs/BENCHMARKS.md
"""

import sys

from yoco.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
