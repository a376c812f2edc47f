"""RMSNorm gives Llama's arithmetic bit for bit in every dtype."""

import pytest
import torch

from yoco.layers.norm import RMSNorm


def llama_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's forward, written out: statistics in float32, cast back, then the scale."""
    x32 = x.to(torch.float32)
    out = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return out if weight is None else weight * out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_equals_llamas_formula_bit_for_bit(dtype, affine):
    torch.manual_seed(0)
    norm = RMSNorm(96, eps=1e-5, elementwise_affine=affine)
    if affine:
        norm.weight.data = torch.randn(96)
    norm = norm.to(dtype)
    x = (torch.randn(3, 37, 96) * torch.logspace(-3, 3, 37)[:, None]).to(dtype)
    weight = norm.weight if affine else None
    assert torch.equal(norm(x), llama_rms_norm(x, weight, 1e-5))
