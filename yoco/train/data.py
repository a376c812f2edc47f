"""Training data: documents from files, a held-out split, packing, weighted mixing.

* A *source* is a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, in
  its ``text`` field), a ``.parquet`` file (a ``text`` column), a folder of such files,
  ``"stdlib"``: the Python standard library's own sources, the embedded default corpus, or a
  synthetic source of COUNT seeded documents of exactly LENGTH bytes (with their EOS):
  ``"needle:LENGTH[:COUNT]"``, needle-retrieval documents (haystack, needles, questions and
  answers), or ``"copy:LENGTH[:COUNT]"``, random printable ASCII in which a span repeats (dense
  practice at copying from context, the skill needle retrieval rests on).
* Each document has a stable id (``path`` or ``path:row``); hashing it puts the document in the
  validation split or not, so the split is disjoint and the same on every run.
* A :class:`PackedStream` reads a source's documents in a seeded order (reshuffled every
  epoch), tokenises them as it goes and packs the tokens, with EOS between documents, into
  sequences of exactly ``seq_len`` tokens.
* A :class:`Mixture` draws each sequence from one stream, picked with probability proportional
  to its weight by a seeded generator.

Streams and mixtures save their position (``state_dict``) so a resumed run reads exactly the
sequences an uninterrupted one would have.
"""

import functools
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from yoco.data.stdlib import stdlib_dir, stdlib_source_files

SUFFIXES = (".txt", ".jsonl", ".parquet")


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class DocRef:
    """Where to find one document: ``row`` is None for a whole ``.txt`` file; ``make`` builds a
    synthetic document from its row number."""

    doc_id: str
    path: Path | None
    row: int | None = None
    make: Callable[[int], str] | None = None

    def text(self) -> str:
        if self.make is not None:
            return self.make(self.row)
        if self.row is None:
            return self.path.read_text(encoding="utf-8", errors="replace")
        return _rows(self.path)[self.row]


@functools.lru_cache(maxsize=2)
def _rows(path: Path) -> list[str]:
    """The documents of a ``.jsonl`` or ``.parquet`` file (cached: a stream reads a file's
    rows one after another)."""
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number} is not valid JSON: {error}") from error
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f"{path}:{number} has no string 'text' field")
                rows.append(record["text"])
        return rows
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise DataError(f"{path} has no 'text' column (columns: {table.column_names})")
    return [str(t) for t in table.column("text").to_pylist()]


PRINTABLE = "".join(map(chr, range(ord(" "), ord("~") + 1)))  # digits and punctuation too


def copy_training_text(index: int, length: int) -> str:
    """``length - 1`` random printable ASCII bytes (the EOS makes ``length``) in which a span of
    ``length // 8`` bytes reappears later, its copy starting a distance drawn uniformly from
    ``span .. length - 1 - span`` bytes after the original starts. Only a model that looks the
    span up by content predicts the repeat. Every printable byte is a copy target, digits
    included: a model that only ever copied letters did not copy the needle's digits. The
    distance covers the whole document: with repeats only 1/4 to 1/2 of the length back, a
    needle model retrieved over those distances and rarely over longer or shorter ones."""
    if length < 16:
        raise ValueError(f"copy documents need a length of at least 16, got {length}")
    rng = random.Random(f"copy-train:{index}")
    text = [rng.choice(PRINTABLE) for _ in range(length - 1)]
    span = length // 8
    distance = rng.randint(span, length - 1 - span)  # so the copy ends before the EOS
    start = rng.randint(0, length - 1 - span - distance)
    text[start + distance : start + distance + span] = text[start : start + span]
    return "".join(text)


def _needle_training_text(index: int, length: int) -> str:
    from yoco.eval.needle import needle_training_text  # (imported late: the eval package imports this one)

    return needle_training_text(index, length)


# Synthetic sources by name: (row, length) -> document text.
SYNTHETIC = {"needle": _needle_training_text, "copy": copy_training_text}


def list_documents(spec: str) -> list[DocRef]:
    """All documents of one source, in a stable order. Raises DataError if it has none."""
    if spec == "stdlib":
        root = stdlib_dir()
        return [DocRef(f"stdlib:{p.relative_to(root)}", p) for p in stdlib_source_files()]
    kind = spec.split(":", 1)[0]
    if kind in SYNTHETIC:
        parts = spec.split(":")
        try:
            length, count = int(parts[1]), int(parts[2]) if len(parts) > 2 else 4096
            if len(parts) > 3 or length < 1 or count < 1:
                raise ValueError
        except (IndexError, ValueError) as error:
            raise DataError(f"data source {spec}: use {kind}:LENGTH or {kind}:LENGTH:COUNT") from error
        make = functools.partial(SYNTHETIC[kind], length=length)
        try:
            make(0)  # a length too short for the kind fails here, not mid-training
        except ValueError as error:
            raise DataError(f"data source {spec}: {error}") from error
        return [DocRef(f"{spec}:{i}", None, i, make) for i in range(count)]
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data source {spec} does not exist")
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES) if path.is_dir() else [path]
    if path.is_file() and path.suffix not in SUFFIXES:
        raise DataError(f"data source {spec}: unsupported file type (use {', '.join(SUFFIXES)})")
    docs = []
    for file in files:
        if file.suffix == ".txt":
            if file.stat().st_size:
                docs.append(DocRef(str(file), file))
        else:
            docs.extend(DocRef(f"{file}:{i}", file, i) for i in range(len(_rows(file))))
    if not docs:
        raise DataError(f"data source {spec} has no documents")
    return docs


def in_validation(doc_id: str, fraction: float) -> bool:
    digest = hashlib.sha1(doc_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_documents(docs: list[DocRef], val_fraction: float) -> tuple[list[DocRef], list[DocRef]]:
    train = [d for d in docs if not in_validation(d.doc_id, val_fraction)]
    val = [d for d in docs if in_validation(d.doc_id, val_fraction)]
    return train, val


class PackedStream:
    """Fixed-length token sequences from a list of documents, EOS after each document."""

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

    def _current_tokens(self) -> list[int]:
        key = (self.epoch, self.doc_pos)
        if self._tokens_key != key:
            doc = self.docs[self._order_for(self.epoch)[self.doc_pos]]
            self._tokens_key, self._tokens = key, self.tokenize(doc.text()) + [self.eos_id]
        return self._tokens

    def next_sequence(self) -> list[int]:
        out = []
        while len(out) < self.seq_len:
            tokens = self._current_tokens()
            take = tokens[self.tok_offset : self.tok_offset + self.seq_len - len(out)]
            out.extend(take)
            self.tok_offset += len(take)
            if self.tok_offset >= len(tokens):
                self.doc_pos, self.tok_offset = self.doc_pos + 1, 0
                if self.doc_pos == len(self.docs):
                    self.epoch, self.doc_pos = self.epoch + 1, 0
        return out

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

    def next_batch(self, batch_size: int) -> torch.Tensor:
        rows = []
        for _ in range(batch_size):
            (index,) = self.rng.choices(range(len(self.streams)), weights=self.weights)
            self.drawn[index] += 1
            rows.append(self.streams[index].next_sequence())
        return torch.tensor(rows, dtype=torch.long)

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
        train, val = split_documents(list_documents(source.path), data_config.val_fraction)
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
    """(tokens, any text) of ``docs`` as a stream packs them (an EOS after each document), read
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
        count += tokens + 1
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
