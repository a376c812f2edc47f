"""Training sequences: documents packed into fixed-length token sequences, and mixed.

* A :class:`PackedStream` reads a source's documents in a seeded order (reshuffled every
  epoch), tokenises them as it goes and packs the tokens, with an EOS after each document
  (synthetic windows of random text excepted), into sequences of exactly ``seq_len`` tokens.
* A :class:`Mixture` draws each sequence from one stream, picked with probability proportional
  to its weight by a seeded generator.

Each sequence comes with its labels: its own tokens, with IGNORE (-100, what the loss skips)
where a source trained on its targets only (``loss = "targets"``) has a token that is not one.

Streams and mixtures save their position (``state_dict``) so a resumed run reads exactly the
sequences an uninterrupted one would have.
"""

import random
from collections.abc import Callable

import torch

from yoco.data.sources import DataError, DocRef, list_documents, split_documents

IGNORE = -100  # a label the loss skips (torch's cross_entropy ignore_index)


class PackedStream:
    """Fixed-length token sequences from a list of documents, EOS after each document that
    takes one (``DocRef.eos``)."""

    def __init__(
        self,
        docs: list[DocRef],
        tokenize: Callable[[str], list[int]],
        eos_id: int,
        seq_len: int,
        seed: int,
        shuffle=True,
    ):
        if not docs:
            raise DataError("no documents to stream")
        self.docs, self.tokenize, self.eos_id = docs, tokenize, eos_id
        self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
        self.epoch, self.doc_pos, self.tok_offset = 0, 0, 0
        self._order_epoch, self._order = None, None
        self._tokens_key, self._tokens = None, None

    def _order_for(self, epoch: int) -> list[int]:
        if self._order_epoch != epoch:
            order = list(range(len(self.docs)))
            if self.shuffle:
                random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._order_epoch, self._order = epoch, order
        return self._order

    def _current_tokens(self) -> tuple[list[int], list[int]]:
        """The current document's tokens and labels (IGNORE where a token is not a target; a
        document with targets has its pieces tokenized one by one, the EOS not a target)."""
        key = (self.epoch, self.doc_pos)
        if self._tokens_key != key:
            doc = self.docs[self._order_for(self.epoch)[self.doc_pos]]
            if doc.make_pieces is None:
                tokens = self.tokenize(doc.text()) + [self.eos_id] * doc.eos
                labels = tokens  # every token is a label
            else:
                tokens, labels = [], []
                for piece, is_target in doc.make_pieces(doc.row):
                    ids = self.tokenize(piece)
                    tokens.extend(ids)
                    labels.extend(ids if is_target else [IGNORE] * len(ids))
                tokens.extend([self.eos_id] * doc.eos)
                labels.extend([IGNORE] * doc.eos)
            self._tokens_key, self._tokens = key, (tokens, labels)
        return self._tokens

    def next_example(self) -> tuple[list[int], list[int]]:
        """The next sequence of ``seq_len`` tokens, and its labels."""
        out, out_labels = [], []
        while len(out) < self.seq_len:
            tokens, labels = self._current_tokens()
            end = self.tok_offset + self.seq_len - len(out)
            out.extend(tokens[self.tok_offset : end])
            out_labels.extend(labels[self.tok_offset : end])
            self.tok_offset = min(end, len(tokens))
            if self.tok_offset >= len(tokens):
                self.doc_pos, self.tok_offset = self.doc_pos + 1, 0
                if self.doc_pos == len(self.docs):
                    self.epoch, self.doc_pos = self.epoch + 1, 0
        if len(out) > 1 and all(label == IGNORE for label in out_labels[1:]):  # label 0 is never predicted
            epoch, position = self._tokens_key  # the document read last
            doc_id = self.docs[self._order_for(epoch)[position]].doc_id
            raise DataError(
                f"data source {doc_id.rsplit(':', 1)[0]}: a sequence of {self.seq_len} tokens holds no target to train on "
                '(loss = "targets"); make data.seq_len a multiple of its documents\' length'
            )
        return out, out_labels

    def next_sequence(self) -> list[int]:
        return self.next_example()[0]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "doc_pos": self.doc_pos, "tok_offset": self.tok_offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.doc_pos, self.tok_offset = state["epoch"], state["doc_pos"], state["tok_offset"]


