"""yoco.layers.Linear: the packed bfloat16 path for few rows equals F.linear bit for bit, follows
weight updates, and steps aside whenever a gradient is needed; the float32 path for many rows is
within one bfloat16 rounding of the exact product, and is taken only where chosen."""

import pytest
import torch
import torch.nn.functional as F

import yoco.layers.linear as linear_module
from yoco.layers.linear import FLOAT32_ROWS, PACKED_ROWS, Linear

# The locked CPU torch has oneDNN; a build without it takes F.linear everywhere, and the
# results must be the same either way.
PACKED = linear_module._AVAILABLE


def test_few_bfloat16_rows_take_the_packed_path_and_equal_f_linear(monkeypatch):
    monkeypatch.setattr(linear_module, "float32_products_are_faster", lambda: False)
    layer = Linear(64, 96, bias=True).to(torch.bfloat16)
    calls = []
    packed = linear_module._PACKED_LINEAR
    monkeypatch.setattr(linear_module, "_PACKED_LINEAR", lambda *a: calls.append(a[0].shape) or packed(*a))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in [(1, 64), (2, 3, 64), (PACKED_ROWS, 64), (PACKED_ROWS + 1, 64)]:
            x = torch.randn(*shape, generator=gen).to(torch.bfloat16)
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias)), shape
        assert calls == ([(1, 64), (6, 64), (PACKED_ROWS, 64)] if PACKED else [])  # more rows: F.linear
        layer.weight.mul_(2)  # an in-place update (an optimizer step) repacks
        x = torch.randn(1, 64, generator=gen).to(torch.bfloat16)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        assert layer(x.float().to(torch.bfloat16)).dtype == torch.bfloat16
    calls.clear()
    y = layer(x)  # gradients wanted: the plain path, which autograd can differentiate
    y.sum().backward()
    assert calls == [] and layer.weight.grad is not None
    with torch.no_grad():
        layer.float()(x.float())  # float32: the plain path (the packed one is not faster there)
    assert calls == []


def test_without_onednn_every_product_is_f_linear(monkeypatch):
    monkeypatch.setattr(linear_module, "_AVAILABLE", False)
    monkeypatch.setattr(linear_module, "_PACKED_LINEAR", None)  # would fail if called
    layer = Linear(32, 48).to(torch.bfloat16)
    x = torch.randn(1, 32).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("bias", [False, True])
def test_many_bfloat16_rows_in_float32_round_the_exact_product_once(bias, monkeypatch):
    """Where float32 products are chosen, FLOAT32_ROWS rows or more are multiplied in float32:
    within one bfloat16 step of the exact product (computed in float64), as F.linear is; fewer
    rows keep the bfloat16 kernels."""
    monkeypatch.setattr(linear_module, "float32_products_are_faster", lambda: True)
    calls = []
    in_float32 = linear_module.bfloat16_linear_in_float32
    monkeypatch.setattr(
        linear_module, "bfloat16_linear_in_float32", lambda *a: calls.append(a[0].shape) or in_float32(*a)
    )
    gen = torch.Generator().manual_seed(0)
    layer = Linear(256, 96, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(96, 256, generator=gen))
        if bias:  # set here too: the layer's own init draws from the global random state
            layer.bias.copy_(torch.randn(96, generator=gen))
        x = torch.randn(3, FLOAT32_ROWS // 2, 256, generator=gen).to(torch.bfloat16)
        out = layer(x)
        layer(x[:1, :1])  # few rows: the packed path (or F.linear)
        layer(x[:1, : PACKED_ROWS + 1])  # a batched decoding step's rows: F.linear
    assert calls == [(3, FLOAT32_ROWS // 2, 256)] and out.dtype == torch.bfloat16
    bias64 = None if layer.bias is None else layer.bias.double()
    exact = F.linear(x.double(), layer.weight.double(), bias64)
    # One bfloat16 step at each value (the final rounding), plus what summing 257 float32 terms
    # can lose: 2^-16 of the sum of their magnitudes (it matters where the terms cancel).
    step = 2.0 ** (torch.floor(torch.log2(exact.abs())) - 7)
    magnitudes = F.linear(
        x.double().abs(), layer.weight.double().abs(), None if bias64 is None else bias64.abs()
    )
    bound = step + 2.0**-16 * magnitudes
    assert ((out.double() - exact).abs() <= bound).all()
    reference = F.linear(x, layer.weight, layer.bias)
    assert ((reference.double() - exact).abs() <= bound).all()  # the same bound holds for F.linear
    calls.clear()
    layer(x).float().sum().backward()  # gradients wanted: F.linear, which autograd differentiates
    assert calls == [] and layer.weight.grad is not None


@pytest.mark.parametrize(("choice", "expected"), [("bfloat16", False), ("float32", True)])
def test_the_product_dtype_can_be_chosen_instead_of_measured(choice, expected, monkeypatch):
    monkeypatch.setenv("YOCO_BF16_PRODUCTS", choice)
    linear_module.float32_products_are_faster.cache_clear()
    try:
        assert linear_module.float32_products_are_faster() is expected
        monkeypatch.setenv("YOCO_BF16_PRODUCTS", "fp8")
        linear_module.float32_products_are_faster.cache_clear()
        with pytest.raises(ValueError, match="YOCO_BF16_PRODUCTS must be one of"):
            linear_module.float32_products_are_faster()
    finally:
        monkeypatch.delenv("YOCO_BF16_PRODUCTS")
        linear_module.float32_products_are_faster.cache_clear()
