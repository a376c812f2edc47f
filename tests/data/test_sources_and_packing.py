"""Data pipeline: document listing, split, packing, mixing, resumable position."""

import collections
import re
import string

import pytest
import torch

from yoco.data.packing import IGNORE, Mixture, PackedStream
from yoco.data.sources import DataError, list_documents, split_documents
from yoco.data.synthetic import copy_document
from yoco.tokenizer import EOS_ID, byte_tokenizer, encode_bytes
from yoco.train.config import DataSource


def docs_of(tmp_path, texts):
    for i, text in enumerate(texts):
        (tmp_path / f"{i:03d}.txt").write_text(text)
    return list_documents(str(tmp_path))


def test_packing_fills_fixed_lengths_with_eos_between_documents(tmp_path):
    docs = docs_of(tmp_path, ["aaaa", "bb", "cccccc"])
    stream = PackedStream(docs, encode_bytes, EOS_ID, seq_len=5, seed=0, shuffle=False)
    flat = [t for _ in range(3) for t in stream.next_sequence()]
    expected = (
        encode_bytes("aaaa") + [EOS_ID] + encode_bytes("bb") + [EOS_ID] + encode_bytes("cccccc") + [EOS_ID]
    )
    assert flat == expected  # 15 tokens = exactly three sequences of 5
    assert stream.next_sequence() == expected[:5]  # the next epoch starts over


def test_shuffle_is_seeded_and_reshuffles_each_epoch(tmp_path):
    docs = docs_of(tmp_path, [chr(ord("a") + i) * 3 for i in range(12)])

    def epochs(seed):
        stream = PackedStream(docs, encode_bytes, EOS_ID, seq_len=4, seed=seed)
        return [tuple(stream.next_sequence()) for _ in range(24)]

    assert epochs(1) == epochs(1) and epochs(1) != epochs(2)
    one = epochs(1)
    assert one[:12] != one[12:], "each epoch gets its own order"


def test_stream_position_resumes_exactly(tmp_path):
    docs = docs_of(tmp_path, ["x" * n for n in range(1, 30)])
    a = PackedStream(docs, encode_bytes, EOS_ID, seq_len=7, seed=3)
    for _ in range(11):
        a.next_sequence()
    b = PackedStream(docs, encode_bytes, EOS_ID, seq_len=7, seed=3)
    b.load_state_dict(a.state_dict())
    assert [a.next_sequence() for _ in range(20)] == [b.next_sequence() for _ in range(20)]


def test_mixing_follows_the_weights_and_resumes(tmp_path):
    docs = docs_of(tmp_path, ["p" * 50, "q" * 50])
    streams = [PackedStream(docs, encode_bytes, EOS_ID, 8, seed=i) for i in range(3)]
    mixture = Mixture(streams, [1.0, 2.0, 5.0], seed=0)
    mixture.next_batch(4000)
    shares = [n / 4000 for n in mixture.drawn]
    assert shares == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.03)
    state = mixture.state_dict()
    again = Mixture(
        [PackedStream(docs, encode_bytes, EOS_ID, 8, seed=i) for i in range(3)], [1.0, 2.0, 5.0], seed=0
    )
    again.load_state_dict(state)
    ids, labels = mixture.next_batch(16)
    again_ids, again_labels = again.next_batch(16)
    assert torch.equal(ids, again_ids) and torch.equal(labels, again_labels)
    assert torch.equal(labels, ids)  # every token is a label, none of these sources has targets


def test_validation_split_is_disjoint_deterministic_and_near_its_fraction(tmp_path):
    docs = docs_of(tmp_path, [f"doc {i}" for i in range(400)])
    train, val = split_documents(docs, 0.1)
    assert not {d.doc_id for d in train} & {d.doc_id for d in val}
    assert len(train) + len(val) == 400 and 20 <= len(val) <= 60
    assert split_documents(docs, 0.1) == (train, val)


