"""A short causal depthwise convolution over the sequence: each channel mixes its last K values.

    y_t[c] = Σ_{j=0}^{K-1} w[c, K-1-j] · x_{t-j}[c]        (x_{t-j} = 0 before the sequence)

Shapes: x (B, N, C); weight (C, K); ``past`` (B, K-1, C), the K-1 inputs before x (a decoding
cache; zeros for a fresh sequence). Returns y (B, N, C) and the new past, the last K-1 inputs.
Modern linear-attention and state-space models put one before their mixer so every position
sees its immediate predecessors directly (H3's shift, Mamba's and fla's short convolution).

:func:`causal_conv` runs ``conv1d`` with groups = C; :func:`causal_conv_reference` is the sum
above, written out, and the tests compare them.
"""

import torch
import torch.nn.functional as F


def _with_past(x: torch.Tensor, kernel: int, past: torch.Tensor | None) -> torch.Tensor:
    if past is None:
        past = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])
    return torch.cat([past.to(x.dtype), x], dim=1)  # (B, K-1+N, C)


def causal_conv(
    x: torch.Tensor, weight: torch.Tensor, past: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = weight.shape[1]
    padded = _with_past(x, kernel, past)
    y = F.conv1d(padded.transpose(1, 2), weight[:, None, :].to(x.dtype), groups=x.shape[2])
    return y.transpose(1, 2), padded[:, padded.shape[1] - (kernel - 1) :]


def causal_conv_reference(
    x: torch.Tensor, weight: torch.Tensor, past: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = weight.shape[1]
    padded = _with_past(x, kernel, past).float()
    w = weight.float()
    y = torch.stack(
        [
            sum(w[:, kernel - 1 - j] * padded[:, kernel - 1 + t - j] for j in range(kernel))
            for t in range(x.shape[1])
        ],
        dim=1,
    )
    return y.to(x.dtype), padded[:, padded.shape[1] - (kernel - 1) :].to(x.dtype)
