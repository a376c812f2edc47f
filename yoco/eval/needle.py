"""Needle in a haystack, following the YOCO paper's protocol.

A sentence "The special magic {city} number is: {number}." is hidden at a given depth of a
haystack of filler prose; the prompt ends with the question for that city, the model answers
greedily, and the answer counts as correct when it contains the number. With several needles
(different cities) only one is asked. The default filler is prose from the Python standard
library: its docstrings and comments.
"""

import json
import random
from pathlib import Path

import torch
from tqdm import tqdm

import yoco
from yoco.data.stdlib import stdlib_prose
from yoco.data.synthetic import CITIES, build_prompt

DEPTHS = [i / 10 for i in range(11)]


@torch.no_grad()
def answer_token_hits(model, prompt_ids: list[int], answer_ids: list[int]) -> list[bool]:
    """Teacher-forced: for each answer token, whether the model's top prediction, given the
    prompt and the answer's earlier tokens, is that token. Shows which step of the answer
    fails (finding the needle, or copying the rest) where greedy accuracy only says whether
    all of it came out."""
    ids = torch.tensor([prompt_ids + answer_ids], device=model.device)
    # Logits of the last answer-length + 1 positions only: YOCO then runs its cross-decoder
    # for those alone, and no (length, vocab) logits tensor is built for the haystack.
    logits = model(ids, logits_to_keep=len(answer_ids) + 1).logits
    predicted = logits[0, :-1].argmax(-1)
    return (predicted.cpu() == torch.tensor(answer_ids)).tolist()


def needle_prompt(
    tokenize, filler_ids: list[int], length: int, depth: float, trial: int, n_needles: int = 1, seed: int = 0
):
    """The prompt this evaluation asks at (length, depth, trial), seeded by all of them, so a
    diagnosis (scripts/needle_misses.py) can rebuild exactly the prompts that were scored."""
    rng = random.Random(f"{seed}:{length}:{depth}:{trial}")
    return build_prompt(tokenize, filler_ids, length, depth, rng, n_needles)


def check_needle_options(lengths: list[int], trials: int, n_needles: int) -> None:
    if not 1 <= n_needles <= len(CITIES):
        raise ValueError(f"needles must be between 1 and {len(CITIES)} (one is asked), got {n_needles}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive token counts, got {lengths}")


def run_needle(
    model,
    tokenizer,
    lengths: list[int],
    depths: list[float] = DEPTHS,
    trials: int = 3,
    n_needles: int = 1,
    seed: int = 0,
    filler: str | None = None,
) -> dict:
    """Accuracy per (length, depth) over ``trials`` seeded prompts each, and per length the
    teacher-forced accuracy of each answer token (" " and the number's digits with bytes)."""
    check_needle_options(lengths, trials, n_needles)

    def tokenize(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    filler_ids = tokenize(filler if filler is not None else stdlib_prose(max(lengths) * 8))
    results, answer_tokens = {}, {}
    with tqdm(total=len(lengths) * len(depths) * trials, desc="needle") as bar:
        for length in lengths:
            hits = []
            for depth in depths:
                correct = 0
                for trial in range(trials):
                    prompt = needle_prompt(tokenize, filler_ids, length, depth, trial, n_needles, seed)
                    new = yoco.generate(model, [prompt.ids], len(prompt.answer) + 6)[0]
                    correct += prompt.answer in tokenizer.decode(new, skip_special_tokens=True)
                    hits.append(answer_token_hits(model, prompt.ids, tokenize(f" {prompt.answer}")))
                    bar.update()
                results[f"{length}:{depth}"] = correct / trials
            # (a BPE tokenizer may split numbers into different counts of tokens)
            answer_tokens[str(length)] = [
                sum(h[i] for h in hits if len(h) > i) / sum(len(h) > i for h in hits)
                for i in range(max(map(len, hits)))
            ]
    return {
        "lengths": lengths,
        "depths": depths,
        "trials": trials,
        "needles": n_needles,
        "accuracy": results,
        "answer_token_accuracy": answer_tokens,
    }


def heatmap(result: dict, path: Path, title: str = "needle retrieval") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = result["lengths"], result["depths"]
    grid = torch.tensor([[result["accuracy"][f"{n}:{d}"] for n in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 5))
    image = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    needles = "1 needle" if result["needles"] == 1 else f"{result['needles']} needles"
    ax.set_title(f"{title} ({needles}, {result['trials']} trials/cell)")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "needle.json").write_text(json.dumps(result, indent=1))
    heatmap(result, out / "needle.png")
