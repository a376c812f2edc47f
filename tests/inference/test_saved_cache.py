"""Kept contexts: a saved and reloaded cache continues exactly as the one in memory, and a file
that does not belong to the model is refused, naming why, without touching anything."""

import pytest
import torch

import yoco
from tests.helpers import prompt_of, tiny_model
from yoco.inference import saved_cache


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
@pytest.mark.parametrize("kind", ["yoco-swa", "yoco-gret", "transformer", "retnet"])
def test_save_then_load_continues_exactly_as_in_memory(kind, kv_cache_dtype, tmp_path):
    model = tiny_model(kind)
    prompt = prompt_of(37, seed=3)
    _, cache = yoco.prefill(model, prompt, chunk_size=16, kv_cache_dtype=kv_cache_dtype)
    path = yoco.save_cache(model, cache, tmp_path / "context.safetensors", token_ids=prompt)
    loaded = yoco.load_cache(model, path, token_ids=prompt)
    assert loaded.lengths == cache.lengths == [37]
    assert loaded.kv_cache_dtype == cache.kv_cache_dtype == (kv_cache_dtype if kind != "retnet" else "auto")
    step = torch.tensor([[5]])
    with torch.no_grad():
        expected = model(step, cache=cache).logits
        got = model(step, cache=loaded).logits
    assert torch.equal(got, expected)
    # And on through generate: the same greedy tokens as a full recompute of the whole text.
    more = yoco.generate(model, [prompt + [5]], 4, kv_cache_dtype=kv_cache_dtype)[0]
    tokens = []
    with torch.no_grad():
        logits = got
        for _ in range(4):
            tokens.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[tokens[-1]]]), cache=loaded).logits
    assert tokens == more


def test_rows_of_unequal_length_are_kept(tmp_path):
    model = tiny_model("yoco-swa")
    caches = [yoco.prefill(model, prompt_of(n, seed=n))[1] for n in (5, 19)]
    cache = type(caches[0]).stack(caches)
    loaded = yoco.load_cache(model, yoco.save_cache(model, cache, tmp_path / "c.safetensors"))
    assert loaded.lengths == [5, 19]
    with torch.no_grad():
        step = torch.tensor([[1], [2]])
        assert torch.equal(model(step, cache=loaded).logits, model(step, cache=cache).logits)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model("yoco-gret")
    _, cache = yoco.prefill(model, prompt_of(12))
    return model, yoco.save_cache(model, cache, tmp_path / "c.safetensors", token_ids=prompt_of(12))


@pytest.mark.parametrize(
    "other, message",
    [
        (lambda: tiny_model("yoco-gret", num_hidden_layers=2), "num_hidden_layers is 4 there and 2 here"),
        (lambda: tiny_model("yoco-swa+crosspos"), "self_decoder is 'gret' there and 'swa' here"),
        (lambda: tiny_model("transformer"), "model_type is 'yoco' there and 'yoco_transformer' here"),
        (
            lambda: tiny_model("yoco-gret").to(torch.bfloat16),
            "holds a float32 cache but the model runs bfloat16",
        ),
        (lambda: _reinitialised(tiny_model("yoco-gret")), "same shape but other weights"),
    ],
)
def test_a_cache_from_another_model_is_refused_naming_the_difference(saved, other, message):
    _, path = saved
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        yoco.load_cache(other(), path)
    assert path.read_bytes() == before


def _reinitialised(model):
    with torch.no_grad():
        model.lm_head.weight.add_(1e-3)
    return model


def test_other_token_ids_are_refused_when_given(saved):
    model, path = saved
    with pytest.raises(ValueError, match="other token ids"):
        yoco.load_cache(model, path, token_ids=prompt_of(12, seed=9))
    assert yoco.load_cache(model, path, token_ids=prompt_of(12)).lengths == [12]


def test_foreign_and_truncated_files_are_refused(saved, tmp_path):
    model, path = saved
    weights = tmp_path / "weights"
    model.save_pretrained(weights)
    with pytest.raises(ValueError, match="is not a yoco cache file"):
        yoco.load_cache(model, weights / "model.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a complete safetensors file"):
        yoco.load_cache(model, truncated)
    with pytest.raises(ValueError, match="no such cache file"):
        yoco.load_cache(model, tmp_path / "missing.safetensors")


def test_an_interrupted_save_leaves_the_old_file_whole(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def fails_halfway(tensors, filename, metadata):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(saved_cache, "save_file", fails_halfway)
    _, cache = yoco.prefill(model, prompt_of(30))
    with pytest.raises(OSError, match="disk full"):
        yoco.save_cache(model, cache, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
