"""Mutation check: does the test suite notice when the model is wrong?

Each mutant below is one deliberate bug of the kind that slips into model code (a decay divisor,
a sign, a window off by one, a missing renormalisation). For each, the package is copied to a
scratch folder, the bug is written into the copy, and the tests named for it run against the
copy. A mutant is *caught* when those tests fail; a surviving mutant is a hole in the suite.

    python scripts/mutants.py              # every mutant, a table at the end (about 10 minutes)
    python scripts/mutants.py --list       # the mutants and the tests each runs
    python scripts/mutants.py --only xpos-sign temperature-inverted

To add a mutant, append to MUTANTS: the file, the exact text to replace (it must occur once, so
a refactor that removes it is reported rather than silently skipped), the bug, and the test
files that should catch it. Run with the project's venv (`.venv/bin/python scripts/mutants.py`).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str  # ops, layers, models, cache, sampling, training
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "gret-decay-divisor",
        "layers",
        "yoco/layers/gated_retention.py",
        "GATE_LOGIT_NORMALIZER = 16.0",
        "GATE_LOGIT_NORMALIZER = 8.0",
        ("tests/models/test_reference_model.py", "tests/ops/test_gated_retention.py"),
    ),
    Mutant(
        "gret-chunk-carry",
        "ops",
        "yoco/ops/gated_retention.py",
        "chunk_decay = cum[..., -1].exp()[..., None, None]",
        "chunk_decay = cum[..., -2].exp()[..., None, None]",
        ("tests/ops/test_gated_retention.py",),
    ),
    Mutant(
        "swa-window-off-by-one",
        "ops",
        "yoco/ops/sliding_window.py",
        "band = (c >= a) & (c <= a + window - 1)",
        "band = (c >= a) & (c <= a + window)",
        ("tests/ops/test_sliding_window.py",),
    ),
    Mutant(
        "causal-mask-excludes-self",
        "ops",
        "yoco/ops/attention.py",
        "return k_pos[None, :] <= q_pos[:, None]",
        "return k_pos[None, :] < q_pos[:, None]",
        ("tests/inference/test_inference.py",),
    ),
    Mutant(
        "xpos-sign",
        "layers",
        "yoco/layers/rotary.py",
        "scale = torch.cat((zeta, zeta)) ** power",
        "scale = torch.cat((zeta, zeta)) ** -power",
        ("tests/layers/test_parts.py",),
    ),
    Mutant(
        "cross-attention-scale",
        "layers",
        "yoco/layers/cross_attention.py",
        "out = causal_attention(q, *shared_kv, key_mask)",
        "out = causal_attention(q, *shared_kv, key_mask, scale=1.0 / self.head_dim)",
        ("tests/models/test_reference_model.py",),
    ),
    Mutant(
        "cross-queries-unrotated",
        "layers",
        "yoco/layers/cross_attention.py",
        "q = rope.rotate_queries(q)",
        "q = q",
        ("tests/models/test_reference_model.py",),
    ),
    Mutant(
        "shared-kv-unnormalised",
        "models",
        "yoco/layers/cross_attention.py",
        "h = self.norm(x)",
        "h = x",
        ("tests/models/test_reference_model.py",),
    ),
    Mutant(
        "diff-lambda-init-layer",
        "layers",
        "yoco/layers/differential_attention.py",
        "0.8 - 0.6 * math.exp(-0.3 * (layer - 1))",
        "0.8 - 0.6 * math.exp(-0.3 * layer)",
        ("tests/layers/test_differential_attention.py",),
    ),
    Mutant(
        "moe-no-renormalisation",
        "layers",
        "yoco/layers/moe.py",
        "return probs, weights / weights.sum(dim=-1, keepdim=True), indices",
        "return probs, weights, indices",
        ("tests/layers/test_moe.py",),
    ),
    Mutant(
        "bitnet-weight-scale-max",
        "layers",
        "yoco/layers/bitlinear.py",
        "scale = w32.abs().mean()",
        "scale = w32.abs().max()",
        ("tests/layers/test_bitlinear.py",),
    ),
    Mutant(
        "loss-unshifted-labels",
        "models",
        "yoco/models/base.py",
        "F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)",
        "F.cross_entropy(shifted, labels[:, :-1].reshape(-1), ignore_index=-100)",
        ("tests/models/test_models.py",),
    ),
    Mutant(
        "cache-rows-misaligned",
        "cache",
        "yoco/cache.py",
        "            row += rows\n        out.lengths = [n for s in stores for n in s.lengths]",
        "            row += rows\n        out.lengths = [n for s in stores for n in s.lengths][::-1]",
        ("tests/inference/test_inference.py",),
    ),
    Mutant(
        "window-cache-drops-a-key",
        "cache",
        "yoco/cache.py",
        "held = min(length, self.window - 1)",
        "held = min(length, self.window - 2)",
        ("tests/inference/test_inference.py",),
    ),
    Mutant(
        "temperature-inverted",
        "sampling",
        "yoco/inference/sampling.py",
        "scores = logits.float() / temperature",
        "scores = logits.float() * temperature",
        ("tests/inference/test_inference.py",),
    ),
    Mutant(
        "top-p-nucleus-one-short",
        "sampling",
        "yoco/inference/sampling.py",
        "drop_sorted = cumulative - sorted_scores.softmax(dim=-1) >= top_p",
        "drop_sorted = cumulative >= top_p",
        ("tests/inference/test_inference.py",),
    ),
    Mutant(
        "resume-forgets-data-position",
        "training",
        "yoco/train/loop.py",
        'mixture.load_state_dict(state["trainer"]["data"])',
        "pass",
        ("tests/train/test_loop.py",),
    ),
    Mutant(
        "warmup-off-by-one",
        "training",
        "yoco/train/loop.py",
        "return peak * step / max(1, schedule.warmup_steps)",
        "return peak * (step - 1) / max(1, schedule.warmup_steps)",
        ("tests/train/test_loop.py",),
    ),
]

IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "runs", "docs", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"
)


def scratch_copy(into: Path) -> Path:
    copy = into / "repo"
    shutil.copytree(ROOT, copy, ignore=IGNORED)
    return copy


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """(passed, first failing test or error line) of pytest on ``tests`` inside ``copy``."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=1200)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    return done.returncode == 0, failed[0] if failed else done.stdout.strip().splitlines()[-1:][0]


