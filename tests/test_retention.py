"""RetNet multi-scale retention: fixed decays, the three forms, torchscale with the same weights."""

import math
from types import SimpleNamespace

import pytest
import torch

from yoco.cache import RecurrentState
from yoco.layers.retention import MultiScaleRetention, retnet_log_decays
from yoco.layers.rotary import Rope, RotaryEmbedding

HIDDEN, HEADS = 32, 4
HEAD_DIM = HIDDEN // HEADS


def retention_reference(layer: MultiScaleRetention, x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """o_n = Σ_{m<=n} γ_h^(n-m) (q_n·k_m) v_m per head, then group norm, swish gate, output."""
    b, n, _ = x.shape
    q = rope.rotate_queries(layer.split_heads(layer.q_proj(x)))
    k = rope.rotate_keys(layer.split_heads(layer.k_proj(x))) / math.sqrt(HEAD_DIM)
    v = layer.split_heads(layer.v_proj(x))
    gamma = torch.tensor([1 - 2 ** (-5 - h) for h in range(HEADS)])
    distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    decay = torch.where(distance >= 0, gamma[:, None, None] ** distance.clamp(min=0), 0.0)  # (H, N, N)
    o = (q @ k.transpose(-1, -2) * decay) @ v
    o = layer.head_norm(o).transpose(1, 2).reshape(b, n, -1)
    return layer.o_proj(torch.nn.functional.silu(layer.g_proj(x)) * o)


def test_decays_are_retnets_per_head_scales():
    assert torch.allclose(retnet_log_decays(3).exp(), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128]))


@pytest.mark.parametrize("n", [1, 7, 16, 37])
def test_chunkwise_and_recurrent_equal_the_plain_formula(n):
    torch.manual_seed(n)
    layer = MultiScaleRetention(HIDDEN, HEADS, chunk_size=8)
    x = torch.randn(2, n, HIDDEN)
    rope = RotaryEmbedding(HEAD_DIM)(torch.arange(n).expand(2, n), x.dtype)
    expected = retention_reference(layer, x, rope)
    torch.testing.assert_close(layer(x, rope), expected, rtol=1e-5, atol=1e-5)  # chunkwise
    cache = RecurrentState(2, HEADS, HEAD_DIM, x.device)
    steps = [
        layer(x[:, i : i + 1], Rope(rope.cos[:, i : i + 1], rope.sin[:, i : i + 1]), cache) for i in range(n)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), expected, rtol=1e-5, atol=1e-5)  # recurrent


def interleaved_to_half(weight: torch.Tensor) -> torch.Tensor:
    """Reorder each head's output rows from interleaved pairs (0,1),(2,3).. to halves (i, i+d/2)."""
    order = torch.cat((torch.arange(0, HEAD_DIM, 2), torch.arange(1, HEAD_DIM, 2)))
    rows = (torch.arange(HEADS)[:, None] * HEAD_DIM + order).flatten()
    return weight[rows]


def torchscale_pair(eps: float):
    """torchscale's MultiScaleRetention and ours with the same weights, plus the inputs for
    torchscale's three forms (built the way its RetNetRelPos builds them)."""
    from torchscale.component import multiscale_retention as ts  # in requirements.lock: never skipped

    torch.manual_seed(0)
    theirs = ts.MultiScaleRetention(SimpleNamespace(multiway=False, layernorm_eps=eps), HIDDEN, HIDDEN, HEADS)
    ours = MultiScaleRetention(HIDDEN, HEADS, eps=eps, chunk_size=4)
    with torch.no_grad():
        ours.q_proj.weight.copy_(interleaved_to_half(theirs.q_proj.weight))
        ours.k_proj.weight.copy_(interleaved_to_half(theirs.k_proj.weight))
        for name in ("v_proj", "g_proj"):
            getattr(ours, name).weight.copy_(getattr(theirs, name).weight)
        ours.o_proj.weight.copy_(theirs.out_proj.weight)
    return theirs, ours


def torchscale_angles(n: int) -> tuple[torch.Tensor, Rope]:
    """torchscale's angle table (interleaved) and the same rotation in our layout."""
    angle = 1.0 / (10000 ** torch.linspace(0, 1, HEAD_DIM // 2))
    positions = torch.arange(n, dtype=torch.float32)[:, None]
    interleaved = positions * angle.repeat_interleave(2)  # (N, d): a0 a0 a1 a1 ...
    half = positions * torch.cat((angle, angle))  # (N, d): a0 a1 ... a0 a1 ...
    return interleaved, Rope(half.cos()[None], half.sin()[None])


def parallel_mask(n: int) -> torch.Tensor:
    decay = retnet_log_decays(HEADS)
    distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    mask = torch.where(distance >= 0, (distance.clamp(min=0) * decay[:, None, None]).exp(), 0.0)
    return mask / mask.sum(-1, keepdim=True).sqrt()  # torchscale's normalisation


def test_equals_torchscale_parallel_and_recurrent_with_the_same_weights():
    # The group norm's epsilon is set tiny in both: torchscale divides scores and state by
    # positive per-row factors, which the norm cancels exactly only when eps is negligible
    # against the rows' mean square. At eps=1e-6 with torchscale's small initialisation the
    # outputs differ by up to ~2e-2 (measured), which is that epsilon, not the formula.
    theirs, ours = torchscale_pair(eps=1e-12)
    n = 24
    x = torch.randn(2, n, HIDDEN)
    interleaved, rope = torchscale_angles(n)
    expected = ours(x, rope)
    parallel = theirs(x, ((interleaved.sin(), interleaved.cos()), parallel_mask(n)))
    state, steps = {}, []
    decay = retnet_log_decays(HEADS).exp()
    for i in range(n):
        tables = (interleaved[i].sin(), interleaved[i].cos())
        steps.append(theirs(x[:, i : i + 1], (tables, decay), incremental_state=state))
    torch.testing.assert_close(parallel, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), expected, rtol=1e-5, atol=1e-5)
