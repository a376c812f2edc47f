"""yoco.layers.Linear: the packed bfloat16 path for few rows equals F.linear bit for bit, follows
weight updates, and steps aside whenever a gradient is needed."""

import torch
import torch.nn.functional as F

import yoco.layers.linear as linear_module
from yoco.layers.linear import PACKED_ROWS, Linear

# The locked CPU torch has oneDNN; a build without it takes F.linear everywhere, and the
# results must be the same either way.
PACKED = linear_module._AVAILABLE


def test_few_bfloat16_rows_take_the_packed_path_and_equal_f_linear(monkeypatch):
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
