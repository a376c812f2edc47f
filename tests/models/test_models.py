"""Model-level checks shared by every architecture: causality, loss, HF round trip, errors."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tests.helpers import TINY, sharpen_attention, tiny_model
from yoco import TransformerConfig, TransformerForCausalLM, YocoConfig, YocoForCausalLM


def test_changing_token_t_changes_no_logit_before_t(model_kind):
    model = tiny_model(model_kind)
    ids = torch.randint(0, 99, (2, 40), generator=torch.Generator().manual_seed(1))
    t = 23
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % 99
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    # Exactly equal (measured 0.0 for every kind): nothing before t reads token t, not even
    # through rounding.
    assert torch.equal(after[:, :t], before[:, :t])
    assert not torch.allclose(after[:, t:], before[:, t:]), "token t must influence logits at t"


def test_loss_is_next_token_cross_entropy(model_kind):
    model = tiny_model(model_kind)
    ids = torch.randint(0, 99, (2, 17))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 99), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, f"parameters that receive no gradient: {no_grad}"


# Max |ours - Llama| on logits of spread (std) 0.11-0.12, weights sharpened by 20: SDPA 0.0 (the
# same kernel on the same numbers), eager 4.6e-7 (untied) / 5.0e-7 (tied), its written-out
# softmax rounding differently. Bounds: exact, and 3x the eager figure.
LLAMA_TOLERANCE = {"sdpa": 0.0, "eager": 1.5e-6}


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_transformer_equals_llama(tie, attn):
    # Sharpened (q/k x20): at the 0.02 init attention is nearly uniform, and a wrong rotary or
    # softmax scale barely moves the logits (a rotary base 5% off passed the former 1e-4 bound).
    ours = sharpen_attention(tiny_model("transformer", tie_word_embeddings=tie))
    llama_config = LlamaConfig(
        **{k: v for k, v in TINY.items()},
        rms_norm_eps=ours.config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": ours.config.rope_theta},
        tie_word_embeddings=tie,
        attn_implementation=attn,
    )
    llama = LlamaForCausalLM(llama_config).eval()
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    llama_shapes = {k: v.shape for k, v in llama.state_dict().items()}
    assert ours_shapes == llama_shapes
    llama.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, 99, (3, 45), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tolerance = LLAMA_TOLERANCE[attn]
        torch.testing.assert_close(ours(ids).logits, llama(ids).logits, atol=tolerance, rtol=0)


def test_save_and_load_through_auto_classes(model_kind, tmp_path):
    model = tiny_model(model_kind)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")), "weights must be safetensors, never pickles"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    saved, original = AutoConfig.from_pretrained(tmp_path).to_dict(), model.config.to_dict()
    saved.pop("_name_or_path"), original.pop("_name_or_path")
    assert saved == original
    ids = torch.randint(0, 99, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


# Max |bf16 - fp32| on logits of spread (std) 0.11-0.12, max |logit| 0.4-0.5: transformer 2.7e-3,
# yoco-swa 2.7e-3 (2.8e-3 with a rotary cross-decoder), yoco-gret 4.1e-3 (3.8e-3 without its
# convolution), yoco-retention 3.4e-3, retnet 5.1e-3. Bounds: 3x those.
BF16_TOLERANCE = {
    "transformer": 8e-3,
    "yoco-swa": 8.5e-3,
    "yoco-gret": 1.2e-2,
    "yoco-gret+noconv": 1.2e-2,
    "yoco-retention": 1e-2,
    "retnet": 1.5e-2,
}


def test_bf16_forward_is_close_to_fp32(model_kind):
    model = tiny_model(model_kind)
    ids = torch.randint(0, 99, (2, 33), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(ids).logits
        low = model.to(torch.bfloat16)(ids).logits
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=BF16_TOLERANCE[model_kind], rtol=0)


def test_yoco_defaults_split_layers_in_half():
    config = YocoConfig(num_hidden_layers=6)
    assert (config.num_self_decoder_layers, config.num_cross_decoder_layers) == (3, 3)
    model = YocoForCausalLM(YocoConfig(**{**TINY, "num_hidden_layers": 5}))
    assert len(model.model.self_decoder) == 2 and len(model.model.cross_decoder) == 3


def test_yoco_has_one_kv_projection_for_all_cross_layers():
    """Cross layers own q/o only: a k/v projection exists once, in shared_kv."""
    model = tiny_model("yoco-gret")
    kv_names = [n for n, _ in model.named_parameters() if "k_proj" in n or "v_proj" in n]
    cross_kv = [n for n in kv_names if "cross_decoder" in n]
    assert not cross_kv
    assert {"model.shared_kv.k_proj.weight", "model.shared_kv.v_proj.weight"} <= set(kv_names)


BAD_CONFIGS = [
    (TransformerConfig, dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
    (TransformerConfig, dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (YocoConfig, dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
    (YocoConfig, dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (YocoConfig, dict(self_decoder="mamba"), "self_decoder"),
    (YocoConfig, dict(self_decoder="swa", sliding_window=0), "sliding_window"),
    (YocoConfig, dict(num_hidden_layers=4, num_self_decoder_layers=0), "num_self_decoder_layers"),
    (YocoConfig, dict(num_hidden_layers=4, num_self_decoder_layers=4), "num_self_decoder_layers"),
    (YocoConfig, dict(num_hidden_layers=1), "num_self_decoder_layers"),
    (YocoConfig, dict(cross_decoder_logn_base=1), "cross_decoder_logn_base"),
    (YocoConfig, dict(cross_decoder=False, cross_decoder_logn_base=64), "cross_decoder_logn_base"),
    (TransformerConfig, dict(vocab_size=0), "vocab_size"),
]


@pytest.mark.parametrize("config_class, fields, field_named", BAD_CONFIGS)
def test_bad_config_raises_value_error_naming_the_field(config_class, fields, field_named):
    with pytest.raises(ValueError, match=field_named):
        config_class(**{**TINY, **fields})


def test_bad_token_ids_and_lengths_raise(model_kind):
    model = tiny_model(model_kind)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 99]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, TINY["max_position_embeddings"] + 1, dtype=torch.long))


def test_transformer_class_is_distinct_from_llama():
    """Loading one of ours never silently yields a Llama (the model_type says which)."""
    assert TransformerConfig.model_type == "yoco_transformer"
    assert isinstance(tiny_model("transformer"), TransformerForCausalLM)
