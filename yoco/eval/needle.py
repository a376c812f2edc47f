"""Needle in a haystack, following the YOCO paper's protocol.

A sentence "The special magic {city} number is: {number}." is hidden at a given depth of a
haystack of filler prose; the prompt ends with the question for that city, the model answers
greedily, and the answer counts as correct when it contains the number. With several needles
(different cities) only one is asked. The default filler is prose from the Python standard
library: its docstrings and comments.
"""

import ast
import functools
import io
import json
import random
import re
import tokenize as pytokenize
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import yoco
from yoco.data.stdlib import iter_stdlib_documents
from yoco.tokenizer import decode_bytes, encode_bytes

CITIES = [
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Quito",
    "Tallinn",
    "Hanoi",
    "Accra",
    "Bergen",
    "Cusco",
    "Dakar",
    "Fresno",
    "Gdansk",
    "Hobart",
    "Izmir",
    "Jaipur",
    "Kazan",
    "Leeds",
    "Malmo",
    "Nantes",
    "Oulu",
    "Perth",
    "Recife",
    "Sapporo",
    "Tampere",
    "Utrecht",
    "Varna",
    "Windhoek",
    "Xalapa",
    "Yerevan",
    "Zadar",
]
DEPTHS = [i / 10 for i in range(11)]


def needle_sentence(city: str, number: str) -> str:
    return f" The special magic {city} number is: {number}. "


def question(city: str) -> str:
    return f"\nWhat is the special magic {city} number? The special magic {city} number is:"


def stdlib_prose(max_chars: int = 2_000_000) -> str:
    """Docstrings and comments of the standard library, as running text."""
    pieces, total = [], 0
    for _, source in iter_stdlib_documents():
        try:
            tree = ast.parse(source)
            docs = [
                ast.get_docstring(n)
                for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
            ]
            comments = [
                tok.string.lstrip("#").strip()
                for tok in pytokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == pytokenize.COMMENT
            ]
        except (SyntaxError, pytokenize.TokenError, ValueError):
            continue
        for text in [d for d in docs if d] + [c for c in comments if len(c) > 20]:
            text = re.sub(r"\s+", " ", text).strip()
            pieces.append(text)
            total += len(text) + 1
        if total >= max_chars:
            break
    return " ".join(pieces)[:max_chars]


@dataclass
class NeedlePrompt:
    ids: list[int]
    answer: str
    city: str
    needle_start: int  # token index where the asked needle begins
    haystack_tokens: int
    numbers: dict[str, str]  # every hidden needle, city -> number


def build_prompt(
    tokenize,
    filler_ids: list[int],
    context_tokens: int,
    depth: float,
    rng: random.Random,
    n_needles: int = 1,
    cities: list[str] | None = None,
) -> NeedlePrompt:
    """A prompt of about ``context_tokens`` tokens with the asked needle at ``depth`` (0 = start,
    1 = end of the haystack); other needles spread evenly over the remaining depths. The first
    of ``cities`` (default: ``n_needles`` drawn at random) is asked."""
    cities = cities or rng.sample(CITIES, n_needles)
    n_needles = len(cities)
    while True:
        numbers = [str(rng.randrange(1_000_000, 10_000_000)) for _ in cities]
        needles = [tokenize(needle_sentence(c, n)) for c, n in zip(cities, numbers, strict=True)]
        asked = 0
        ask = tokenize(question(cities[asked]))
        budget = context_tokens - len(ask) - sum(len(n) for n in needles)
        if budget < 1:
            raise ValueError(f"context of {context_tokens} tokens is too short for the needles and question")
        start = rng.randrange(0, max(1, len(filler_ids) - budget))
        hay = (filler_ids * (1 + budget // max(1, len(filler_ids))))[start : start + budget]
        # The answer must never appear in the filler itself.
        if not any(_contains(hay, tokenize(n)) for n in numbers):
            break
    other_depths = [(depth + (i + 1) / n_needles) % 1.0 for i in range(n_needles - 1)]
    placements = sorted(zip([depth, *other_depths], range(n_needles), strict=True), key=lambda p: p[0])
    ids, cursor, needle_start = [], 0, 0
    for where, index in placements:
        cut = round(where * budget)
        ids.extend(hay[cursor:cut])
        cursor = cut
        if index == asked:
            needle_start = len(ids)
        ids.extend(needles[index])
    ids.extend(hay[cursor:])
    ids.extend(ask)
    return NeedlePrompt(
        ids, numbers[asked], cities[asked], needle_start, budget, dict(zip(cities, numbers, strict=True))
    )


@functools.lru_cache(maxsize=1)
def _training_filler() -> tuple[int, ...]:
    # ASCII only, so a byte slice never splits a character and every document keeps its length.
    return tuple(encode_bytes(stdlib_prose(400_000).encode("ascii", "ignore").decode()))


def needle_training_text(index: int, length: int) -> str:
    """A synthetic training document, seeded by ``index``: 2-5 needles at random depths of a
    byte-level haystack (fewer in short documents), then every one of them asked and answered in turn (one question per
    document left the retrieval signal too sparse to learn from: a 4-layer model trained
    1500 steps on it answered a constant). Text plus the EOS the packer appends come to exactly
    ``length`` bytes, so with the byte tokenizer and ``seq_len = length`` every training
    sequence of this source is one whole document (no needle is cut off by packing)."""
    rng = random.Random(f"needle-train:{index}")
    most = max(1, min(5, length // 200))  # each needle and its question take about 130 bytes
    cities = rng.sample(CITIES, rng.randint(min(2, most), most))
    answer = " 1234567."  # every number has 7 digits
    tail_bytes = len(answer) + sum(len(question(c) + answer) for c in cities[1:]) + len("\n") + 1  # + EOS
    prompt = build_prompt(
        encode_bytes, list(_training_filler()), length - tail_bytes, rng.random(), rng, cities=cities
    )
    tail = "".join(f"{question(c)} {prompt.numbers[c]}." for c in cities[1:])
    return f"{decode_bytes(prompt.ids)} {prompt.answer}.{tail}\n"


def _contains(haystack: list[int], needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


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
                    rng = random.Random(f"{seed}:{length}:{depth}:{trial}")
                    prompt = build_prompt(tokenize, filler_ids, length, depth, rng, n_needles)
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
    ax.set_title(f"{title} ({result['needles']} needle(s), {result['trials']} trials/cell)")
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
