"""Perplexity of a model on any data source the trainer accepts.

Documents are read in their stable order, tokenised, joined with EOS and cut into consecutive
windows of ``seq_len`` tokens exactly as training packs them (long documents simply span
several windows); the loss is the mean next-token cross-entropy over every predicted token
(the model's ``loss``; a mixture-of-experts model returns its load-balancing loss apart, as
``aux_loss``, so it is never part of the perplexity).
Each token is scored once: the last window may be shorter, and a source shorter than one
window is scored as it is rather than repeated to fill it. On the same full windows this is
the training loss, which the tests check.
"""

import math
from collections.abc import Iterator

import torch
from tqdm import tqdm

from yoco.data.sources import list_documents


def check_ppl_options(seq_len: int, batch_size: int, max_tokens: int | None) -> None:
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a window predicts seq_len - 1 tokens), got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 to predict anything, got {max_tokens}")


def token_windows(docs, tokenize, eos_id: int, seq_len: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Consecutive windows of ``seq_len`` tokens over the documents in order, each document
    followed by EOS; the last window holds what is left. Stops after ``max_tokens`` tokens."""
    budget = math.inf if max_tokens is None else max_tokens
    window: list[int] = []
    for doc in docs:
        tokens, start = tokenize(doc.text()) + [eos_id], 0
        while start < len(tokens) and budget > 0:
            take = min(len(tokens) - start, seq_len - len(window), budget)
            window.extend(tokens[start : start + take])
            start, budget = start + take, budget - take
            if len(window) == seq_len:
                yield window
                window = []
        if budget <= 0:
            break
    if window:
        yield window


@torch.no_grad()
def evaluate_ppl(
    model, tokenizer, source: str, seq_len: int = 512, batch_size: int = 8, max_tokens: int | None = None
):
    """Returns {"loss", "ppl", "tokens" (predicted), "documents"} over one pass of ``source``."""
    check_ppl_options(seq_len, batch_size, max_tokens)
    docs = list_documents(source)

    def tokenize(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    loss_sum, predicted = 0.0, 0

    def score(rows: list[list[int]]) -> None:
        nonlocal loss_sum, predicted
        ids = torch.tensor(rows, device=model.device)
        count = ids.shape[0] * (ids.shape[1] - 1)
        loss_sum += float(model(ids, labels=ids).loss) * count
        predicted += count

    model.eval()
    batch: list[list[int]] = []
    windows = token_windows(docs, tokenize, tokenizer.eos_token_id, seq_len, max_tokens)
    for window in tqdm(windows, desc="ppl", unit="window"):
        if len(window) < seq_len:  # the short last window goes alone: rows of a batch are equal
            if len(window) > 1:
                score([window])
            continue
        batch.append(window)
        if len(batch) == batch_size:
            score(batch)
            batch = []
    if batch:
        score(batch)
    if predicted == 0:
        raise ValueError(f"{source} holds fewer than 2 tokens: nothing to score")
    loss = loss_sum / predicted
    return {"loss": loss, "ppl": math.exp(loss), "tokens": predicted, "documents": len(docs)}