class Mixture:
    """Sequences drawn from several streams in proportion to their weights."""

    def __init__(self, streams: list[PackedStream], weights: list[float], seed: int):
        if any(w <= 0 for w in weights):
            raise DataError(f"source weights must be > 0, got {weights}")
        self.streams, self.weights = streams, weights
        self.rng = random.Random(seed)
        self.drawn = [0] * len(streams)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` sequences (batch_size, seq_len) and their labels."""
        rows = []
        for _ in range(batch_size):
            (index,) = self.rng.choices(range(len(self.streams)), weights=self.weights)
            self.drawn[index] += 1
            rows.append(self.streams[index].next_example())
        ids, labels = zip(*rows, strict=True)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "drawn": list(self.drawn),
            "streams": [s.state_dict() for s in self.streams],
        }

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.drawn = list(state["drawn"])
        for stream, s in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(s)


def build_data(data_config, tokenizer) -> tuple[Mixture, PackedStream | None]:
    """The training mixture and the validation stream (documents of every source whose id
    hashes into the held-out fraction; None if there are none)."""

    def tokenize(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos = tokenizer.eos_token_id
    train_streams, val_docs = [], []
    for i, source in enumerate(data_config.sources):
        train, val = split_documents(list_documents(source.path, source.loss), data_config.val_fraction)
        if not train:
            raise DataError(f"data source {source.path}: every document fell in the validation split")
        train_streams.append(
            PackedStream(train, tokenize, eos, data_config.seq_len, seed=data_config.seed * 1000 + i)
        )
        val_docs.extend(val)
    mixture = Mixture(train_streams, [s.weight for s in data_config.sources], seed=data_config.seed)
    val_stream = (
        PackedStream(val_docs, tokenize, eos, data_config.seq_len, 0, shuffle=False) if val_docs else None
    )
    return mixture, val_stream


def count_tokens(docs: list[DocRef], tokenize: Callable[[str], list[int]], enough: int) -> tuple[int, bool]:
    """(tokens, any text) of ``docs`` as a stream packs them (with their EOS), read
    in order until ``enough`` tokens and some non-whitespace text were seen: a large corpus
    costs a document or two, and a long document is tokenized by its prefix only."""
    count, text_seen = 0, False
    for doc in docs:
        if count >= enough and text_seen:
            break
        text = doc.text()
        text_seen = text_seen or (bool(text) and not text.isspace())
        cap = max(0, enough - count) * 32 + 1  # characters: far more than `enough` tokens
        tokens = len(tokenize(text[:cap]))
        if len(text) > cap and count + tokens < enough:
            tokens = len(tokenize(text))
        count += tokens + doc.eos
    return count, text_seen


def check_sizes(data_config, mixture: Mixture, val_stream, batch_size: int, eval_batches: int) -> list[str]:
    """Raise DataError for a source whose training split cannot fill one sequence (each of its
    sequences would repeat the same few tokens) or holds only whitespace; return warnings
    (one line each) for a corpus smaller than one batch and a missing or small validation split."""
    seq_len, warnings = data_config.seq_len, []
    batch_tokens = batch_size * seq_len
    total = 0
    for source, stream in zip(data_config.sources, mixture.streams, strict=True):
        tokens, text_seen = count_tokens(stream.docs, stream.tokenize, batch_tokens)
        where = f"data source {source.path}: its training split ({len(stream.docs)} document(s))"
        if not text_seen:
            raise DataError(f"{where} holds only whitespace ({tokens} tokens with EOS)")
        if tokens < seq_len:
            raise DataError(
                f"{where} holds {tokens} tokens with EOS, not enough for one training sequence of "
                f"data.seq_len = {seq_len} tokens (one batch needs {batch_size} x {seq_len} = {batch_tokens})"
            )
        total += tokens
    names = ", ".join(s.path for s in data_config.sources)
    if total < batch_tokens:
        warnings.append(
            f"warning: {names}: the training split holds {total} tokens, fewer than one batch of "
            f"train.batch_size x data.seq_len = {batch_size} x {seq_len} = {batch_tokens}: every batch repeats it"
        )
    if eval_batches > 0 and data_config.val_fraction > 0:
        val_tokens = eval_batches * batch_tokens
        if val_stream is None:
            documents = sum(len(s.docs) for s in mixture.streams)
            warnings.append(
                f"warning: {names}: no document fell in the validation split (data.val_fraction = "
                f"{data_config.val_fraction} of {documents} document(s)): no validation loss"
            )
        else:
            tokens, _ = count_tokens(val_stream.docs, val_stream.tokenize, val_tokens)
            if tokens < val_tokens:
                warnings.append(
                    f"warning: {names}: the validation split holds {tokens} tokens, fewer than the "
                    f"eval.batches x train.batch_size x data.seq_len = {eval_batches} x {batch_size} x "
                    f"{seq_len} = {val_tokens} it is read for: validation sequences repeat"
                )
    return warnings