def test_jsonl_and_stdlib_sources(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "hello"}\n\n{"text": "world"}\n')
    docs = list_documents(str(path))
    assert [d.text() for d in docs] == ["hello", "world"]
    stdlib = list_documents("stdlib")
    assert len(stdlib) > 100 and any(d.doc_id.endswith("os.py") for d in stdlib)
    tokens = byte_tokenizer()(stdlib[0].text())["input_ids"]
    assert tokens and max(tokens) < 256


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two", "three"]}), tmp_path / "t.parquet")
    assert [d.text() for d in list_documents(str(tmp_path / "t.parquet"))] == ["one", "two", "three"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: str(p / "missing"), "does not exist"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"), "no documents"),
        (lambda p: (p / "x.csv").write_text("a") and str(p / "x.csv"), "unsupported"),
        (lambda p: (p / "bad.jsonl").write_text('{"txt": 1}\n') and str(p / "bad.jsonl"), "no string 'text'"),
    ],
)
def test_bad_sources_fail_with_a_message(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        list_documents(make(tmp_path))


def test_every_source_document_is_read_once_per_epoch(tmp_path):
    docs = docs_of(tmp_path, [f"<{i}>" for i in range(9)])
    stream = PackedStream(docs, encode_bytes, EOS_ID, seq_len=4, seed=5)
    text = bytes(t for _ in range(9) for t in stream.next_sequence() if t < 256).decode()
    counts = collections.Counter(text.replace(">", "> ").split())
    assert [counts[f"<{i}>"] for i in range(9)] == [1] * 9  # 9 documents x 4 tokens = 9 sequences


def test_synthetic_needle_source_is_deterministic_and_answers_its_question():
    docs = list_documents("needle:400:6")
    assert len(docs) == 6
    text = docs[2].text()
    assert text == list_documents("needle:400:6")[2].text()
    question_city = text.rsplit("What is the special magic ", 1)[1].split(" number?")[0]
    answer = text.rstrip(".\n").rsplit(" ", 1)[1]
    assert f"The special magic {question_city} number is: {answer}." in text.split("\nWhat is")[0]
    with pytest.raises(DataError, match="needle:LENGTH"):
        list_documents("needle:abc")


def test_needle_documents_fill_whole_sequences_of_their_length():
    # Document + EOS == LENGTH bytes, so each packed sequence is one complete document.
    stream = PackedStream(list_documents("needle:300:5"), encode_bytes, EOS_ID, seq_len=300, seed=1)
    for _ in range(5):
        sequence = stream.next_sequence()
        assert sequence[-1] == EOS_ID and EOS_ID not in sequence[:-1]
        assert b"\nWhat is the special magic" in bytes(t for t in sequence if t < 256)


def test_needle_documents_with_a_shortest_length_ask_at_varying_positions_and_still_fill_a_sequence():
    docs = list_documents("needle:600:40:200")
    stream = PackedStream(docs, encode_bytes, EOS_ID, seq_len=600, seed=0, shuffle=False)
    last_questions = []
    for doc in docs:
        sequence = stream.next_sequence()
        assert sequence == [*encode_bytes(doc.text()), EOS_ID]  # one whole document per sequence
        text = doc.text()
        last_questions.append(text.rindex("\nWhat is"))
        for city, number in re.findall(r"What is the special magic (\w+) number\? .*? is: (\d+)\.", text):
            assert f"The special magic {city} number is: {number}." in text.split("\nWhat is")[0]
    # The questions end anywhere from ~1/3 of the way in to the end, not at one position.
    assert min(last_questions) < 250 and max(last_questions) > 450, sorted(last_questions)
    # Without SHORTEST (or with SHORTEST = LENGTH) the documents are the ones they always were.
    assert [d.text() for d in list_documents("needle:600:5:600")] == [
        d.text() for d in list_documents("needle:600:5")
    ]
    for bad in ("needle:600:5:100", "needle:600:5:601"):
        with pytest.raises(DataError, match="shortest needle document must be 160 .. LENGTH = 600"):
            list_documents(bad)


def test_copy_documents_repeat_a_span_at_any_distance_and_fill_their_sequence_without_an_eos():
    docs = list_documents("copy:128:4")
    assert [d.text() for d in docs] == [d.text() for d in list_documents("copy:128:4")]
    distances = []
    for doc in list_documents("copy:128:64"):
        text = doc.text()
        assert len(text) == 128 and all(" " <= c <= "~" for c in text)  # printable ASCII
        # Some 16-byte span reappears later; random bytes repeat 16 in a row by chance ~never.
        found = [
            (i, text.index(text[i : i + 16], i + 16))
            for i in range(112)
            if text[i : i + 16] in text[i + 16 :]
        ]
        assert found
        distances.append(found[0][1] - found[0][0])
    # Distances run from the span's length to the whole document (16..112), not one band of it.
    assert min(distances) < 40 and max(distances) > 90, sorted(distances)
    every_byte = "".join(d.text() for d in list_documents("copy:128:32"))
    assert set(string.digits) <= set(every_byte)  # digits are copy targets too
    # No EOS: every sequence of seq_len = LENGTH is one whole document, and nothing in it can be
    # predicted from its position alone.
    stream = PackedStream(docs, encode_bytes, EOS_ID, seq_len=128, seed=0, shuffle=False)
    for doc in docs:
        assert stream.next_sequence() == encode_bytes(doc.text())
    assert len(list_documents("copy:16:1")[0].text()) == 16  # the shortest: a 2-byte span
    with pytest.raises(DataError, match="at least 16"):
        list_documents("copy:15")
    with pytest.raises(DataError, match=re.escape("use copy:LENGTH[:COUNT[:SPAN[:MAX_DISTANCE[:SYMBOLS]]]]")):
        list_documents("copy:128:3:9:20:10:1")
    with pytest.raises(
        DataError, match=re.escape("use needle:LENGTH[:COUNT[:SHORTEST[:DECOYS_PER_KB[:SHARED_RUN]]]]")
    ):
        list_documents("needle:400:3:200:1:2:1")


def test_needle_decoys_are_other_numbers_written_over_the_haystack_only():
    plain, decoyed = list_documents("needle:2048:6:1000"), list_documents("needle:2048:6:1000:12")
    stream = PackedStream(decoyed, encode_bytes, EOS_ID, seq_len=2048, seed=0, shuffle=False)
    for before, after in zip(plain, decoyed, strict=True):
        text = after.text()
        assert stream.next_sequence() == [*encode_bytes(text), EOS_ID]  # still one whole document
        asked = re.findall(r"What is the special magic (\w+) number\? .*? is: (\d+)\.", text)
        haystack = text.split("\nWhat is")[0]
        for city, number in asked:  # every question is still answered by its own needle ...
            assert f"The special magic {city} number is: {number}." in haystack
            assert haystack.count(number) == 1  # ... and by no decoy
        needles = {number for _, number in re.findall(r"magic (\w+) number is: (\d+)\.", haystack)}
        decoys = [n for n in re.findall(r" (\d{7}) ", haystack) if n not in needles]
        # 12 per 1024 bytes of haystack; this one is 1000-2048 bytes minus its needles and question.
        assert 8 <= len(decoys) <= 24, decoys
        assert len(text) == len(before.text())
    assert [d.text() for d in list_documents("needle:600:5:200:0")] == [
        d.text() for d in list_documents("needle:600:5:200")
    ]
    with pytest.raises(DataError, match=re.escape("decoys per 1024 bytes must be 0 .. 64, got 65")):
        list_documents("needle:600:5:200:65")


def longest_shared_run(a: str, b: str) -> int:
    return max(
        (k for k in range(1, len(a) + 1) for j in range(len(a) - k + 1) if a[j : j + k] in b), default=0
    )


def test_needles_with_a_shared_run_share_digits_and_are_still_told_apart_by_city():
    plain, related = list_documents("needle:2048:12:1000"), list_documents("needle:2048:12:1000:0:5")
    shared_runs = []
    for before, after in zip(plain, related, strict=True):
        text = after.text()
        assert len(text) == len(before.text())
        needles = dict(re.findall(r"magic (\w+) number is: (\d+)\. ", text.split("\nWhat is")[0]))
        assert 2 <= len(needles) <= 5 and len(set(needles.values())) == len(needles)
        for city, number in re.findall(r"What is the special magic (\w+) number\? .*? is: (\d+)\.", text):
            assert needles[city] == number  # every question answered by its own needle
        numbers = list(needles.values())
        assert all(len(n) == 7 and n[0] != "0" for n in numbers)
        for i, number in enumerate(numbers):
            others = numbers[:i] + numbers[i + 1 :]
            shared_runs.append(max(longest_shared_run(number, other) for other in others))
    assert min(shared_runs) >= 2  # each number shares at least 2 digits in a row with another,
    assert max(shared_runs) >= 4  # and some share longer runs
    assert [d.text() for d in list_documents("needle:600:5:200:0:0")] == [
        d.text() for d in list_documents("needle:600:5:200")
    ]
    for bad in (1, 7):
        with pytest.raises(
            DataError, match=re.escape(f"a shared run of digits must be 2 .. 6 long, got {bad}")
        ):
            list_documents(f"needle:600:5:200:0:{bad}")


def needles_and_decoys(text: str) -> tuple[list[str], list[str]]:
    haystack = text.split("\nWhat is")[0]
    needles = re.findall(r"magic \w+ number is: (\d+)\. ", haystack)
    return needles, [n for n in re.findall(r" (\d{7}) ", haystack) if n not in needles]


def test_decoys_with_a_shared_run_echo_the_needles_digits():
    """With both options the decoys are hard negatives for the lookup by digits: each repeats a
    run of the needles' digits; random decoys mostly do not."""
    echoes, randoms = [], []
    for with_runs, plain in zip(
        list_documents("needle:2048:12:1000:4:5"), list_documents("needle:2048:12:1000:4"), strict=True
    ):
        text = with_runs.text()
        assert len(text) == len(plain.text())
        needles, decoys = needles_and_decoys(text)
        assert decoys  # 4 per 1024 bytes of haystack, which the needles and questions shorten
        for number in needles:  # each needle's number is written once: no decoy equals it
            assert text.split("\nWhat is")[0].count(number) == 1
        echoes += [max(longest_shared_run(d, n) for n in needles) for d in decoys]
        needles, decoys = needles_and_decoys(plain.text())
        randoms += [max(longest_shared_run(d, n) for n in needles) for d in decoys]
    assert min(echoes) >= 2 and max(echoes) >= 4
    # 3 or more digits in a row: most echoes, few random decoys (41 and 43 decoys here)
    assert sum(run >= 3 for run in echoes) > len(echoes) / 2
    assert sum(run >= 3 for run in randoms) < len(randoms) / 5


def test_a_copy_source_takes_the_span_it_repeats_and_how_far_back():
    distances = []
    for doc in list_documents("copy:128:200:32:64"):
        made = copy_document(int(doc.doc_id.rsplit(":", 1)[1]), 128, span=32, max_distance=64)
        assert doc.text() == made.text and made.span == 32
        repeat = made.start + made.distance
        assert made.text[repeat : repeat + 32] == made.text[made.start : made.start + 32]
        distances.append(made.distance)
    assert min(distances) == 32 and max(distances) == 64
    # Without a max distance, repeats reach as far as the document allows (128 - 32 = 96).
    assert max(copy_document(i, 128, span=32).distance for i in range(200)) > 85
    with pytest.raises(DataError, match=re.escape("a copy span must be 1 .. length // 2 = 64, got 65")):
        list_documents("copy:128:3:65")
    with pytest.raises(
        DataError, match=re.escape("max distance must be 32 .. 96 (span .. length - span), got 97")
    ):
        list_documents("copy:128:3:32:97")


def test_a_copy_source_with_fewer_symbols_draws_its_windows_from_the_digits():
    printable = list_documents("copy:128:50:32:96")
    digits = list_documents("copy:128:50:32:96:10")
    assert [d.text() for d in list_documents("copy:128:50:32:96:95")] == [d.text() for d in printable]
    for doc in digits:
        made = copy_document(int(doc.doc_id.rsplit(":", 1)[1]), 128, span=32, max_distance=96, symbols=10)
        assert doc.text() == made.text and set(made.text) <= set(string.digits)
        repeat = made.start + made.distance
        assert made.text[repeat : repeat + 32] == made.text[made.start : made.start + 32]
    assert set("".join(d.text() for d in digits)) == set(string.digits)
    assert len(set("".join(d.text() for d in printable))) > 90
    for bad in (1, 96):
        with pytest.raises(DataError, match=re.escape(f"symbols must be 2 .. 95, got {bad}")):
            list_documents(f"copy:128:3:32:96:{bad}")


def test_a_copy_source_trained_on_its_targets_labels_only_the_repeat_after_its_first_byte():
    docs = list_documents("copy:128:50:32:64", loss="targets")
    assert [d.text() for d in docs] == [d.text() for d in list_documents("copy:128:50:32:64")]
    stream = PackedStream(docs, encode_bytes, EOS_ID, seq_len=128, seed=0, shuffle=False)
    for doc in docs:
        made = copy_document(doc.row, 128, span=32, max_distance=64)
        ids, labels = stream.next_example()
        assert ids == encode_bytes(made.text)  # the same tokens as with loss = "all"
        repeat = made.start + made.distance
        targets = [t for t, label in enumerate(labels) if label != IGNORE]
        assert targets == list(range(repeat + 1, repeat + 32))
        assert all(labels[t] == ids[t] == ids[t - made.distance] for t in targets)  # copies, all of them
    # The whole window is trained on by default.
    ids, labels = PackedStream(list_documents("copy:128:5"), encode_bytes, EOS_ID, 128, seed=0).next_example()
    assert labels == ids


@pytest.mark.parametrize(
    ("spec", "loss", "message"),
    [
        (
            "stdlib",
            "targets",
            'loss = "targets" needs a source whose documents mark their targets \\(copy\\)',
        ),
        ("needle:400:3", "targets", "needs a source whose documents mark their targets"),
        ("copy:128:3", "some", "loss must be one of all, targets, got 'some'"),
    ],
)
def test_a_source_without_targets_or_a_bad_loss_is_refused(spec, loss, message):
    with pytest.raises(DataError, match=message):
        list_documents(spec, loss=loss)


def test_a_sequence_that_would_hold_no_target_is_refused_rather_than_trained_to_nan():
    # 32-token sequences cut 128-byte windows in four; some quarters hold none of the repeat.
    stream = PackedStream(
        list_documents("copy:128:50:32:64", loss="targets"), encode_bytes, EOS_ID, 32, seed=0
    )
    with pytest.raises(
        DataError, match="data source copy:128:50:32:64: a sequence of 32 tokens holds no target to train on"
    ):
        for _ in range(200):
            stream.next_example()


def size_config(tmp_path, text, **sections):
    from tests.helpers import tiny_config

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    config = tiny_config((tmp_path, tmp_path), **sections)  # (sources replaced below)
    config.data.sources = [DataSource(str(corpus))]
    return config, corpus


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "hello world\n",
            r"holds 13 tokens with EOS, not enough for one training sequence of data.seq_len = 32 "
            r"tokens \(one batch needs 4 x 32 = 128\)",
        ),
        (" \n\t\n   \n" * 20, r"holds only whitespace \(161 tokens with EOS\)"),
    ],
)
def test_a_corpus_without_one_training_sequence_is_refused_naming_it(tmp_path, text, message):
    from yoco.train.loop import train

    config, corpus = size_config(tmp_path, text, **{"data.val_fraction": 0})
    where = re.escape(f"data source {corpus}: its training split (1 document(s)) ")
    with pytest.raises(DataError, match=where + message):
        train(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_corpus_smaller_than_a_batch_or_without_validation_trains_with_warnings(tmp_path, capsys):
    from yoco.train.loop import train

    # 100 bytes + EOS: three sequences of 32, not the 4 x 32 of a batch; one document, which a
    # validation fraction of 1e-9 leaves out of the held-out split.
    config, corpus = size_config(tmp_path, "x = 1\n" * 16 + "pass", **{"data.val_fraction": 1e-9})
    summary = train(config, tmp_path / "run", stop_at=2, show_progress=False)
    assert sorted(summary["losses"]) == [1, 2] and summary["val_loss"] is None
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"yoco train: warning: {corpus}: the training split holds 101 tokens, fewer than one batch of "
        "train.batch_size x data.seq_len = 4 x 32 = 128: every batch repeats it",
        f"yoco train: warning: {corpus}: no document fell in the validation split "
        "(data.val_fraction = 1e-09 of 1 document(s)): no validation loss",
    ]