def check_copy_is_imported(copy: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    where = subprocess.run(
        [sys.executable, "-c", "import yoco; print(yoco.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(copy)):
        sys.exit(f"the scratch copy is not what Python imports (yoco comes from {where})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        sys.exit(f"unknown mutant in {args.only}; --list shows the names")
    if args.list:
        for m in chosen:
            print(f"{m.name:<30} {m.area:<9} {m.path}  ->  {' '.join(m.tests)}")
        return 0

    rows, survivors = [], []
    with tempfile.TemporaryDirectory(prefix="yoco-mutants-") as tmp:
        copy = scratch_copy(Path(tmp))
        check_copy_is_imported(copy)
        baseline_tests = tuple(sorted({t for m in chosen for t in m.tests if (copy / t).exists()}))
        passed, detail = run_tests(copy, baseline_tests)
        if not passed:
            sys.exit(f"the unmutated suite already fails ({detail}): fix that first")
        for m in chosen:
            target = copy / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                rows.append(
                    (m, "STALE", f"the text to mutate occurs {original.count(m.old)} times in {m.path}")
                )
                survivors.append(m.name)
                continue
            missing = [t for t in m.tests if not (copy / t).exists()]
            target.write_text(original.replace(m.old, m.new))
            start = time.perf_counter()
            try:
                passed, detail = run_tests(copy, tuple(t for t in m.tests if t not in missing))
            finally:
                target.write_text(original)
            verdict = "survived" if passed else "caught"
            if passed:
                survivors.append(m.name)
            note = f" (missing test files: {', '.join(missing)})" if missing else ""
            rows.append((m, verdict, f"{detail}{note} [{time.perf_counter() - start:.0f} s]"))
            print(f"{m.name:<30} {verdict:<8} {detail}", flush=True)

    print("\n| mutant | area | bug | verdict | caught by |\n|---|---|---|---|---|")
    for m, verdict, detail in rows:
        bug = f"`{m.old.strip()}` -> `{m.new.strip()}`".replace("\n", " ").replace("|", "\\|")
        print(f"| {m.name} | {m.area} | {bug} | {verdict} | {detail.replace('|', '/')} |")
    caught = len(rows) - len(survivors)
    print(
        f"\n{caught} of {len(rows)} mutants caught"
        + (f"; survived: {', '.join(survivors)}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
