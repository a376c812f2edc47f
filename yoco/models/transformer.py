"""The Transformer baseline: exactly Llama (same parameter names, shapes and numerics)."""

import torch
from torch import nn

from yoco.layers.attention import SelfAttention
from yoco.layers.block import DecoderLayer
from yoco.models.base import CausalLM, DecoderBackbone, DecoderConfig


class TransformerConfig(DecoderConfig):
    model_type = "yoco_transformer"


class TransformerModel(DecoderBackbone):
    """L layers of (causal GQA attention, SwiGLU), each with its own K/V."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(
            DecoderLayer(
                SelfAttention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads),
                config.hidden_size,
                config.intermediate_size,
                config.rms_norm_eps,
            )
            for _ in range(config.num_hidden_layers)
        )

    def body(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, rope=rope)
        return x


class TransformerForCausalLM(CausalLM):
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config, TransformerModel(config))