def test_the_size_check_reads_a_large_corpus_only_as_far_as_it_needs(monkeypatch):
    from yoco.data.packing import count_tokens
    from yoco.data.sources import DocRef

    read = []
    real = DocRef.text
    monkeypatch.setattr(DocRef, "text", lambda self: read.append(self.doc_id) or real(self))
    docs = list_documents("stdlib")
    tokens, text_seen = count_tokens(docs, encode_bytes, 4096)
    assert tokens >= 4096 and text_seen and len(read) < 5 < len(docs)


def test_a_validation_split_smaller_than_its_batches_is_reported(tmp_path):
    from yoco.data.packing import check_sizes
    from yoco.train.config import DataConfig

    (tmp_path / "t").mkdir(), (tmp_path / "v").mkdir()
    train_docs = docs_of(tmp_path / "t", ["x" * 300])
    val_docs = docs_of(tmp_path / "v", ["y" * 50])
    config = DataConfig(sources=[DataSource(str(tmp_path / "t"))], seq_len=32)
    mixture = Mixture([PackedStream(train_docs, encode_bytes, EOS_ID, 32, seed=0)], [1.0], seed=0)
    val = PackedStream(val_docs, encode_bytes, EOS_ID, 32, seed=0, shuffle=False)
    assert check_sizes(config, mixture, val, batch_size=4, eval_batches=2) == [
        f"warning: {tmp_path / 't'}: the validation split holds 51 tokens, fewer than the "
        "eval.batches x train.batch_size x data.seq_len = 2 x 4 x 32 = 256 it is read for: validation sequences repeat"
    ]
    assert check_sizes(config, mixture, val, batch_size=4, eval_batches=0) == []  # (no validation asked for)
