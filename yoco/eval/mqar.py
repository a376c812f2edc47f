"""Multi-query associative recall (MQAR), the synthetic task of Zoology (Arora et al. 2023).

A sequence starts with ``num_pairs`` key-value pairs ``k1 v1 k2 v2 ...``; keys come from the
first half of the vocabulary (never 0), values from the second half. The rest of the sequence
holds every key once more, as a query, at positions drawn with a power law that favours short
gaps (as Zoology does), with random tokens in between. The model must output, at each query,
the value paired with that key earlier; the loss and the accuracy count those positions only.

Unlike Zoology's arrays, ``targets`` here are aligned with ``inputs``: ``targets[i]`` is what
the model should predict *at* position i (-100 where nothing is asked).
"""

import functools
from collections import Counter

import torch

from yoco.models import build

IGNORE = -100


def mqar_batch(
    batch_size: int,
    seq_len: int,
    num_pairs: int,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    generator: torch.Generator | None = None,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (batch_size, seq_len) int64. Positions that are neither a pair
    nor a query hold random tokens, or token 0 with ``random_non_queries=False`` (Zoology's
    flag of the same name; its published (512, 64) configs set it to False)."""
    context = 2 * num_pairs
    query_slots = (seq_len - context) // 2  # queries sit at even offsets after the context
    half = vocab_size // 2
    if num_pairs < 1 or query_slots < num_pairs:
        raise ValueError(f"seq_len {seq_len} cannot hold {num_pairs} pairs and as many queries")
    if num_pairs > half - 1:
        raise ValueError(f"{num_pairs} distinct keys need vocab_size > {2 * (num_pairs + 1)}")
    g = generator
    keys = torch.stack([torch.randperm(half - 1, generator=g)[:num_pairs] + 1 for _ in range(batch_size)])
    values = torch.randint(half, vocab_size, (batch_size, num_pairs), generator=g)

    if random_non_queries:
        inputs = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)
    else:
        inputs = torch.zeros((batch_size, seq_len), dtype=torch.long)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)

    # Power-law over query slots: p(slot) ∝ a * slot^(a-1) (slot = 1..query_slots), no repeats.
    slots = torch.arange(1, query_slots + 1, dtype=torch.float64)
    weights = power_a * slots ** (power_a - 1)
    for row in range(batch_size):
        chosen = torch.multinomial(weights, num_pairs, replacement=False, generator=g)  # slot indices
        order = torch.randperm(num_pairs, generator=g)  # which key goes to which slot
        positions = context + 2 * chosen
        inputs[row, positions] = keys[row, order]
        targets[row, positions] = values[row, order]
    return inputs, targets


def recall_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of query positions whose argmax is the right value."""
    asked = targets != IGNORE
    return float((logits.argmax(-1)[asked] == targets[asked]).float().mean())


# ---------------------------------------------------------------------------------------------
# Training small models from scratch on MQAR (`yoco eval mqar`, benchmarks/recall.py).

CURVE_EVERY = 100  # training steps per point of a run's loss curve
MODELS = ("yoco-swa", "yoco-gret", "swa-only", "gret-only", "transformer")


def build_recall_model(
    name: str,
    vocab_size: int,
    hidden: int,
    layers: int = 2,
    heads: int = 2,
    window: int = 32,
    tie_embeddings: bool = True,
):
    """A registry model (``yoco.models.registry``: a kind such as ``yoco-swa`` or the control
    ``swa-only``, with any part suffixes) in the recall ablations' shape."""
    return build(
        name,
        where_applicable={"sliding_window": window},
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_embeddings,
    )


def query_logits(model, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the query positions only. The model computes logits only at the
    positions where some row asks a query (``logits_to_keep``): the 8192-way head over every
    position would cost more than the whole model."""
    asked = targets != IGNORE
    keep = asked.any(0).nonzero().flatten()
    logits = model(inputs, logits_to_keep=keep).logits
    return logits[asked[:, keep]], targets[:, keep][asked[:, keep]]


def train_recall(
    kind: str,
    seq_len: int,
    num_pairs: int,
    hidden: int,
    vocab_size: int = 8192,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    window: int = 32,
    eval_examples: int = 512,
    seed: int = 0,
    progress: bool = True,
    tie_embeddings: bool = True,
    random_non_queries: bool = True,
) -> dict:
    """Train from scratch with loss on query positions only; returns held-out accuracy.

    Tied input/output embeddings are the default: at vocabulary 8192 an untied head must learn
    every value's output row from a few examples each, and a Transformer trained untied stayed
    at chance (0.1% after 300 steps at (64, 4)) where tied it was at 20%."""
    import time

    from tqdm import tqdm

    from yoco.train.loop import autocast_bf16

    batch = functools.partial(
        mqar_batch,
        seq_len=seq_len,
        num_pairs=num_pairs,
        vocab_size=vocab_size,
        random_non_queries=random_non_queries,
    )
    torch.manual_seed(seed)
    model = build_recall_model(kind, vocab_size, hidden, window=window, tie_embeddings=tie_embeddings)
    # bf16 autocast where the CPU multiplies bf16 natively and faster (weights and optimizer stay fp32).
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=autocast_bf16(torch.device("cpu")))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    train_gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    losses = []
    for _ in tqdm(range(steps), desc=f"mqar {kind} d={hidden} ({seq_len},{num_pairs})", disable=not progress):
        inputs, targets = batch(batch_size, generator=train_gen)
        with autocast:
            logits, answers = query_logits(model, inputs, targets)
        loss = torch.nn.functional.cross_entropy(logits.float(), answers)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    eval_gen = torch.Generator().manual_seed(10_000 + seed)  # held-out examples, never trained on
    model.eval()
    with torch.no_grad(), autocast:
        inputs, targets = batch(eval_examples, generator=eval_gen)
        pieces = [query_logits(model, x, t) for x, t in zip(inputs.split(64), targets.split(64), strict=True)]
        accuracy = recall_accuracy(torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]))
    return {
        "model": kind,
        "hidden": hidden,
        "seq_len": seq_len,
        "num_pairs": num_pairs,
        "accuracy": accuracy,
        "final_loss": losses[-1],
        "seconds": time.perf_counter() - start,
        # Recall is learned in a sudden drop of the loss whose step varies from seed to seed:
        # the mean training loss of every CURVE_EVERY steps shows where (or whether) it came.
        "loss_curve": [sum(part) / len(part) for part in _pieces(losses, CURVE_EVERY)],
    }


def _pieces(values: list, size: int) -> list[list]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def plot_loss_curves(rows: list[dict], path) -> bool:
    """One panel per (length, pairs, vocabulary), the training loss of every run in it against
    steps, a colour per model and a line style per seed (dash-dot, and the learning rate in the
    label, for runs at another learning rate than most); False when no row has a curve (rows
    written before curves were kept)."""
    rows = [r for r in rows if r.get("loss_curve")]
    if not rows:
        return False
    usual_lr = Counter(r["lr"] for r in rows).most_common(1)[0][0]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["seq_len"], r["num_pairs"], r["vocab_size"]) for r in rows})
    models = sorted({r["model"] for r in rows})
    seeds = sorted({r.get("seed", 0) for r in rows})
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    for ax, (seq_len, pairs, vocab) in zip(axes[0], settings, strict=True):
        for r in rows:
            if (r["seq_len"], r["num_pairs"], r["vocab_size"]) != (seq_len, pairs, vocab):
                continue
            curve = r["loss_curve"]
            steps = [min((i + 1) * CURVE_EVERY, r["steps"]) for i in range(len(curve))]
            seed, usual = r.get("seed", 0), r["lr"] == usual_lr
            lr_note = "" if usual else f", lr {r['lr']:g}"
            ax.plot(
                steps,
                curve,
                color=colours(models.index(r["model"]) % 10),
                linestyle=styles[seeds.index(seed) % len(styles)] if usual else "-.",
                label=f"{r['model']} seed {seed}{lr_note}: {r['accuracy']:.1%}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"training loss (mean of {CURVE_EVERY} steps)")
        ax.set_title(f"MQAR ({seq_len}, {pairs}), vocabulary {vocab}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
