"""Where training and evaluation text comes from: documents, their ids, the held-out split.

* A *source* is a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, in
  its ``text`` field), a ``.parquet`` file (a ``text`` column), a folder of such files,
  ``"stdlib"``: the Python standard library's own sources, the embedded default corpus, or a
  synthetic source of COUNT seeded documents of exactly LENGTH bytes:
  ``"needle:LENGTH[:COUNT[:SHORTEST[:DECOYS_PER_KB[:SHARED_RUN]]]]"`` (with their EOS; with
  SHORTEST, the questions end at a random position from SHORTEST bytes on and filler text
  follows them; with DECOYS_PER_KB, that many decoy numbers per 1024 bytes of haystack; with
  SHARED_RUN, the needles' numbers share runs of up to that many digits, and so do the decoys
  with the needles) or
  ``"copy:LENGTH[:COUNT[:SPAN[:MAX_DISTANCE[:SYMBOLS]]]]"`` (windows of random text, packed
  without one; SYMBOLS = 10 draws them from the digits) (:mod:`yoco.data.synthetic`).
* Each document has a stable id (``path`` or ``path:row``); hashing it puts the document in the
  validation split or not, so the split is disjoint and the same on every run.
* A source is trained on all of its tokens (``loss = "all"``) or, for a synthetic kind that marks
  them, on its *targets* only (``loss = "targets"``: a copy window's repeat), so the loss
  measures the skill the data is there to teach and not the random bytes around it.
"""

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yoco.data.stdlib import stdlib_dir, stdlib_source_files
from yoco.data.synthetic import SYNTHETIC

SUFFIXES = (".txt", ".jsonl", ".parquet")


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class DocRef:
    """Where to find one document: ``row`` is None for a whole ``.txt`` file; ``make`` builds a
    synthetic document from its row number; ``eos``: whether the packer puts an EOS after it;
    ``make_pieces``, for a document trained on its targets only, builds it as (piece,
    is_target) pieces."""

    doc_id: str
    path: Path | None
    row: int | None = None
    make: Callable[[int], str] | None = None
    eos: bool = True
    make_pieces: Callable[[int], list[tuple[str, bool]]] | None = None

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


LOSSES = ("all", "targets")


def list_documents(spec: str, loss: str = "all") -> list[DocRef]:
    """All documents of one source, in a stable order, trained on all their tokens or on their
    targets only (``loss``). Raises DataError if it has none, or no targets to train on."""
    if loss not in LOSSES:
        raise DataError(f"data source {spec}: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    kind = spec.split(":", 1)[0]
    if loss == "targets" and (kind not in SYNTHETIC or SYNTHETIC[kind].pieces is None):
        marked = ", ".join(k for k, v in SYNTHETIC.items() if v.pieces is not None)
        raise DataError(
            f'data source {spec}: loss = "targets" needs a source whose documents mark their targets '
            f'({marked}); use loss = "all"'
        )
    if spec == "stdlib":
        root = stdlib_dir()
        return [DocRef(f"stdlib:{p.relative_to(root)}", p) for p in stdlib_source_files()]
    if kind in SYNTHETIC:
        synthetic = SYNTHETIC[kind]
        make, options = synthetic.make, synthetic.options
        optional = "".join(f"[:{o.upper()}" for o in options) + "]" * len(options)
        usage = f"{kind}:LENGTH[:COUNT{optional}]"
        try:
            numbers = [int(p) for p in spec.split(":")[1:]]
            if len(numbers) == 1:
                numbers.append(4096)  # the default COUNT
            length, count, *values = numbers
            if len(values) > len(options) or length < 1 or count < 1:
                raise ValueError
        except ValueError as error:
            raise DataError(f"data source {spec}: use {usage}") from error
        given = {"length": length, **dict(zip(options, values, strict=False))}
        make = functools.partial(make, **given)
        try:
            make(0)  # a length too short for the kind fails here, not mid-training
        except ValueError as error:
            raise DataError(f"data source {spec}: {error}") from error
        pieces = functools.partial(synthetic.pieces, **given) if loss == "targets" else None
        return [DocRef(f"{spec}:{i}", None, i, make, synthetic.eos, pieces) for i in range(count)]
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
