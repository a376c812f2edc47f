"""Differential attention against its formula, against transformers' DiffLlama, and in every
model that takes it (Transformer, YOCO-SWA self- and cross-decoder, YOCO-gRet cross-decoder)."""

import math

import pytest
import torch
from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

import yoco
from tests.helpers import TINY, sharpen_attention, tiny_model, train_briefly
from yoco.layers.differential_attention import (
    DiffCrossAttention,
    DiffSelfAttention,
    DiffSharedKV,
    differential_attention_reference,
    lambda_init,
)
from yoco.layers.rotary import RotaryEmbedding
from yoco.ops.attention import attention_reference, causal_mask
from yoco.ops.sliding_window import sliding_window_mask

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EPS = 32, 4, 2, 8, 1e-6
WINDOW, N = 8, 37
KINDS = ("transformer", "yoco-swa", "yoco-gret")


def rope_for(n: int):
    positions = torch.arange(n)[None].expand(2, n)
    return RotaryEmbedding(HEAD_DIM)(positions, torch.float32)


def inputs(n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, n, HIDDEN, generator=torch.Generator().manual_seed(seed))


def sub_heads(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, N, hidden) projected by ``weight`` -> (B, sub-heads, N, d)."""
    b, n, _ = x.shape
    return (x @ weight.T).view(b, n, -1, HEAD_DIM).transpose(1, 2)


def formula_output(layer, layer_number: int, q, k, v, mask) -> torch.Tensor:
    """Rotated sub-heads q (B, H, Nq, d), k, v (B, H_kv, Nk, d) -> the layer's output through the
    written-out formula: differential map, per-head RMSNorm, (1 − λ_init), output projection."""
    h, h_kv = q.shape[1] // 2, k.shape[1] // 2
    lam = (
        math.exp(float(layer.lambda_q1 @ layer.lambda_k1))
        - math.exp(float(layer.lambda_q2 @ layer.lambda_k2))
        + lambda_init(layer_number)
    )
    value = torch.cat([v[:, :h_kv], v[:, h_kv:]], dim=-1)  # head j: [V_j | V_{j + H_kv/2}], width 2d
    out = differential_attention_reference(q[:, :h], k[:, :h_kv], q[:, h:], k[:, h_kv:], value, lam, mask)
    out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + EPS) * (1 - lambda_init(layer_number))
    b, _, n, _ = out.shape
    return out.transpose(1, 2).reshape(b, n, -1) @ layer.o_proj.weight.T


def self_attention_by_formula(layer: DiffSelfAttention, layer_number: int, x, mask) -> torch.Tensor:
    rope = rope_for(x.shape[1])
    q = rope.rotate_queries(sub_heads(x, layer.q_proj.weight))
    k = rope.rotate_keys(sub_heads(x, layer.k_proj.weight))
    return formula_output(layer, layer_number, q, k, sub_heads(x, layer.v_proj.weight), mask)


def sharpen_layer(*modules: torch.nn.Module, factor: float = 4.0) -> None:
    """Scale the q/k projections of standalone layers (default init, inputs N(0, 1)) by
    ``factor``: the largest weight of a map then averages 0.78 instead of 0.09."""
    with torch.no_grad():
        for module in modules:
            for name, weight in module.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    weight.mul_(factor)


def test_lambda_init_follows_the_paper_for_layers_1_to_4():
    for layer, expected in zip(range(1, 5), (0.2, 0.355509, 0.470713, 0.556058), strict=True):
        assert lambda_init(layer) == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * (layer - 1)), abs=1e-12)
        assert lambda_init(layer) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_each_layer_takes_the_lambda_init_of_its_depth(kind):
    model = tiny_model(kind, attention_type="differential")
    numbers = [m.lambda_init for m in model.modules() if hasattr(m, "lambda_init")]  # in depth order
    first = 1 if kind != "yoco-gret" else 1 + model.config.num_self_decoder_layers
    assert numbers == [lambda_init(first + i) for i in range(len(numbers))]
    assert len(numbers) == (2 if kind == "yoco-gret" else 4)


def test_reference_is_plain_attention_when_lambda_is_zero():
    g = torch.Generator().manual_seed(1)
    q1, q2 = torch.randn(2, 2, 4, 5, 8, generator=g)
    k1, k2 = torch.randn(2, 2, 2, 9, 8, generator=g)
    v = torch.randn(2, 2, 9, 16, generator=g)
    torch.testing.assert_close(
        differential_attention_reference(q1, k1, q2, k2, v, 0.0), attention_reference(q1, k1, v)
    )
    diff = differential_attention_reference(q1, k1, q2, k2, v, 0.7)
    torch.testing.assert_close(diff, attention_reference(q1, k1, v) - 0.7 * attention_reference(q2, k2, v))


@pytest.mark.parametrize("window", [None, WINDOW])
def test_self_attention_layer_equals_the_formula(window):
    torch.manual_seed(0)
    layer = DiffSelfAttention(HIDDEN, HEADS, KV_HEADS, layer_index=2, eps=EPS, window=window)
    sharpen_layer(layer)
    x = inputs()
    mask = causal_mask(N, N, x.device) if window is None else sliding_window_mask(N, N, window, x.device)
    with torch.no_grad():
        got = layer(x, rope_for(N))
        expected = self_attention_by_formula(layer, 3, x, mask)
    # Outputs of spread (std) 0.29; max difference measured 9.8e-7 (full), 3.6e-7 (window): 3x.
    torch.testing.assert_close(got, expected, atol=3e-6, rtol=0)


@pytest.mark.parametrize("n_queries", [N, 5, 1])
def test_cross_attention_layer_equals_the_formula(n_queries):
    """Diff-YOCO: queries are the last ``n_queries`` positions, K/V come from DiffSharedKV."""
    torch.manual_seed(0)
    shared = DiffSharedKV(HIDDEN, KV_HEADS, HEAD_DIM, EPS)
    layer = DiffCrossAttention(HIDDEN, HEADS, layer_index=3, eps=EPS)
    sharpen_layer(shared, layer)
    x, memory = inputs(n_queries, seed=1), inputs(N, seed=2)
    rope = rope_for(N)
    with torch.no_grad():
        got = layer(x, rope.last(n_queries), shared(memory, rope))
        h = shared.norm(memory)
        q = rope.last(n_queries).rotate_queries(sub_heads(x, layer.q_proj.weight))
        k = rope.rotate_keys(sub_heads(h, shared.k_proj.weight))
        expected = formula_output(layer, 4, q, k, sub_heads(h, shared.v_proj.weight), None)
    # Outputs of spread (std) 0.22-0.24; max difference measured 2.2e-7 (Nq = 37): 3x.
    torch.testing.assert_close(got, expected, atol=7e-7, rtol=0)


# Max |ours - DiffLlama| on logits of spread (std) 1.09, max |logit| 3.9: eager 3.3e-6 / 4.7e-6
# (H_kv = 2 / 4), SDPA 1.2e-6 / 1.4e-6. Bounds: 3x the larger of each.
DIFFLLAMA_TOLERANCE = {"eager": 1.4e-5, "sdpa": 4.5e-6}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_transformer_equals_transformers_diffllama_with_the_same_weights(kv_heads, attn):
    """Same parameter names and layout as DiffLlama: its state dict loads unchanged."""
    model = tiny_model("transformer", attention_type="differential", num_key_value_heads=kv_heads)
    # Larger weights than the 0.02 init: sharp attention maps, so that a wrong pairing of the
    # sub-heads shows (swapping K1 and K2 in one layer then moves the logits by ~3, not ~0.004).
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(0.2 * noise if p.dim() > 1 else p + 0.1 * noise)  # 1-D: norm scales, λ vectors
    config = DiffLlamaConfig(
        **{**TINY, "num_key_value_heads": kv_heads},
        head_dim=HEAD_DIM,
        rms_norm_eps=model.config.rms_norm_eps,
        tie_word_embeddings=False,
        attn_implementation=attn,  # DiffLlama's written-out softmax, or its SDPA path
    )
    reference = DiffLlamaForCausalLM(config).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    assert [layer.self_attn.lambda_init for layer in reference.model.layers] == [
        layer.self_attn.lambda_init for layer in model.model.layers
    ]
    ids = torch.randint(0, 99, (2, N), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids).logits, reference(ids).logits, atol=DIFFLLAMA_TOLERANCE[attn], rtol=0
        )


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_are_the_softmax_baseline_plus_the_lambda_vectors(kind):
    model = tiny_model(kind, attention_type="differential")
    baseline = tiny_model(kind)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in baseline.parameters())
    attention_layers = 2 if kind == "yoco-gret" else 4  # gRet's self-decoder has no attention
    assert extra == 4 * HEAD_DIM * attention_layers <= 4 * HEAD_DIM * TINY["num_hidden_layers"]
    shapes = {name: p.shape for name, p in model.named_parameters() if "lambda" not in name}
    assert shapes == {name: p.shape for name, p in baseline.named_parameters()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_cached_prefill_and_steps_equal_the_full_forward(kind, chunk):
    model = sharpen_attention(tiny_model(kind, attention_type="differential"))
    ids = torch.randint(0, 99, (2, 3 * WINDOW + 5), generator=torch.Generator().manual_seed(chunk))
    with torch.no_grad():
        full = model(ids).logits
        last, cache = yoco.prefill(model, ids[:, :20], chunk_size=chunk)
        steps = [model(ids[:, t : t + 1], cache=cache).logits for t in range(20, ids.shape[1])]
    # Logits of spread (std) 0.11; max difference measured over the kinds and chunks: prefill
    # 4.7e-7 (yoco-swa), steps 1.1e-6 (yoco-gret without its short convolution, chunk 1; 9.4e-7
    # with it, 1.0e-6 for yoco-swa). Bound 3x.
    torch.testing.assert_close(last, full[:, 19], atol=3e-6, rtol=0)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 20:], atol=3e-6, rtol=0)
    # Packed pairs: the cache holds exactly the bytes of the softmax baseline's.
    _, baseline_cache = yoco.prefill(tiny_model(kind), ids)
    assert cache.nbytes() == baseline_cache.nbytes()


@pytest.mark.parametrize("kind", KINDS)
def test_generation_of_unequal_prompts_equals_single_runs_and_full_recompute(kind):
    model = tiny_model(kind, attention_type="differential")
    prompts = [
        torch.randint(0, 99, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (1, 9, 29)
    ]
    singles = [yoco.generate(model, [p], 6, prefill_chunk_size=4)[0] for p in prompts]
    assert yoco.generate(model, prompts, 6) == singles
    ids = list(prompts[-1])
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert ids[len(prompts[-1]) :] == singles[-1]


# Max |bf16 cached - fp32| on logits of spread (std) 0.11-0.13, max |logit| 0.3-0.45: transformer
# 2.7e-3, yoco-swa 3.1e-3, yoco-gret 4.3e-3 (3.5-3.9e-3 without its convolution). Bounds: 2.5-3x.
BF16_TOLERANCE = {"transformer": 8e-3, "yoco-swa": 9.5e-3, "yoco-gret": 1.05e-2}


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_cached_logits_track_fp32(kind):
    """Teacher-forced: bf16 decoding through the cache stays within bf16 rounding of fp32."""
    model = tiny_model(kind, attention_type="differential")
    ids = torch.randint(0, 99, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(ids).logits[0, 20:]
        low = model.to(torch.bfloat16)
        _, cache = yoco.prefill(low, ids[0, :20])
        steps = [low(ids[:, t : t + 1], cache=cache).logits[0, 0].float() for t in range(20, 30)]
    torch.testing.assert_close(torch.stack(steps), reference, atol=BF16_TOLERANCE[kind], rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_the_loss(kind):
    model = tiny_model(kind, attention_type="differential")
    losses = train_briefly(model, torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79] * 4]))
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lambda" in n
    )
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize(
    "kind, fields, message",
    [
        (
            "transformer",
            dict(hidden_size=24, num_attention_heads=3, num_key_value_heads=3),
            "num_attention_heads",
        ),
        ("transformer", dict(num_key_value_heads=1), "num_key_value_heads"),
        ("yoco-swa", dict(num_key_value_heads=1), "num_key_value_heads"),
        ("yoco-gret", dict(num_key_value_heads=1), "num_key_value_heads"),
    ],
)
def test_unpaired_heads_raise_a_clear_error(kind, fields, message):
    with pytest.raises(ValueError, match=f"differential attention.*{message} must be even"):
        tiny_model(kind, attention_type="differential", **fields)
