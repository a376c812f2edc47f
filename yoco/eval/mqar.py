"""Multi-query associative recall (MQAR), the synthetic task of Zoology (Arora et al. 2023).

A sequence starts with ``num_pairs`` key-value pairs ``k1 v1 k2 v2 ...``; keys come from the
first half of the vocabulary (never 0), values from the second half. The rest of the sequence
holds every key once more, as a query, at positions drawn with a power law that favours short
gaps (as Zoology does), with random tokens in between. The model must output, at each query,
the value paired with that key earlier; the loss and the accuracy count those positions only.

Unlike Zoology's arrays, ``targets`` here are aligned with ``inputs``: ``targets[i]`` is what
the model should predict *at* position i (-100 where nothing is asked).
"""

import torch

IGNORE = -100


def mqar_batch(
    batch_size: int,
    seq_len: int,
    num_pairs: int,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (batch_size, seq_len) int64."""
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

    inputs = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)  # random non-query tokens
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
