"""Loss curves from a run's metrics.jsonl (`yoco plot DIR`, and at the end of training)."""

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        (line,) = ax.plot(
            [r[x] / scale for r in records], [r["loss"] for r in records], alpha=0.6, label=f"{label} train"
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
