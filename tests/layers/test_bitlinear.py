"""BitNet b1.58: the quantisers against their formulas, BitLinear against the paper's quantisers
restated here and its straight-through gradient, 2-bit packing, and whole models built with
``bitnet=True``."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import AutoModelForCausalLM

import yoco
from tests.helpers import MODEL_KINDS, sharpen_attention, tiny_model
from yoco.layers.bitlinear import (
    BitLinear,
    PackedBitLinear,
    activation_quant,
    pack_model,
    pack_ternary,
    unpack_ternary,
    weight_quant,
)

# The (in, out) shapes of docs/ARCHITECTURES.md: a small layer, and the default model's
# 512 -> 512, 512 -> 1376 (gate/up) and 1376 -> 512 (down) projections.
LAYER_SHAPES = [(48, 20), (512, 512), (512, 1376), (1376, 512)]

# BitNet b1.58 (Ma et al. 2024) restated here, not imported, with the conventions the library
# documents: weights divided by γ + ε (the paper's RoundClip(W / (γ + ε), −1, 1), ε = 1e-5) and
# dequantised by γ; activations scaled by 127 / max|x| with max|x| clamped at ε, clipped to
# [−128, 127] (the official code's choices; the BitNet paper writes Q_b = 2^(b−1) = 128 and
# no clamp); the quantisation maths in float32.
EPS = 1e-5


def paper_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean: γ = mean|W|; W̃ = RoundClip(W / (γ + ε), −1, 1) as the nearest of −1, 0, 1, i.e.
    sign(W) where |W| / (γ + ε) > 1/2 (a ratio of exactly 1/2 rounds to even, 0), else 0."""
    w = w.detach().float()
    gamma = w.abs().sum() / w.numel()
    ratio = w / (gamma + EPS)
    return torch.sign(ratio) * (ratio.abs() > 0.5), gamma


def paper_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax: s = 127 / max|x| over the token's features; x̃ = clip(round(x·s), −128, 127)."""
    x = x.detach().float()
    s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=EPS)
    return torch.clamp(torch.round(x * s), -128, 127), s


