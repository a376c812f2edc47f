"""`eval ppl` equals the training loss on the same tokens and is exp(cross-entropy) alone for an
MoE model; a saved model runs under lm_eval."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tests.helpers import tiny_model
from yoco.data.packing import PackedStream
from yoco.data.sources import list_documents
from yoco.eval.ppl import evaluate_ppl
from yoco.tokenizer import byte_tokenizer


def test_ppl_equals_the_training_loss_on_the_same_tokens(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"def f{i}(x):\n    return x + {i}\n" * (i + 3) + "#" * i)
    model = tiny_model("yoco-gret", vocab_size=258)
    tokenizer = byte_tokenizer()
    result = evaluate_ppl(model, tokenizer, str(tmp_path), seq_len=32, batch_size=3)
    docs = list_documents(str(tmp_path))
    total = sum(len(d.text().encode()) + 1 for d in docs)  # bytes and one EOS per document
    full, rest = divmod(total, 32)
    assert rest > 1, "the data should end in a short window, so that window is checked too"
    stream = PackedStream(docs, lambda t: tokenizer(t)["input_ids"], 257, 32, 0, shuffle=False)
    windows = torch.tensor([stream.next_sequence() for _ in range(full + 1)])
    last = windows[-1:, :rest]  # the stream wraps around to fill its last window; ppl must not
    with torch.no_grad():
        full_loss = float(model(windows[:full], labels=windows[:full]).loss)
        last_loss = float(model(last, labels=last).loss)
    assert result["tokens"] == full * 31 + rest - 1
    training_loss = (full_loss * full * 31 + last_loss * (rest - 1)) / result["tokens"]
    assert result["loss"] == pytest.approx(training_loss, rel=1e-5)
    assert result["ppl"] == pytest.approx(torch.tensor(training_loss).exp().item(), rel=1e-5)


def test_ppl_on_a_file_shorter_than_one_window_scores_its_own_tokens(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("hello world!")  # 12 bytes + EOS = 13 tokens, 12 predictions
    model = tiny_model("transformer", vocab_size=258)
    result = evaluate_ppl(model, byte_tokenizer(), str(text), seq_len=512)
    ids = torch.tensor([list(b"hello world!") + [257]])
    with torch.no_grad():
        expected = float(model(ids, labels=ids).loss)
    assert result["tokens"] == 12
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    capped = evaluate_ppl(model, byte_tokenizer(), str(text), seq_len=4, max_tokens=10)
    assert capped["tokens"] == 3 + 3 + 1  # windows of 4, 4 and 2 tokens
    for bad in (dict(seq_len=1), dict(batch_size=0), dict(max_tokens=1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            evaluate_ppl(model, byte_tokenizer(), str(text), **bad)


def test_the_ppl_of_an_moe_model_is_its_cross_entropy_alone(tmp_path):
    """exp(cross-entropy), computed here from the logits, and not exp(CE + coef · aux): the
    load-balancing term trains the router but is no part of how well the model predicts."""
    text = "def moe(x):\n    return x * 2  # routed\n" * 3  # 117 bytes + EOS
    (tmp_path / "moe.txt").write_text(text)
    model = tiny_model("yoco-swa", vocab_size=258, ffn_type="moe", num_experts=4)
    result = evaluate_ppl(model, byte_tokenizer(), str(tmp_path), seq_len=32, batch_size=2)
    tokens = list(text.encode()) + [257]
    windows = [torch.tensor([tokens[i : i + 32]]) for i in range(0, len(tokens), 32)]  # 32, 32, 32, 22
    summed, aux_summed, predicted = 0.0, 0.0, 0
    with torch.no_grad():
        for ids in windows:
            out = model(ids)
            count = ids.shape[1] - 1
            summed += float(F.cross_entropy(out.logits[0, :-1], ids[0, 1:], reduction="sum"))
            aux_summed += float(out.aux_loss) * count
            predicted += count
    cross_entropy = summed / predicted
    assert result["tokens"] == predicted == 31 * 3 + 21
    assert result["loss"] == pytest.approx(cross_entropy, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(cross_entropy), rel=1e-5)
    # The control: this model's aux loss is far from zero (four layers, measured 4.07), so had
    # the balancing term been folded in, ppl would be exp(0.01 · 4.07) ≈ 4% larger.
    with_aux = cross_entropy + model.config.router_aux_loss_coef * aux_summed / predicted
    assert aux_summed / predicted > 3.5
    assert result["ppl"] != pytest.approx(math.exp(with_aux), rel=1e-3)


def test_a_saved_model_runs_under_lm_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model_dir = tmp_path / "model"
    tiny_model("yoco-swa", vocab_size=258).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "mc.jsonl"
    rows = [
        {"question": f"{a} + {b} =", "choices": [f" {a + b}", f" {a + b + 1}"], "answer": 0}
        for a, b in [(1, 2), (3, 4), (5, 6), (2, 2)]
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "yoco_tiny_mc.yaml").write_text(
        "task: yoco_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'target_delimiter: ""\n'  # the choices carry their own leading space
        "metric_list:\n  - metric: acc\n"
    )
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=["yoco_tiny_mc"],
        task_manager=TaskManager(include_path=str(tasks)),
        device="cpu",
        batch_size=2,
        log_samples=True,
    )
    # lm_eval's log-likelihood of each choice must be the one our model gives the choice's bytes
    # after the question's, and its accuracy the share of questions whose answer scores best.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    correct = 0
    for sample in sorted(out["samples"]["yoco_tiny_mc"], key=lambda s: s["doc_id"]):
        row = rows[sample["doc_id"]]
        ours = [continuation_log_likelihood(model, row["question"], choice) for choice in row["choices"]]
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx(ours, abs=1e-4)
        correct += max(range(len(ours)), key=ours.__getitem__) == row["answer"]
    assert out["results"]["yoco_tiny_mc"]["acc,none"] == correct / len(rows)


def continuation_log_likelihood(model, context: str, continuation: str) -> float:
    ids = torch.tensor([list((context + continuation).encode())])
    with torch.no_grad():
        log_probs = model(ids).logits[0, :-1].log_softmax(-1)
    start = len(context.encode())
    return float(sum(log_probs[t - 1, ids[0, t]] for t in range(start, ids.shape[1])))
