"""MQAR data invariants and a short training smoke run."""

import json

import pytest
import torch

from yoco.eval.mqar import (
    IGNORE,
    build_recall_model,
    mqar_batch,
    query_logits,
    recall_accuracy,
    train_recall,
)


def test_mqar_batches_keep_zoologys_invariants():
    vocab, seq_len, pairs = 8192, 128, 8
    inputs, targets = mqar_batch(32, seq_len, pairs, vocab, generator=torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (32, seq_len)
    half = vocab // 2
    for row in range(32):
        keys, values = inputs[row, 0 : 2 * pairs : 2], inputs[row, 1 : 2 * pairs : 2]
        assert ((keys >= 1) & (keys < half)).all() and len(set(keys.tolist())) == pairs
        assert ((values >= half) & (values < vocab)).all()
        pairs_of = dict(zip(keys.tolist(), values.tolist(), strict=True))
        asked = (targets[row] != IGNORE).nonzero().flatten()
        assert len(asked) == pairs and (asked >= 2 * pairs).all() and (asked % 2 == 0).all()
        queried = inputs[row, asked].tolist()
        assert sorted(queried) == sorted(pairs_of)  # every key asked exactly once
        assert targets[row, asked].tolist() == [pairs_of[k] for k in queried]
        assert (targets[row, : 2 * pairs] == IGNORE).all()


def test_zero_gaps_leave_only_pairs_and_queries():
    inputs, targets = mqar_batch(
        8, 64, 4, generator=torch.Generator().manual_seed(0), random_non_queries=False
    )
    asked = targets != IGNORE
    asked[:, :8] = True  # the key-value pairs
    assert (inputs[~asked] == 0).all() and (inputs[asked] != 0).all()


@pytest.mark.parametrize("kind", ["transformer", "yoco-swa", "swa-only"])
def test_recall_models_tie_their_head_to_the_embedding_unless_asked_not_to(kind):
    def head_is_embedding(model):
        return any(
            model.lm_head.weight is m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)
        )

    assert head_is_embedding(build_recall_model(kind, 64, 16))
    assert not head_is_embedding(build_recall_model(kind, 64, 16, tie_embeddings=False))


def test_mqar_is_seeded():
    a = mqar_batch(4, 64, 4, generator=torch.Generator().manual_seed(1))
    b = mqar_batch(4, 64, 4, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_recall_accuracy_counts_query_positions_only():
    targets = torch.tensor([[IGNORE, 5, IGNORE, 7]])
    logits = torch.zeros(1, 4, 10)
    logits[0, 1, 5] = 1.0
    logits[0, 3, 2] = 1.0
    assert recall_accuracy(logits, targets) == 0.5


def test_every_recall_model_builds_and_a_transformer_learns_a_little():
    for kind in ("yoco-swa", "yoco-gret", "swa-only", "gret-only", "transformer", "yoco-swa+diff+mhmoe"):
        model = build_recall_model(kind, 64, 32, window=8)
        assert model(torch.randint(0, 64, (2, 24))).logits.shape == (2, 24, 64)
    result = train_recall(
        "transformer", 32, 2, 32, vocab_size=32, steps=150, batch_size=32, lr=3e-3, progress=False
    )
    assert result["accuracy"] > 0.25  # chance is 1/16 among the values
    curve = result["loss_curve"]  # the mean loss of each 100 steps: two points for 150 steps
    assert len(curve) == 2 and curve[1] < curve[0]


def test_query_logits_are_the_full_models_logits_at_the_queries():
    torch.manual_seed(0)
    inputs, targets = mqar_batch(3, 64, 4, vocab_size=64, generator=torch.Generator().manual_seed(2))
    model = build_recall_model("yoco-gret", 64, 32, window=8)
    logits, answers = query_logits(model, inputs, targets)
    full = model(inputs).logits
    asked = targets != IGNORE
    torch.testing.assert_close(logits, full[asked], rtol=1e-5, atol=1e-5)
    assert torch.equal(answers, targets[asked]) and len(answers) == 3 * 4


def test_mqar_command_keeps_finished_rows_and_writes_the_table(tmp_path):
    from yoco.eval.command import main

    doc = tmp_path / "EVALUATION.md"
    doc.write_text("# Evaluation\n")
    options = ["mqar", "--grid", "32:2", "--widths", "16", "--models", "transformer", "--steps", "2"]
    options += ["--batch-size", "4", "--vocab-size", "32", "--out", str(tmp_path / "run")]
    main([*options, "--evaluation-md", str(doc)])
    first = (tmp_path / "run" / "mqar.jsonl").read_text()
    assert "| transformer | 16 | 0 |" in doc.read_text() and "yoco eval mqar --grid 32:2" in doc.read_text()
    assert (tmp_path / "run" / "mqar-curves.png").stat().st_size > 0
    assert (tmp_path / "eval" / "mqar-curves.png").exists() and "eval/mqar-curves.png" in doc.read_text()
    main(options)  # the same grid again: the finished row is reused, not retrained
    assert (tmp_path / "run" / "mqar.jsonl").read_text() == first
    # A grid entry may name its vocabulary: a different vocabulary is a new row, in its own column.
    main([*options[:2], "32:2:48", *options[3:]])
    rows = [json.loads(line) for line in (tmp_path / "run" / "mqar.jsonl").read_text().splitlines()]
    assert [r["vocab_size"] for r in rows] == [32, 48]
    assert "(32, 2), vocab 48" in (tmp_path / "run" / "mqar.md").read_text()
    # A row whose model name meant another model when it was trained (a kind's defaults have
    # changed since) is not reused.
    jsonl = tmp_path / "run" / "mqar.jsonl"
    jsonl.write_text(
        first.replace('"model_identity": {"architecture": "transformer"}', '"model_identity": {}')
    )
    main(options)
    assert [json.loads(line)["model_identity"] for line in jsonl.read_text().splitlines()] == [
        {},
        {"architecture": "transformer"},
    ]


@pytest.mark.parametrize("entry", ["32", "32:2:4:1", "32:x", "0:2"])
def test_mqar_grid_entries_are_checked(entry, capsys):
    from yoco.eval.command import main

    with pytest.raises(SystemExit):
        main(["mqar", "--grid", entry])
    assert "SEQ_LEN:PAIRS or SEQ_LEN:PAIRS:VOCAB" in capsys.readouterr().err


def test_part_suffixes_swap_parts_in_and_unknown_ones_are_refused():
    model = build_recall_model("yoco-gret+diff+mhmoe", 64, 32, window=8)
    assert model.config.attention_type == "differential" and model.config.ffn_type == "mhmoe"
    assert build_recall_model("swa-only+diff", 64, 32).config.attention_type == "differential"
    with pytest.raises(ValueError, match="unknown part .mamba."):
        build_recall_model("yoco-gret+mamba", 64, 32)
    with pytest.raises(ValueError, match="needs a cross-decoder"):
        build_recall_model("swa-only+nope", 64, 32)