def bitlinear_by_the_paper(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y = (x̃ · W̃ᵀ) · γ / s: the integer product first (exact in float64), then both scales."""
    x_codes, s = paper_int8(x)
    w_codes, gamma = paper_ternary(w)
    return ((x_codes.double() @ w_codes.double().T) * gamma.double() / s.double()).to(x.dtype)


def random_bit_linear(in_features: int = 48, out_features: int = 20, seed: int = 0) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(in_features, out_features, bias=False)
    nn.init.normal_(layer.weight, std=0.02)
    return layer


def random_input(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def prompt_of(length: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 99, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_weight_quant_on_a_hand_example():
    w = torch.tensor([[0.4, -0.05, 1.2], [-0.9, 0.0, 0.25]])
    # γ = mean|W| = 2.8 / 6; W / γ = [[0.86, -0.11, 2.57], [-1.93, 0, 0.54]] -> round, clip to ±1
    ternary, scale = weight_quant(w)
    assert ternary.dtype == torch.int8
    assert ternary.tolist() == [[1, 0, 1], [-1, 0, 1]]
    assert scale.item() == pytest.approx(2.8 / 6)


def test_weight_quant_is_ternary_and_matches_the_formula():
    w = random_input(64, 40) * 0.02
    ternary, scale = weight_quant(w)
    assert set(ternary.unique().tolist()) == {-1, 0, 1}
    gamma = w.abs().mean()
    torch.testing.assert_close(scale, gamma)
    expected = torch.clamp(torch.round(w / (gamma + 1e-5)), -1, 1)
    assert torch.equal(ternary.float(), expected)


def test_activation_quant_on_a_hand_example():
    x = torch.tensor([[1.0, -0.5, 0.25, 0.1]])
    # s = 127 / 1: x·s = [127, -63.5, 31.75, 12.7] -> [127, -64, 32, 13] (round half to even)
    torch.testing.assert_close(activation_quant(x), torch.tensor([[127.0, -64.0, 32.0, 13.0]]) / 127)


def test_activation_quant_is_per_token_8_bit():
    # Tokens of very different magnitudes: a per-tensor scale would flatten the small one to 0.
    x = random_input(3, 5, 64) * torch.tensor([1e-3, 1.0, 50.0])[:, None, None]
    quantised = activation_quant(x)
    token_max = x.abs().amax(dim=-1, keepdim=True)
    assert ((quantised - x).abs() <= token_max / 127).all()
    # 8 bits: each token takes at most 256 levels, integers on the grid max|x| / 127.
    levels = quantised * 127 / token_max
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert levels.abs().max() <= 127 + 1e-4
    codes, s = paper_int8(x)
    assert torch.equal(quantised, codes / s)  # the restated quantiser, to the bit


@pytest.mark.parametrize("in_features, out_features", LAYER_SHAPES)
def test_bitlinear_forward_equals_the_paper(in_features, out_features):
    layer = random_bit_linear(in_features, out_features)
    x = random_input(2, 7, in_features)
    with torch.no_grad():
        got, expected = layer(x), bitlinear_by_the_paper(x, layer.weight)
    # float32 rounding of the dequantised product against the exact integer product: measured
    # 4.5e-8, 1.8e-7, 1.8e-7, 3.6e-7 on outputs of max |y| 0.33, 1.34, 1.35, 1.80 (at most
    # 2.0e-7 of max |y|). Bound: 3x that, relative to max |y|.
    torch.testing.assert_close(got, expected, atol=6e-7 * float(expected.abs().max()), rtol=0)


def test_bitlinear_tokens_are_independent():
    """Per-token scales: a token's output does not depend on the rest of the batch or sequence,
    which cached decoding relies on."""
    layer = random_bit_linear()
    x = random_input(2, 7, 48)
    with torch.no_grad():
        together = layer(x)
        one_by_one = torch.stack([torch.cat([layer(x[b, t : t + 1]) for t in range(7)]) for b in range(2)])
    # Not bit-equal only because a matrix product rounds differently for other row counts
    # (measured 6.0e-8 on outputs of max |y| 0.33; bound 3x); a per-tensor activation scale
    # would differ by a quantisation step (~1e-2 here).
    torch.testing.assert_close(together, one_by_one, atol=1.8e-7, rtol=0)


@pytest.mark.parametrize("in_features, out_features", [(48, 20), (512, 1376)])
def test_straight_through_gradients(in_features, out_features):
    """Backward is that of a plain linear applied to the quantised input and weight."""
    layer = random_bit_linear(in_features, out_features)
    x = random_input(2, 7, in_features).requires_grad_()
    grad_out = random_input(2, 7, out_features, seed=2)
    grad_x, grad_w = torch.autograd.grad(layer(x), (x, layer.weight), grad_out)

    w_codes, gamma = paper_ternary(layer.weight)
    x_codes, s = paper_int8(x)
    w_quantised = (w_codes * gamma).requires_grad_()
    x_quantised = (x_codes / s).requires_grad_()
    plain = nn.functional.linear(x_quantised, w_quantised)
    expected_x, expected_w = torch.autograd.grad(plain, (x_quantised, w_quantised), grad_out)
    # Measured 0.0: the same products of the same numbers.
    torch.testing.assert_close(grad_x, expected_x, atol=0, rtol=0)
    torch.testing.assert_close(grad_w, expected_w, atol=0, rtol=0)


def test_bitlinear_keeps_the_dtype_under_bf16_autocast_and_in_bf16():
    layer = random_bit_linear()
    # Weights exact in bf16: rounding them would move some across a ternary threshold, which is
    # a different layer, not an error of the bf16 computation.
    layer.weight.data = layer.weight.data.bfloat16().float()
    x = random_input(2, 7, 48)
    with torch.no_grad():
        reference = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_out = layer(x)
        bf16_out = layer.to(torch.bfloat16)(x.bfloat16())
    assert autocast_out.dtype == torch.float32 and bf16_out.dtype == torch.bfloat16
    # Outputs of spread (std) 0.09, max |y| 0.33: measured 1.85e-3 (autocast), 2.03e-3 (bf16). 3x.
    torch.testing.assert_close(autocast_out, reference, atol=5.5e-3, rtol=0)
    torch.testing.assert_close(bf16_out.float(), reference, atol=6e-3, rtol=0)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_pack_unpack_round_trip(shape, seed):
    ternary = torch.randint(-1, 2, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack_ternary(ternary)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(ternary.numel() / 4)  # sizes not a multiple of 4 are padded
    assert torch.equal(unpack_ternary(packed, tuple(shape)), ternary)


@pytest.mark.parametrize("in_features, out_features", [*LAYER_SHAPES, (7, 5), (1, 3)])
def test_packed_bitlinear_equals_bitlinear(in_features, out_features):
    layer = random_bit_linear(in_features, out_features)
    packed = PackedBitLinear(layer)
    assert packed.packed_weight.numel() == math.ceil(in_features * out_features / 4)
    x = random_input(3, 5, in_features)
    with torch.no_grad():
        assert torch.equal(packed(x), layer(x))


@pytest.mark.parametrize("kind", ["transformer", "yoco-swa", "yoco-gret", "yoco-retention", "retnet"])
def test_bitnet_config_converts_every_decoder_block_linear(kind):
    model = tiny_model(kind, bitnet=True, ffn_type="moe", num_experts=2, num_experts_per_tok=1)
    # Every linear layer sits in a decoder block except the LM head; routers and gRet's decay
    # projection stay full precision on purpose.
    full_precision = {
        name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, BitLinear)
    }
    kept = {name for name in full_precision if name.endswith(("router", "decay_proj"))}
    assert full_precision - kept == {"lm_head"}
    assert any(name.endswith("router") for name in kept)
    assert any(name.endswith("decay_proj") for name in kept) == (kind == "yoco-gret")
    assert any(isinstance(m, BitLinear) for m in model.model.modules())
    assert type(model.model.embed_tokens) is nn.Embedding
    plain = tiny_model(kind, ffn_type="moe", num_experts=2, num_experts_per_tok=1)
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert not any(isinstance(m, BitLinear) for m in plain.modules())


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_bitnet_cached_decoding_equals_full_forward(kind):
    model = sharpen_attention(tiny_model(kind, bitnet=True))
    ids = torch.tensor([prompt_of(30), prompt_of(30, seed=1)])
    with torch.no_grad():
        full = model(ids).logits[:, 20:]
        _, cache = yoco.prefill(model, ids[:, :20])
        steps = torch.cat([model(ids[:, t : t + 1], cache=cache).logits for t in range(20, 30)], 1)
    # Sharpened attention, logits of spread (std) 0.11, max |logit| 0.37-0.46: measured
    # transformer 6.0e-8, yoco-swa 6.0e-8 (8.9e-8 with a rotary cross-decoder), yoco-gret 6.0e-8
    # (7.5e-8 without its convolution), yoco-retention 6.0e-8, retnet 8.9e-8.
    # Bound: 3x the largest.
    torch.testing.assert_close(steps, full, atol=2.7e-7, rtol=0)

    prompt = prompt_of(13, seed=3)
    expected = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            expected.append(int(model(torch.tensor([expected])).logits[0, -1].argmax()))
    assert yoco.generate(model, [prompt], 8)[0] == expected[len(prompt) :]


def test_bitnet_model_learns_a_repeating_sequence():
    model = tiny_model("transformer", bitnet=True, num_hidden_layers=2).train()  # the cheapest to train
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    pattern = torch.tensor([11, 42, 7, 93, 58, 20])  # each row repeats this, from a random phase
    losses = []
    for _ in range(40):
        phases = torch.randint(0, len(pattern), (8, 1), generator=generator)
        ids = pattern[(phases + torch.arange(24)) % len(pattern)]
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_pack_model_saves_the_computed_bytes_and_keeps_the_logits(kind):
    model = tiny_model(kind, bitnet=True)
    bit_linears = [m for m in model.modules() if isinstance(m, BitLinear)]
    expected = sum(4 * m.weight.numel() - math.ceil(m.weight.numel() / 4) - 4 for m in bit_linears)
    ids = torch.tensor([prompt_of(30)])
    with torch.no_grad():
        before = model(ids).logits
    generated = yoco.generate(model, [prompt_of(9)], 8)
    saved = pack_model(model)
    assert saved == expected > 0
    assert sum(isinstance(m, PackedBitLinear) for m in model.modules()) == len(bit_linears)
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    # The cache paths run on packed layers too, and decode what the unpacked model decoded.
    assert yoco.generate(model, [prompt_of(9)], 8) == generated


def test_pack_model_on_the_default_model_saves_the_documented_bytes():
    """The memory table of docs/ARCHITECTURES.md, for YocoConfig(bitnet=True): built and packed
    on the meta device, so nothing is allocated (pack_model's return value counts shapes only)."""
    with torch.device("meta"):
        model = yoco.YocoForCausalLM(yoco.YocoConfig(bitnet=True))

    def nbytes() -> int:
        return sum(t.nbytes for t in [*model.parameters(), *model.buffers()])

    bit_linears = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert len(bit_linears) == 54
    assert sum(m.weight.numel() for m in bit_linears) == 24_772_608
    before = nbytes()
    assert pack_model(model) == 92_897_064 == 4 * 24_772_608 - 6_193_152 - 4 * 54
    assert (before, nbytes()) == (230_264_832, 137_367_768)


def test_bitnet_save_and_load_round_trip(tmp_path):
    model = tiny_model("yoco-gret", bitnet=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.bitnet
    assert sum(isinstance(m, BitLinear) for m in loaded.modules()) == sum(
        isinstance(m, BitLinear) for m in model.modules()
    )
    ids = torch.tensor([prompt_of(30)])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
