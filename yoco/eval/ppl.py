"""Perplexity of a model on any data source the trainer accepts.

Documents are read in their stable order, tokenised, joined with EOS and packed into windows
of ``seq_len`` tokens exactly as training packs them (long documents simply span several
windows); the loss is the mean next-token cross-entropy over every predicted token. On the
same tokens this is the training loss, which the tests check.
"""

import math

import torch
from tqdm import tqdm

from yoco.train.data import PackedStream, list_documents


@torch.no_grad()
def evaluate_ppl(
    model, tokenizer, source: str, seq_len: int = 512, batch_size: int = 8, max_tokens: int | None = None
):
    """Returns {"loss", "ppl", "tokens", "documents"} over one pass of ``source``."""
    docs = list_documents(source)

    def tokenize(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    stream = PackedStream(docs, tokenize, tokenizer.eos_token_id, seq_len, seed=0, shuffle=False)
    total_tokens = sum(len(tokenize(d.text())) + 1 for d in docs)
    if max_tokens is not None:
        total_tokens = min(total_tokens, max_tokens)
    n_windows = max(1, total_tokens // seq_len)
    loss_sum, predicted = 0.0, 0
    model.eval()
    with tqdm(total=n_windows, desc="ppl", unit="window") as bar:
        while bar.n < n_windows:
            rows = [stream.next_sequence() for _ in range(min(batch_size, n_windows - bar.n))]
            ids = torch.tensor(rows, device=model.device)
            loss = model(ids, labels=ids).loss
            count = ids.shape[0] * (seq_len - 1)
            loss_sum += float(loss) * count
            predicted += count
            bar.update(len(rows))
    loss = loss_sum / predicted
    return {"loss": loss, "ppl": math.exp(loss), "tokens": predicted, "documents": len(docs)}
