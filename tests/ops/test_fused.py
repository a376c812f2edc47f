"""The fused (compiled) element-wise kernels against the eager functions they are compiled from,
and the eager fallback where compiling is off or fails."""

import pytest
import torch

import yoco.ops.fused as fused_module
from yoco.ops.decode_attention import weigh_int8_chunk
from yoco.ops.fused import Fused


def chunk_inputs(out_dtype, masked: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, h, rep, n, capacity = 2, 3, 2, 64, 80
    products = torch.randint(-30000, 30000, (b, h, rep, n), dtype=torch.int32, generator=gen)
    # Scales as a cache holds them: (B, H, N, 1) memory read transposed, a slice of a longer buffer.
    key_scales = torch.rand(b, h, capacity, 1, generator=gen).transpose(-1, -2)[..., :n] * 1e-3
    value_scales = torch.rand(b, h, capacity, 1, generator=gen).transpose(-1, -2)[..., :n] * 1e-2
    coefficients = torch.rand(b, h, rep, 1, generator=gen)
    running = torch.tensor([-float("inf"), 1.0, 30.0]).repeat(b, h, rep // 2 + 1)[..., :rep, None]
    key_mask = torch.rand(b, 1, 1, n, generator=gen) > 0.3 if masked else None
    out = torch.full((b, h, rep, capacity), 7.0, dtype=out_dtype)
    return [products, key_scales, coefficients, value_scales, running, key_mask, out[..., 8 : 8 + n]], out


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_compiled_chunk_weights_equal_the_eager_function(out_dtype, masked, monkeypatch):
    """Same reference, same sums (float32 reassociation) and the same weights written into the
    same slice of the output buffer, nothing outside it touched. Compiled here even where
    YOCO_COMPILE=0 switched the library's own kernel off."""
    monkeypatch.setattr(fused_module, "ENABLED", True)
    kernel = Fused(weigh_int8_chunk.eager)
    eager_args, eager_buffer = chunk_inputs(out_dtype, masked)
    compiled_args, compiled_buffer = chunk_inputs(out_dtype, masked)
    expected = weigh_int8_chunk.eager(*eager_args)
    got = kernel(*compiled_args)
    assert kernel.compiled, "a C++ compiler is on this machine: the kernel should compile"
    torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=0, rtol=1e-5)
    torch.testing.assert_close(
        compiled_buffer, eager_buffer, atol=0, rtol=1e-6 if out_dtype == torch.float32 else 0.008
    )
    assert (eager_buffer[..., :8] == 7).all() and (eager_buffer[..., 72:] == 7).all()
    assert got[1].isfinite().all()


def test_without_a_compiler_the_eager_function_runs_with_one_warning():
    def doubled(x):
        return x * 2 + 1

    fused = Fused(doubled)
    x = torch.arange(6.0)
    # No working C++ compiler, and no compiled copy from an earlier run on disk.
    with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/g++"), "fx_graph_cache": False}):
        if fused.compiled:
            with pytest.warns(UserWarning, match="running doubled eagerly"):
                assert torch.equal(fused(x), x * 2 + 1)
        assert not fused.compiled
        assert torch.equal(fused(x), x * 2 + 1)  # no second warning, no second attempt


def test_compiling_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(fused_module, "ENABLED", False)
    fused = Fused(torch.exp)
    assert not fused.compiled and torch.equal(fused(torch.zeros(3)), torch.ones(3))
