"""Synthetic documents, generated from a seed: needle retrieval and copying from context.

Both are training sources (``needle:LENGTH[:COUNT[:...]]``, ``copy:LENGTH[:COUNT[:...]]``,
with the options :mod:`yoco.data.sources` lists); the needle prompts are also what
``yoco eval needle`` asks (:mod:`yoco.eval.needle`), and the copy documents what
``yoco eval copy`` scores.
"""

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

from yoco.data.stdlib import stdlib_prose
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


def needle_sentence(city: str, number: str) -> str:
    return f" The special magic {city} number is: {number}. "


NUMBER_DIGITS = 7  # every needle's number, and every decoy


def random_number(rng: random.Random) -> str:
    return str(rng.randrange(10 ** (NUMBER_DIGITS - 1), 10**NUMBER_DIGITS))


def question(city: str) -> str:
    return f"\nWhat is the special magic {city} number? The special magic {city} number is:"


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
    decoys_per_kb: int = 0,
    shared_run: int = 0,
) -> NeedlePrompt:
    """A prompt of about ``context_tokens`` tokens with the asked needle at ``depth`` (0 = start,
    1 = end of the haystack); other needles spread evenly over the remaining depths. The first
    of ``cities`` (default: ``n_needles`` drawn at random) is asked. With ``decoys_per_kb``,
    that many decoy numbers per 1024 tokens of haystack are written over it
    (:func:`write_decoys`). With ``shared_run``, the needles' numbers share runs of digits
    (:func:`related_numbers`), and so do the decoys with the needles."""
    cities = cities or rng.sample(CITIES, n_needles)
    n_needles = len(cities)
    while True:
        if shared_run:
            numbers = related_numbers(len(cities), shared_run, rng)
        else:
            numbers = [random_number(rng) for _ in cities]
        needles = [tokenize(needle_sentence(c, n)) for c, n in zip(cities, numbers, strict=True)]
        asked = 0
        ask = tokenize(question(cities[asked]))
        budget = context_tokens - len(ask) - sum(len(n) for n in needles)
        if budget < 1:
            raise ValueError(f"context of {context_tokens} tokens is too short for the needles and question")
        start = rng.randrange(0, max(1, len(filler_ids) - budget))
        hay = (filler_ids * (1 + budget // max(1, len(filler_ids))))[start : start + budget]
        if decoys_per_kb:
            count = decoys_per_kb * budget // 1024
            echoes = related_numbers(count, shared_run, rng, relatives=numbers) if shared_run else None
            hay = write_decoys(hay, count, tokenize, rng, echoes)
        # The answer must never appear in the filler itself (nor among its decoys).
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


def write_decoys(
    hay: list[int], count: int, tokenize, rng: random.Random, numbers: list[str] | None = None
) -> list[int]:
    """``hay`` with ``count`` decoys, " " + a 7-digit number + " ", written over it, one
    at a random place in each of ``count`` equal slices (so they never overlap); the length is
    unchanged. A decoy is a hard negative for the copy that answers a question: its digits
    match the answer's digits in short stretches, so only a lookup that keeps to the asked
    needle copies the whole number. Prose holds few digits (about 2% of the standard library's
    prose), and a 4x longer haystack holds 4x the short digit strings a lookup by the last
    digit or two confuses with the answer's: a YOCO-gRet trained on plain 2048-byte haystacks
    lost its place in the answer at 8192 bytes that way. Decoys at 12 per 1024 bytes did not
    teach it to keep to the needle; they made retrieval worse at every length
    (docs/EVALUATION.md, "Decoy numbers in the training haystack"). The decoys' ``numbers``
    default to random ones; :func:`build_prompt` passes numbers that echo the needles' digits
    when asked for shared runs, which at 2 per 1024 bytes lifted one seed at 4x and lowered
    another ("Decoys that echo the needles' digits")."""
    hay = list(hay)
    if count < 1:
        return hay
    slice_length = len(hay) // count
    for i in range(count):
        decoy = tokenize(f" {numbers[i] if numbers else random_number(rng)} ")
        if len(decoy) > slice_length:
            raise ValueError(f"{count} decoys do not fit in a haystack of {len(hay)} tokens")
        at = i * slice_length + rng.randrange(slice_length - len(decoy) + 1)
        hay[at : at + len(decoy)] = decoy  # as many tokens out as in
    return hay


def related_numbers(
    count: int, longest_run: int, rng: random.Random, relatives: list[str] | tuple = ()
) -> list[str]:
    """``count`` different 7-digit numbers, each after the first sharing a run of 2 ..
    ``longest_run`` digits with an earlier one (copied from a random place to a random place).
    With ``relatives`` (the needles' numbers, when these are decoys), each shares a run with one
    of those instead, and none equals them.

    A copy that finds the next digit of an answer by the digits just written then has two
    places to continue from, and only the one that keeps to the asked needle is right. A
    YOCO-gRet trained on needles with unrelated numbers answered that way: at 8192 bytes it
    copied the first 3-6 digits and then continued from a digit string in the haystack."""
    if not 2 <= longest_run <= 6:
        raise ValueError(f"a shared run of digits must be 2 .. 6 long, got {longest_run}")
    numbers = list(relatives) or [random_number(rng)]
    first = len(relatives)
    while len(numbers) < first + count:
        source = rng.choice(relatives or numbers)
        length = rng.randint(2, longest_run)
        places = NUMBER_DIGITS - length + 1  # where a run of that length can start
        run = source[(taken := rng.randrange(places)) : taken + length]
        digits = list(random_number(rng))
        at = rng.randrange(places)
        digits[at : at + length] = run
        number = "".join(digits)
        if number[0] != "0" and number not in numbers:
            numbers.append(number)
    return numbers[first:]


@functools.lru_cache(maxsize=1)
def _training_filler() -> tuple[int, ...]:
    # ASCII only, so a byte slice never splits a character and every document keeps its length.
    return tuple(encode_bytes(stdlib_prose(400_000).encode("ascii", "ignore").decode()))


SHORTEST_NEEDLE_DOCUMENT = 160  # one needle, its question and answer, and a little haystack
MOST_DECOYS_PER_KB = 64  # 9 bytes each: at most 56% of a haystack is decoys


def needle_training_text(
    index: int, length: int, shortest: int | None = None, decoys_per_kb: int = 0, shared_run: int = 0
) -> str:
    """A synthetic training document, seeded by ``index``: 2-5 needles at random depths of a
    byte-level haystack (fewer in short documents), then every one of them asked and answered in
    turn (one question per document left the retrieval signal too sparse to learn from: a
    4-layer model trained 1500 steps on it answered a constant). Text plus the EOS the packer
    appends come to exactly ``length`` bytes, so with the byte tokenizer and ``seq_len = length``
    every training sequence of this source is one whole document (no needle is cut off by
    packing).

    With ``shortest``, the haystack and its questions take a random ``shortest .. length`` bytes
    and plain filler text follows the last answer up to ``length``. The questions then come at
    varying positions: with every question at the end of the sequence, a model learned to
    answer at the one position it was trained at (trained at 2048 bytes it answered 0.98 of the
    needles at 2048 and 0.40 at 1024, docs/EVALUATION.md).

    With ``decoys_per_kb``, the haystack holds that many decoy numbers per 1024 bytes
    (:func:`write_decoys`); with ``shared_run``, the needles' numbers share runs of up to that
    many digits (:func:`related_numbers`)."""
    shortest = length if shortest is None else shortest
    if not 0 <= decoys_per_kb <= MOST_DECOYS_PER_KB:
        raise ValueError(f"decoys per 1024 bytes must be 0 .. {MOST_DECOYS_PER_KB}, got {decoys_per_kb}")
    if not SHORTEST_NEEDLE_DOCUMENT <= shortest <= length:
        raise ValueError(
            f"the shortest needle document must be {SHORTEST_NEEDLE_DOCUMENT} .. LENGTH = {length} bytes, "
            f"got {shortest}"
        )
    rng = random.Random(f"needle-train:{index}")
    used = length if shortest == length else rng.randint(shortest, length)  # keeps old documents
    most = max(1, min(5, used // 200))  # each needle and its question take about 130 bytes
    cities = rng.sample(CITIES, rng.randint(min(2, most), most))
    answer = f" {'0' * NUMBER_DIGITS}."  # as long as every answer
    tail_bytes = len(answer) + sum(len(question(c) + answer) for c in cities[1:]) + len("\n") + 1  # + EOS
    filler = _training_filler()
    prompt = build_prompt(
        encode_bytes,
        list(filler),
        used - tail_bytes,
        rng.random(),
        rng,
        cities=cities,
        decoys_per_kb=decoys_per_kb,
        shared_run=shared_run,
    )
    tail = "".join(f"{question(c)} {prompt.numbers[c]}." for c in cities[1:])
    start = rng.randrange(len(filler) - (length - used)) if used < length else 0
    after = decode_bytes(list(filler[start : start + length - used]))
    return f"{decode_bytes(prompt.ids)} {prompt.answer}.{tail}\n{after}"


def _contains(haystack: list[int], needle: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


PRINTABLE = "".join(map(chr, range(ord(" "), ord("~") + 1)))  # digits and punctuation too
# The alphabet a copy document with ``symbols`` < 95 draws from: its first ``symbols`` (10: digits).
FEWEST_FIRST = "0123456789" + "".join(c for c in PRINTABLE if not c.isdigit())


@dataclass(frozen=True)
class CopyDocument:
    text: str  # exactly ``length`` printable ASCII characters, no EOS after them
    start: int  # where the span first appears
    distance: int  # how far after ``start`` it appears again
    span: int  # its length

    def pieces(self) -> list[tuple[str, bool]]:
        """The text as (piece, is_target) pieces: the targets are the repeat's bytes after its
        first, the ones a model that copies can predict (nothing announces where a repeat
        starts, so its first byte is as random as the rest of the window)."""
        first = self.start + self.distance + 1
        last = self.start + self.distance + self.span
        return [(self.text[:first], False), (self.text[first:last], True), (self.text[last:], False)]


def copy_document(
    index: int,
    length: int,
    span: int | None = None,
    max_distance: int | None = None,
    symbols: int = len(PRINTABLE),
) -> CopyDocument:
    """``length`` random printable ASCII bytes in which a span of ``span`` bytes (default
    ``length // 8``) reappears later, its copy starting a distance drawn uniformly from
    ``span .. max_distance`` bytes after the original starts (default: as far as the document
    allows, ``length - span``). Only a model that looks the span up by content predicts the
    repeat. Every printable byte is a copy target, digits included: a model that only ever
    copied letters did not copy the needle's digits. By default the distance covers the whole
    document: with repeats only 1/4 to 1/2 of the length back, a needle model retrieved over
    those distances and rarely over longer or shorter ones. A model learning to copy from
    scratch needs the opposite, short distances (see the ``copy`` recipe).

    A copy document is a window of random text, not a document with an end: the training
    source packs it without an EOS, so a sequence of ``length`` tokens is one whole document.
    An EOS at a fixed position is the one byte of this data a model can predict without
    copying; it learns that by counting positions within ~150 steps, and in every run with it
    copying had not appeared after 2400 steps, where without it copying appeared from step
    ~800 (docs/EVALUATION.md).

    With fewer ``symbols`` (the first of :data:`FEWEST_FIRST`: 10 are the digits) the window is
    drawn from a smaller alphabet, where a byte or two of context no longer tells one place from
    another: among 2048 random digits every 3-digit string occurs about twice, so a copy has to
    be looked up by a longer context."""
    if not 2 <= symbols <= len(PRINTABLE):
        raise ValueError(f"a copy document's symbols must be 2 .. {len(PRINTABLE)}, got {symbols}")
    if length < 16:
        raise ValueError(f"copy documents need a length of at least 16, got {length}")
    span = length // 8 if span is None else span
    if not 1 <= span <= length // 2:
        raise ValueError(f"a copy span must be 1 .. length // 2 = {length // 2}, got {span}")
    farthest = length - span  # so the copy ends with the document
    max_distance = farthest if max_distance is None else max_distance
    if not span <= max_distance <= farthest:
        raise ValueError(
            f"a copy's max distance must be {span} .. {farthest} (span .. length - span), got {max_distance}"
        )
    rng = random.Random(f"copy-train:{index}")
    alphabet = PRINTABLE if symbols == len(PRINTABLE) else FEWEST_FIRST[:symbols]  # (keeps old windows)
    text = [rng.choice(alphabet) for _ in range(length)]
    distance = rng.randint(span, max_distance)
    start = rng.randint(0, length - span - distance)
    text[start + distance : start + distance + span] = text[start : start + span]
    return CopyDocument("".join(text), start, distance, span)


def copy_training_text(index: int, length: int, **options) -> str:
    return copy_document(index, length, **options).text


def copy_training_pieces(index: int, length: int, **options) -> list[tuple[str, bool]]:
    return copy_document(index, length, **options).pieces()


@dataclass(frozen=True)
class SyntheticSource:
    """A synthetic training source: ``make(row, length, **options)`` gives a document's text;
    ``options`` name the integer options a spec may add after LENGTH:COUNT
    (copy:128:200000:32:64); ``eos``: whether the packer ends each document with an EOS;
    ``pieces(row, length, **options)``, where the kind has targets, the same text as
    (piece, is_target) pieces, for a source trained on its targets only (``loss = "targets"``)."""

    make: Callable[..., str]
    options: tuple[str, ...]
    eos: bool
    pieces: Callable[..., list[tuple[str, bool]]] | None = None


SYNTHETIC = {
    "needle": SyntheticSource(needle_training_text, ("shortest", "decoys_per_kb", "shared_run"), eos=True),
    "copy": SyntheticSource(
        copy_training_text, ("span", "max_distance", "symbols"), eos=False, pieces=copy_training_pieces
    ),
}
