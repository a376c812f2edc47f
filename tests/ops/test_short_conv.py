"""The short causal convolution: conv1d against the sum written out, in one piece and in chunks."""

import pytest
import torch

from yoco.ops.short_conv import causal_conv, causal_conv_reference


@pytest.mark.parametrize("kernel", [2, 4])
def test_causal_conv_equals_the_written_out_sum_in_one_piece_and_in_chunks(kernel):
    gen = torch.Generator().manual_seed(kernel)
    x, weight = torch.randn(2, 11, 6, generator=gen), torch.randn(6, kernel, generator=gen)
    y, past = causal_conv(x, weight)
    y_ref, past_ref = causal_conv_reference(x, weight)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
    assert torch.equal(past, x[:, -(kernel - 1) :]) and torch.equal(past_ref, past)
    # Position 0 sees only itself (zeros before the sequence); position t its last K values.
    torch.testing.assert_close(y[:, 0], weight[:, -1] * x[:, 0])
    t = kernel + 1
    expected = sum(weight[:, kernel - 1 - j] * x[:, t - j] for j in range(kernel))
    torch.testing.assert_close(y[:, t], expected, atol=1e-6, rtol=0)
    # In chunks of 3 and then one token at a time, carrying the past: the same outputs.
    pieces, carried = [], None
    for start, end in [(0, 3), (3, 6), *((i, i + 1) for i in range(6, 11))]:
        out, carried = causal_conv(x[:, start:end], weight, carried)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), y, atol=1e-6, rtol=0)
