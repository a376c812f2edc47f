"""The pre-norm residual block every decoder in the library is built from."""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from yoco.layers.norm import RMSNorm


class DecoderLayer(nn.Module):
    """``y = x + mixer(norm(x))``, then ``y + mlp(norm(y))``; with a ``short_conv`` (YOCO's
    self-decoder, ``short_conv_size``), ``y = x + mixer(short_conv(norm(x)))``.

    The token mixer (attention, sliding window, retention, cross-attention) and the
    feed-forward network (SwiGLU or a mixture of experts) are passed in; the mixer is stored
    under ``mixer_name``: ``self_attn`` for attention so that the Transformer's
    parameter names are exactly Llama's. Keyword arguments of ``forward`` go to the mixer.
    """

    def __init__(
        self,
        mixer: nn.Module,
        mlp: nn.Module,
        hidden_size: int,
        eps: float,
        mixer_name: str = "self_attn",
        short_conv: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.mixer_name = mixer_name
        self.input_layernorm = RMSNorm(hidden_size, eps=eps)
        self.add_module(mixer_name, mixer)
        self.short_conv = short_conv
        self.post_attention_layernorm = RMSNorm(hidden_size, eps=eps)
        self.mlp = mlp
        # Set by the trainer: recompute this block's activations in the backward pass
        # instead of storing them.
        self.checkpoint_activations = False

    @property
    def token_mixer(self) -> nn.Module:
        return getattr(self, self.mixer_name)

    def forward(self, x: torch.Tensor, **mixer_kwargs) -> torch.Tensor:
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False, **mixer_kwargs)
        return self._forward(x, **mixer_kwargs)

    def _forward(self, x: torch.Tensor, conv_state=None, **mixer_kwargs) -> torch.Tensor:
        h = self.input_layernorm(x)
        if self.short_conv is not None:
            h = self.short_conv(h, conv_state)
        x = x + self.token_mixer(h, **mixer_kwargs)
        return x + self.mlp(self.post_attention_layernorm(x))
