"""Copying from context: how well a model repeats a span it has seen earlier in its input.

The documents are the ``copy:LENGTH`` training source's (:func:`yoco.data.synthetic.copy_document`):
random printable bytes (or, with ``symbols``, random digits and the like) in which a span
repeats later. After the first two bytes of the repeat a model that looks the span up by
content can predict every byte; a model that cannot is at chance, 1 in 95 (1 in ``symbols``).
Needle retrieval rests on this skill, so the ``copy`` recipe (stage 1 of the needle
curriculum) is judged by it. Documents are drawn from row numbers far past any training
source's count, so none was trained on.
"""

import torch
from tqdm import tqdm

from yoco.data.synthetic import PRINTABLE, copy_document

HELD_OUT = 10**9  # first row number scored: training sources use rows 0 .. COUNT-1
WARMUP = 2  # the repeat's first bytes cannot be told from chance: the lookup needs a prefix


def check_copy_options(
    length: int,
    documents: int,
    span: int | None = None,
    max_distance: int | None = None,
    symbols: int = len(PRINTABLE),
) -> None:
    if documents < 1:
        raise ValueError(f"documents must be >= 1, got {documents}")
    copy_document(0, length, span, max_distance, symbols)  # raises ValueError naming a bad option


@torch.no_grad()
def copy_accuracy(
    model,
    tokenizer,
    length: int = 128,
    documents: int = 256,
    span: int | None = None,
    max_distance: int | None = None,
    batch_size: int = 32,
    symbols: int = len(PRINTABLE),
) -> dict:
    """Teacher-forced accuracy on the repeated bytes after the first ``WARMUP`` of each repeat,
    over ``documents`` held-out copy documents of ``length`` bytes with a ``span``-byte repeat
    at most ``max_distance`` back, drawn from ``symbols`` characters (defaults as the copy
    source's). Needs a byte-level tokenizer (one token per character), so that document
    positions are token positions."""
    check_copy_options(length, documents, span, max_distance, symbols)
    docs = [copy_document(HELD_OUT + i, length, span, max_distance, symbols) for i in range(documents)]
    hits, asked = 0, 0
    for first in tqdm(range(0, documents, batch_size), desc=f"copy {length}", leave=False):
        batch = docs[first : first + batch_size]
        ids = [tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in batch]
        if any(len(row) != len(d.text) for row, d in zip(ids, batch, strict=True)):
            raise ValueError("yoco eval copy needs a byte-level tokenizer (one token per character)")
        ids = torch.tensor(ids, device=model.device)
        predicted = model(ids).logits.argmax(-1)  # position t predicts token t + 1
        for row, doc in enumerate(batch):
            repeat = doc.start + doc.distance
            targets = range(repeat + WARMUP, repeat + doc.span)
            hits += sum(int(predicted[row, t - 1] == ids[row, t]) for t in targets)
            asked += len(targets)
    return {
        "length": length,
        "span": docs[0].span,
        "max_distance": max_distance,
        "symbols": symbols,
        "documents": documents,
        "accuracy": hits / asked,
        "chance": 1 / symbols,
    }
