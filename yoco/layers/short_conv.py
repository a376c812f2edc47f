"""The short convolution a self-decoder layer may put before its mixer (``short_conv_size``)."""

import math

import torch
from torch import nn

from yoco.cache import ConvState
from yoco.ops.short_conv import causal_conv


class ShortConv(nn.Module):
    """``h + causal_conv(h)``: the block's normalised input with each channel's last K values
    mixed in, so the mixer (and through it the shared K/V) sees the previous tokens at every
    position. The residual form keeps the input itself whatever the weights; the weights start
    as ``nn.Conv1d``'s do for a depthwise kernel (uniform in ±1/√K)."""

    def __init__(self, hidden_size: int, kernel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, kernel))
        bound = 1 / math.sqrt(kernel)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        y, past = causal_conv(h, self.weight, None if state is None else state.past)
        if state is not None:
            state.push(past, h.shape[1])
        return h + y
