"""Loss curves from a run's metrics.jsonl (`yoco plot DIR`, and at the end of training)."""

import itertools
import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Each value replaced by the mean of it and up to ``window - 1`` values before it."""
    sums = [0.0, *itertools.accumulate(values)]
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def plot_run(
    run_dir: Path, runs: dict[str, Path] | None = None, out: Path | None = None, x: str = "step"
) -> Path:
    """Training (and validation) loss against ``x`` ("step" or "tokens", in millions); several
    runs share the axes if given."""
    scale = {"step": 1, "tokens": 1e6}[x]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = runs or {Path(run_dir).name: Path(run_dir)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, path in runs.items():
        records = read_metrics(path)
        # Batch-to-batch noise would hide the runs behind each other: the training loss is
        # drawn as a trailing mean over about a fiftieth of the run.
        window = max(1, len(records) // 50)
        train = f"{label} train" + (f" (mean of {window} steps)" if window > 1 else "")
        (line,) = ax.plot(
            [r[x] / scale for r in records],
            trailing_mean([r["loss"] for r in records], window),
            alpha=0.5,
            linewidth=1,
            label=train,
        )
        val = [r for r in records if "val_loss" in r]
        if val:
            ax.plot(
                [r[x] / scale for r in val],
                [r["val_loss"] for r in val],
                "o-",
                color=line.get_color(),
                label=f"{label} val",
            )
    ax.set_xlabel({"step": "step", "tokens": "training tokens (millions)"}[x])
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = out or Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
